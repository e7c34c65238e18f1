"""What each speed change of issue 7 buys, measured in one process against its alternative.

Every comparison switches one thing on an otherwise identical model and data, and the two
variants take turns in every round (best of ``--rounds`` rounds of ``--calls`` calls), so that
load from other processes on a shared machine biases neither. CPU, one thread by default.

- ``adam``: a training step with fused Adam (as ``fit`` uses it) against the default
  (multi-tensor) Adam, for MAF and RealNVP at D = 16 and batch 256 and 4096.
- ``coupling``: RealNVP (D = 64, batch 4096) whose alternating-mask couplings split into
  strided views against the same with the general gather/scatter path: eager step time,
  kernels per step and MB written per step.
- ``spline``: the spline's hand-derived backward against autograd of its formulas: one
  spline call's forward + backward at (4096, 16), both directions, and NSF training steps.
- ``precision``: an ``MLP(32, 64, (256, 256))`` conditioner's forward + backward at batch
  4096 in float32, bfloat16 and float16 (``torchnf.nets.conditioner_precision``).
- ``actnorm``: kernels per eager MAF step (D = 16) with and without its ActNorm layer.

The compiled counterpart of ``coupling`` needs the code before the change:
``python benchmarks/speed.py --models RealNVP --modes compiled --dim 64 --baseline REV``.
Run::

    python benchmarks/ablations.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchnf.functional.splines as splines
from torchnf import Flow, nll
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers import Coupling
from torchnf.models import MAF, NSF, RealNVP
from torchnf.nets import MLP, conditioner_precision

sys.path.insert(0, str(Path(__file__).parent))
from compare import ops_per_step  # noqa: E402


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict:
    """Best milliseconds per call of each variant, the variants taking turns each round."""
    for f in variants.values():
        f()  # warm-up
    best = dict.fromkeys(variants, math.inf)
    for _ in range(rounds):
        for name, f in variants.items():
            tic = time.perf_counter()
            for _ in range(calls):
                f()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - tic) / calls)
    return best


def training_step(flow: torch.nn.Module, x: torch.Tensor, fused: bool = True) -> Callable:
    torch.manual_seed(0)
    flow.initialize(x)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=fused or None)

    def step() -> None:
        loss = nll(flow, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def report(title: str, best: dict[str, float], baseline: str) -> None:
    cells = ", ".join(f"{name} {t:.2f} ms" for name, t in best.items())
    ratios = ", ".join(
        f"{name} {best[baseline] / t:.2f}x" for name, t in best.items() if name != baseline
    )
    print(f"| {title} | {cells} | {ratios} |", flush=True)


class BytesWritten(TorchDispatchMode):
    """Sums the bytes of every computing operator's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    self.bytes += o.numel() * o.element_size()
        return out


def adam(args) -> None:
    for name, model in (("MAF", MAF), ("RealNVP", RealNVP)):
        for batch in (256, 4096):
            x = torch.randn(batch, 16, generator=torch.Generator().manual_seed(0))
            steps = {}
            for fused in (False, True):
                torch.manual_seed(0)
                flow = model(16, n_layers=5, hidden_sizes=(64, 64))
                steps["fused" if fused else "multi-tensor"] = training_step(flow, x, fused)
            best = interleaved(steps, args.rounds, args.calls)
            report(f"adam: {name} D=16 batch {batch}", best, "multi-tensor")


def coupling(args) -> None:
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    steps = {}
    for path in ("gather", "strided"):
        torch.manual_seed(0)
        flow = RealNVP(64, n_layers=5, hidden_sizes=(64, 64))
        if path == "gather":
            for layer in flow.modules():
                if isinstance(layer, Coupling):
                    layer.parity = None  # the general path, as for any other mask
        steps[path] = training_step(flow, x)
    report(
        "coupling: RealNVP D=64 batch 4096, eager",
        interleaved(steps, args.rounds, args.calls),
        "gather",
    )
    for path, step in steps.items():
        with BytesWritten() as written:
            step()
        print(
            f"| coupling: {path} | {ops_per_step(step)} kernels, "
            f"{written.bytes / 2**20:.1f} MB written per step | |"
        )


def spline(args) -> None:
    g = torch.Generator().manual_seed(0)
    params = torch.randn(4096, 16, 23, generator=g, requires_grad=True)
    x = torch.randn(4096, 16, generator=g, requires_grad=True)
    hand_derived = splines._InBin.apply

    def plain(inverse, *inputs):  # autograd of the formulas, as under torch.compile
        return (splines._in_bin_inverse if inverse else splines._in_bin_forward)(*inputs)

    def switched(apply: Callable, f: Callable) -> Callable:
        def call() -> None:
            splines._InBin.apply = apply
            f()

        return call

    try:
        for name, spline_fn in (("forward", rqs_forward), ("inverse", rqs_inverse)):

            def call(spline_fn=spline_fn) -> None:
                y, log_det = spline_fn(x, *rqs_knots(*params.split([8, 8, 7], -1), 5.0))
                torch.autograd.grad(y.sum() + log_det.sum(), [x, params])

            variants = {
                "autograd": switched(plain, call),
                "hand-derived": switched(hand_derived, call),
            }
            best = interleaved(variants, args.rounds, args.calls)
            report(f"spline: {name} + backward at (4096, 16)", best, "autograd")
        for dim in (16, 64):
            torch.manual_seed(0)
            step = training_step(
                NSF(dim, 5, (64, 64), n_bins=8, activation="relu"),
                torch.randn(4096, dim, generator=g),
            )
            variants = {
                "autograd": switched(plain, step),
                "hand-derived": switched(hand_derived, step),
            }
            best = interleaved(variants, args.rounds, 2)
            report(f"spline: NSF D={dim} batch 4096 step", best, "autograd")
    finally:
        del splines._InBin.apply  # back to torch.autograd.Function's


def precision(args) -> None:
    torch.manual_seed(0)
    net = MLP(32, 64, (256, 256))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4096, 32)

    def run(dtype: torch.dtype | None) -> Callable:
        def call() -> None:
            with conditioner_precision(net, dtype):
                net(x).square().sum().backward()

        return call

    variants = {
        "float32": run(None),
        "bfloat16": run(torch.bfloat16),
        "float16": run(torch.float16),
    }
    report(
        "precision: MLP(32, 64, (256, 256)) batch 4096",
        interleaved(variants, args.rounds, args.calls),
        "float32",
    )


def actnorm(args) -> None:
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    flow = MAF(16, n_layers=5, hidden_sizes=(64, 64))
    without = Flow(flow.bijector[1:], flow.base)  # the same layers after the ActNorm
    kernels = [ops_per_step(training_step(f, x)) for f in (flow, without)]
    print(f"| actnorm: MAF D=16 | {kernels[0]} kernels per step, {kernels[1]} without ActNorm | |")


COMPARISONS = {
    "adam": adam,
    "coupling": coupling,
    "spline": spline,
    "precision": precision,
    "actnorm": actnorm,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(COMPARISONS), default=list(COMPARISONS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} "
        f"interleaved rounds"
    )
    print("| comparison | best ms per call | speed-up over the first |")
    print("|---|---|---|")
    for name in args.only:
        COMPARISONS[name](args)


if __name__ == "__main__":
    main()
