"""Tables of rows, what a :class:`~torchnf.train.sources.RowSource` takes its batches from:
points held on the device (one gather per batch), in a (memory-mapped) NumPy array (each batch
reads its rows, in file order), or in a map-style ``Dataset`` (collated per batch); and the
checks of the data and contexts where they enter.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from torchnf.data.loaders import check_data, check_finite_chunked, fingerprint, open_npy
from torchnf.train.objectives import Batch


class Table(ABC):
    """Rows of points (and contexts) that batches are taken from."""

    @abstractmethod
    def __len__(self) -> int: ...

    def index(self, rows: Tensor) -> Tensor:
        """Row indices (a CPU tensor) where :meth:`take` reads them (the data's device)."""
        return rows

    @abstractmethod
    def take(self, rows: Tensor) -> Batch:
        """The points (and contexts) of ``rows`` (from :meth:`index`), on the device."""

    @abstractmethod
    def restrict(self, rows: Tensor) -> Table:
        """The table of ``rows`` (a CPU index tensor) only: the training split."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]: ...


class TensorTable(Table):
    """Points held in memory on the device: a batch is one gather, without a host sync."""

    def __init__(self, x: Tensor, context: Tensor | None, raw: tuple[Any, Any]) -> None:
        self.x, self.context, self._raw = x, context, raw

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: Tensor) -> Batch:
        return Batch(self.x[rows], None if self.context is None else self.context[rows])

    def index(self, rows: Tensor) -> Tensor:
        if self.x.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self.x.device, non_blocking=True)

    def restrict(self, rows: Tensor) -> TensorTable:
        rows = self.index(rows)
        context = None if self.context is None else self.context[rows]
        return TensorTable(self.x[rows], context, self._raw)

    def fingerprint(self) -> dict[str, Any]:
        data, context = self._raw
        return {"data": fingerprint(data), "context": _maybe_fingerprint(context)}


class ArrayTable(Table):
    """Points in a NumPy array, typically memory-mapped: a batch reads only its rows (in file
    order), so the file is never loaded whole."""

    def __init__(
        self,
        array: np.ndarray,
        context: np.ndarray | None,
        rows: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
        origin: str,
    ) -> None:
        self.array, self.context, self.rows = array, context, rows
        self.device, self.dtype, self.origin = device, dtype, origin

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: Tensor) -> Batch:
        wanted = self.rows[rows.numpy()]
        order = np.argsort(wanted, kind="stable")  # read in file order, return in batch order
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        x = self._read(self.array, wanted[order], back)
        return Batch(
            x, None if self.context is None else self._read(self.context, wanted[order], back)
        )

    def _read(self, array: np.ndarray, file_rows: np.ndarray, back: np.ndarray) -> Tensor:
        values = torch.from_numpy(np.ascontiguousarray(array[file_rows][back]))
        return values.to(self.device, self.dtype, non_blocking=True)

    def restrict(self, rows: Tensor) -> ArrayTable:
        return ArrayTable(
            self.array, self.context, self.rows[rows.numpy()], self.device, self.dtype, self.origin
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "data": {**fingerprint(self.array), "origin": self.origin},
            "context": _maybe_fingerprint(self.context),
        }


class DatasetTable(Table):
    """Items of a map-style ``Dataset``, collated and checked batch by batch."""

    def __init__(self, dataset: Dataset, rows: np.ndarray, convert: BatchConverter) -> None:
        self.dataset, self.rows, self.convert = dataset, rows, convert

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: Tensor) -> Batch:
        items = [self.dataset[int(i)] for i in self.rows[rows.numpy()]]
        return self.convert(default_collate(items), f"items of the {type(self.dataset).__name__}")

    def restrict(self, rows: Tensor) -> DatasetTable:
        return DatasetTable(self.dataset, self.rows[rows.numpy()], self.convert)

    def fingerprint(self) -> dict[str, Any]:
        """The length, the class and a hash of up to 64 evenly spaced items (hashing every
        item of a large dataset would read it all)."""
        n = len(self.dataset)
        digest = hashlib.blake2b(digest_size=16)
        for i in np.unique(np.linspace(0, n - 1, min(n, 64)).astype(np.int64)):
            item = self.dataset[int(i)]
            for part in item if isinstance(item, tuple | list) else (item,):
                digest.update(np.ascontiguousarray(torch.as_tensor(part).numpy()).tobytes())
        return {"kind": type(self.dataset).__name__, "length": n, "sample_hash": digest.hexdigest()}


class Contexts:
    """What the flow takes as a context: ``shape`` of one raw context (``()``: none), and
    whether NaN in it is padding (checked for inf only) rather than bad data."""

    def __init__(self, shape: tuple[int, ...], padding: bool) -> None:
        self.shape, self.padding = tuple(shape), padding

    def check(self, context: Any, n: int | None, name: str = "context") -> Tensor | None:
        """``context`` as a checked float tensor of ``n`` rows, or ``None`` when the flow is
        unconditional and none was given; refuses a missing or unexpected context."""
        if context is None:
            if self.shape:
                expected = ", ".join(["N", *(str(s) for s in self.shape)])
                raise ValueError(
                    f"the flow is conditional: expected a {name} of shape ({expected})"
                )
            return None
        if not self.shape:
            raise ValueError(
                f"a {name} was given but the flow is unconditional (context_size=0); drop the "
                "context or build the flow with context_size"
            )
        c = _as_checked_tensor(context, self.shape, name, check=False)
        # NaN as padding: the rest (shape, dtype, inf) is checked as data would be.
        shown = (
            torch.nan_to_num(c, nan=0.0, posinf=math.inf, neginf=-math.inf) if self.padding else c
        )
        check_data(shown, self.shape, name)
        if n is not None and len(c) != n:
            raise ValueError(f"expected {n} {name} rows to match the data, got {len(c)}")
        return c


class BatchConverter:
    """Checks a collated batch (points, or ``(points, context)``) and moves it to the device."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        contexts: Contexts,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.event_shape, self.contexts = event_shape, contexts
        self.device, self.dtype = device, dtype

    def __call__(self, item: Any, where: str) -> Batch:
        if isinstance(item, tuple | list):
            if len(item) not in (1, 2):
                raise ValueError(f"{where}: expected points or (points, context), got {len(item)}")
            x, context = item if len(item) == 2 else (item[0], None)
        else:
            x, context = item, None
        x = check_data(_as_float_tensor(x, where), self.event_shape, f"points in {where}")
        if context is None and self.contexts.shape:
            raise ValueError(f"{where}: the flow is conditional; yield (points, context) pairs")
        c = self.contexts.check(context, len(x), f"context in {where}")
        return Batch(
            x.to(self.device, self.dtype), None if c is None else c.to(self.device, self.dtype)
        )


def _as_float_tensor(value: Any, where: str) -> Tensor:
    tensor = torch.as_tensor(value)
    if not torch.is_floating_point(tensor):
        raise ValueError(f"expected floating-point values in {where}, got dtype {tensor.dtype}")
    return tensor


def _maybe_fingerprint(value: Any) -> dict[str, Any] | None:
    return None if value is None else fingerprint(value)


def table_for(
    data: Any,
    context: Any,
    event_shape: tuple[int, ...],
    contexts: Contexts,
    device: torch.device,
    dtype: torch.dtype,
) -> Table:
    """The table for ``data`` of any kind, checked (shape, dtype, finiteness, context)."""
    if isinstance(data, Dataset) and not isinstance(data, Tensor):
        if context is not None:
            raise ValueError("a Dataset carries its own context: make items (point, context)")
        rows = np.arange(len(data))
        return DatasetTable(data, rows, BatchConverter(event_shape, contexts, device, dtype))
    origin = "array"
    if isinstance(data, str | Path):
        origin, data = str(data), open_npy(data)
    if isinstance(data, np.memmap):
        _check_array(data, event_shape, "data", origin)
        c = contexts.check(context, len(data))
        array = None if c is None else c.cpu().numpy()
        return ArrayTable(data, array, np.arange(len(data)), device, dtype, origin)
    x = _as_checked_tensor(data, event_shape, "data")
    c = contexts.check(context, len(x))
    c = None if c is None else c.to(device, dtype)
    return TensorTable(x.to(device, dtype), c, (data, context))


def _as_checked_tensor(
    data: Any, event_shape: tuple[int, ...], name: str, check: bool = True
) -> Tensor:
    """``data`` (a tensor or floating NumPy array) as a tensor, checked by :func:`check_data`
    (shape, dtype, finiteness), or, when ``check`` is false, for its dtype only."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind != "f":
            raise ValueError(f"expected floating-point {name}, got dtype {data.dtype}")
        data = torch.from_numpy(np.ascontiguousarray(data))
    if check:
        return check_data(data, event_shape, name)
    if not isinstance(data, Tensor) or not torch.is_floating_point(data):
        kind = data.dtype if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"expected a floating-point {name}, got {kind}")
    return data


def _check_array(array: np.ndarray, event_shape: tuple[int, ...], name: str, origin: str) -> None:
    where = f"{name} in {origin}" if origin != "array" else name
    if array.ndim != 1 + len(event_shape) or tuple(array.shape[1:]) != tuple(event_shape):
        expected = ", ".join(["N", *(str(s) for s in event_shape)])
        raise ValueError(f"expected {where} of shape ({expected}), got {tuple(array.shape)}")
    check_finite_chunked(array, where)
