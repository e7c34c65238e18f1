"""Maximum-likelihood training loop: ``fit(flow, data, ...)``.

One process, or one of several under ``torchrun`` (DistributedDataParallel): every rank draws
the same seeded global batch and takes its own slice of it, so N processes with a global batch
B follow the same trajectory as one process with batch B (up to float rounding of the mean).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from torchnf.core.bijector import Bijector
from torchnf.core.flow import Flow
from torchnf.data.loaders import check_data
from torchnf.nets.precision import conditioner_precision
from torchnf.train import distributed
from torchnf.train.checkpoint import load, load_training_state, save, save_training_state
from torchnf.train.losses import nll

#: The modes of :func:`torch.compile` that ``fit(compile=...)`` accepts.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class History:
    """What ``fit`` logged: one record (a dict, as in the JSON-lines log) per log interval.

    Records hold ``step``, ``epoch``, ``train_nll`` (mean over the interval), ``val_nll``
    (when there is a validation split), ``lr``, ``grad_norm`` (before clipping, last step of
    the interval), ``steps_per_s`` and ``time`` (seconds since the start).
    ``history["val_nll"]`` lists one key over the records that have it.
    """

    records: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)


class _Objective(nn.Module):
    """The mean NLL as a module, so DDP sees (and synchronizes) every parameter of the flow,
    the base distribution's included."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        return nll(self.flow, x, context)


