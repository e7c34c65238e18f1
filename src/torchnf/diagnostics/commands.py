"""The diagnostics subcommands of ``torchnf``: ``check``, ``bench`` and ``trace``.

``torchnf check`` runs :func:`~torchnf.diagnostics.check` on every registered layer and
model; ``torchnf bench`` trains models on targets of known density and reports their KL;
``torchnf trace RUN`` shows the KL after each layer of a trained run. Each command function
takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from torchnf.core import registry
from torchnf.core.bijector import Bijector
from torchnf.data.targets import TARGETS, get_target
from torchnf.diagnostics.check import CheckReport, check
from torchnf.diagnostics.kl import KLEstimate, kl_divergence
from torchnf.diagnostics.trace import trace, trace_layers

#: Context size of the conditional examples (as in the contract test).
CONTEXT_SIZE = 3


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check``, ``bench`` and ``trace`` to the ``torchnf`` command's subparsers."""
    _add_check(subparsers)
    _add_bench(subparsers)
    _add_trace(subparsers)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to align in a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# -- check ------------------------------------------------------------------------------------
def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="check every registered layer and model (inverse, log-det vs autograd)",
        description=(
            "Run torchnf.diagnostics.check on the small example of every registered layer and "
            "model (or the NAMEs given), with and without context where supported, in float64, "
            "with parameters perturbed away from their initial values as in the contract test. "
            "Prints a table of relative errors; exits with status 1 if any check fails."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these layers/models")
    p.add_argument("--kind", choices=["layer", "model"], default=None, help="only this kind")
    p.add_argument("--atol", type=float, default=1e-6, help="tolerance on each relative error")
    p.add_argument("--perturb", type=float, default=0.2, help="std of the parameter noise")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and test points")
    p.set_defaults(func=check_command)


def example_instance(
    entry: registry.Entry, context_size: int, perturb: float, seed: int
) -> Bijector:
    """The entry's example, its parameters perturbed by ``perturb * N(0, 1)``, in float64."""
    torch.manual_seed(seed)
    bijector = entry.example(context_size)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in bijector.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bijector.double()


def check_command(args: argparse.Namespace) -> int:
    """``torchnf check``: a row per registered example (and its conditional variant)."""
    selected = registry.entries(args.kind)
    if args.names:
        wanted = {registry.get(name).name for name in args.names}  # unknown names: ValueError
        selected = [e for e in selected if e.name in wanted]
    header = ["name", "kind", "context", *CheckReport("", 0).errors(), "time (s)", "result"]
    rows, failed = [], 0
    for entry in selected:
        for context_size in (0, CONTEXT_SIZE) if entry.conditional else (0,):
            tic = time.perf_counter()
            try:
                bijector = example_instance(entry, context_size, args.perturb, args.seed)
                report = check(bijector, atol=args.atol, seed=args.seed)
                errors = [f"{v:.1e}" for v in report.errors().values()]
                result = "ok" if report.passed else "FAIL: " + "; ".join(report.failures)
            except Exception as error:  # a crash is a failure of that row, not of the command
                errors = ["-"] * len(header[3:-2])
                where = traceback.extract_tb(error.__traceback__)[-1]
                result = (
                    f"FAIL: {type(error).__name__}: {error} "
                    f"({Path(where.filename).name}:{where.lineno})"
                )
            failed += result != "ok"
            seconds = f"{time.perf_counter() - tic:.2f}"
            rows.append([entry.name, entry.kind, str(context_size), *errors, seconds, result])
    print(_table(header, rows))
    print(f"{len(rows) - failed} of {len(rows)} passed (relative errors, atol {args.atol:g})")
    return 1 if failed else 0


# -- bench ------------------------------------------------------------------------------------
def _vector_models() -> list[str]:
    """Registered models built from an ``input_size`` (the ones the targets fit)."""
    import inspect

    return [
        e.name
        for e in registry.entries("model")
        if "input_size" in inspect.signature(e.cls).parameters
    ]


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--models", nargs="+", default=None, help="models (default: every vector model)")
    p.add_argument("--targets", nargs="+", default=None, help="targets (default: all built-in)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per pair")
    p.add_argument("--n-points", type=int, default=20000, help="training points per target")
    p.add_argument("--n-eval", type=int, default=20000, help="fresh samples for the KL")
    p.add_argument("--batch-size", type=int, default=256, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay)")
    p.add_argument("--n-layers", type=int, default=5, help="number of flow layers")
    p.add_argument(
        "--hidden-sizes", type=int, nargs="+", default=[64, 64], help="conditioner widths"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of data and initialization")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of torch")
    p.add_argument("--out", default="bench", help="directory of bench.json and bench.png")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    """``torchnf bench``: train every (model, target) pair; table, JSON and plot."""
    from torchnf.cli import build_model
    from torchnf.train.loop import fit

    models = [registry.get(m).name for m in args.models] if args.models else _vector_models()
    targets = [get_target(t) for t in (args.targets or TARGETS)]
    torch.set_num_threads(args.threads)
    records = []
    for target in targets:
        data = target.sample(args.n_points, seed=args.seed)
        entropy = KLEstimate.from_terms(-target.log_prob(target.sample(args.n_eval, seed=1)))
        for model in models:
            record = {"model": model, "target": target.name, "dim": target.dim}
            tic = time.perf_counter()
            try:
                torch.manual_seed(args.seed)
                flow = build_model(model, data.shape[1:], args)
                fit(
                    flow,
                    data,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=args.seed,
                    progress=False,
                )
                flow.eval()
                kl = kl_divergence(flow, target, args.n_eval, seed=args.seed + 1)
                record.update(kl=kl.value, kl_stderr=kl.stderr, nll=kl.value + entropy.value)
            except Exception as error:  # one failing pair must not stop the benchmark
                record["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
            record.update(entropy=entropy.value, seconds=time.perf_counter() - tic)
            records.append(record)
            print(" ".join(_bench_row(record)), flush=True)
    header = ["model", "target", "dim", "KL (nats)", "NLL", "entropy", "time (s)"]
    print(_table(header, [_bench_row(r) for r in records]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "bench.json").write_text(
        json.dumps({"settings": settings, "results": records}, indent=2) + "\n"
    )
    _plot_bench(records, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 1 if any("error" in r for r in records) else 0


def _bench_row(r: dict) -> list[str]:
    if "error" in r:
        kl, nll = f"failed: {r['error']}", "-"
    else:
        kl, nll = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}", f"{r['nll']:.3f}"
    entropy, seconds = f"{r['entropy']:.3f}", f"{r['seconds']:.0f}"
    return [r["model"], r["target"], str(r["dim"]), kl, nll, entropy, seconds]


def _plot_bench(records: list[dict], path: Path) -> None:
    from torchnf.plotting import _figure, _save

    models = list(dict.fromkeys(r["model"] for r in records))
    targets = list(dict.fromkeys(r["target"] for r in records))
    fig = _figure(1, (max(5.0, 0.9 * len(targets) * max(1, len(models)) ** 0.5 + 2), 3.8))
    ax = fig.axes[0]
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        done = [r for r in records if r["model"] == model and "kl" in r]
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


# -- trace ------------------------------------------------------------------------------------
def _add_trace(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trace",
        help="the KL after each layer of a trained run",
        description=(
            "Load the flow saved in RUN and estimate the KL between its target and the base "
            "distribution after each top-level layer (the data pushed through the first k "
            "layers, with their log-dets): which layers do the work. The target is the run's "
            "data set if it is a built-in target, else --target. Prints a table and writes a "
            "plot (RUN/trace.png unless -o)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `torchnf train`")
    p.add_argument("--target", default=None, help="target of known density (default: the run's)")
    p.add_argument("-n", "--n-samples", type=int, default=20000, help="samples of the target")
    p.add_argument("--seed", type=int, default=1, help="seed of the samples")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="the plot's PNG file")
    p.set_defaults(func=trace_command)


def trace_command(args: argparse.Namespace) -> int:
    """``torchnf trace``: a row per layer, and the plot."""
    from torchnf.train.checkpoint import checkpoint_dir, load, read_config

    flow = load(args.run)
    name = args.target or read_config(args.run).get("data")
    if name not in TARGETS:
        raise ValueError(
            f"{args.run}: the run's data {name!r} is not a target of known density; "
            f"pass --target with one of {sorted(TARGETS)}"
        )
    estimates = trace(flow, name, args.n_samples, args.seed)
    labels = trace_labels(flow)
    rows = [[label, str(kl)] for label, kl in zip(labels, estimates, strict=True)]
    print(_table(["after layer", f"KL({name} || flow), nats"], rows))
    output = Path(args.output) if args.output else checkpoint_dir(args.run) / "trace.png"
    plot_trace(estimates, labels, output, f"{type(flow).__name__} on {name}")
    print(f"wrote {output}")
    return 0


def trace_labels(flow) -> list[str]:
    """Labels of the trace's points: ``start``, then ``k: LayerClass`` for each layer."""
    return ["start"] + [f"{i + 1}: {type(b).__name__}" for i, b in enumerate(trace_layers(flow))]


def plot_trace(estimates: list[KLEstimate], labels: list[str], path: str | Path, title: str):
    """Plot a trace (KL ± 2 s.e. against the layer) to a PNG file."""
    from torchnf.plotting import _figure, _save

    fig = _figure(1, (max(4.5, 0.45 * len(labels) + 2), 3.6))
    ax = fig.axes[0]
    values = [max(e.value, 1e-4) for e in estimates]
    ax.errorbar(range(len(values)), values, yerr=[2 * e.stderr for e in estimates], marker="o")
    ax.set_yscale("log" if min(values) > 0 and max(values) / min(values) > 20 else "linear")
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize="small")
    ax.set_ylabel("KL to the base, nats")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = [
    "add_parsers",
    "bench_command",
    "check_command",
    "plot_trace",
    "trace_command",
    "trace_labels",
]
