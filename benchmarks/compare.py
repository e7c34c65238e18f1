"""Side-by-side benchmark: RealNVP, MAF and NSF in torchnf, zuko, nflows and normflows.

Every library's model has the same number of layers and hidden widths and is trained with the
same optimizer (Adam, constant rate), steps, batches (one seeded permutation of one seeded
training set) and seed, on targets of known density (``torchnf.data.get_target``). Printed per
target and model:

- forward KL ``E_p[log p(x) - log q(x)]`` over ``--n-eval`` fresh target samples, with its
  Monte-Carlo standard error;
- training steps per second, ``log_prob`` samples per second and sampling samples per second
  (best of ``--repeats`` timed runs on ``--n-eval`` points, gradients off);
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


def run_one(library, kind, target, train, test, test_log_p, sizes, args) -> dict:
    torch.manual_seed(args.seed)
    model = BUILDERS[library](kind, target.dim, sizes)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    batches = [
        train[order[(i * args.batch_size) % len(train) :][: args.batch_size]]
        for i in range(args.steps)
    ]
    model.prepare(batches[0])
    optimizer = torch.optim.Adam(model.module.parameters(), lr=args.lr)
    start = time.perf_counter()
    for batch in batches:
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train_time = time.perf_counter() - start
    model.module.eval()
    with torch.no_grad():
        gap = test_log_p - model.log_prob(test).double()
        logp_time = best_time(lambda: model.log_prob(test), args.repeats)
        sample_time = best_time(lambda: model.sample(len(test)), args.repeats)
    finite = gap.isfinite()
    gap = gap[finite]
    return {
        "library": library,
        "kl": gap.mean().item(),
        "se": (gap.std() / math.sqrt(len(gap))).item(),
        "nonfinite": int((~finite).sum()),
        "train": args.steps / train_time,
        "logp": len(test) / logp_time,
        "sample": len(test) / sample_time,
        "params": sum(p.numel() for p in model.module.parameters() if p.requires_grad),
    }


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
        train = target.sample(args.n_train, seed=args.seed)
        test = target.sample(args.n_eval, seed=args.seed + 1)
        test_log_p = target.log_prob(test.double())
        for kind in args.models:
            for library in libraries:
                r = run_one(library, kind, target, train, test, test_log_p, sizes, args)
                kl = f"{r['kl']:.4f}" + (
                    f" ({r['nonfinite']} non-finite)" if r["nonfinite"] else ""
                )
                print(
                    f"| {name} | {kind} | {library} | {kl} | {r['se']:.4f} | {r['train']:.1f} | "
                    f"{r['logp']:,.0f} | {r['sample']:,.0f} | {r['params']:,} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
