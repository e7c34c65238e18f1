"""The training loop, which :func:`torchnf.fit` (:mod:`torchnf.train.fit`) runs.

:func:`train` is the loop: it knows no job, only an objective (``objective(flow, batch)``,
:mod:`torchnf.train.objectives`), a data source (:mod:`torchnf.train.sources`), an optimizer
and hooks (:mod:`torchnf.train.hooks`: progress, metrics, checkpoints in a run folder, the
learning-rate schedule, early stopping). ``fit`` assembles them from keyword arguments.

One process, or one of several under ``torchrun`` (DistributedDataParallel): every rank draws
the same seeded global batch and takes its own slice of it, so N processes with a global batch
B follow the same trajectory as one process with batch B (up to float rounding of the mean).

SIGINT (Ctrl-C) and SIGTERM (a preempted cluster job) stop training at the next step
boundary (under ``torchrun``: the next log interval, where the ranks agree): the checkpoint of
that step is written and :class:`Interrupted` is raised. A second signal acts at once.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from torchnf.core.bijector import Bijector
from torchnf.core.flow import Flow
from torchnf.nets.precision import conditioner_precision
from torchnf.train import distributed
from torchnf.train.hooks import (
    Checkpointing,
    Hook,
    ProgressBar,
    TrainingState,
)
from torchnf.train.objectives import Batch, Objective
from torchnf.train.run import RunFolder
from torchnf.train.sources import DataSource

#: The modes of :func:`torch.compile` that ``fit(compile=...)`` accepts.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM, after writing the checkpoint of ``step`` (when
    it has a run folder)."""

    def __init__(self, signal_number: int, step: int, run: RunFolder | None) -> None:
        self.signal_number, self.step, self.run = signal_number, step, run
        where = f"; checkpoint of step {step} in {run.dir}" if run is not None else ""
        super().__init__(
            f"interrupted by {signal.Signals(signal_number).name} at step {step}{where}"
        )


class _ObjectiveModule(nn.Module):
    """The objective over the flow as a module, so DDP sees (and synchronizes) every parameter
    of the flow, the base distribution's included, and ``torch.compile`` compiles it whole."""

    def __init__(self, flow: Flow, objective: Objective) -> None:
        super().__init__()
        self.flow, self.objective = flow, objective

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.objective(self.flow, Batch(x, context))


