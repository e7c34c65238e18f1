"""Side-by-side benchmark: RealNVP, MAF and NSF in torchnf, zuko, nflows and normflows.

Every library's model has the same number of layers and hidden widths and is trained with the
same optimizer (Adam, constant rate), steps, batches (one seeded permutation of one seeded
training set) and seed, on targets of known density (``torchnf.data.get_target``). Printed per
target and model:

- forward KL ``E_p[log p(x) - log q(x)]`` over ``--n-eval`` fresh target samples, with its
  Monte-Carlo standard error;
- training steps per second (over the fastest quarter of 25-step chunks), ``log_prob``
  samples per second and sampling samples per second (best of ``--repeats`` timed runs on
  ``--n-eval`` points, gradients off, the libraries interleaved in each round), so that load
  from other processes on a shared machine biases no library;
- parameter counts.

With ``--speed``, only speed is measured, on a fixed batch of a correlated Gaussian in each
of ``--dims`` (the issue-7 setting: batch 4096, D = 16 and 64): per model, library and
``--modes`` (``eager``, and the :func:`torch.compile` modes ``default``, ``reduce-overhead``
(CUDA graphs on a GPU), ``max-autotune``), the training step (``-log_prob(x).mean()``,
``backward``, one Adam step with the same optimizer settings for every library) in ms and
steps/s, its count of computing ATen operators in eager mode (each one a kernel launch on a
GPU, where launch overhead bounds small flows), its peak memory on a GPU, ``log_prob`` and
sampling samples/s, and for torchnf the *floor*: the same step run on its bare conditioner
networks alone (every MLP/MADE of the flow, fed random inputs of their sizes), in the same
mode, and torchnf's step time over it.

``--baseline REV`` adds torchnf as of git revision ``REV`` as one more library,
``torchnf@REV``: its ``src/`` is extracted and imported in this process beside the working
tree's (see :func:`import_tree`), so its rows take turns with the others in every round and a
change is measured before and after under the same load. ``--libraries``, ``--models``,
``--dims`` and ``--modes`` restrict a run to the rows asked for.

Peers need the ``bench`` extra (``pip install zuko nflows normflows``); a library that is not
installed is skipped. Not run in CI. ``--device cuda`` runs everything on a GPU. Examples (the
first takes a few minutes on a 2-core CPU)::

    python benchmarks/compare.py --targets ring gaussian16 --steps 500
    python benchmarks/compare.py --speed --device cuda --modes eager default reduce-overhead
    python benchmarks/compare.py --speed --models MAF --libraries torchnf nflows --baseline HEAD
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from torchnf.data import get_target
from torchnf.nets import MLP, ConvNet, set_conditioner_precision
from torchnf.nets.made import MADE
from torchnf.train.loop import uses_cuda_graphs

sys.path.insert(0, str(Path(__file__).parent))
from source_trees import source_trees  # noqa: E402


@dataclass
class Model:
    """A uniform view of one library's flow."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    prepare: Callable[[Tensor], None] = lambda x: None


@dataclass(frozen=True)
class Sizes:
    n_layers: int
    hidden: tuple[int, ...]
    n_bins: int
    tail_bound: float


# -- builders: one per library and model ---------------------------------------------------


def build_torchnf(kind: str, dim: int, s: Sizes, models: ModuleType | None = None) -> Model:
    """torchnf's flow, built from ``models`` (this process's ``torchnf.models`` by default,
    another source tree's with ``--baseline``)."""
    models = models or importlib.import_module("torchnf.models")
    if kind == "RealNVP":
        flow = models.RealNVP(dim, n_layers=s.n_layers, hidden_sizes=s.hidden)
    elif kind == "MAF":
        flow = models.MAF(dim, n_layers=s.n_layers, hidden_sizes=s.hidden)
    else:
        flow = models.NSF(
            dim, s.n_layers, s.hidden, n_bins=s.n_bins, tail_bound=s.tail_bound, activation="relu"
        )
    return Model(flow, flow.log_prob, flow.sample, prepare=lambda x: flow.initialize(x))


def build_zuko(kind: str, dim: int, s: Sizes) -> Model:
    import zuko

    hidden = {"hidden_features": s.hidden}
    if kind == "RealNVP":
        flow = zuko.flows.RealNVP(dim, transforms=s.n_layers, **hidden)
    elif kind == "MAF":
        flow = zuko.flows.MAF(dim, transforms=s.n_layers, **hidden)
    else:  # zuko's spline interval is [-5, 5]
        flow = zuko.flows.NSF(dim, transforms=s.n_layers, bins=s.n_bins, **hidden)
    return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


