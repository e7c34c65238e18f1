"""Data sources: where ``fit`` gets its training and validation batches.

A source answers four questions for the loop: this rank's part of the training batch of step
``s`` (:meth:`DataSource.batch`), the global first batch (for ``flow.initialize``), the
validation batches, and a fingerprint of the data (so a resumed run can check it trains on
the same data). Kinds:

- :class:`RowSource` over points addressed by row: tensors (and in-memory arrays), a
  memory-mapped ``.npy`` file, which is never loaded whole (each step reads its rows), or any
  :class:`~torch.utils.data.Dataset` with ``__len__``. A seeded split holds out
  ``val_fraction`` of the rows; each epoch visits the training rows in a fresh seeded order,
  and under ``torchrun`` every rank reads only its own slice of each global batch, so N
  processes follow the trajectory of one.
- :class:`LoaderSource` over a user's :class:`~torch.utils.data.DataLoader`, whose order,
  batching and sharding (e.g. a ``DistributedSampler``) are the user's.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from torchnf.data.loaders import (
    check_data,
    check_finite_chunked,
    dequantize_integers,
    fingerprint,
    open_npy,
)
from torchnf.train.objectives import Batch

#: Rows read at once for validation (and by :func:`evaluate_rows`).
VALIDATION_ROWS = 8192


class DataSource(ABC):
    """What the training loop asks of its data.

    Attributes:
        steps_per_epoch: global batches in one pass over the training data.
        has_validation: whether :meth:`validation` yields anything.
    """

    steps_per_epoch: int
    has_validation: bool

    @abstractmethod
    def batch(self, step: int) -> Batch:
        """This rank's part of the training batch of ``step`` (0-based), on the device."""

    @abstractmethod
    def first_batch(self) -> Batch:
        """The whole (global) batch of step 0, for data-dependent initialization."""

    @abstractmethod
    def validation(self) -> Iterator[Batch]:
        """The held-out batches (nothing when there is no validation data)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-serializable summary that changes when the data change."""