def train(
    flow: Flow,
    objective: Objective,
    source: DataSource,
    optimizer: torch.optim.Optimizer,
    hooks: Sequence[Hook],
    *,
    start: int,
    total: int,
    log_every: int = 100,
    clip_grad: float | None = 5.0,
    compile_mode: str | None = None,
    conditioner_dtype: torch.dtype | None = None,
) -> TrainingState:
    """Run optimizer steps ``start`` to ``total`` of ``objective`` on ``source``'s batches.

    Each step: the objective on this rank's batch, backward, gradient-norm clipping, the
    optimizer step, then each hook's ``on_step``. Every ``log_every`` steps (and at the last):
    one host sync for the mean training loss over the interval, the validation loss, and a
    record for each hook's ``on_log``. Hooks may stop training early; SIGINT/SIGTERM stop it
    at a step boundary (:class:`Interrupted` is raised after the hooks' ``on_end``).

    Returns:
        The final :class:`~torchnf.train.hooks.TrainingState`.
    """
    device = device_of(flow)
    world = distributed.world_size()
    module: nn.Module = _ObjectiveModule(flow, objective)
    if world > 1:
        # An objective that leaves some parameters without a gradient (flow matching trains
        # the vector field only) says so, or DDP would wait for their gradients forever.
        unused = bool(getattr(objective, "find_unused_parameters", False))
        module = DistributedDataParallel(
            module, device_ids=_device_ids(device), find_unused_parameters=unused
        )
    if compile_mode is not None:
        module = torch.compile(module, mode=compile_mode)
    # CUDA-graph replays reuse their output buffers: each step is marked as a new one.
    graphs = uses_cuda_graphs(compile_mode, device)
    max_norm = clip_grad if clip_grad is not None else math.inf
    state = TrainingState(flow, optimizer, start, total)
    for hook in hooks:
        hook.on_start(state)
    loss_sum, count = torch.zeros((), device=device), 0
    tic = last_tic = time.perf_counter()
    last_step, received = start, None
    flow.train()
    try:
        with conditioner_precision(flow, conditioner_dtype), _Signals() as signals:
            for step in range(start, total):
                batch = source.batch(step)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = module(*batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(flow.parameters(), max_norm)
                optimizer.step()
                state.step = done = step + 1
                loss_sum, count = loss_sum + loss.detach(), count + 1
                for hook in hooks:
                    hook.on_step(state)
                received = signals.received if world == 1 else None
                if done % log_every and done != total and received is None:
                    continue
                # The one host sync per interval (where the ranks also agree on signals).
                train_loss, received = _reduce(loss_sum / count, signals.received)
                now = time.perf_counter()
                record = {
                    "step": done,
                    "epoch": round(done / source.steps_per_epoch, 3),
                    f"train_{objective.name}": train_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
                    "steps_per_s": (done - last_step) / max(now - last_tic, 1e-9),
                    "time": now - tic,
                }
                last_tic, last_step, loss_sum, count = now, done, loss_sum.zero_(), 0
                if not math.isfinite(train_loss):
                    raise ValueError(
                        f"training diverged at step {done}: the {objective.name} is "
                        f"{train_loss}; try a lower lr or a smaller clip_grad"
                    )
                record.update(getattr(objective, "metrics", dict)())
                if source.has_validation:
                    with conditioner_precision(flow, None):
                        record[f"val_{objective.name}"] = validate(flow, objective, source)
                    flow.train()
                for hook in hooks:
                    hook.on_log(state, record)
                if received is not None:
                    state.stop = f"interrupted by {signal.Signals(received).name}"
                if state.stop is not None:
                    break
    except BaseException:
        for hook in hooks:
            if isinstance(hook, ProgressBar):
                hook.on_end(state)
        raise
    flow.eval()
    for hook in hooks:
        hook.on_end(state)
    if received is not None:
        run = next((h.run for h in hooks if isinstance(h, Checkpointing)), None)
        raise Interrupted(received, state.step, run)
    return state


@torch.no_grad()
def validate(flow: Flow, objective: Objective, source: DataSource) -> float:
    """Mean of ``objective`` over ``source``'s validation batches, weighted by their sizes
    (equally for a sampling objective, whose batches are empty), without gradients, in eval
    mode."""
    flow.eval()
    total, n = 0.0, 0
    for batch in source.validation():
        size = max(len(batch.x), 1)
        total += float(objective(flow, batch).double()) * size
        n += size
    return total / n


@torch.no_grad()
def evaluate_nll(
    flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int = 8192
) -> float:
    """Mean NLL of ``x`` (nats), evaluated in batches without gradients, in eval mode."""
    flow.eval()
    total = x.new_zeros((), dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        part = None if context is None else context[start : start + batch_size]
        total += flow.log_prob(x[start : start + batch_size], part).sum(dtype=torch.float64)
    return -float(total) / len(x)


class _Signals:
    """While active (in the main thread), SIGINT and SIGTERM only set :attr:`received`, so the
    loop can stop at a step boundary; the previous handlers return after the first signal, so
    a second one acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = number
        self._restore()

    def _restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {n: signal.signal(n, self._handle) for n in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


def _reduce(loss: Tensor, received: int | None) -> tuple[float, int | None]:
    """The mean loss over the ranks and the signal any rank received (one collective)."""
    if not distributed.is_distributed():
        return float(loss), received
    values = torch.stack([loss.detach().double(), loss.new_tensor(received or 0).double()])
    dist.all_reduce(values)
    signal_number = int(values[1]) // distributed.world_size() if float(values[1]) else None
    return float(values[0]) / distributed.world_size(), (received or signal_number)


def device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def dtype_of(module: nn.Module) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(tensor):
            return tensor.dtype
    return torch.get_default_dtype()


def uses_cuda_graphs(mode: str | None, device: torch.device) -> bool:
    """Whether :func:`torch.compile` in ``mode`` replays CUDA graphs on ``device`` (then each
    training step must call :func:`torch.compiler.cudagraph_mark_step_begin` first)."""
    return mode in ("reduce-overhead", "max-autotune") and device.type == "cuda"


def compile_mode_of(compile: bool | str) -> str | None:
    """The :func:`torch.compile` mode that ``fit(compile=...)`` asks for (None: eager)."""
    if compile is False:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ValueError(
            f"expected compile to be a bool or one of {COMPILE_MODES}, got {compile!r}"
        )
    return compile


def fused_supported(module: nn.Module) -> bool | None:
    """Whether Adam's fused kernel (one kernel for every parameter) can update ``module``:
    floating-point parameters, all on the CPU or all on one CUDA device. ``None`` lets
    torch pick (its multi-tensor kernels) otherwise."""
    params = list(module.parameters())
    devices = {p.device for p in params}
    ok = (
        params
        and len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(torch.is_floating_point(p) for p in params)
    )
    return True if ok else None


def _device_ids(device: torch.device) -> list[int] | None:
    return [device.index] if device.type == "cuda" and device.index is not None else None


def needs_initialize(flow: Flow) -> bool:
    """Whether some data-dependent layer is not initialized yet.

    A layer is data-dependent when it overrides ``Bijector._initialize``; it reports its state
    through an ``initialized`` attribute (bool or bool tensor). Without one, assume not yet.
    """
    layers = [
        m
        for m in flow.modules()
        if isinstance(m, Bijector) and type(m)._initialize is not Bijector._initialize
    ]
    return any(not bool(getattr(m, "initialized", False)) for m in layers)