class _IgnoreContext(nn.Module):
    """nflows' MLP takes no context argument; its couplings pass one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def build_nflows(kind: str, dim: int, s: Sizes) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        ReversePermutation,
    )

    blocks = {"num_blocks": len(s.hidden) - 1, "use_residual_blocks": False}
    layers = []
    for i in range(s.n_layers):
        if kind == "RealNVP":
            mask = (torch.arange(dim) + i) % 2
            layers.append(
                AffineCouplingTransform(
                    mask, lambda a, b: _IgnoreContext(MLP((a,), (b,), hidden_sizes=list(s.hidden)))
                )
            )
        elif kind == "MAF":
            layers.append(MaskedAffineAutoregressiveTransform(dim, s.hidden[0], **blocks))
        else:
            layers.append(
                MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    dim,
                    s.hidden[0],
                    num_bins=s.n_bins,
                    tails="linear",
                    tail_bound=s.tail_bound,
                    **blocks,
                )
            )
        if kind != "RealNVP" and i < s.n_layers - 1:
            layers.append(ReversePermutation(dim))
    flow = Flow(CompositeTransform(layers), StandardNormal([dim]))
    return Model(flow, flow.log_prob, flow.sample)


def build_normflows(kind: str, dim: int, s: Sizes) -> Model:
    import normflows as nf

    flows = []
    for _ in range(s.n_layers):
        if kind == "RealNVP":
            half = dim // 2
            net = nf.nets.MLP([half, *s.hidden, 2 * (dim - half)], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
        elif kind == "MAF":
            flows += [
                nf.flows.MaskedAffineAutoregressive(
                    dim, s.hidden[0], num_blocks=len(s.hidden) - 1, use_residual_blocks=False
                ),
                nf.flows.Permute(dim, mode="swap"),
            ]
        else:
            flows += [
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    dim, len(s.hidden) - 1, s.hidden[0], num_bins=s.n_bins, tail_bound=s.tail_bound
                ),
                nf.flows.Permute(dim, mode="swap"),
            ]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
    return Model(flow, flow.log_prob, lambda n: flow.sample(n)[0])


BUILDERS = {
    "torchnf": build_torchnf,
    "zuko": build_zuko,
    "nflows": build_nflows,
    "normflows": build_normflows,
}


def import_tree(src: Path) -> ModuleType:
    """``torchnf.models`` of the source tree ``src``, imported beside this process's torchnf.

    The tree's ``torchnf`` modules are imported with ``src`` first on ``sys.path``, then taken
    out of ``sys.modules`` (their code keeps the objects it imported, so they still use each
    other), and this process's ``torchnf`` modules are put back. Only an import that runs at
    call time would reach the other tree; the models' forward and backward have none.
    """

    def loaded() -> dict[str, ModuleType]:
        return {k: m for k, m in sys.modules.items() if k.split(".")[0] == "torchnf"}

    ours = loaded()
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("torchnf.models")
    finally:
        sys.path.remove(str(src))
        for name in loaded():
            del sys.modules[name]
        sys.modules.update(ours)


# -- measurement ------------------------------------------------------------------------------


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued kernels, so that a host clock times them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train(library, kind, dim, train_set, sizes, args) -> tuple[Model, float]:
    """Build and train one model; return it and its training steps per second.

    The rate is taken over the fastest quarter of fixed-size chunks of steps, so that bursts
    of load from other processes on a shared machine do not decide it.
    """
    torch.manual_seed(args.seed)
    model = args.builders[library](kind, dim, sizes)
    model.module.to(args.device)
    train_set = train_set.to(args.device)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
    batches = [
        train_set[order[(i * args.batch_size) % len(train_set) :][: args.batch_size]]
        for i in range(args.steps)
    ]
    model.prepare(batches[0])
    optimizer = torch.optim.Adam(model.module.parameters(), lr=args.lr)
    chunk, times = 25, []
    for i in range(0, args.steps, chunk):
        synchronize(args.device)
        start = time.perf_counter()
        for batch in batches[i : i + chunk]:
            loss = -model.log_prob(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(args.device)
        times.append((time.perf_counter() - start) / len(batches[i : i + chunk]))
    times.sort()
    fastest = times[: max(1, len(times) // 4)]
    model.module.eval()
    return model, len(fastest) / sum(fastest)


def kl(model: Model, test: Tensor, test_log_p: Tensor, device: str) -> tuple[float, float, int]:
    """Forward KL ``E_p[log p - log q]``, its standard error and the non-finite count."""
    with torch.no_grad():
        gap = test_log_p - model.log_prob(test.to(device)).double().cpu()
    finite = gap.isfinite()
    gap = gap[finite]
    return gap.mean().item(), (gap.std() / math.sqrt(len(gap))).item(), int((~finite).sum())


def throughputs(
    models: dict[str, Model], test: Tensor, repeats: int, device: str = "cpu"
) -> dict[str, tuple]:
    """Best-of-``repeats`` log_prob and sampling rates, the libraries interleaved per round."""
    best = {lib: [math.inf, math.inf] for lib in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            model.log_prob(test[:100])
            model.sample(100)
        for _ in range(repeats):
            for lib, model in models.items():
                for j, (f, arg) in enumerate(((model.log_prob, test), (model.sample, len(test)))):
                    synchronize(device)
                    start = time.perf_counter()
                    f(arg)
                    synchronize(device)
                    best[lib][j] = min(best[lib][j], time.perf_counter() - start)
    return {lib: (len(test) / a, len(test) / b) for lib, (a, b) in best.items()}


# -- speed (--speed) ----------------------------------------------------------------------------


def correlated_gaussian(n: int, dim: int, seed: int) -> Tensor:
    """``n`` points of a seeded Gaussian with correlated features, ``(n, dim)``."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(dim) + torch.randn(dim, dim, generator=g) / math.sqrt(dim)
    return torch.randn(n, dim, generator=g) @ mixing


