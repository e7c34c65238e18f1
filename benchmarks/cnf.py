"""A continuous normalizing flow trained by flow matching against the same CNF trained by
maximum likelihood: KL(target || model) and wall time on 2-D targets of known density.

Run: ``python benchmarks/cnf.py`` (one CPU thread; about 20 minutes on a laptop CPU, most of it
the likelihood rows) or ``python benchmarks/cnf.py --quick`` (seconds, a smoke test). Every row
trains ``CNF(2)`` (a standardizing ActNorm, then one ODE whose field is a time-gated MLP of
three hidden layers of 64 with SiLU; float32, solver tolerances 1e-5) with ``torchnf.fit`` on 20000
points of the target (seed 0, 10% held out), Adam with a cosine decay, then estimates
``KL(target || model) = E_p[log p - log q]`` on 20000 fresh samples (seed 1) with the exact
divergence through the ODE, with its standard error. The rows:

- ``nll``: maximum likelihood through the adaptive solver (FFJORD; exact divergence, which
  for ``D = 2`` costs two backward passes per field evaluation), ``--nll-steps`` steps of
  ``--batch-size``;
- ``flow_matching`` at the same steps and batch: the cost of a step is one field evaluation;
- ``flow_matching`` with ``--fm-steps`` steps of ``--batch-size``, and the same with
  minibatch optimal-transport pairs (``flow_matching + OT``: SciPy's exact assignment of the
  batch, whose cost grows as its cube: 4 ms at 256 points, 130 ms at 1024);
- ``flow_matching`` with ``--fm-steps`` steps of ``--fm-batch-size``, still less compute than
  the likelihood row: flow matching's gradient is noisier per step, and its steps are cheap,
  so it takes more of them on larger batches.

Columns: the training time of ``fit`` (validation included) as CPU time of the process (one
thread: the compute, whatever else the machine runs) and as wall time, the KL, and the number of
field evaluations of the last evaluation solve (``NFE``: how hard the learned ODE is to
integrate; flow matching's straight paths, and more so OT's, give fewer).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from torchnf import fit
from torchnf.data import get_target
from torchnf.diagnostics import kl_divergence
from torchnf.models import CNF
from torchnf.train.objectives import FlowMatching


def rows(args: argparse.Namespace) -> list[tuple[str, str | FlowMatching, int, int]]:
    """``(label, objective, steps, batch size)`` of each row."""
    return [
        ("nll", "nll", args.nll_steps, args.batch_size),
        ("flow_matching", "flow_matching", args.nll_steps, args.batch_size),
        ("flow_matching", "flow_matching", args.fm_steps, args.batch_size),
        ("flow_matching + OT", FlowMatching(ot=True), args.fm_steps, args.batch_size),
        ("flow_matching", "flow_matching", args.fm_steps, args.fm_batch_size),
    ]


def run_one(target_name: str, label: str, objective, steps: int, batch: int, args) -> dict:
    target = get_target(target_name)
    data = target.sample(args.n_points, seed=0)
    torch.manual_seed(args.seed)
    flow = CNF(2, hidden_sizes=tuple(args.hidden_sizes))
    tic, cpu = time.perf_counter(), time.process_time()
    fit(
        flow,
        data,
        objective=objective,
        steps=steps,
        batch_size=batch,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        log_every=max(steps // 5, 1),
    )
    seconds, cpu = time.perf_counter() - tic, time.process_time() - cpu
    flow.eval()
    tic = time.perf_counter()
    kl = kl_divergence(flow, target, n=args.n_eval, seed=1)
    record = {
        "target": target_name,
        "objective": label,
        "steps": steps,
        "batch_size": batch,
        "kl": kl.value,
        "kl_stderr": kl.stderr,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "eval_seconds": time.perf_counter() - tic,
        "nfe": flow.bijector[-1].nfe,
    }
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
        flush=True,
    )
    return record


def table(records: list[dict]) -> str:
    header = (
        "| target | objective | steps × batch | KL (nats) | train CPU (s) | CPU ms/step "
        "| wall (s) | NFE |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in records:
        lines.append(
            f"| {r['target']} | {r['objective']} | {r['steps']} × {r['batch_size']} | "
            f"{r['kl']:.3f} ± {r['kl_stderr']:.3f} | {r['train_cpu_seconds']:.0f} | "
            f"{1000 * r['train_cpu_seconds'] / r['steps']:.1f} | {r['train_seconds']:.0f} | "
            f"{r['nfe']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["moons", "ring", "banana"])
    p.add_argument("--nll-steps", type=int, default=500)
    p.add_argument("--fm-steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fm-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[64, 64, 64])
    p.add_argument("--n-points", type=int, default=20000)
    p.add_argument("--n-eval", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the records here")
    p.add_argument("--quick", action="store_true", help="tiny settings, a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.targets, args.nll_steps, args.fm_steps = ["moons"], 3, 6
        args.batch_size = args.fm_batch_size = 64
        args.hidden_sizes, args.n_points, args.n_eval = [8], 1000, 200
    torch.set_num_threads(args.threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo
    records = [
        run_one(target, label, objective, steps, batch, args)
        for target in args.targets
        for label, objective, steps, batch in rows(args)
    ]
    print(table(records))
    if args.json is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "results": records}, indent=2))


if __name__ == "__main__":
    main()