def fit(
    flow: Flow,
    data: Tensor | np.ndarray,
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
    seed: int = 0,
    log_every: int = 100,
    progress: bool = True,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    compile: bool | str = False,
    conditioner_dtype: torch.dtype | None = None,
) -> History:
    r"""Fit ``flow`` to ``data`` by maximum likelihood (minimizing :func:`~torchnf.nll`).

    Adam with gradient-norm clipping, an optional cosine learning-rate decay, a seeded
    validation split whose NLL is reported at each log interval, a tqdm progress bar (loss and
    speed), a JSON-lines metrics log and atomic checkpoints. Before the first step,
    ``flow.initialize`` runs once on the first batch (data-dependent initialization, e.g.
    ActNorm), unless the flow is already initialized or the run resumes from a checkpoint.
    The data are checked (shape, dtype, finiteness) and moved to the device once; the loop
    itself reads values back to the host only at log intervals.

    Under ``torchrun`` (a process group is initialized), the objective is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel`: each rank computes the gradient on
    its slice of the global batch ``batch_size`` and the gradients (the base distribution's
    included) are averaged; only rank 0 shows progress, logs and writes checkpoints.

    Arguments:
        flow: the model, trained in place.
        data: ``(N, *flow.event_shape)`` floating-point points.
        context: ``(N, context_size)`` conditioning values for a conditional flow.
        steps: number of optimizer steps (default 1000 when ``epochs`` is not given).
        epochs: number of passes over the training split instead of ``steps``.
        batch_size: global batch size (split over the ranks when distributed).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_schedule: ``"cosine"`` decays the rate to 0 over the run; ``"constant"`` keeps it.
        clip_grad: maximum gradient 2-norm (``None`` to disable clipping).
        val_fraction: fraction of the points held out for validation (0 for none).
        seed: seed of the split and the batch order.
        log_every: steps between log records (and progress-bar updates of the loss).
        progress: show a progress bar.
        log_path: write the records as JSON lines there.
        checkpoint_dir: write a checkpoint (:func:`~torchnf.save`) there every
            ``checkpoint_every`` steps and at the end, with the optimizer state to resume.
        checkpoint_every: steps between checkpoints (default: only at the end).
        resume: continue from the checkpoint in ``checkpoint_dir`` if it has a training state.
        device: where to train (default: where the flow's parameters are).
        metadata: extra JSON-serializable values stored in the checkpoint's config.
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
            data's dtype. Faster where the hardware has fast low-precision matrix units
            (GPU tensor cores); ``None`` (default) keeps the data's dtype.

    Returns:
        The :class:`History` of log records.

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
    steps_per_epoch, n_val = _sizes(data, batch_size, val_fraction)
    total = _total_steps(steps, epochs, steps_per_epoch)
    if log_every < 1:
        raise ValueError(f"expected log_every >= 1, got {log_every}")
    world, rank = distributed.world_size(), distributed.rank()
    if batch_size % world:
        raise ValueError(
            f"expected a batch_size divisible by the {world} processes, got {batch_size}"
        )
    device = torch.device(device) if device is not None else _device_of(flow)
    flow.to(device)
    dtype = _dtype_of(flow)
    x = _as_tensor(data, flow.event_shape, "data").to(device, dtype)
    c = None
    if flow.context_size:
        if context is None:
            raise ValueError(
                f"the flow is conditional: expected a context of shape (N, {flow.context_size})"
            )
        c = _as_tensor(context, (flow.context_size,), "context").to(device, dtype)
        if len(c) != len(x):
            raise ValueError(f"expected {len(x)} context rows to match the data, got {len(c)}")

    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(device)
    x_val, x_train = x[split[:n_val]], x[split[n_val:]]
    c_val, c_train = (None, None) if c is None else (c[split[:n_val]], c[split[n_val:]])
    batches = _Batches(len(x_train), batch_size, steps_per_epoch, seed, device, rank, world)

    if conditioner_dtype is not None and dtype != torch.float32:
        raise ValueError(
            f"conditioner_dtype={conditioner_dtype} needs a float32 flow (autocast leaves "
            f"{dtype} alone), got a {dtype} one"
        )
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"expected lr_schedule 'cosine' or 'constant', got {lr_schedule!r}")
    optimizer = torch.optim.Adam(
        flow.parameters(), lr=lr, weight_decay=weight_decay, fused=_fused_supported(flow)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        if lr_schedule == "cosine"
        else (lambda s: 1.0),
    )
    start = _resume(flow, optimizer, scheduler, checkpoint_dir) if resume else 0
    if start == 0 and _needs_initialize(flow):
        first = batches.global_indices(0)
        flow.initialize(x_train[first], None if c_train is None else c_train[first])

    objective: nn.Module = _Objective(flow)
    if world > 1:
        objective = DistributedDataParallel(objective, device_ids=_device_ids(device))
    mode = _compile_mode(compile)
    if mode is not None:
        objective = torch.compile(objective, mode=mode)
    # CUDA-graph replays reuse their output buffers: each step is marked as a new one.
    graphs = uses_cuda_graphs(mode, device)
    main = rank == 0
    log = _open_log(log_path, append=start > 0) if main else None
    history = History()
    bar = _progress_bar(total, start, progress and main)
    loss_sum, count = x.new_zeros(()), 0
    tic, last_tic, last_step = time.perf_counter(), time.perf_counter(), start
    flow.train()
    try:
        with conditioner_precision(flow, conditioner_dtype):
            for step in range(start, total):
                index = batches.local_indices(step)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = objective(x_train[index], None if c_train is None else c_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(
                    flow.parameters(), clip_grad if clip_grad is not None else math.inf
                )
                optimizer.step()
                scheduler.step()
                loss_sum, count = loss_sum + loss.detach(), count + 1
                bar.update(1)
                done = step + 1
                if done % log_every and done != total:
                    continue
                train_nll = _mean_over_ranks(loss_sum / count)  # the one host sync per interval
                now = time.perf_counter()
                record = {
                    "step": done,
                    "epoch": round(done / steps_per_epoch, 3),
                    "train_nll": train_nll,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "steps_per_s": (done - last_step) / max(now - last_tic, 1e-9),
                    "time": now - tic,
                }
                last_tic, last_step, loss_sum, count = now, done, loss_sum.zero_(), 0
                if not math.isfinite(train_nll):
                    raise ValueError(
                        f"training diverged at step {done}: the NLL is {train_nll}; "
                        "try a lower lr or a smaller clip_grad"
                    )
                if main:
                    if n_val:
                        with conditioner_precision(flow, None):
                            record["val_nll"] = evaluate_nll(flow, x_val, c_val)
                        flow.train()
                    history.records.append(record)
                    bar.set_postfix(_postfix(record))
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if checkpoint_dir is not None and (
                        done == total or (checkpoint_every and done % checkpoint_every == 0)
                    ):
                        meta = {**(metadata or {}), "step": done, **_last_metrics(record)}
                        save(flow, checkpoint_dir, **meta)
                        save_training_state(
                            checkpoint_dir,
                            {
                                "step": done,
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                            },
                        )
    finally:
        bar.close()
        if log is not None:
            log.close()
    flow.eval()
    return history


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


class _Batches:
    """Seeded batch order: a fresh permutation of the training split each epoch; step ``s``
    takes global batch ``s mod steps_per_epoch`` of it, and rank ``r`` its ``r``-th slice."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        device: torch.device,
        rank: int,
        world: int,
    ) -> None:
        self.n, self.batch_size, self.steps_per_epoch = n, batch_size, steps_per_epoch
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        self.epoch, self.perm = -1, None

    def global_indices(self, step: int) -> Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            # Drawn on the CPU (the same order on every device), copied without a host sync.
            perm = torch.randperm(self.n, generator=g)
            if self.device.type == "cuda":
                perm = perm.pin_memory()
            self.perm = perm.to(self.device, non_blocking=True)
            self.epoch = epoch
        return self.perm[k * self.batch_size : (k + 1) * self.batch_size]

    def local_indices(self, step: int) -> Tensor:
        local = self.batch_size // self.world
        return self.global_indices(step)[self.rank * local : (self.rank + 1) * local]


