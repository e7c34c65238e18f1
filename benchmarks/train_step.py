"""Milliseconds per eager training step of RealNVP, MAF and NSF: torchnf against zuko and nflows.

The architecture of ``compare.py`` (5 layers, hidden (64, 64), NSF 8 bins in [-5, 5]), batch
256, CPU, one thread. A step is ``-log_prob(x).mean()``, ``backward`` and an Adam step. In each
process the libraries alternate every 5 steps for ``--rounds`` rounds and each keeps its fastest
slot, so that bursts of load on a shared machine bias none of them; the ratio torchnf / fastest
peer is taken within the process. ``--baseline REV`` measures the ``src/`` of git revision
``REV`` too: processes for it and for the working tree alternate ``--repeats`` times and the
table keeps each tree's best time per library. Run::

    python benchmarks/train_step.py --baseline 402000c
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from source_trees import source_trees

ROOT = Path(__file__).resolve().parents[1]
CASES = [(kind, dim) for kind in ("RealNVP", "MAF", "NSF") for dim in (2, 16)]


def measure(rounds: int) -> dict[str, dict[str, float]]:
    """Best ms per step of each library for every case, in this process."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import BUILDERS, Sizes, available

    torch.set_num_threads(1)
    sizes = Sizes(5, (64, 64), 8, 5.0)
    libraries = available(["torchnf", "nflows", "zuko"])
    out = {}
    for kind, dim in CASES:
        x = 1.5 * torch.randn(256, dim, generator=torch.Generator().manual_seed(0))
        steps = {}
        for library in libraries:
            torch.manual_seed(0)
            model = BUILDERS[library](kind, dim, sizes)
            model.prepare(x)
            optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-3)

            def step(model=model, optimizer=optimizer, x=x) -> None:
                loss = -model.log_prob(x).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(10):  # warm-up
                step()
            steps[library] = step
        best = dict.fromkeys(steps, math.inf)
        for _ in range(rounds):
            for library, step in steps.items():
                tic = time.perf_counter()
                for _ in range(5):
                    step()
                best[library] = min(best[library], (time.perf_counter() - tic) / 5)
        out[f"{kind} D={dim}"] = {library: 1e3 * t for library, t in best.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision whose src/ is measured too")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = source_trees(args.baseline, tmp)
        best: dict[str, dict[str, dict[str, float]]] = {tree: {} for tree in trees}
        for _ in range(args.repeats):
            for tree, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
                command = [sys.executable, __file__, "--child", "--rounds", str(args.rounds)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                for case, times in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    kept = best[tree].setdefault(case, {})
                    for library, t in times.items():
                        kept[library] = min(kept.get(library, math.inf), t)
    print("batch 256, 5 layers, hidden (64, 64), 1 thread; best ms per training step")
    print("| case | tree | torchnf | nflows | zuko | torchnf / fastest peer |")
    print("|---|---|---|---|---|---|")
    for case in best["now"]:
        for tree in trees:
            times = best[tree][case]
            peer = min(t for library, t in times.items() if library != "torchnf")
            cells = " | ".join(
                f"{times[lib]:.2f}" if lib in times else "-"
                for lib in ("torchnf", "nflows", "zuko")
            )
            print(f"| {case} | {tree} | {cells} | {times['torchnf'] / peer:.2f} |", flush=True)


if __name__ == "__main__":
    main()
