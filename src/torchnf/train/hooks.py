"""Hooks of the training loop: progress, metrics, checkpoints, learning rate, early stopping,
the overfitting warning.

The loop (:func:`torchnf.train.loop.train`) does the steps; everything else is a
:class:`Hook` it calls at fixed points: ``on_start`` before the first step, ``on_step`` after
each optimizer step (keep it cheap: no host sync), ``on_log`` with each log record (every
``log_every`` steps, after validation), and ``on_end`` after the last step. A hook that must
survive a resume saves its state with the checkpoint (:meth:`Hook.state_dict`). A hook stops
training early by setting ``TrainingState.stop``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer
from tqdm.auto import tqdm

from torchnf.core.flow import Flow
from torchnf.functional.statistics import robust_center_scale
from torchnf.train.run import RunFolder
from torchnf.train.sources import DataSource


@dataclass
class TrainingState:
    """What hooks see: the model and optimizer, ``step`` (optimizer steps done so far, of
    ``total``), and ``stop``, which a hook sets to a reason to end training early."""

    flow: Flow
    optimizer: Optimizer
    step: int
    total: int
    stop: str | None = None


@dataclass
class History:
    """What ``fit`` logged: one record (a dict, as in the JSON-lines log) per log interval.

    Records hold ``step``, ``epoch``, ``train_<objective>`` (mean over the interval, e.g.
    ``train_nll``), ``val_<objective>`` (when there is validation data), ``lr``,
    ``grad_norm`` (before clipping, last step of the interval), ``steps_per_s`` and ``time``
    (seconds since the start). ``history["val_nll"]`` lists one key over the records that have
    it; ``stopped`` says why training ended early (``None`` when it ran all its steps).
    """

    records: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)


class Hook:
    """A part of training that is not the step itself; every method does nothing by default."""

    #: The key of the hook's state in a checkpoint (``None``: nothing to save).
    name: str | None = None

    def on_start(self, state: TrainingState) -> None:
        """Before the first step (``state.step`` is the step training starts from)."""

    def on_step(self, state: TrainingState) -> None:
        """After each optimizer step."""

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        """With each log record."""

    def on_end(self, state: TrainingState) -> None:
        """After the last step, or when training stops early or is interrupted."""

    def state_dict(self) -> dict[str, Any]:
        """What to save with a checkpoint (JSON values and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""


class LearningRateSchedule(Hook):
    """Sets each step's learning rate: ``lr * factor(step)`` with a cosine decay to 0 over
    ``total`` steps, :math:`\\frac12(1 + \\cos(\\pi s / T))`, or a constant factor 1.

    :meth:`cool_down` (which :class:`EarlyStopping` calls at a plateau) replaces the rest of
    the schedule by a cosine decay from the current factor :math:`f_0` to 0 over ``n`` steps,
    :math:`f_0 \\frac12(1 + \\cos(\\pi (s - s_0) / n))`; it is saved with checkpoints.
    """

    name = "lr_schedule"

    def __init__(self, kind: Literal["cosine", "constant"] = "cosine") -> None:
        if kind not in ("cosine", "constant"):
            raise ValueError(f"expected lr_schedule 'cosine' or 'constant', got {kind!r}")
        self.kind = kind
        self.base: list[float] = []
        self.cooldown: tuple[int, float, int] | None = None  # (start step, factor, steps)

    def factor(self, step: int, total: int) -> float:
        if self.cooldown is not None:
            start, initial, steps = self.cooldown
            return (
                initial * 0.5 * (1 + math.cos(math.pi * min(max(step - start, 0), steps) / steps))
            )
        if self.kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def cool_down(self, state: TrainingState, steps: int) -> None:
        """Decay the rate from its value now to 0 over the next ``steps`` steps."""
        self.cooldown = (state.step, self.factor(state.step, state.total), steps)
        self.on_step(state)

    def on_start(self, state: TrainingState) -> None:
        self.base = [
            group.setdefault("initial_lr", group["lr"]) for group in state.optimizer.param_groups
        ]
        self.on_step(state)

    def on_step(self, state: TrainingState) -> None:
        factor = self.factor(state.step, state.total)
        for group, base in zip(state.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {"cooldown": None if self.cooldown is None else list(self.cooldown)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cooldown = state.get("cooldown")
        self.cooldown = (
            None if cooldown is None else (int(cooldown[0]), float(cooldown[1]), int(cooldown[2]))
        )


class Annealing(Hook):
    r"""Anneals the inverse temperature ``beta`` of an objective (reverse KL) linearly from
    ``start`` to 1 over the first ``steps`` steps, :math:`\beta_t = \min(1, \beta_0 + (1 -
    \beta_0) t / T)`, and logs it; a function of the step, so a resumed run continues it.

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770), who anneal :math:`\beta_t = \min(1, 0.01 + t/10^4)`.
    """

    def __init__(self, objective: Any, steps: int, start: float = 0.01) -> None:
        if steps < 1:
            raise ValueError(f"expected anneal_steps >= 1, got {steps}")
        if not 0 < start <= 1:
            raise ValueError(f"expected an initial beta in (0, 1], got {start}")
        self.objective, self.steps, self.start = objective, steps, start

    def on_start(self, state: TrainingState) -> None:
        self.on_step(state)

    def on_step(self, state: TrainingState) -> None:
        self.objective.beta = min(1.0, self.start + (1 - self.start) * state.step / self.steps)

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        record["beta"] = self.objective.beta


class ProgressBar(Hook):
    """A tqdm bar of the steps, with the latest training and validation loss."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_start(self, state: TrainingState) -> None:
        self.bar = tqdm(
            total=state.total, initial=state.step, disable=not self.enabled, desc="fit", unit="step"
        )

    def on_step(self, state: TrainingState) -> None:
        self.bar.update(1)

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        shown = {k.removeprefix("train_"): v for k, v in record.items() if k.startswith("train_")}
        shown |= {k: v for k, v in record.items() if k.startswith("val_")}
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})

    def on_end(self, state: TrainingState) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog(Hook):
    """Keeps the records in a :class:`History` and appends them, as JSON lines, to the run's
    ``metrics.jsonl`` and/or the file ``path`` (truncated at the start of a fresh run)."""

    def __init__(
        self, history: History, run: RunFolder | None = None, path: str | Path | None = None
    ) -> None:
        self.history, self.run = history, run
        self.path = None if path is None else Path(path)

    def on_start(self, state: TrainingState) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if state.step == 0:
                self.path.write_text("")
            else:  # resumed: keep the records up to the checkpoint's step only
                kept = [
                    line
                    for line in self.path.read_text().splitlines(keepends=True)
                    if json.loads(line).get("step", 0) <= state.step
                ]
                self.path.write_text("".join(kept))

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        self.history.records.append(record)
        if self.run is not None:
            self.run.log(record)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Checkpointing(Hook):
    """Writes the run's checkpoint every ``every_steps`` steps, every ``every_minutes`` of
    wall time (whichever is due first), at the end, and when training is interrupted.

    The checkpoint holds the weights, the optimizer state and the state of every hook that has
    one, all of the same step, in one file (:meth:`RunFolder.save_checkpoint`).
    """

    def __init__(
        self,
        run: RunFolder,
        hooks: list[Hook],
        metadata: dict[str, Any],
        every_steps: int | None = None,
        every_minutes: float | None = 10.0,
    ) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"expected checkpoint_every >= 1 steps, got {every_steps}")
        if every_minutes is not None and not every_minutes > 0:
            raise ValueError(f"expected checkpoint_minutes > 0, got {every_minutes}")
        self.run, self.hooks, self.metadata = run, hooks, metadata
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last = time.monotonic()

    def on_start(self, state: TrainingState) -> None:
        self.last = time.monotonic()

    def on_step(self, state: TrainingState) -> None:
        due_steps = self.every_steps is not None and state.step % self.every_steps == 0
        due_time = (
            self.every_minutes is not None
            and time.monotonic() - self.last >= 60 * self.every_minutes
        )
        if due_steps or due_time:
            self.save(state)

    def on_end(self, state: TrainingState) -> None:
        if self.run.checkpoint_step != state.step:
            self.save(state)

    def save(self, state: TrainingState) -> None:
        """Write the checkpoint of ``state.step`` now (rank 0 only)."""
        if not self.run.main:
            return
        training = {
            "optimizer": state.optimizer.state_dict(),
            "hooks": {h.name: h.state_dict() for h in self.hooks if h.name is not None},
        }
        self.run.save_checkpoint(state.flow, state.step, training, self.metadata)
        self.last = time.monotonic()


class EarlyStopping(Hook):
    """Stops when the validation loss has not improved for ``patience`` log intervals, and
    restores the weights of the best validation loss at the end (early stopping, e.g.
    Prechelt, "Early Stopping — But When?", 1998).

    With a ``schedule`` and ``cooldown_steps``, a plateau reached while the learning rate is
    still above ``min_factor`` times its initial value does not stop training at once: the
    rate is first annealed to 0 over ``cooldown_steps`` (:meth:`LearningRateSchedule.cool_down`),
    then training stops, keeping the best weights seen, those of the annealed steps included.
    The weights of a plateau at a high rate are a noisy iterate: NSF on the banana, 3000 steps
    of a cosine schedule, stopped at step 1700 with the weights of step 700 (KL 0.0074) where
    all 3000 steps gave 0.0039 (``benchmarks/RESULTS.md``).

    Arguments:
        patience: log intervals without improvement before stopping (>= 1).
        key: the record key to minimize (``val_nll`` for maximum likelihood).
        min_delta: the smallest decrease that counts as an improvement (>= 0).
        schedule: the run's learning-rate schedule, annealed at a plateau (``None``: stop at
            once).
        cooldown_steps: steps of that annealing (>= 1; with ``schedule``).
        min_factor: below this fraction of the initial rate a plateau stops at once.
    """

    name = "early_stopping"

    def __init__(
        self,
        patience: int,
        key: str = "val_nll",
        min_delta: float = 0.0,
        schedule: LearningRateSchedule | None = None,
        cooldown_steps: int = 0,
        min_factor: float = 0.1,
    ) -> None:
        if patience < 1:
            raise ValueError(f"expected patience >= 1 log intervals, got {patience}")
        if not min_delta >= 0:
            raise ValueError(f"expected min_delta >= 0, got {min_delta}")
        if schedule is not None and cooldown_steps < 1:
            raise ValueError(f"expected cooldown_steps >= 1 with a schedule, got {cooldown_steps}")
        self.patience, self.key, self.min_delta = patience, key, min_delta
        self.schedule, self.cooldown_steps, self.min_factor = schedule, cooldown_steps, min_factor
        self.best, self.best_step, self.wait = math.inf, 0, 0
        self.plateau_step: int | None = None  # where the annealing started
        self.best_weights: dict[str, Tensor] | None = None

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        if self.key not in record:
            raise ValueError(f"early stopping needs {self.key!r} in the records: validation data")
        value = record[self.key]
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.wait = value, state.step, 0
            self.best_weights = {k: v.detach().clone() for k, v in state.flow.state_dict().items()}
        else:
            self.wait += 1
        if self.plateau_step is not None:
            if state.step >= self.plateau_step + self.cooldown_steps:
                state.stop = (
                    f"early stopping at step {state.step}: {self.key} did not improve for "
                    f"{self.patience} log intervals to step {self.plateau_step}, then the "
                    f"learning rate was annealed to 0; best {self.best:.6g} (step {self.best_step})"
                )
            return
        if self.wait < self.patience:
            return
        schedule = self.schedule
        if schedule is not None and schedule.factor(state.step, state.total) > self.min_factor:
            self.plateau_step = state.step
            schedule.cool_down(state, min(self.cooldown_steps, state.total - state.step))
            return
        state.stop = (
            f"early stopping at step {state.step}: {self.key} did not improve on "
            f"{self.best:.6g} (step {self.best_step}) for {self.patience} log intervals"
        )

    def on_end(self, state: TrainingState) -> None:
        if state.stop is not None and state.stop.startswith("interrupted"):
            return  # an interrupted run resumes from where it was, not from its best
        if self.best_weights is not None:
            state.flow.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "wait": self.wait,
            "plateau_step": self.plateau_step,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]
        self.plateau_step = state.get("plateau_step")
        self.best_weights = state["best_weights"]


class OverfittingWarning(UserWarning):
    """The validation NLL has risen far above the training NLL: the flow is memorizing its
    training points (see :class:`OverfittingCheck`)."""


class OverfittingCheck(Hook):
    r"""Warns once (an :class:`OverfittingWarning`) when the validation NLL exceeds the
    training NLL by a wide margin, at any log interval:

    .. math:: \mathrm{val} - \mathrm{train} > 0.25\, D + 3\, \mathrm{se}(\mathrm{val}),

    ``D`` the number of dimensions of a point and :math:`\mathrm{se}` the standard error of
    the validation mean from the spread of the bulk of the per-point NLLs (their winsorized
    standard deviation, :func:`~torchnf.functional.statistics.robust_center_scale`, over
    :math:`\sqrt{n}`; computed only when the gap exceeds ``0.25 D``): a memorizing flow gives
    a few held-out points hundreds of nats, which would inflate a plain standard error and
    hide the very failure this looks for. A flow that fits well has a gap near 0 (the
    interval's training mean, taken while the weights still improve, is if anything above the
    validation NLL); one that memorizes a small training set has a gap of nats per dimension
    (``benchmarks/small_data.py``). The standard error keeps a small validation set's noise
    from firing it.

    Arguments:
        source: the data source whose validation batches were scored.
        event_size: ``D``, the number of values in one point.
        early_stopping: whether early stopping is on (the message then says that the best
            validation weights are kept, instead of proposing it).
    """

    def __init__(self, source: DataSource, event_size: int, early_stopping: bool) -> None:
        self.source, self.event_size, self.early_stopping = source, event_size, early_stopping
        self.warned = False

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        if self.warned or "val_nll" not in record:
            return
        gap = record["val_nll"] - record["train_nll"]
        margin = 0.25 * self.event_size
        if not gap > margin:
            return
        margin += 3 * self._stderr(state.flow)
        if gap > margin:
            self.warned = True
            warnings.warn(
                f"the validation NLL ({record['val_nll']:.4g}) exceeds the training NLL "
                f"({record['train_nll']:.4g}) by {gap:.4g} nats at step {state.step} (more "
                f"than 0.25 D + 3 s.e. = {margin:.4g}): the flow is overfitting its training "
                + (
                    "points (early stopping keeps the best validation weights); more data, a "
                    "smaller model or weight decay would help"
                    if self.early_stopping
                    else "points; use early stopping (patience), more data, a smaller model "
                    "or weight decay"
                ),
                OverfittingWarning,
                stacklevel=2,
            )

    @torch.no_grad()
    def _stderr(self, flow: Flow) -> float:
        """The standard error of the mean validation NLL, from the bulk's spread."""
        training = flow.training
        flow.eval()
        nll = torch.cat([-flow.log_prob(b.x, b.context).double() for b in self.source.validation()])
        flow.train(training)
        if len(nll) < 2:
            return math.inf
        return float(robust_center_scale(nll[:, None])[1][0]) / math.sqrt(len(nll))
