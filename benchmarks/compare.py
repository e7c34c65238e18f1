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

Peers need the ``bench`` extra (``pip install zuko nflows normflows``); a library that is not
installed is skipped. Not run in CI. Example (a few minutes on a 2-core CPU)::

    python benchmarks/compare.py --targets ring gaussian16 --steps 500
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torchnf.data import get_target


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


def build_torchnf(kind: str, dim: int, s: Sizes) -> Model:
    from torchnf.models import MAF, NSF, RealNVP

    if kind == "RealNVP":
        flow = RealNVP(dim, n_layers=s.n_layers, hidden_sizes=s.hidden)
    elif kind == "MAF":
        flow = MAF(dim, n_layers=s.n_layers, hidden_sizes=s.hidden)
    else:
        flow = NSF(dim, s.n_layers, s.hidden, n_bins=s.n_bins, tail_bound=s.tail_bound)
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


# -- measurement ------------------------------------------------------------------------------


def best_time(f: Callable[[], object], repeats: int) -> float:
    f()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def train(library, kind, dim, train_set, sizes, args) -> tuple[Model, float]:
    """Build and train one model; return it and its training steps per second.

    The rate is taken over the fastest quarter of fixed-size chunks of steps, so that bursts
    of load from other processes on a shared machine do not decide it.
    """
    torch.manual_seed(args.seed)
    model = BUILDERS[library](kind, dim, sizes)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
    batches = [
        train_set[order[(i * args.batch_size) % len(train_set) :][: args.batch_size]]
        for i in range(args.steps)
    ]
    model.prepare(batches[0])
    optimizer = torch.optim.Adam(model.module.parameters(), lr=args.lr)
    chunk, times = 25, []
    for i in range(0, args.steps, chunk):
        start = time.perf_counter()
        for batch in batches[i : i + chunk]:
            loss = -model.log_prob(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append((time.perf_counter() - start) / len(batches[i : i + chunk]))
    times.sort()
    fastest = times[: max(1, len(times) // 4)]
    model.module.eval()
    return model, len(fastest) / sum(fastest)


def kl(model: Model, test: Tensor, test_log_p: Tensor) -> tuple[float, float, int]:
    """Forward KL ``E_p[log p - log q]``, its standard error and the non-finite count."""
    with torch.no_grad():
        gap = test_log_p - model.log_prob(test).double()
    finite = gap.isfinite()
    gap = gap[finite]
    return gap.mean().item(), (gap.std() / math.sqrt(len(gap))).item(), int((~finite).sum())


def throughputs(models: dict[str, Model], test: Tensor, repeats: int) -> dict[str, tuple]:
    """Best-of-``repeats`` log_prob and sampling rates, the libraries interleaved per round."""
    best = {lib: [math.inf, math.inf] for lib in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            model.log_prob(test[:100])
            model.sample(100)
        for _ in range(repeats):
            for lib, model in models.items():
                for j, (f, arg) in enumerate(((model.log_prob, test), (model.sample, len(test)))):
                    start = time.perf_counter()
                    f(arg)
                    best[lib][j] = min(best[lib][j], time.perf_counter() - start)
    return {lib: (len(test) / a, len(test) / b) for lib, (a, b) in best.items()}


def available(libraries: list[str]) -> list[str]:
    import importlib.util

    return [lib for lib in libraries if lib == "torchnf" or importlib.util.find_spec(lib)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["ring", "gaussian16"])
    p.add_argument("--models", nargs="+", default=["RealNVP", "MAF", "NSF"])
    p.add_argument("--libraries", nargs="+", default=list(BUILDERS))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=256)
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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = Sizes(args.n_layers, tuple(args.hidden_sizes), args.n_bins, args.tail_bound)
    libraries = available(args.libraries)
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
                rows[library] = (*kl(models[library], test, test_log_p), rate, params)
            speed = throughputs(models, test, args.repeats)
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
