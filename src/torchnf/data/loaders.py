"""Loading user data (``.npy``, ``.csv``) and checking data where it enters the library.

Every entry point that takes data from the outside (:func:`torchnf.fit`, the command, these
loaders) goes through :func:`check_data`, which refuses non-floating, wrongly shaped and
non-finite data with one clear ``ValueError``. The hot paths (``log_prob``, layers) only do
static shape and dtype checks, which cost no device sync.

Data larger than memory stays on disk: :func:`open_npy` memory-maps a ``.npy`` file after
checking its header, and :func:`check_finite_chunked`, :func:`data_warnings` and
:func:`fingerprint` read it in row chunks of bounded size.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from torchnf.layers.preprocessing import dequantize

SUFFIXES = (".npy", ".csv")
CHUNK_BYTES = 16 << 20  # default size of one row chunk of the streaming functions
MAX_COLUMN_WARNINGS = 10  # constant columns listed one by one, then summed up

_DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs"}
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")

Array = np.ndarray | Tensor


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
        raise ValueError(_non_finite_message(name, row, column, value))
    return x


def check_finite_chunked(
    array: np.ndarray, name: str = "data", chunk_rows: int | None = None
) -> np.ndarray:
    """Return ``array`` after checking, one row chunk at a time, that it is finite.

    The error is :func:`check_data`'s, naming the first NaN or inf by row and column (the
    column counts the flattened features of one point). Memory stays bounded by one chunk,
    so a memory-mapped array larger than memory can be checked.

    Arguments:
        array: ``(N, ...)`` numbers, e.g. from :func:`open_npy`.
        name: what to call ``array`` in error messages.
        chunk_rows: rows read at a time (default: about 16 MiB of rows).

    Returns:
        ``array`` unchanged.

    Raises:
        ValueError: naming the first non-finite value, e.g. ``expected finite data, found
            inf at row 3 (column 1)``.

    Example:
        >>> check_finite_chunked(np.array([[0.0, 1.0], [2.0, np.inf]]), chunk_rows=1)
        Traceback (most recent call last):
        ...
        ValueError: expected finite data, found inf at row 1 (column 1)
    """
    for start, chunk in _row_chunks(array, name, chunk_rows):
        finite = np.isfinite(chunk)
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            value = float(chunk[row, column])
            raise ValueError(_non_finite_message(name, start + row, column, value))
    return array


def _non_finite_message(name: str, row: int, column: int, value: float) -> str:
    kind = "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"expected finite {name}, found {kind} at row {row} (column {column})"


def open_npy(path: str | Path) -> np.ndarray:
    """Memory-map a ``.npy`` file, checking its header but not reading its data.

    The dtype must be numeric (bool, integer or floating) and the shape ``(N, ...)`` with
    ``N >= 1``; a 1-D array of ``N`` scalars is returned as an ``(N, 1)`` view. Values are
    not read, so NaN/inf are not checked here: use :func:`check_finite_chunked`.

    Arguments:
        path: the ``.npy`` file.

    Returns:
        A read-only :class:`numpy.memmap` (or a view of one), ``(N, ...)``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file and what is wrong with it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "points.npy")
        >>> np.save(path, np.arange(3.0))
        >>> array = open_npy(path)
        >>> array.shape, isinstance(array, np.memmap)
        ((3, 1), True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{path}: expected one array, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{path}: expected an array of shape (N, ...), got {array.shape}")
    return array[:, None] if array.ndim == 1 else array


def fingerprint(data: Array, chunk_rows: int | None = None) -> dict[str, object]:
    """Shape, dtype and a BLAKE2b hash of the values, read in row chunks.

    Two arrays or tensors with the same shape, dtype and values have the same fingerprint,
    whatever their type, device or byte order (values are hashed as little-endian bytes;
    bfloat16 tensors as float32). Memory stays bounded by one chunk. Used to check that a
    resumed run trains on the same data.

    Arguments:
        data: ``(N, ...)`` numbers, a tensor or a (memory-mapped) array.
        chunk_rows: rows read at a time (default: about 16 MiB of rows).

    Returns:
        ``{"shape": [N, ...], "dtype": "float32", "blake2b": "<32 hex digits>"}``.

    Example:
        >>> a = fingerprint(np.zeros((4, 2), dtype=np.float32))
        >>> a == fingerprint(torch.zeros(4, 2)), a["shape"], a["dtype"]
        (True, [4, 2], 'float32')
    """
    digest = hashlib.blake2b(digest_size=16)
    for _, chunk in _row_chunks(data, "data", chunk_rows):
        digest.update(np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("<")))
    dtype = data.dtype.name if isinstance(data, np.ndarray) else str(data.dtype)[6:]  # "torch."
    return {"shape": list(data.shape), "dtype": dtype, "blake2b": digest.hexdigest()}


