"""Milliseconds per training step and per sampling call of MAF, NSF and RealNVP, eager and compiled.

Run: ``python benchmarks/speed.py`` (a table for the working tree), or
``python benchmarks/speed.py --baseline REV`` to measure the ``src/`` of git revision ``REV``
too, in the same run: each (tree, model, mode) is timed in its own process, the trees
alternating, so both see the same load on a shared machine. A training step is what ``fit``
does (NLL forward and backward, gradient clipping, fused Adam); compiled mode runs the NLL through
:func:`torch.compile` as ``fit(..., compile=True)`` does, and sampling through
``torch.compile(flow.sample)``. Each time is the median of ``--repeats`` calls after warm-up
(compilation is excluded, and reported apart). The last column is a step of ``torchnf.fit``
itself (its loop, hooks and data source included, no validation): the slope of its wall time
between 10 and 30 steps, so its fixed costs (checks, initialization) drop out; it should equal
the bare step. Same seed everywhere; CPU, one thread by default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from source_trees import source_trees

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, mode: str, batch: int, dim: int, repeats: int) -> dict[str, float]:
    """Time one model in one mode in this process (the ``torchnf`` on ``sys.path``)."""
    import torch

    import torchnf
    from torchnf import nll
    from torchnf.models import MAF, NSF, RealNVP

    torch.manual_seed(0)
    flow = {"MAF": MAF, "NSF": NSF, "RealNVP": RealNVP}[model](dim)
    x = torch.randn(batch, dim)
    flow.initialize(x)
    with torch.no_grad():  # away from the identity at which the flows start
        for p in flow.parameters():
            p.add_(0.01 * torch.randn_like(p))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)
    loss_fn = (lambda v: nll(flow, v)) if mode == "eager" else torch.compile(lambda v: nll(flow, v))
    sample = flow.sample if mode == "eager" else torch.compile(flow.sample)

    def step() -> None:
        loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()

    out = {}
    for name, fn in (("train", step), ("sample", lambda: sample(batch))):
        tic = time.perf_counter()
        fn()  # compiles in compiled mode
        out[f"{name}_first_s"] = time.perf_counter() - tic
        fn()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        out[f"{name}_ms"] = 1e3 * sorted(times)[len(times) // 2]
    if mode == "eager":
        data = torch.randn(8 * batch, dim)

        def fit(steps: int) -> float:
            tic = time.perf_counter()
            options = dict(batch_size=batch, val_fraction=0.0, progress=False, log_every=steps)
            torchnf.fit(flow, data, steps=steps, lr=1e-4, **options)
            return time.perf_counter() - tic

        slopes = sorted((fit(30) - fit(10)) / 20 for _ in range(max(1, repeats // 2)))
        out["fit_ms"] = 1e3 * slopes[len(slopes) // 2]
    return out


def run_child(src: Path, model: str, mode: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", model, mode, "--batch", str(args.batch)]
    command += ["--dim", str(args.dim), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision whose src/ is measured too")
    parser.add_argument("--models", nargs="+", default=["MAF", "NSF"], help="MAF, NSF, RealNVP")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.child, args.batch, args.dim, args.repeats)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        trees = source_trees(args.baseline, tmp)
        print(
            f"batch {args.batch}, D = {args.dim}, default sizes (5 layers, hidden (128, 128)), "
            f"{args.threads} thread(s); median of {args.repeats} calls, ms"
        )
        header = (
            "| model | mode | tree | train step (ms) | sample (ms) | compile (s) | fit step (ms) |"
        )
        print(header)
        print("|" + "---|" * 7)
        for model in args.models:
            for mode in args.modes:
                for tree, src in trees.items():
                    r = run_child(src, model, mode, args)
                    first = r["train_first_s"] + r["sample_first_s"]
                    compile_s = f"{first:.0f}" if mode == "compiled" else "-"
                    fit_ms = f"{r['fit_ms']:.1f}" if "fit_ms" in r else "-"
                    print(
                        f"| {model} | {mode} | {tree} | {r['train_ms']:.1f} | "
                        f"{r['sample_ms']:.1f} | {compile_s} | {fit_ms} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
