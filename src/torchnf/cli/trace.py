"""``torchnf trace RUN``: the KL between the target and the base after each layer of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchnf.cli.common import integer, nonempty_str, seed_int, table
from torchnf.core.flow import Flow
from torchnf.data.targets import TARGETS
from torchnf.diagnostics.kl import KLEstimate
from torchnf.diagnostics.trace import trace, trace_layers
from torchnf.train.checkpoint import checkpoint_dir, load, read_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trace`` to the ``torchnf`` command's subparsers."""
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
    p.add_argument(
        "--target",
        type=nonempty_str,
        default=None,
        help="target of known density (default: the run's)",
    )
    p.add_argument(
        "-n",
        "--n-samples",
        type=integer(2),
        default=20000,
        help="samples of the target (at least 2, for a standard error)",
    )
    p.add_argument("--seed", type=seed_int, default=1, help="seed of the samples")
    p.add_argument(
        "-o",
        "--output",
        type=nonempty_str,
        default=None,
        metavar="FILE",
        help="the plot's PNG file",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``torchnf trace``: a row per layer, and the plot."""
    if args.output is not None and Path(args.output).suffix.lower() != ".png":
        raise ValueError(f"{args.output}: expected a .png output file")
    if args.target is not None and args.target not in TARGETS:
        raise ValueError(f"unknown target {args.target!r}; expected one of {sorted(TARGETS)}")
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
    print(table(["after layer", f"KL({name} || flow), nats"], rows))
    output = Path(args.output) if args.output else checkpoint_dir(args.run) / "trace.png"
    plot_trace(estimates, labels, output, f"{type(flow).__name__} on {name}")
    print(f"wrote {output}")
    return 0


def trace_labels(flow: Flow) -> list[str]:
    """Labels of the trace's points: ``start``, then ``k: LayerClass`` for each layer."""
    return ["start"] + [f"{i + 1}: {type(b).__name__}" for i, b in enumerate(trace_layers(flow))]


def plot_trace(
    estimates: list[KLEstimate], labels: list[str], path: str | Path, title: str
) -> Path:
    """Plot a trace (KL ± 2 s.e. against the layer) to a PNG file.

    Arguments:
        estimates: the KL after each layer, from :func:`~torchnf.diagnostics.trace`.
        labels: the points' labels, from :func:`trace_labels`.
        path: the PNG file.
        title: the plot's title.

    Returns:
        The path written.
    """
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