def data_warnings(data: Array, chunk_rows: int | None = None) -> list[str]:
    """One-line warnings about data a density model will fit badly, read in row chunks.

    Flags columns (flattened features) that are constant, whose density is a point mass,
    and data whose values are all integers, whose density is discrete. Memory stays bounded
    by one chunk, so a memory-mapped array larger than memory can be checked. Finiteness is
    :func:`check_finite_chunked`'s job.

    Arguments:
        data: ``(N, ...)`` numbers, a tensor or a (memory-mapped) array.
        chunk_rows: rows read at a time (default: about 16 MiB of rows).

    Returns:
        The warnings, empty when there is nothing to say.

    Example:
        >>> for line in data_warnings(torch.tensor([[0.0, 3.0], [2.0, 3.0]])):
        ...     print(line.split(":")[0])
        column 1 is constant (value 3.0)
        all values are integers
    """
    low = high = None
    integers = True
    for _, chunk in _row_chunks(data, "data", chunk_rows):
        low = chunk.min(0) if low is None else np.minimum(low, chunk.min(0))
        high = chunk.max(0) if high is None else np.maximum(high, chunk.max(0))
        integers = integers and (chunk.dtype.kind in "biu" or bool((chunk % 1 == 0).all()))
    constant = np.flatnonzero(low == high)
    warnings = [
        f"column {j} is constant (value {float(low[j])}): its density is degenerate; drop it"
        for j in constant[:MAX_COLUMN_WARNINGS]
    ]
    if len(constant) > MAX_COLUMN_WARNINGS:
        warnings.append(
            f"{len(constant) - MAX_COLUMN_WARNINGS} more columns are constant "
            f"({len(constant)} of {len(low)} in all): drop them"
        )
    if integers:
        warnings.append(
            "all values are integers: the data are discrete; pass --dequantize (or "
            "torchnf.data.loaders.dequantize_integers) to make them continuous"
        )
    return warnings


def dequantize_integers(
    x: Tensor, generator: torch.Generator | None = None, columns: Sequence[int] | None = None
) -> Tensor:
    r"""Make integer-valued data continuous by uniform dequantization, ``v = x + u``.

    ``u ~ U[0, 1)^D`` is drawn afresh on each call (call it per batch for new noise each
    epoch); with ``columns``, only those (indices into the flattened point) are integers and
    get noise, the others are left as they are. A density ``p`` fitted to ``v`` bounds the
    discrete probability of the integers ``k`` from below, by Jensen's inequality over the
    unit bin ``k + [0, 1)^D``:
    :math:`\log P(k) = \log \int p(k + u)\,du \ge E_u[\log p(k + u)]`. The general bound adds
    :math:`\log V` for bins of volume ``V``, so the correction term of the NLL,
    :math:`-\log V`, is 0 for these unit bins: the NLL (in nats) of the dequantized data
    upper-bounds the discrete NLL as it is.

    Arguments:
        x: integer values ``(N, ...)``, of an integer dtype (returned in the default float
            dtype) or a floating one (kept).
        generator: source of the noise.
        columns: the integer columns (``None``: all).

    Returns:
        ``x + u``, floating, of the shape of ``x``.

    Raises:
        ValueError: for non-finite or non-integer values, naming the first by row and
            column.

    References:
        A note on the evaluation of generative models (Theis et al., 2016,
        arXiv:1511.01844); Flow++: improving flow-based generative models with variational
        dequantization and architecture design (Ho et al., 2019, arXiv:1902.00275).

    Example:
        >>> v = dequantize_integers(torch.tensor([[0, 3], [1, 2]]))
        >>> bool((v.floor() == torch.tensor([[0.0, 3.0], [1.0, 2.0]])).all())
        True
    """
    if isinstance(x, Tensor) and not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    flat = check_data(x, name="x").reshape(x.shape[0], -1)
    index = list(range(flat.shape[1]) if columns is None else columns)
    if any(not 0 <= j < flat.shape[1] for j in index):
        raise ValueError(f"expected columns in [0, {flat.shape[1]}), got {list(index)}")
    values = flat[:, index]
    fraction = values != values.floor()
    if bool(fraction.any()):
        row, j = (int(i) for i in fraction.nonzero()[0])
        raise ValueError(
            f"expected integer values to dequantize, found {float(values[row, j])} at row "
            f"{row} (column {index[j]})"
        )
    if columns is None:
        return dequantize(x, generator)
    noise = torch.rand(values.shape, generator=generator, dtype=flat.dtype).to(flat.device)
    return flat.index_add(1, torch.tensor(index, device=flat.device), noise).reshape(x.shape)


