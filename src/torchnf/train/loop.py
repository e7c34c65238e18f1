"""The training loop, and ``fit(flow, data, ...)``, the one-call facade over its parts.

:func:`train` is the loop: it knows no job, only an objective (``objective(flow, batch)``,
:mod:`torchnf.train.objectives`), a data source (:mod:`torchnf.train.sources`), an optimizer
and hooks (:mod:`torchnf.train.hooks`: progress, metrics, checkpoints in a run folder, the
learning-rate schedule, early stopping). :func:`fit` assembles them from keyword arguments.

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
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
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
    EarlyStopping,
    History,
    Hook,
    LearningRateSchedule,
    MetricsLog,
    ProgressBar,
    TrainingState,
)
from torchnf.train.objectives import NLL, Batch, Objective
from torchnf.train.run import METRICS, RunFolder
from torchnf.train.sources import DataSource, make_source

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
    device = _device_of(flow)
    world = distributed.world_size()
    module: nn.Module = _ObjectiveModule(flow, objective)
    if world > 1:
        module = DistributedDataParallel(module, device_ids=_device_ids(device))
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
    """Mean of ``objective`` over ``source``'s validation batches (weighted by their sizes),
    without gradients, in eval mode."""
    flow.eval()
    total, n = 0.0, 0
    for batch in source.validation():
        total += float(objective(flow, batch).double()) * len(batch.x)
        n += len(batch.x)
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


def fit(
    flow: Flow,
    data: Any,
    context: Tensor | np.ndarray | None = None,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: Literal["cosine", "constant"] = "cosine",
    clip_grad: float | None = 5.0,
    val_fraction: float = 0.1,
    val_data: Any = None,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = True,
    log_path: str | Path | None = None,
    run: RunFolder | str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float | None = 10.0,
    resume: bool = False,
    overwrite: bool = False,
    patience: int | None = None,
    initialize: bool = True,
    hooks: Sequence[Hook] = (),
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    compile: bool | str = False,
    conditioner_dtype: torch.dtype | None = None,
) -> History:
    r"""Fit ``flow`` to ``data`` by maximum likelihood (minimizing :func:`~torchnf.nll`).

    Adam with gradient-norm clipping, an optional cosine learning-rate decay, a seeded
    validation split whose NLL is reported at each log interval, optional early stopping, a
    tqdm progress bar (loss and speed), a JSON-lines metrics log and checkpoints in a run
    folder (:class:`~torchnf.train.run.RunFolder`: never overwritten silently, resumed only
    with the same model and data). Before the first step, ``flow.initialize`` runs once on the
    first batch (data-dependent initialization, e.g. ActNorm), unless ``initialize=False``,
    the flow is already initialized or the run resumes. Data are checked (shape, dtype,
    finiteness) where they enter and cast to the flow's dtype (a documented cast: float64 data
    train a float32 flow in float32); in-memory data are moved to the device once, and the loop
    reads values back to the host only at log intervals.

    Under ``torchrun`` (a process group is initialized), the objective is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel`: each rank computes the gradient on
    its slice of the global batch ``batch_size`` (reading only that slice) and the gradients
    (the base distribution's included) are averaged; only rank 0 shows progress and writes.

    Arguments:
        flow: the model, trained in place.
        data: ``(N, *flow.event_shape)`` floating-point points: a tensor or NumPy array, a
            ``np.memmap`` or the path of a ``.npy`` file (memory-mapped: each step reads only
            its rows, so the file may be larger than memory), a map-style
            :class:`~torch.utils.data.Dataset` of points or ``(point, context)`` pairs, or a
            :class:`~torch.utils.data.DataLoader` (its order and batches are then the user's).
        context: ``(N, context_size)`` conditioning values for a conditional flow.
        steps: number of optimizer steps (default 1000 when ``epochs`` is not given).
        epochs: number of passes over the training split instead of ``steps``.
        batch_size: global batch size (split over the ranks when distributed).
        lr: Adam learning rate (>= 0).
        weight_decay: Adam weight decay (>= 0).
        lr_schedule: ``"cosine"`` decays the rate to 0 over the run; ``"constant"`` keeps it.
        clip_grad: maximum gradient 2-norm, > 0 (``None`` to disable clipping).
        val_fraction: fraction of the points held out for validation (0 for none).
        val_data: a validation ``DataLoader`` when ``data`` is a ``DataLoader``.
        seed: seed of the split and the batch order.
        log_every: steps between log records (and progress-bar updates of the loss).
        progress: show a progress bar.
        log_path: also write the records as JSON lines there.
        run: the run folder (a :class:`~torchnf.train.run.RunFolder`, or its path) that holds
            ``config.json``, the checkpoint and ``metrics.jsonl``.
        checkpoint_dir: the run folder's path (the older name of ``run``).
        checkpoint_every: steps between checkpoints.
        checkpoint_minutes: minutes between checkpoints (``None``: by steps only). A
            checkpoint is also written at the end and on SIGINT/SIGTERM.
        resume: continue the run in the run folder from its checkpoint (same model, config,
            dtype and data, or ``ValueError``).
        overwrite: replace the run in the run folder once this one completes.
        patience: stop when the validation loss has not improved for this many log
            intervals, and restore the best validation weights at the end (``None``: train
            all steps, keep the last weights).
        initialize: run ``flow.initialize`` on the first batch before training (when not
            initialized yet); ``False`` keeps the flow's current parameters.
        hooks: more :class:`~torchnf.train.hooks.Hook` objects, called after the built-in ones.
        device: where to train (default: where the flow's parameters are).
        metadata: extra JSON-serializable values stored in the run's ``config.json``.
        compile: run the objective (the NLL, its forward and backward) through
            :func:`torch.compile`: ``True`` (or ``"default"``) fuses kernels;
            ``"reduce-overhead"`` also replays the forward and backward as CUDA graphs on a
            GPU, which removes the kernel-launch overhead that bounds small flows there (on a
            CPU it is the same as ``True``); ``"max-autotune"`` adds kernel autotuning. The
            first step compiles (tens of seconds on a CPU), later steps run the fused code.
            The results equal eager mode up to float rounding.
        conditioner_dtype: ``torch.bfloat16`` or ``torch.float16`` to train with the
            conditioner networks in that precision (mixed precision where it stays exact:
            the flow remains a bijection with an exact log-det in the data's dtype, see
            :mod:`torchnf.nets.precision`); the validation NLL and the returned flow use the
            data's dtype. ``None`` (default) keeps the data's dtype.

    Returns:
        The :class:`~torchnf.train.hooks.History` of log records.

    Raises:
        ValueError: for bad data or options, in one line naming what was expected.
        Interrupted: on SIGINT or SIGTERM, after the checkpoint of the last full step.

    Example:
        >>> from torchnf import Flow
        >>> from torchnf.distributions.base import DiagonalNormal
        >>> from torchnf.layers import Reverse
        >>> flow = Flow(Reverse(2), DiagonalNormal(2))
        >>> x = 3.0 + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
        >>> history = fit(flow, x, steps=300, lr=0.05, progress=False)
        >>> exact = 2 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.5))  # 1.45 nats
        >>> abs(history["val_nll"][-1] - exact) < 0.1
        True
    """
    _check_options(log_every, lr, weight_decay, clip_grad, patience)
    world, rank = distributed.world_size(), distributed.rank()
    device = torch.device(device) if device is not None else _device_of(flow)
    flow.to(device)
    dtype = _dtype_of(flow)
    if conditioner_dtype is not None and dtype != torch.float32:
        raise ValueError(
            f"conditioner_dtype={conditioner_dtype} needs a float32 flow (autocast leaves "
            f"{dtype} alone), got a {dtype} one"
        )
    source = make_source(
        data,
        context,
        val_data=val_data,
        event_shape=tuple(flow.event_shape),
        context_size=flow.context_size,
        batch_size=batch_size,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        dtype=dtype,
        rank=rank,
        world=world,
    )
    total = _total_steps(steps, epochs, source.steps_per_epoch)
    compile_mode = _compile_mode(compile)
    schedule = LearningRateSchedule(lr_schedule)
    folder = _run_folder(run, checkpoint_dir, resume, overwrite, rank == 0)
    optimizer = torch.optim.Adam(
        flow.parameters(), lr=lr, weight_decay=weight_decay, fused=_fused_supported(flow)
    )
    history = History()
    if log_path is not None and folder is not None:
        log_path = (
            None if Path(log_path).resolve() == (folder.path / METRICS).resolve() else log_path
        )
    parts: list[Hook] = [schedule]
    if patience is not None:
        parts.append(EarlyStopping(patience, key=f"val_{NLL.name}"))
        if not source.has_validation:
            raise ValueError("patience needs validation data: val_fraction > 0 (or val_data)")
    parts += [MetricsLog(history, folder, log_path), ProgressBar(progress and rank == 0), *hooks]
    owns_folder = folder is not None and not isinstance(run, RunFolder)
    try:
        start = 0
        if folder is not None:
            fingerprint = source.fingerprint()
            start = folder.start(flow, {**(metadata or {}), "data_fingerprint": fingerprint})
            checkpointing = Checkpointing(
                folder,
                parts,
                metadata={**(metadata or {}), "data_fingerprint": fingerprint},
                every_steps=checkpoint_every,
                every_minutes=checkpoint_minutes,
            )
            _restore(folder, optimizer, parts)
            parts.append(checkpointing)
        if start == 0 and initialize and _needs_initialize(flow):
            flow.initialize(*source.first_batch())
        state = train(
            flow,
            NLL,
            source,
            optimizer,
            parts,
            start=start,
            total=total,
            log_every=log_every,
            clip_grad=clip_grad,
            compile_mode=compile_mode,
            conditioner_dtype=conditioner_dtype,
        )
    except BaseException:
        if owns_folder:
            folder.abandon()
        raise
    if owns_folder:
        folder.commit()
    history.stopped = state.stop
    return history


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


def _run_folder(
    run: RunFolder | str | Path | None,
    checkpoint_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    main: bool,
) -> RunFolder | None:
    if run is not None and checkpoint_dir is not None:
        raise ValueError("expected run or checkpoint_dir, got both")
    if isinstance(run, RunFolder):
        if resume or overwrite:
            raise ValueError("give resume/overwrite to the RunFolder, not to fit")
        return run
    path = run if run is not None else checkpoint_dir
    if path is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_dir (the run folder)")
        if overwrite:
            raise ValueError("overwrite=True needs a checkpoint_dir (the run folder)")
        return None
    return RunFolder(path, resume=resume, overwrite=overwrite, main=main)


def _restore(folder: RunFolder, optimizer: torch.optim.Optimizer, hooks: list[Hook]) -> None:
    """Load the optimizer's and the hooks' state from a resumed run's checkpoint."""
    state = folder.training_state()
    if state is None:
        return
    optimizer.load_state_dict(state["optimizer"])
    for hook in hooks:
        if hook.name is not None and hook.name in state.get("hooks", {}):
            hook.load_state_dict(state["hooks"][hook.name])


def _check_options(
    log_every: int, lr: float, weight_decay: float, clip_grad: float | None, patience: int | None
) -> None:
    if log_every < 1:
        raise ValueError(f"expected log_every >= 1, got {log_every}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"expected a finite lr >= 0, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"expected a finite weight_decay >= 0, got {weight_decay}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"expected clip_grad > 0 (or None for no clipping), got {clip_grad}")
    if patience is not None and patience < 1:
        raise ValueError(f"expected patience >= 1 log intervals, got {patience}")


def _total_steps(steps: int | None, epochs: int | None, steps_per_epoch: int) -> int:
    if steps is not None and epochs is not None:
        raise ValueError("expected either steps or epochs, got both")
    total = steps if steps is not None else (epochs * steps_per_epoch if epochs else 1000)
    if total < 1:
        raise ValueError(f"expected a positive number of steps, got {total}")
    return total


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(tensor):
            return tensor.dtype
    return torch.get_default_dtype()


def uses_cuda_graphs(mode: str | None, device: torch.device) -> bool:
    """Whether :func:`torch.compile` in ``mode`` replays CUDA graphs on ``device`` (then each
    training step must call :func:`torch.compiler.cudagraph_mark_step_begin` first)."""
    return mode in ("reduce-overhead", "max-autotune") and device.type == "cuda"


def _compile_mode(compile: bool | str) -> str | None:
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


def _fused_supported(module: nn.Module) -> bool | None:
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


def _needs_initialize(flow: Flow) -> bool:
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
