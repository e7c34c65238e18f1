"""Data sources: where ``fit`` gets its training and validation batches (the rows they read
are in :mod:`torchnf.train.tables`).

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

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from torchnf.data.loaders import (
    dequantize_integers,
)
from torchnf.train.objectives import Batch
from torchnf.train.tables import BatchConverter, Contexts, table_for

#: Rows read at once for validation (and by :func:`~torchnf.train.evaluate_nll`).
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
        dequantize: the points are integers (``True``) or these columns of them are (a list of
            indices into the flattened point): add fresh uniform noise in ``[0, 1)`` there to
            every batch (:func:`~torchnf.data.loaders.dequantize_integers`; seeded by the step,
            so a resumed run draws the same noise), and to the validation points (fixed noise).
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
        dequantize: bool | Sequence[int] = False,
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
        self._table = table_for(
            data, context, event_shape, Contexts(context_shape, context_padding), device, dtype
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
        columns = None if self.dequantize is True else self.dequantize
        noisy = dequantize_integers(batch.x, torch.Generator().manual_seed(seed), columns)
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
        contexts = Contexts(context_shape, context_padding)
        self._convert = BatchConverter(event_shape, contexts, device, dtype)
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