def load_array(path: str | Path, dtype: torch.dtype = torch.float32) -> Tensor:
    """Load points from a ``.npy`` or ``.csv`` file as a checked ``(N, D)`` tensor.

    A ``.npy`` file holds a numeric array of shape ``(N,)`` (N scalar points, returned as
    ``(N, 1)``) or ``(N, *event_shape)``. A ``.csv`` file holds one point per line, numbers
    separated by commas, semicolons, tabs or runs of spaces (one kind throughout; decimal
    points, not commas), with an optional first line of column names. A first line is a
    header only if none of its cells is a number; one that mixes numbers and names is an
    error. Blank lines are skipped; any other line is a row, or an error naming its line,
    column and value.

    Arguments:
        path: the file.
        dtype: floating dtype of the result.

    Returns:
        The data, ``(N, D)`` (or ``(N, *event_shape)`` from ``.npy``).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file and what is wrong (unknown suffix, not numeric, empty,
            ragged rows, mixed delimiters, NaN/inf with its line or row).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "points.csv")
        >>> _ = open(path, "w").write("a;b\\n1;2\\n3;4.5\\n")
        >>> load_array(path)
        tensor([[1.0000, 2.0000],
                [3.0000, 4.5000]])
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: expected a .npy or .csv file, got suffix {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if path.suffix.lower() == ".npy":
        array = np.array(open_npy(path), dtype=np.float64)  # a copy in memory
    else:
        array = _read_csv(path)
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


def _row_chunks(data: Array, name: str, chunk_rows: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first row, chunk)`` with ``chunk`` a NumPy ``(rows, features)`` array."""
    if isinstance(data, Tensor):
        numeric, itemsize = not data.is_complex(), data.element_size()
    elif isinstance(data, np.ndarray):
        numeric, itemsize = data.dtype.kind in "biuf", data.itemsize
    else:
        raise ValueError(f"expected {name} to be an array or tensor, got {type(data).__name__}")
    if not numeric:
        raise ValueError(f"expected numeric {name}, got dtype {data.dtype}")
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValueError(f"expected {name} of shape (N, ...) with N >= 1, got {tuple(data.shape)}")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // max(1, itemsize * math.prod(data.shape[1:])))
    if chunk_rows < 1:
        raise ValueError(f"expected chunk_rows >= 1, got {chunk_rows}")
    for start in range(0, data.shape[0], chunk_rows):
        chunk = data[start : start + chunk_rows]
        if isinstance(chunk, Tensor):
            chunk = chunk.detach().cpu()
            chunk = (chunk.float() if chunk.dtype == torch.bfloat16 else chunk).numpy()
        yield start, np.asarray(chunk).reshape(len(chunk), -1)


def _read_csv(path: Path) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text .csv file (expected UTF-8)") from None
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no data rows")
    first, line = lines[0]
    found = [d for d in _DELIMITERS if d in line]
    if len(found) > 1:
        raise _mixed_delimiters(path, first, line, found)
    delimiter = found[0] if found else None  # None: runs of whitespace
    cells = _split(line, delimiter)
    numbers = [_number(cell) for cell in cells]
    width = len(cells)
    if all(v is None for v in numbers):
        lines = lines[1:]  # a header of column names
        if not lines:
            raise ValueError(f"{path}: no data rows (line {first} is a header: {line.strip()!r})")
    elif None in numbers:
        column = numbers.index(None)
        hint = _decimal_comma_hint(line) or (
            " (a first line must be all numbers, a data row, or all names, a header)"
        )
        raise ValueError(
            f"{path}: line {first}, column {column}: expected a number, got {cells[column]!r}{hint}"
        )
    rows = []
    for number, line in lines:
        other = [d for d in _DELIMITERS if d in line and d != (delimiter or "\t")]
        if other:
            raise _mixed_delimiters(path, number, line, other, (first, delimiter))
        cells = _split(line, delimiter)
        if len(cells) != width:
            raise ValueError(
                f"{path}: line {number} has {len(cells)} columns, expected {width} "
                f"(as on line {first})"
            )
        values = [_number(cell) for cell in cells]
        if None in values or not all(math.isfinite(v) for v in values):
            column = next(j for j, v in enumerate(values) if v is None or not math.isfinite(v))
            kind = "a number" if values[column] is None else "a finite number"
            hint = (
                " (one column found: separate values by commas, semicolons, tabs or spaces)"
                if width == 1
                else _decimal_comma_hint(line)
            )
            raise ValueError(
                f"{path}: line {number}, column {column}: expected {kind}, got "
                f"{cells[column]!r}{hint}"
            )
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _mixed_delimiters(
    path: Path,
    number: int,
    line: str,
    found: list[str],
    established: tuple[int, str | None] | None = None,
) -> ValueError:
    names = " and ".join(_DELIMITERS[d] for d in found)
    where = ""
    if established is not None:
        first, delimiter = established
        where = f", but line {first} is separated by {_DELIMITERS.get(delimiter, 'spaces')}"
    hint = _decimal_comma_hint(line) or (
        "; expected one kind of separator throughout: commas, semicolons, tabs or spaces"
    )
    return ValueError(f"{path}: line {number}: found {names}{where}{hint}")


def _decimal_comma_hint(line: str) -> str:
    cells = re.split(r"[;\s]+", line.strip())
    decimal = next((c for c in cells if _DECIMAL_COMMA.fullmatch(c)), None)
    if len(cells) < 2 or decimal is None:
        return ""
    return (
        f" ({decimal!r} looks like a decimal comma: expected numbers with a decimal point, "
        f"{decimal.replace(',', '.')!r}; convert the file)"
    )
