"""``torchnf bench``: train models on targets of known density and compare their KL."""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

from torchnf.cli.common import (
    build_model,
    check_batch_size,
    integer,
    model_entry,
    nonempty_str,
    positive_float,
    positive_int,
    seed_int,
    table,
)
from torchnf.core import registry
from torchnf.data.targets import TARGETS, get_target
from torchnf.diagnostics.kl import KLEstimate, kl_divergence
from torchnf.layers.continuous import ContinuousFlow
from torchnf.train.fit import fit

#: The fraction of each target's points that ``fit`` holds out for validation here.
VAL_FRACTION = 0.1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="train models on targets of known density and compare their KL",
        description=(
            "Train each MODEL on points of each TARGET with torchnf.fit, then estimate "
            "KL(target || model) = E[log p - log q] on fresh samples, with its standard error. "
            "Prints a Markdown table (KL ± s.e., NLL and the target's entropy, which is the best "
            "NLL possible, training time) and writes OUT/bench.json and OUT/bench.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        type=nonempty_str,
        nargs="+",
        default=None,
        help="models (default: every vector model)",
    )
    p.add_argument(
        "--targets",
        type=nonempty_str,
        nargs="+",
        default=None,
        help="targets (default: all built-in)",
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps per pair")
    p.add_argument(
        "--n-points", type=positive_int, default=20000, help="training points per target"
    )
    p.add_argument(
        "--n-eval",
        type=integer(2),
        default=20000,
        help="fresh samples for the KL (at least 2, for a standard error)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="batch size")
    p.add_argument(
        "--lr", type=positive_float, default=2e-3, help="Adam learning rate (cosine decay)"
    )
    p.add_argument("--n-layers", type=positive_int, default=5, help="number of flow layers")
    p.add_argument(
        "--hidden-sizes",
        type=positive_int,
        nargs="+",
        default=[64, 64],
        help="conditioner widths",
    )
    p.add_argument(
        "--objective",
        choices=["nll", "flow_matching"],
        default="nll",
        help="training objective: nll (maximum likelihood) or flow_matching (continuous flows "
        "only, e.g. CNF; the KL is then still exact, through the ODE)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of data and initialization")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads of torch")
    p.add_argument(
        "--out", type=nonempty_str, default="bench", help="directory of bench.json and bench.png"
    )
    p.set_defaults(func=run)


def vector_models() -> list[str]:
    """Registered models built from an ``input_size`` (the ones the targets fit)."""
    return [
        e.name
        for e in registry.entries("model")
        if "input_size" in inspect.signature(e.cls).parameters
    ]


def run(args: argparse.Namespace) -> int:
    """``torchnf bench``: train every (model, target) pair; table, JSON and plot."""
    models = [model_entry(m).name for m in args.models] if args.models else vector_models()
    targets = [get_target(t) for t in (args.targets or TARGETS)]
    unknown = [t.name for t in targets if not t.has_log_prob]
    if unknown:
        raise ValueError(f"expected targets of known density, got {unknown}")
    check_batch_size(args.n_points, VAL_FRACTION, args.batch_size)
    if args.objective == "flow_matching":
        for model in models:
            example = model_entry(model).example(0)
            if not any(isinstance(m, ContinuousFlow) for m in example.modules()):
                raise ValueError(
                    f"--objective flow_matching trains continuous flows; {model} is not one "
                    "(use --models CNF)"
                )
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        records = [_bench(model, target, args) for target in targets for model in models]
    finally:
        torch.set_num_threads(threads)
    header = ["model", "target", "dim", "KL (nats)", "NLL", "entropy", "time (s)"]
    print(table(header, [_row(r) for r in records]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "bench.json").write_text(
        json.dumps({"settings": settings, "results": records}, indent=2) + "\n"
    )
    _plot(records, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 1 if any("error" in r for r in records) else 0


def _bench(model: str, target: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``model`` on ``target``'s points and estimate its KL; print and return the record."""
    data = target.sample(args.n_points, seed=args.seed)
    entropy = KLEstimate.from_terms(-target.log_prob(target.sample(args.n_eval, seed=1)))
    record: dict[str, Any] = {"model": model, "target": target.name, "dim": target.dim}
    objective = getattr(args, "objective", "nll")
    if objective != "nll":
        record["objective"] = objective
    tic = time.perf_counter()
    try:
        torch.manual_seed(args.seed)
        flow = build_model(model, data.shape[1:], args, circular=target.circular)
        fit(
            flow,
            data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            val_fraction=VAL_FRACTION,
            seed=args.seed,
            progress=False,
            objective=objective,
        )
        flow.eval()
        kl = kl_divergence(flow, target, args.n_eval, seed=args.seed + 1)
        record.update(kl=kl.value, kl_stderr=kl.stderr, nll=kl.value + entropy.value)
    except Exception as error:  # one failing pair must not stop the benchmark
        record["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    record.update(entropy=entropy.value, seconds=time.perf_counter() - tic)
    print(" ".join(_row(record)), flush=True)
    return record


def _row(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        kl, nll = f"failed: {r['error']}", "-"
    else:
        kl, nll = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}", f"{r['nll']:.3f}"
    entropy, seconds = f"{r['entropy']:.3f}", f"{r['seconds']:.0f}"
    return [_label(r), r["target"], str(r["dim"]), kl, nll, entropy, seconds]


def _label(r: dict[str, Any]) -> str:
    """The model's name, with its objective when it is not maximum likelihood."""
    return r["model"] + (f" ({r['objective']})" if "objective" in r else "")


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    from torchnf.plotting import _figure, _save

    models = list(dict.fromkeys(_label(r) for r in records))
    targets = list(dict.fromkeys(r["target"] for r in records))
    fig = _figure(1, (max(5.0, 0.9 * len(targets) * max(1, len(models)) ** 0.5 + 2), 3.8))
    ax = fig.axes[0]
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        done = [r for r in records if _label(r) == model and "kl" in r]
        xs = [targets.index(r["target"]) + (i - (len(models) - 1) / 2) * width for r in done]
        kls = [max(r["kl"], 1e-3) for r in done]
        ax.bar(xs, kls, width, yerr=[r["kl_stderr"] for r in done], label=model, capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_ylabel("KL(target || model), nats")
    ax.set_title("KL benchmark (lower is better; bars floored at 1e-3)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    _save(fig, path)
