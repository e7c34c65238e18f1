"""The run folder: a training run's config, checkpoint, metrics log and plots, and resume.

A run folder holds ``config.json`` (the model, its config, the dtype, a fingerprint of the
data and what the caller adds), ``model.safetensors`` (the checkpoint: weights with the
optimizer and hook state of the same step, one file), ``metrics.jsonl`` (one record per log
interval) and whatever plots the caller writes into ``RunFolder.dir``.

The rules, so that no run is lost, overwritten or wrongly resumed:

- A folder that already holds a run is never written over silently: starting a run there is
  refused unless ``resume`` (continue it) or ``overwrite`` (replace it) is given.
- ``overwrite`` trains in a sibling folder ``NAME.partial`` and only replaces the earlier run
  when the new one completes; a failed or interrupted rerun leaves the earlier run intact (an
  interrupted one keeps its checkpoint in ``NAME.partial``, which can itself be resumed).
- ``resume`` checks that the checkpoint belongs to this run (the same model, config, dtype and
  data fingerprint) and truncates the metrics log to the checkpoint's step, so the log has no
  repeated or out-of-order steps.
- A new run that fails before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from torchnf.train.checkpoint import (
    CONFIG,
    WEIGHTS,
    _atomic_write,
    config_of,
    load,
    load_training_state,
    read_config,
    save,
)

METRICS = "metrics.jsonl"
#: Suffix of the folder where an ``overwrite`` run trains until it completes.
PARTIAL = ".partial"


class RunFolder:
    """A training run's folder (see the module docstring for its rules).

    Use it as a context manager around training (``fit(..., run=run)``) and anything else that
    writes into the run (plots): the folder is committed when the block ends without error
    (an ``overwrite`` run then replaces the earlier one).

    Arguments:
        path: the run's folder, ``OUT/NAME``.
        resume: continue the run saved there (it must hold a checkpoint).
        overwrite: replace the run saved there once the new one completes.
        main: whether this process writes (rank 0 under ``torchrun``); the others only read
            the checkpoint to resume.

    Example:
        >>> import tempfile, torch, torchnf
        >>> from torchnf.models import RealNVP
        >>> path = Path(tempfile.mkdtemp()) / "demo"
        >>> with RunFolder(path) as run:
        ...     _ = torchnf.fit(RealNVP(2, n_layers=1), torch.randn(512, 2), steps=2, run=run,
        ...                     progress=False)
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'metrics.jsonl', 'model.safetensors']
        >>> RunFolder(path).open()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... already holds a run; pass --overwrite (overwrite=True) to replace it ...
    """

    def __init__(
        self, path: str | Path, *, resume: bool = False, overwrite: bool = False, main: bool = True
    ) -> None:
        if resume and overwrite:
            raise ValueError("expected resume or overwrite, not both")
        self.path = Path(path)
        self.resume, self.overwrite, self.main = resume, overwrite, main
        self.dir = self.path
        self.checkpoint_step: int | None = None
        self._opened = self._created = False

    # -- lifetime -------------------------------------------------------------------------------
    def open(self) -> RunFolder:
        """Check the folder against the mode and prepare where the run writes; once."""
        if self._opened:
            return self
        if not self.main:  # rank 0 checks and writes; the others only read a resumed checkpoint
            self._opened = True
            return self
        if self.resume:
            if load_training_state(self.path) is None:
                raise ValueError(
                    f"{self.path}: no checkpoint to resume; start the run without --resume"
                )
        elif _holds_run(self.path):
            if not self.overwrite:
                raise ValueError(
                    f"{self.path} already holds a run; pass --overwrite (overwrite=True) to "
                    "replace it or --resume (resume=True) to continue it"
                )
            self.dir = self.path.with_name(self.path.name + PARTIAL)
            if self.dir.exists():
                raise ValueError(
                    f"{self.dir} holds an interrupted rerun of {self.path}; continue it with "
                    f"--resume --name {self.dir.name}, or delete it"
                )
        if not self.resume:
            self._created = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
        self._opened = True  # only now may abandon() clean up what this run wrote
        return self

    def __enter__(self) -> RunFolder:
        return self.open()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abandon()

    def commit(self) -> None:
        """The run completed: an ``overwrite`` run replaces the earlier one now."""
        if not (self.main and self._opened) or self.dir == self.path:
            return
        old = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
        self.path.rename(old)
        self.dir.rename(self.path)
        shutil.rmtree(old)
        self.dir = self.path

    def abandon(self) -> None:
        """The run failed or was interrupted: a run without a checkpoint leaves nothing behind;
        one with a checkpoint stays resumable (an ``overwrite`` run in ``NAME.partial``)."""
        if not (self.main and self._opened) or self.resume or self.checkpoint_step is not None:
            return
        for name in (CONFIG, WEIGHTS, METRICS):
            (self.dir / name).unlink(missing_ok=True)
        if self._created and self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()

    # -- contents -------------------------------------------------------------------------------
    def start(self, flow: nn.Module, metadata: dict[str, Any]) -> int:
        """Begin (or resume) training ``flow``; return the step to start from.

        A new run writes ``config.json`` (the model, its config and ``metadata``, e.g. the data
        fingerprint). A resumed one first checks the saved config against ``flow`` and
        ``metadata['data_fingerprint']``, loads the weights into ``flow`` and truncates the
        metrics log to the checkpoint's step.
        """
        self.open()
        if not self.resume:
            if self.main:
                save_config(flow, self.dir, metadata)
            return 0
        saved = read_config(self.path)
        _check_same_run(self.path, saved, save_config(flow, None, metadata))
        device = next((t.device for t in (*flow.parameters(), *flow.buffers())), None)
        load(self.path, model=flow, device=device)
        state = load_training_state(self.path)
        step = int(state["step"])
        self.checkpoint_step = step
        if self.main:
            self._truncate_metrics(step)
        return step

    def training_state(self) -> dict[str, Any] | None:
        """The saved training state (step, optimizer, hooks) of a resumed run."""
        return load_training_state(self.path) if self.resume else None

    def save_checkpoint(
        self, flow: nn.Module, step: int, state: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        """Write the checkpoint of ``step``: weights and training ``state`` in one file."""
        if not self.main:
            return
        save(flow, self.dir, training_state={**state, "step": step}, **metadata)
        self.checkpoint_step = step

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``."""
        if self.main:
            with (self.dir / METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The run's log records, those before a resume included."""
        file = self.dir / METRICS
        return (
            [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []
        )

    def _truncate_metrics(self, step: int) -> None:
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        _atomic_write(self.dir / METRICS, lambda tmp: Path(tmp).write_text(text))


def save_config(flow: nn.Module, path: Path | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` content for ``flow`` and ``metadata``; written into ``path`` when
    given (without weights: the first checkpoint adds them)."""
    config = config_of(flow, metadata)
    if path is not None:
        text = json.dumps(config, indent=2) + "\n"
        _atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return config


def _check_same_run(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    for key, what in (
        ("model", "model"),
        ("config", "model config"),
        ("dtype", "dtype"),
        ("data_fingerprint", "data"),
        ("objective", "objective"),  # absent for maximum likelihood
    ):
        if saved.get(key) != current.get(key):
            detail = _first_difference(saved.get(key), current.get(key))
            raise ValueError(
                f"{path}: cannot resume, the checkpoint has another {what} ({detail}); "
                "start a new run (--name) or replace this one (--overwrite)"
            )


def _first_difference(saved: Any, current: Any, where: str = "") -> str:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            if saved.get(key) != current.get(key):
                return _first_difference(saved.get(key), current.get(key), f"{where}{key}: ")
    return f"{where}{saved!r} saved, {current!r} now"


def _holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in (CONFIG, WEIGHTS, METRICS))
