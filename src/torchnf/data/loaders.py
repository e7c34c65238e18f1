"""Loading user data (``.npy``, ``.csv``) and checking data where it enters the library.

Every entry point that takes data from the outside (:func:`torchnf.fit`, the command, these
loaders) goes through :func:`check_data`, which refuses non-floating, wrongly shaped and
non-finite data with one clear ``ValueError``. The hot paths (``log_prob``, layers) only do
static shape and dtype checks, which cost no device sync.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SUFFIXES = (".npy", ".csv")


def check_data(
    x: Tensor,
    event_shape: tuple[int, ...] | None = None,
    name: str = "data",
) -> Tensor:
    """Return ``x`` after checking it is a finite floating-point ``(N, *event_shape)`` tensor.

    Arguments:
        x: the data, one row per point.
        event_shape: the expected shape of one point (e.g. ``flow.event_shape``); any if
            ``None``, but ``x`` must still have a leading point dimension.
        name: what to call ``x`` in error messages.

    Returns:
        ``x`` unchanged.

    Raises:
        ValueError: naming what was expected, e.g. ``expected finite data, found NaN at row
            17``.

    Example:
        >>> check_data(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), (2,))
        Traceback (most recent call last):
        ...
        ValueError: expected finite data, found NaN at row 1 (column 0)
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"expected floating-point {name}, got dtype {x.dtype}")
    if event_shape is None:
        if x.dim() < 1:
            raise ValueError(f"expected {name} of shape (N, ...), got a scalar")
    elif x.dim() != 1 + len(event_shape) or tuple(x.shape[1:]) != tuple(event_shape):
        expected = ", ".join(["N", *(str(s) for s in event_shape)])
        raise ValueError(f"expected {name} of shape ({expected}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"expected at least one row of {name}, got {tuple(x.shape)}")
    finite = torch.isfinite(x.reshape(x.shape[0], -1))
    if not bool(finite.all()):
        row, column = (int(i) for i in (~finite).nonzero()[0])
        value = float(x.reshape(x.shape[0], -1)[row, column])
        kind = "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        raise ValueError(f"expected finite {name}, found {kind} at row {row} (column {column})")
    return x


def load_array(path: str | Path, dtype: torch.dtype = torch.float32) -> Tensor:
    """Load points from a ``.npy`` or ``.csv`` file as a checked ``(N, D)`` tensor.

    A ``.npy`` file holds a numeric array of shape ``(N,)`` (N scalar points, returned as
    ``(N, 1)``) or ``(N, *event_shape)``. A ``.csv`` file holds one point per line,
    comma-separated numbers, with an optional header line of column names.

    Arguments:
        path: the file.
        dtype: floating dtype of the result.

    Returns:
        The data, ``(N, D)`` (or ``(N, *event_shape)`` from ``.npy``).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file and what is wrong (unknown suffix, not numeric, empty,
            ragged rows, NaN/inf with its row).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "points.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\n3,4.5\\n")
        >>> load_array(path)
        tensor([[1.0000, 2.0000],
                [3.0000, 4.5000]])
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: expected a .npy or .csv file, got suffix {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    array = _read_npy(path) if path.suffix.lower() == ".npy" else _read_csv(path)
    if array.ndim == 1:
        array = array[:, None]
    x = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    try:
        return check_data(x)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def save_array(x: Tensor, path: str | Path) -> None:
    """Write an ``(N, D)`` tensor to a ``.npy`` or ``.csv`` file (chosen by the suffix)."""
    path = Path(path)
    array = x.detach().cpu().numpy()
    if path.suffix.lower() == ".npy":
        np.save(path, array)
    elif path.suffix.lower() == ".csv":
        np.savetxt(path, array.reshape(len(array), -1), delimiter=",", fmt="%.9g")
    else:
        raise ValueError(f"{path}: expected a .npy or .csv output file, got suffix {path.suffix!r}")


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected one array, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{path}: expected an array of shape (N, ...), got {array.shape}")
    return array.astype(np.float64)


def _read_csv(path: Path) -> np.ndarray:
    try:
        with path.open(newline="") as f:
            lines = [(i, row) for i, row in enumerate(csv.reader(f), 1) if any(row)]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text .csv file") from None
    if lines and not _is_numeric(lines[0][1]):
        lines = lines[1:]  # a header of column names
    if not lines:
        raise ValueError(f"{path}: no data rows")
    width = len(lines[0][1])
    rows = []
    for number, row in lines:
        if len(row) != width:
            raise ValueError(f"{path}: line {number} has {len(row)} columns, expected {width}")
        values = []
        for column, cell in enumerate(row):
            try:
                values.append(float(cell))
            except ValueError:
                raise ValueError(
                    f"{path}: line {number}, column {column}: expected a number, got {cell!r}"
                ) from None
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def _is_numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True