def in_mode(f: Callable, mode: str) -> Callable:
    """``f`` itself in eager mode, else ``torch.compile(f, mode=mode)``."""
    return f if mode == "eager" else torch.compile(f, mode=mode)


def seconds_per_call(f: Callable[[], object], device: torch.device, calls: int) -> float:
    """Mean seconds per call of ``f`` over ``calls`` calls, the device's queue drained."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        f()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def training_step(module: nn.Module, loss: Callable[[], Tensor], mode: str, device) -> Callable:
    """One step: ``loss()`` (compiled in ``mode``), backward, fused Adam (every library alike)."""
    loss = in_mode(loss, mode)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, fused=True)
    graphs = uses_cuda_graphs(mode, torch.device(device))

    def step() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def floor_step(flow: nn.Module, batch_size: int, mode: str, device: torch.device) -> Callable:
    """The training step of ``flow``'s bare conditioner networks (its MLPs and MADEs) on random
    inputs of their sizes: a lower bound on any step of the flow."""
    nets = nn.ModuleList(m for m in flow.modules() if isinstance(m, (MLP, MADE, ConvNet)))
    inputs = [torch.randn(batch_size, net.input_size, device=device) for net in nets]
    return training_step(
        nets, lambda: sum(net(x).mean() for net, x in zip(nets, inputs, strict=True)), mode, device
    )


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators that compute (views excluded): in eager mode, each is one
    kernel launch on a GPU, whose launch overhead bounds small flows there."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in (torch.ops.aten.detach.default,):
            self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(step: Callable[[], None]) -> float:
    """The number of computing ATen operators in one eager call of ``step``."""
    step()  # lazy state (optimizer moments) first
    with OpCounter() as counter:
        step()
    return counter.count


@dataclass
class SpeedRow:
    """One library's model in one mode: what is timed, and the best times so far."""

    library: str
    mode: str
    timed: dict[str, Callable[[], object]]  # "step", "floor", "log_prob", "sample"
    best: dict[str, float]
    ops: float = math.nan
    peak: float = math.nan


