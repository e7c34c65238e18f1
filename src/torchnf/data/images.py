"""Image data: scikit-learn's 8x8 digits (built in) and MNIST from files the user has.

Images are returned as float tensors ``(N, 1, H, W)`` of *discrete* pixel values
``{0, ..., n_values - 1}`` (dequantize them with :func:`torchnf.layers.dequantize` before
fitting a density). Nothing is downloaded: the digits ship with scikit-learn (the ``data``
extra), MNIST is read from a path.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Pixel values of the digits: integers 0..16.
DIGITS_N_VALUES = 17
#: Pixel values of MNIST: integers 0..255.
MNIST_N_VALUES = 256
#: Size of the fixed digits test split (of 1797 images), drawn once with seed 0.
DIGITS_TEST_SIZE = 360

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_digits(split: str = "train", labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The 8x8 handwritten digits of scikit-learn, ``(N, 1, 8, 8)`` with values 0..16.

    A fixed split: :data:`DIGITS_TEST_SIZE` = 360 test images drawn once with seed 0, the
    other 1437 for training (``"all"`` gives the 1797 in their original order).

    Arguments:
        split: ``"train"``, ``"test"`` or ``"all"``.
        labels: also return the digit classes ``(N,)`` (int64).

    Returns:
        The images as float32 (and the labels).

    Example:
        >>> x, y = load_digits("test", labels=True)
        >>> x.shape, float(x.max()), y[:5].tolist()
        (torch.Size([360, 1, 8, 8]), 16.0, [6, 5, 5, 7, 9])
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the digits need scikit-learn: pip install 'torchnf[data]'") from None
    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    targets = torch.as_tensor(bunch.target, dtype=torch.long)
    if split != "all":
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        splits = {"test": order[:DIGITS_TEST_SIZE], "train": order[DIGITS_TEST_SIZE:]}
        if split not in splits:
            raise ValueError(f"expected split 'train', 'test' or 'all', got {split!r}")
        images, targets = images[splits[split]], targets[splits[split]]
    return (images, targets) if labels else images


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``n``, then
    ``n`` big-endian int32 sizes; the values follow, big-endian, in C order.

    Arguments:
        path: the file (``.gz`` or not: detected from its first bytes).

    Returns:
        The array, of the shape and type the header gives.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an IDX file, or truncated, naming what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: expected an IDX file (magic bytes 00 00 <type> <ndim>), got {raw[:4].hex()}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header, expected {header} bytes")
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">i4"))
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: expected {expected} bytes of data for shape {shape}, got {len(raw) - header}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_mnist(path: str | Path, split: str = "train") -> Tensor:
    """MNIST-like images from a user path, ``(N, 1, H, W)`` float32 with values 0..255.

    ``path`` is an IDX image file (``train-images-idx3-ubyte``, gzip or not), an ``.npz``
    archive (Keras layout with ``x_train`` / ``x_test``, or a single array), or a directory
    holding either (``{train,t10k}-images-idx3-ubyte[.gz]`` or ``mnist.npz``).

    Arguments:
        path: file or directory.
        split: ``"train"`` or ``"test"`` (used for directories and ``.npz`` archives).

    Raises:
        FileNotFoundError: nothing to read at ``path``.
        ValueError: unreadable or corrupt files, or images not of shape ``(N, H, W)`` or
            ``(N, 1, H, W)`` with values in 0..255.
    """
    if split not in ("train", "test"):
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    path = Path(path)
    if path.is_dir():
        prefix = "train" if split == "train" else "t10k"
        names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz", "mnist.npz"]
        found = [path / name for name in names if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: expected one of {names} in this directory")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MNIST file")
    array = _read_npz(path, split) if path.suffix == ".npz" else read_idx(path)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1 or array.shape[0] == 0:
        raise ValueError(f"{path}: expected images of shape (N, H, W), got {array.shape}")
    if array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array)):
        raise ValueError(f"{path}: expected integer pixel values in 0..255")
    return torch.as_tensor(array.astype(np.float32))


def _read_npz(path: Path, split: str) -> np.ndarray:
    key = f"x_{split}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = archive.files
            if key in files or len(files) == 1:
                return archive[key if key in files else files[0]]
    except Exception as error:  # zipfile.BadZipFile, OSError, EOFError, ValueError...
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    raise ValueError(f"{path}: expected an array {key!r} or a single array, got {files}")


def load_images(spec: str, split: str = "train") -> tuple[Tensor, int] | None:
    """Image data named by ``spec``, with its number of pixel values; ``None`` if ``spec``
    names no image data.

    ``spec`` is ``"digits"`` (the built-in 8x8 digits) or an MNIST path (a directory, an IDX
    file ``*-idx3-ubyte[.gz]``, an ``.idx`` or an ``.npz`` archive), read with
    :func:`load_mnist`.

    Arguments:
        spec: ``"digits"`` or a path.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images (N, 1, H, W) of discrete float values, n_values)`` or ``None``.

    Example:
        >>> x, n_values = load_images("digits", "test")
        >>> x.shape, n_values
        (torch.Size([360, 1, 8, 8]), 17)
        >>> load_images("moons") is None
        True
    """
    if spec == "digits":
        return load_digits(split), DIGITS_N_VALUES  # type: ignore[return-value]
    path = Path(spec)
    mnist_file = path.suffix in (".npz", ".idx", ".gz") or path.name.endswith("-ubyte")
    if mnist_file or path.is_dir():
        return load_mnist(path, split), MNIST_N_VALUES
    return None


def image_grid(images: Tensor, n_values: int, n_cols: int | None = None) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` (pixel scale ``[0, n_values]``) into one array in [0, 1].

    One pixel of padding (value 0, the background) between images; the shape is
    ``(rows * (H + 1) + 1, cols * (W + 1) + 1)`` for one channel, with a last axis of 3 for
    RGB images.

    Arguments:
        images: ``(N, C, H, W)`` with ``C`` 1 or 3; values are clipped to ``[0, n_values]``.
        n_values: the pixel scale ``K`` (values are divided by it).
        n_cols: images per row (default ``ceil(sqrt(N))``).

    Example:
        >>> image_grid(torch.zeros(6, 1, 8, 8), 17, n_cols=3).shape
        (19, 28)
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = n_cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((c, rows * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32)
    pixels = (images.detach().cpu().float() / n_values).clamp(0, 1).numpy()
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            pixels[i]
        )
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(
    images: Tensor, path: str | Path, n_values: int, n_cols: int | None = None
) -> Path:
    """Write :func:`image_grid` of ``images`` to a PNG (dark strokes on white, like ink).

    Needs matplotlib (the ``plot`` extra). Returns the path.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, n_values, n_cols)
    if grid.ndim == 2:
        plt.imsave(path, grid, cmap="gray_r", vmin=0.0, vmax=1.0)
    else:
        plt.imsave(path, grid)
    return path