class RowSource(DataSource):
    """Points addressed by row (tensors, arrays, a memory-mapped ``.npy``, a ``Dataset``).

    Arguments:
        data: ``(N, *event_shape)`` points: a tensor, a NumPy array (a ``np.memmap`` is read
            row by row), a path to a ``.npy`` file (memory-mapped), or a ``Dataset`` whose
            items are points or ``(point, context)`` pairs.
        context: ``(N, *context_shape)`` conditioning values (tensor or array), or ``None``.
        event_shape: the shape of one point (the flow's).
        context_shape: the shape of one raw context, the flow's ``context_shape`` (``()``:
            unconditional).
        context_padding: NaN in a context is padding (an embedding net that masks it, e.g.
            :class:`~torchnf.nets.DeepSets`), not bad data: only inf is refused.
        batch_size: global batch size.
        val_fraction: fraction of the rows held out for validation.
        seed: seed of the split and of each epoch's order.
        device: where batches go.
        dtype: the floating dtype batches are cast to (the flow's).
        rank: this process's rank; world: the number of processes.
        dequantize: the points are integers: add fresh uniform noise in ``[0, 1)`` to every
            batch (:func:`~torchnf.data.loaders.dequantize_integers`; seeded by the step, so a
            resumed run draws the same noise), and to the validation points (fixed noise).
    """

    def __init__(
        self,
        data: Any,
        context: Any,
        *,
        event_shape: tuple[int, ...],
        context_shape: tuple[int, ...],
        batch_size: int,
        val_fraction: float,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        rank: int = 0,
        world: int = 1,
        dequantize: bool = False,
        context_padding: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"expected 0 <= val_fraction < 1, got {val_fraction}")
        if batch_size % world:
            raise ValueError(
                f"expected a batch_size divisible by the {world} processes, got {batch_size}"
            )
        self._table = _table(
            data, context, event_shape, _Contexts(context_shape, context_padding), device, dtype
        )
        n = len(self._table)
        n_val = math.ceil(n * val_fraction) if val_fraction else 0
        if n - n_val < batch_size:
            raise ValueError(
                f"expected at least batch_size={batch_size} training points, got {n - n_val} "
                f"({n} points, {n_val} held out for validation)"
            )
        split = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self._val_rows, train_rows = split[:n_val], split[n_val:]
        self._train = self._table.restrict(train_rows)
        self.steps_per_epoch = len(train_rows) // batch_size
        self.has_validation = n_val > 0
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.dequantize = dequantize
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _global_rows(self, step: int) -> Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            # Drawn on the CPU (the same order on every device), moved without a host sync.
            self._order = self._train.index(torch.randperm(len(self._train), generator=g))
            self._epoch = epoch
        return self._order[k * self.batch_size : (k + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        local = self.batch_size // self.world
        rows = self._global_rows(step)[self.rank * local : (self.rank + 1) * local]
        return self._noisy(self._train.take(rows), step)

    def first_batch(self) -> Batch:
        return self._noisy(self._train.take(self._global_rows(0)), 0)

    def validation(self) -> Iterator[Batch]:
        for k, start in enumerate(range(0, len(self._val_rows), VALIDATION_ROWS)):
            rows = self._table.index(self._val_rows[start : start + VALIDATION_ROWS])
            yield self._noisy(self._table.take(rows), -1 - k)

    def _noisy(self, batch: Batch, stream: int) -> Batch:
        """``batch`` dequantized with noise seeded by (seed, stream), when asked for."""
        if not self.dequantize:
            return batch
        seed = int(np.random.SeedSequence([self.seed, 1, stream + 2**31]).generate_state(1)[0])
        noisy = dequantize_integers(batch.x, torch.Generator().manual_seed(seed))
        return Batch(noisy, batch.context)

    def fingerprint(self) -> dict[str, Any]:
        return self._table.fingerprint()


class LoaderSource(DataSource):
    """Batches from a user's :class:`~torch.utils.data.DataLoader`, epoch after epoch.

    The loader's items are point tensors or ``(points, context)`` pairs. Each epoch calls
    ``loader.sampler.set_epoch(epoch)`` where the sampler has it (a ``DistributedSampler``);
    a resumed run starts at the epoch of its step and skips the batches of it already seen,
    so a loader whose order is a function of the epoch (no shuffling, or a sampler with
    ``set_epoch``) resumes exactly; a loader shuffled by a running generator continues with
    a fresh order. Validation comes from ``val_loader`` (the split is the user's).
    """

    def __init__(
        self,
        loader: DataLoader,
        val_loader: DataLoader | None,
        *,
        event_shape: tuple[int, ...],
        context_shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
        context_padding: bool = False,
    ) -> None:
        try:
            self.steps_per_epoch = len(loader)
        except TypeError:
            raise ValueError("expected a DataLoader with a length (a map-style dataset)") from None
        if self.steps_per_epoch < 1:
            raise ValueError("expected a DataLoader with at least one batch, got an empty one")
        self.loader, self.val_loader = loader, val_loader
        self.has_validation = val_loader is not None
        contexts = _Contexts(context_shape, context_padding)
        self._convert = _BatchConverter(event_shape, contexts, device, dtype)
        self._epoch, self._iterator, self._next = -1, iter(()), 0

    def batch(self, step: int) -> Batch:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch or k != self._next:
            self._start_epoch(epoch, skip=k)
        self._next = k + 1
        return self._convert(next(self._iterator), f"batch {k} of the DataLoader")

    def _start_epoch(self, epoch: int, skip: int) -> None:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        self._iterator, self._epoch = iter(self.loader), epoch
        for _ in range(skip):
            next(self._iterator)

    def first_batch(self) -> Batch:
        return self._convert(next(iter(self.loader)), "the first batch of the DataLoader")

    def validation(self) -> Iterator[Batch]:
        for k, item in enumerate(self.val_loader or ()):
            yield self._convert(item, f"batch {k} of the validation DataLoader")

    def fingerprint(self) -> dict[str, Any]:
        dataset = self.loader.dataset
        return {
            "kind": "DataLoader",
            "dataset": type(dataset).__name__,
            "length": len(dataset) if hasattr(dataset, "__len__") else None,
            "batches": self.steps_per_epoch,
        }


class SampleSource(DataSource):
    """No data: the objective draws its own samples from the flow (reverse KL).

    Each training batch is empty; validation is ``val_batches`` empty batches evaluated under
    a fixed seed (the same draws at every log interval, so the validation loss is comparable
    across intervals and usable for early stopping).

    Arguments:
        description: what is fitted (JSON: e.g. the target's name), the run's fingerprint.
        seed: the seed of the validation draws.
        device: where the (empty) batches live.
        val_batches: batches drawn for each validation.
    """

    steps_per_epoch = 1
    has_validation = True

    def __init__(
        self, description: Any, seed: int, device: torch.device, val_batches: int = 4
    ) -> None:
        self.description, self.seed, self.val_batches = description, seed, val_batches
        self._empty = Batch(torch.empty(0, device=device))

    def batch(self, step: int) -> Batch:
        return self._empty

    def first_batch(self) -> Batch:
        return self._empty

    def validation(self) -> Iterator[Batch]:
        devices = [self._empty.x.device] if self._empty.x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            for _ in range(self.val_batches):
                yield self._empty

    def fingerprint(self) -> dict[str, Any]:
        return {"target": self.description}


def make_source(
    data: Any, context: Any = None, *, val_data: Any = None, **options: Any
) -> DataSource:
    """The source for ``data`` of any supported kind: a :class:`LoaderSource` for a
    ``DataLoader`` (with ``val_data``, a validation ``DataLoader``), otherwise a
    :class:`RowSource`. ``options`` are :class:`RowSource`'s keyword arguments; a loader takes
    those it needs (the event shape, context size, device and dtype)."""
    if isinstance(data, DataLoader):
        if context is not None:
            raise ValueError("a DataLoader carries its own context: yield (points, context)")
        if options.get("dequantize"):
            raise ValueError(
                "dequantize is for rows of data; dequantize in the DataLoader's dataset"
            )
        if val_data is not None and not isinstance(val_data, DataLoader):
            raise ValueError(f"expected val_data to be a DataLoader, got {type(val_data).__name__}")
        keys = ("event_shape", "context_shape", "device", "dtype", "context_padding")
        return LoaderSource(data, val_data, **{key: options[key] for key in keys})
    if val_data is not None:
        raise ValueError("val_data is for a DataLoader; other data are split by val_fraction")
    return RowSource(data, context, **options)


# -- tables of rows ---------------------------------------------------------------------------
class _Table(ABC):
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
    def restrict(self, rows: Tensor) -> _Table:
        """The table of ``rows`` (a CPU index tensor) only: the training split."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]: ...


class _TensorTable(_Table):
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

    def restrict(self, rows: Tensor) -> _TensorTable:
        rows = self.index(rows)
        context = None if self.context is None else self.context[rows]
        return _TensorTable(self.x[rows], context, self._raw)

    def fingerprint(self) -> dict[str, Any]:
        data, context = self._raw
        return {"data": fingerprint(data), "context": _maybe_fingerprint(context)}


class _ArrayTable(_Table):
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

    def restrict(self, rows: Tensor) -> _ArrayTable:
        return _ArrayTable(
            self.array, self.context, self.rows[rows.numpy()], self.device, self.dtype, self.origin
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "data": {**fingerprint(self.array), "origin": self.origin},
            "context": _maybe_fingerprint(self.context),
        }


class _DatasetTable(_Table):
    """Items of a map-style ``Dataset``, collated and checked batch by batch."""

    def __init__(self, dataset: Dataset, rows: np.ndarray, convert: _BatchConverter) -> None:
        self.dataset, self.rows, self.convert = dataset, rows, convert

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: Tensor) -> Batch:
        items = [self.dataset[int(i)] for i in self.rows[rows.numpy()]]
        return self.convert(default_collate(items), f"items of the {type(self.dataset).__name__}")

    def restrict(self, rows: Tensor) -> _DatasetTable:
        return _DatasetTable(self.dataset, self.rows[rows.numpy()], self.convert)

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


class _Contexts:
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


class _BatchConverter:
    """Checks a collated batch (points, or ``(points, context)``) and moves it to the device."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        contexts: _Contexts,
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


def _table(
    data: Any,
    context: Any,
    event_shape: tuple[int, ...],
    contexts: _Contexts,
    device: torch.device,
    dtype: torch.dtype,
) -> _Table:
    """The table for ``data`` of any kind, checked (shape, dtype, finiteness, context)."""
    if isinstance(data, Dataset) and not isinstance(data, Tensor):
        if context is not None:
            raise ValueError("a Dataset carries its own context: make items (point, context)")
        rows = np.arange(len(data))
        return _DatasetTable(data, rows, _BatchConverter(event_shape, contexts, device, dtype))
    origin = "array"
    if isinstance(data, str | Path):
        origin, data = str(data), open_npy(data)
    if isinstance(data, np.memmap):
        _check_array(data, event_shape, "data", origin)
        c = contexts.check(context, len(data))
        array = None if c is None else c.cpu().numpy()
        return _ArrayTable(data, array, np.arange(len(data)), device, dtype, origin)
    x = _as_checked_tensor(data, event_shape, "data")
    c = contexts.check(context, len(x))
    c = None if c is None else c.to(device, dtype)
    return _TensorTable(x.to(device, dtype), c, (data, context))


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