def speed_row(library: str, kind: str, x: Tensor, mode: str, args) -> SpeedRow:
    """Build one row's model and its timed calls, warm them up (compiling them in a compiled
    mode), count the eager step's kernels and the step's peak GPU memory. A call that fails
    (a peer that cannot compile) is reported and left out."""
    device, n = x.device, args.n_eval
    torch.manual_seed(args.seed)
    model = args.builders[library](kind, x.shape[-1], sizes_of(args))
    model.module.to(device)
    model.prepare(x)
    if library.startswith("torchnf") and args.conditioner_dtype:
        set_conditioner_precision(model.module, getattr(torch, args.conditioner_dtype))
    test = correlated_gaussian(n, x.shape[-1], args.seed + 1).to(device)
    log_prob, sample = in_mode(model.log_prob, mode), in_mode(lambda: model.sample(n), mode)
    timed = {"step": training_step(model.module, lambda: -model.log_prob(x).mean(), mode, device)}
    if library == "torchnf":
        timed["floor"] = floor_step(model.module, len(x), mode, device)
    timed["log_prob"] = torch.no_grad()(lambda: log_prob(test))
    if mode == "eager" or args.compile_sampling:
        timed["sample"] = torch.no_grad()(sample)
    row = SpeedRow(library, mode, {}, {})
    for key, f in timed.items():
        try:
            for _ in range(3 if key in ("step", "floor") else 1):
                f()
        except Exception as error:  # report it, keep going
            print(f"# {library} {kind} D={x.shape[-1]} {mode} {key}: {error!r:.200}", flush=True)
            continue
        row.timed[key], row.best[key] = f, math.inf
    if "step" in row.timed:
        if mode == "eager":
            row.ops = ops_per_step(row.timed["step"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            row.timed["step"]()
            row.peak = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def speed_table(args) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# {name}, torch {torch.__version__}, {args.threads} CPU thread(s); batch "
        f"{args.batch_size}; {args.n_layers} layers, hidden {args.hidden_sizes}, "
        f"{args.n_bins} bins; fused Adam; best of {args.repeats} interleaved rounds of "
        f"{args.calls} steps; "
        f"log_prob and sampling on {args.n_eval} points"
    )
    print(
        "| model | D | library | mode | train ms/step | train steps/s | ops/step | peak MiB | "
        "log_prob samples/s | sampling samples/s | floor ms/step | step / floor |"
    )
    print("|" + "---|" * 12)
    libraries = available(args)
    modes = [m for m in args.modes if m != "reduce-overhead" or device.type == "cuda"]
    for kind in args.models:
        for dim in args.dims:
            # Fresh compile caches: the rows' closures share their code, and past dynamo's
            # recompile limit a compiled closure would run eager.
            torch.compiler.reset()
            x = correlated_gaussian(args.batch_size, dim, args.seed).to(device)
            rows = [speed_row(lib, kind, x, mode, args) for lib in libraries for mode in modes]
            # The rows take turns in every round, so that load on a shared machine biases none.
            for _ in range(args.repeats):
                for row in rows:
                    for key, f in row.timed.items():
                        calls = args.calls if key in ("step", "floor") else 1
                        row.best[key] = min(row.best[key], seconds_per_call(f, device, calls))
            for row in rows:
                print(f"| {kind} | {dim} | {row_cells(row, args)} |", flush=True)
            summarize(kind, dim, {(r.library, r.mode): r.best.get("step", math.nan) for r in rows})


def row_cells(row: SpeedRow, args) -> str:
    """The table cells of a row, from library to step / floor."""
    step = row.best.get("step", math.nan)
    floor = row.best.get("floor", math.nan)
    n = args.n_eval
    label = row.mode
    if row.library.startswith("torchnf") and args.conditioner_dtype:
        label += f", {args.conditioner_dtype} conditioners"
    cells = [
        row.library,
        label,
        cell(1e3 * step, ".2f"),
        cell(1 / step, ",.1f"),
        cell(row.ops, ".0f"),
        cell(row.peak, ",.0f"),
        cell(n / row.best.get("log_prob", math.nan), ",.0f"),
        cell(n / row.best.get("sample", math.nan), ",.0f"),
        cell(1e3 * floor, ".2f"),
        cell(step / floor, ".2f"),
    ]
    return " | ".join(cells)


def cell(value: float, spec: str) -> str:
    """A table cell: the value formatted, or "-" where it was not measured."""
    return "-" if math.isnan(value) else format(value, spec)


def summarize(kind: str, dim: int, steps: dict[tuple[str, str], float]) -> None:
    """torchnf's speed-up over the fastest peer: its best mode against the peers' best mode,
    and eager against eager; and over its ``--baseline`` revision, mode by mode."""
    ours = {mode: t for (lib, mode), t in steps.items() if lib == "torchnf" and t == t}
    for (lib, mode), t in steps.items():
        if lib.startswith("torchnf@") and mode in ours and t == t:
            print(f"# {kind} D={dim}: torchnf {mode} is {t / ours[mode]:.2f}x {lib}", flush=True)
    peers = {key: t for key, t in steps.items() if not key[0].startswith("torchnf") and t == t}
    if not ours or not peers:
        return
    best_mode = min(ours, key=ours.get)
    best_peer = min(peers, key=peers.get)
    text = (
        f"# {kind} D={dim}: torchnf {best_mode} is {peers[best_peer] / ours[best_mode]:.2f}x "
        f"the fastest peer ({best_peer[0]} {best_peer[1]})"
    )
    eager_peers = [t for (_, mode), t in peers.items() if mode == "eager"]
    if "eager" in ours and eager_peers:
        text += f"; eager against eager: {min(eager_peers) / ours['eager']:.2f}x"
    print(text, flush=True)


def sizes_of(args) -> Sizes:
    return Sizes(args.n_layers, tuple(args.hidden_sizes), args.n_bins, args.tail_bound)


def available(args) -> list[str]:
    """The libraries of ``--libraries`` that are installed, ``torchnf@REV`` after torchnf."""
    import importlib.util

    found = [lib for lib in args.libraries if lib == "torchnf" or importlib.util.find_spec(lib)]
    base = [lib for lib in args.builders if lib.startswith("torchnf@")]
    at = found.index("torchnf") + 1 if "torchnf" in found else 0
    return found[:at] + base + found[at:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["ring", "gaussian16"])
    p.add_argument("--models", nargs="+", default=["RealNVP", "MAF", "NSF"])
    p.add_argument("--libraries", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument(
        "--baseline", metavar="REV", help="also measure torchnf at this git revision (torchnf@REV)"
    )
    p.add_argument("--steps", type=int, default=500)
    p.add_argument(
        "--batch-size", type=int, default=None, help="default 256 (KL table), 4096 (--speed)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-layers", type=int, default=5)
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[64, 64])
    p.add_argument("--n-bins", type=int, default=8)
    p.add_argument("--tail-bound", type=float, default=5.0)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-eval", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--speed", action="store_true", help="the speed table only (no training)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 64], help="--speed: dimensions")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["eager"],
        choices=["eager", "default", "reduce-overhead", "max-autotune"],
        help="--speed: eager and/or torch.compile modes (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--conditioner-dtype",
        choices=["bfloat16", "float16"],
        help="--speed: run torchnf's conditioner networks (and its floor) in this precision",
    )
    p.add_argument("--calls", type=int, default=10, help="--speed: steps per timed round")
    p.add_argument(
        "--compile-sampling", action="store_true", help="--speed: sample in compiled modes too"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        args.builders = dict(BUILDERS)
        if args.baseline:
            models = import_tree(source_trees(args.baseline, tmp)[args.baseline])
            args.builders[f"torchnf@{args.baseline}"] = functools.partial(
                build_torchnf, models=models
            )
        if args.speed:
            args.batch_size = args.batch_size or 4096
            speed_table(args)
        else:
            args.batch_size = args.batch_size or 256
            kl_table(args)


def kl_table(args) -> None:
    """Train every library's model on every target; print its KL, speed and size (a row each)."""
    sizes = sizes_of(args)
    libraries = available(args)
    print(
        f"# torch {torch.__version__}, {args.threads} thread(s); Adam lr={args.lr}, "
        f"{args.steps} steps of batch {args.batch_size}, seed {args.seed}; "
        f"{args.n_layers} layers, hidden {list(sizes.hidden)}, {args.n_bins} bins, "
        f"bound {args.tail_bound}; KL over {args.n_eval} target samples"
    )
    header = (
        "| target | model | library | KL (nats) | ± SE | train steps/s | "
        "log_prob samples/s | sampling samples/s | params |"
    )
    print(header)
    print("|" + "---|" * 9)
    for name in args.targets:
        target = get_target(name)
        train_set = target.sample(args.n_train, seed=args.seed)
        test = target.sample(args.n_eval, seed=args.seed + 1)
        test_log_p = target.log_prob(test.double())
        for kind in args.models:
            models, rows = {}, {}
            for library in libraries:
                models[library], rate = train(library, kind, target.dim, train_set, sizes, args)
                params = sum(p.numel() for p in models[library].module.parameters())
                rows[library] = (*kl(models[library], test, test_log_p, args.device), rate, params)
            speed = throughputs(models, test.to(args.device), args.repeats, args.device)
            for library, (mean, se, nonfinite, rate, params) in rows.items():
                text = f"{mean:.4f}" + (f" ({nonfinite} non-finite)" if nonfinite else "")
                logp, sample = speed[library]
                print(
                    f"| {name} | {kind} | {library} | {text} | {se:.4f} | {rate:.1f} | "
                    f"{logp:,.0f} | {sample:,.0f} | {params:,} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