def _sizes(data: Any, batch_size: int, val_fraction: float) -> tuple[int, int]:
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"expected 0 <= val_fraction < 1, got {val_fraction}")
    n = len(data) if hasattr(data, "__len__") and getattr(data, "ndim", 1) > 0 else 0
    n_val = math.ceil(n * val_fraction) if val_fraction else 0
    if n - n_val < batch_size:
        raise ValueError(
            f"expected at least batch_size={batch_size} training points, got {n - n_val} "
            f"({n} points, {n_val} held out for validation)"
        )
    return (n - n_val) // batch_size, n_val


def _total_steps(steps: int | None, epochs: int | None, steps_per_epoch: int) -> int:
    if steps is not None and epochs is not None:
        raise ValueError("expected either steps or epochs, got both")
    total = steps if steps is not None else (epochs * steps_per_epoch if epochs else 1000)
    if total < 1:
        raise ValueError(f"expected a positive number of steps, got {total}")
    return total


def _as_tensor(data: Any, event_shape: tuple[int, ...], name: str) -> Tensor:
    if isinstance(data, np.ndarray):
        if data.dtype.kind != "f":
            raise ValueError(f"expected floating-point {name}, got dtype {data.dtype}")
        data = torch.from_numpy(data)
    return check_data(data, event_shape, name)


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


def _resume(flow: Flow, optimizer, scheduler, checkpoint_dir: str | Path | None) -> int:
    if checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    state = load_training_state(checkpoint_dir)
    if state is None:
        return 0
    device = _device_of(flow)
    load(checkpoint_dir, model=flow, device=device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _mean_over_ranks(value: Tensor) -> float:
    if distributed.is_distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= distributed.world_size()
    return float(value)


def _open_log(path: str | Path | None, append: bool):
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a" if append else "w")


def _progress_bar(total: int, start: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=start, disable=not enabled, desc="fit", unit="step")


def _postfix(record: dict[str, float]) -> dict[str, str]:
    out = {"nll": f"{record['train_nll']:.4f}"}
    if "val_nll" in record:
        out["val"] = f"{record['val_nll']:.4f}"
    return out


def _last_metrics(record: dict[str, float]) -> dict[str, float]:
    return {k: record[k] for k in ("train_nll", "val_nll") if k in record}
