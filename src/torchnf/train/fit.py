"""``fit(flow, data, ...)``: the one-call facade over the training core's parts.

It checks the options, builds the data source (:mod:`torchnf.train.sources`), the optimizer,
the run folder (:mod:`torchnf.train.run`) and the hooks (:mod:`torchnf.train.hooks`), restores
a resumed run, initializes the flow on the first batch, and runs the loop
(:func:`torchnf.train.loop.train`) with the maximum-likelihood objective (or flow matching,
for a continuous flow; or reverse KL, against a target density).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from torchnf.core.flow import Flow
from torchnf.data.loaders import fingerprint
from torchnf.layers.continuous import split_continuous
from torchnf.train import distributed
from torchnf.train.hooks import (
    Annealing,
    Checkpointing,
    EarlyStopping,
    History,
    Hook,
    LearningRateSchedule,
    MetricsLog,
    OverfittingCheck,
    ProgressBar,
)
from torchnf.train.loop import (
    compile_mode_of,
    device_of,
    dtype_of,
    fused_supported,
    needs_initialize,
    train,
)
from torchnf.train.objectives import (
    NLL,
    FlowMatching,
    LogDensity,
    Objective,
    ReverseKL,
    get_objective,
)
from torchnf.train.run import METRICS, RunFolder
from torchnf.train.sources import SampleSource, make_source

#: Log intervals without improvement before ``fit`` stops by default (``patience="auto"``).
AUTO_PATIENCE = 10


def fit(
    flow: Flow,
    data: Any = None,
    context: Tensor | np.ndarray | None = None,
    *,
    objective: str | Objective = "nll",
    target: LogDensity | None = None,
    path_gradient: bool = False,
    anneal_steps: int | None = None,
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
    patience: int | Literal["auto"] | None = "auto",
    dequantize: bool | Sequence[int] | None = None,
    initialize: bool = True,
    hooks: Sequence[Hook] = (),
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    compile: bool | str = False,
    conditioner_dtype: torch.dtype | None = None,
) -> History:
    r"""Fit ``flow`` to ``data`` by maximum likelihood (minimizing :func:`~torchnf.nll`) or, for
    a continuous flow, by flow matching (:func:`~torchnf.flow_matching_loss`), or fit it to an
    unnormalized ``target`` density by reverse KL (:func:`~torchnf.reverse_kl`).

    Adam with gradient-norm clipping, an optional cosine learning-rate decay, a seeded
    validation split whose NLL is reported at each log interval, early stopping (on by default
    with validation data: the best validation weights are kept), an
    :class:`~torchnf.train.hooks.OverfittingWarning` when the validation NLL rises far above
    the training NLL (a small data set memorized), a tqdm progress bar (loss and speed), a
    JSON-lines metrics log and checkpoints in a run folder
    (:class:`~torchnf.train.run.RunFolder`: never overwritten silently, resumed only with the
    same model and data). Before the first step, ``flow.initialize`` runs once on the
    first batch (data-dependent initialization, e.g. ActNorm), unless ``initialize=False``,
    the flow is already initialized or the run resumes. Data are checked (shape, dtype,
    finiteness) where they enter and cast to the flow's dtype (a documented cast: float64 data
    train a float32 flow in float32); in-memory data are moved to the device once, and the loop
    reads values back to the host only at log intervals.

    With ``target``, each step draws ``batch_size`` samples from the flow and minimizes
    :math:`E_q[\log q - \beta \log \tilde p]` (variational inference: no data needed); the
    validation loss is the same estimate on fixed draws, each record has ``ess``, the
    effective sample size of the last batch's importance weights as a fraction of it, and
    ``beta`` when annealing. The draws are seeded by ``seed`` (and the step a run resumes at),
    and the global random state is left as it was.

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
        context: ``(N, *flow.context_shape)`` conditioning values for a conditional flow
            (``(N, context_size)`` for vector contexts; an embedding net's raw contexts
            otherwise, NaN allowed where the net treats it as padding).
        objective: what to minimize on the data: ``"nll"`` (maximum likelihood, reported as
            ``train_nll``/``val_nll``), ``"flow_matching"`` (:func:`~torchnf.flow_matching_loss`
            of a continuous flow such as :class:`~torchnf.models.CNF`: its vector field is
            regressed on straight data-to-noise velocities without solving the ODE; reported
            as ``train_flow_matching`` and ``val_flow_matching``, the loss on the validation
            points with seeded noise and times, the same at every interval), or an
            :class:`~torchnf.train.objectives.Objective` such as
            ``FlowMatching(ot=True)`` (minibatch optimal-transport pairs). Flow matching's draws
            are seeded by ``seed`` (and the step a run resumes at), as reverse KL's are.
        target: instead of data, the log-density to fit by reverse KL: a callable on
            ``(n, *event_shape)`` points returning ``(n,)`` (unnormalized is fine), an object
            with such a ``log_prob`` method, or a ``torch.distributions.Distribution``
            (an unconditional flow; for amortized, conditional VI call
            :func:`~torchnf.reverse_kl` in a loop of your own).
        path_gradient: with ``target``, the path-derivative ("sticking the landing")
            gradient estimator.
        anneal_steps: with ``target``, anneal the inverse temperature on
            :math:`\log \tilde p` linearly from 0.01 to 1 over this many steps.
        steps: number of optimizer steps (default 1000 when ``epochs`` is not given).
        epochs: number of passes over the training split instead of ``steps``.
        batch_size: global batch size (split over the ranks when distributed); with
            ``target``, the samples drawn per step.
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
            intervals, and restore the best validation weights at the end; a plateau
            reached while the learning rate is above a tenth of ``lr`` first anneals the
            rate to 0 over half as many intervals (see
            :class:`~torchnf.train.hooks.EarlyStopping`), then stops. ``"auto"``
            (default): 10 when fitting data by likelihood with validation data, none otherwise
            (flow matching's validation loss stalls while the density still improves);
            ``None``: train all steps, keep the last weights.
        dequantize: the data are integer-valued: add fresh uniform noise in ``[0, 1)`` to
            each batch (seeded by the step; the validation points get fixed noise), so the
            flow fits a density whose NLL upper-bounds the discrete NLL (unit bins, see
            :func:`~torchnf.data.loaders.dequantize_integers`); non-integer data are refused.
            A list of column indices (into the flattened point) dequantizes only those.
            ``None`` (default): the flow's ``dequantize_columns`` if it has them (a
            :class:`~torchnf.models.Dequantized` model, whose ``log_prob`` of such noisy
            points is its ELBO's integrand), else no noise.
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
    device = torch.device(device) if device is not None else device_of(flow)
    flow.to(device)
    dtype = dtype_of(flow)
    if conditioner_dtype is not None and dtype != torch.float32:
        raise ValueError(
            f"conditioner_dtype={conditioner_dtype} needs a float32 flow (autocast leaves "
            f"{dtype} alone), got a {dtype} one"
        )
    if target is not None:
        if objective != "nll":
            raise ValueError(
                "fit(target=...) minimizes the reverse KL; objective is for fitting data, drop it"
            )
        objective, source = _sampling_parts(
            flow,
            target,
            data,
            context,
            val_data,
            dequantize,
            path_gradient,
            batch_size,
            seed,
            device,
            world,
        )
    else:
        if data is None:
            raise ValueError("expected data to fit, or a target log-density: fit(flow, target=...)")
        if path_gradient or anneal_steps is not None:
            raise ValueError("path_gradient and anneal_steps are for fit(flow, target=...)")
        # A named flow matching scores validation on draws seeded by fit's seed.
        objective = FlowMatching(seed=seed) if objective == "flow_matching" else objective
        objective = get_objective(objective)
        if isinstance(objective, FlowMatching):
            split_continuous(flow)  # a flow without a continuous layer is refused here
        _check_not_raw(flow, data)
        source = make_source(
            data,
            context,
            val_data=val_data,
            event_shape=tuple(flow.event_shape),
            context_shape=tuple(flow.context_shape),
            context_padding=bool(getattr(flow.context_encoder, "nan_padding", False)),
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            device=device,
            dtype=dtype,
            rank=rank,
            world=world,
            dequantize=_noise_columns(flow, dequantize),
        )
    total = _total_steps(steps, epochs, source.steps_per_epoch)
    compile_mode = compile_mode_of(compile)
    schedule = LearningRateSchedule(lr_schedule)
    folder = _run_folder(run, checkpoint_dir, resume, overwrite, rank == 0)
    optimizer = torch.optim.Adam(
        flow.parameters(), lr=lr, weight_decay=weight_decay, fused=fused_supported(flow)
    )
    history = History()
    if log_path is not None and folder is not None:
        log_path = (
            None if Path(log_path).resolve() == (folder.path / METRICS).resolve() else log_path
        )
    parts: list[Hook] = [schedule]
    if anneal_steps is not None:
        parts.append(Annealing(objective, anneal_steps))
    if patience == "auto":
        # Not for flow matching: its validation loss, mostly the irreducible spread of the
        # conditional velocities, stalls while the density still improves (moons, 5000 steps:
        # stopped at 2900 with KL 0.073; all 5000 steps, 0.054).
        fitting_data = target is None and not isinstance(objective, FlowMatching)
        patience = AUTO_PATIENCE if source.has_validation and fitting_data else None
    if patience is not None:
        # At a plateau the rate is annealed over half the patience, then training stops.
        cooldown = max(1, patience // 2) * log_every
        parts.append(
            EarlyStopping(
                patience, f"val_{objective.name}", schedule=schedule, cooldown_steps=cooldown
            )
        )
        if not source.has_validation:
            raise ValueError("patience needs validation data: val_fraction > 0 (or val_data)")
    if objective.name == "nll" and source.has_validation and rank == 0:
        parts.append(OverfittingCheck(source, math.prod(flow.event_shape), patience is not None))
    parts += [MetricsLog(history, folder, log_path), ProgressBar(progress and rank == 0), *hooks]
    owns_folder = folder is not None and not isinstance(run, RunFolder)
    if objective is not NLL and target is None:  # recorded, so a resume must use the same
        metadata = {**(metadata or {}), "objective": objective.name}
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
        if start == 0 and initialize and target is None and needs_initialize(flow):
            flow.initialize(*source.first_batch())
        seeded = target is not None or isinstance(objective, FlowMatching)
        with _seeded(seeded, seed, start * world + rank, device):
            state = train(
                flow,
                objective,
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


def _sampling_parts(
    flow: Flow,
    target: LogDensity,
    data: Any,
    context: Any,
    val_data: Any,
    dequantize: bool,
    path_gradient: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
    world: int,
) -> tuple[ReverseKL, SampleSource]:
    """The reverse-KL objective and its (data-free) source, after checking the options."""
    if data is not None or context is not None or val_data is not None or dequantize:
        raise ValueError("fit takes data or a target, not both: drop the data with target=...")
    if flow.context_size:
        raise ValueError(
            "fit(target=...) fits an unconditional flow; for a conditional one, call "
            "torchnf.reverse_kl(flow, log_prob, n, context) in a loop of your own"
        )
    if batch_size < 1 or batch_size % world:
        raise ValueError(
            f"expected a batch_size >= 1 divisible by the {world} processes, got {batch_size}"
        )
    objective = ReverseKL(target, batch_size // world, path_gradient)
    return objective, SampleSource(_describe(target), seed, device)


def _describe(target: LogDensity) -> Any:
    """The target's fingerprint in the run folder: a distribution's class and a hash of each
    parameter; a named target's (e.g. an energy's) name; a callable's qualified name (its
    values cannot be checked)."""
    if isinstance(target, torch.distributions.Distribution):
        values = {k: getattr(target, k, None) for k in target.arg_constraints}
        tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
        return {
            "distribution": type(target).__name__,
            "parameters": {k: fingerprint(v.detach()) for k, v in sorted(tensors.items())},
        }
    name = getattr(target, "name", None)
    if isinstance(name, str):
        return name
    module = getattr(target, "__module__", "?")
    return f"{module}.{getattr(target, '__qualname__', type(target).__name__)}"


@contextmanager
def _seeded(enabled: bool, seed: int, stream: int, device: torch.device) -> Iterator[None]:
    """Within, the global random state is seeded by ``(seed, stream)`` (a sampling objective's
    draws are reproducible); after it, it is what it was."""
    if not enabled:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(np.random.SeedSequence([seed, 2, stream]).generate_state(1)[0]))
        yield


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


def _check_not_raw(flow: Flow, data: Any) -> None:
    """Refuse raw rows for a flow that models encoded ones (a ``Dequantized`` flow's
    categories become bit columns), naming the fix."""
    raw_shape = tuple(getattr(flow, "raw_shape", flow.event_shape))
    shape = tuple(getattr(data, "shape", ()))[1:]
    if raw_shape != tuple(flow.event_shape) and shape == raw_shape:
        raise ValueError(
            f"expected encoded rows of shape (N, {', '.join(map(str, flow.event_shape))}), "
            f"got raw rows {tuple(data.shape)}: fit(flow, flow.encode(x))"
        )


def _check_options(
    log_every: int,
    lr: float,
    weight_decay: float,
    clip_grad: float | None,
    patience: int | Literal["auto"] | None,
) -> None:
    if log_every < 1:
        raise ValueError(f"expected log_every >= 1, got {log_every}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"expected a finite lr >= 0, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"expected a finite weight_decay >= 0, got {weight_decay}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"expected clip_grad > 0 (or None for no clipping), got {clip_grad}")
    if patience not in (None, "auto") and not (isinstance(patience, int) and patience >= 1):
        raise ValueError(f"expected patience >= 1 log intervals, 'auto' or None, got {patience!r}")


def _total_steps(steps: int | None, epochs: int | None, steps_per_epoch: int) -> int:
    if steps is not None and epochs is not None:
        raise ValueError("expected either steps or epochs, got both")
    total = steps if steps is not None else (epochs * steps_per_epoch if epochs else 1000)
    if total < 1:
        raise ValueError(f"expected a positive number of steps, got {total}")
    return total


def _noise_columns(flow: Flow, dequantize: bool | Sequence[int] | None) -> bool | list[int]:
    """What ``fit``'s ``dequantize`` means for ``flow``: ``None`` is the flow's own
    ``dequantize_columns`` (or no noise); ``True``, ``False`` and lists are as given."""
    if dequantize is None:
        return list(getattr(flow, "dequantize_columns", [])) or False
    return dequantize if isinstance(dequantize, bool) else [int(j) for j in dequantize]
