"""``torchnf vi``: fit a flow to an unnormalized density by reverse KL and write a run folder.

The target is a built-in energy (the potentials U1-U4 of Rezende & Mohamed 2015 and every
built-in target of known density, each with its known log-normalizer) or a user's function,
``FILE.py:FUNCTION``. The run folder is ``train``'s (checkpoint, ``config.json``,
``metrics.jsonl``, plots; ``--resume`` and ``--overwrite`` as there). At the end, importance
sampling with the trained flow as proposal estimates log Z (with its standard error, the ESS
and the Pareto k-hat), and, for an energy whose log Z is known, the exact KL(q || p).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from torchnf.cli.common import (
    build_model,
    first_available,
    integer,
    model_entry,
    nonempty_str,
    positive_int,
    resolve_target,
)
from torchnf.cli.training import (
    add_fit_options,
    add_model_options,
    fit_options,
    run_folder,
    run_training,
)
from torchnf.core import registry
from torchnf.core.flow import Flow
from torchnf.diagnostics.importance import ImportanceEstimate, importance_sample
from torchnf.train import distributed
from torchnf.train.fit import fit

#: Models tried in order when ``--model`` is not given.
DEFAULT_MODELS = ("RealNVP", "NSF")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``vi`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "vi",
        help="fit a flow to an unnormalized density (variational inference)",
        description=(
            "Fit a flow q to an unnormalized density p~ by minimizing the reverse KL, "
            "E_q[log q - log p~], with samples of q alone, and write OUT/NAME/ as `train` does. "
            "Then estimate log Z by importance sampling with q as the proposal."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--target",
        type=nonempty_str,
        required=True,
        help="a built-in energy (u1, u2, u3, u4 or a built-in data set's name; see "
        "torchnf.data.energies) or FILE.py:FUNCTION, a function of (n, D) points returning "
        "their unnormalized log-density (n,)",
    )
    p.add_argument(
        "--dim", type=positive_int, default=None, help="the dimension D of a FILE.py target"
    )
    p.add_argument(
        "--anneal-steps",
        type=positive_int,
        default=None,
        help="anneal the weight beta of log p~ from 0.01 to 1 over this many steps",
    )
    p.add_argument(
        "--path-gradient",
        action="store_true",
        help="the path-derivative ('sticking the landing') gradient estimator",
    )
    p.add_argument(
        "--importance",
        type=integer(2),
        default=20000,
        help="samples of q for the final importance-sampling estimate of log Z",
    )
    add_model_options(p, DEFAULT_MODELS)
    add_fit_options(p, loss="reverse KL")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf vi``: fit, estimate log Z, write the run folder."""
    run_training(args, _vi)


def _vi(args: argparse.Namespace, device: torch.device) -> None:
    target, dim = resolve_target(args.target, args.dim)
    models = [e.name for e in registry.entries("model")]
    model_name = model_entry(args.model or first_available(DEFAULT_MODELS, models, "model")).name
    torch.manual_seed(args.seed)
    if args.threads is not None or dim <= 100:
        torch.set_num_threads(args.threads or 1)
    known = getattr(getattr(target, "target", None), "circular", None)  # a built-in's angles
    flow = build_model(model_name, torch.Size([dim]), args, circular=known)
    name = args.target.rpartition(":")[2] if ":" in args.target else args.target
    main_rank = distributed.rank() == 0
    folder = run_folder(args, f"vi-{name}-{model_name}".lower(), main_rank)
    tic = time.perf_counter()
    with folder:
        fit(
            flow,
            target=target,
            anneal_steps=args.anneal_steps,
            path_gradient=args.path_gradient,
            run=folder,
            metadata={"target": args.target, "input_size": dim, "seed": args.seed},
            **fit_options(args, device),
        )
        if not main_rank:
            return
        estimate = importance_sample(flow, target, args.importance, seed=args.seed)
        plots = [] if args.no_plots else write_plots(flow, target, folder.records(), folder.dir)
    if not args.quiet:
        print(
            f"{model_name} on {args.target} after {folder.records()[-1]['step']} steps in "
            f"{time.perf_counter() - tic:.0f} s: {summary(estimate, target)}; wrote "
            f"{folder.path}/ (model.safetensors, config.json, metrics.jsonl"
            + "".join(f", {p.name}" for p in plots)
            + ")"
        )


def summary(estimate: ImportanceEstimate, target: Any) -> str:
    """One line: log Z +- s.e., ESS, k-hat, and the exact KL(q || p) when log Z is known."""
    n = len(estimate.log_weights)
    line = (
        f"log Z = {estimate.log_evidence:.4f} +- {estimate.stderr:.4f}, "
        f"ESS {estimate.ess:.0f} of {n}, k-hat {estimate.pareto_k:.2f}"
    )
    known = getattr(target, "log_normalizer", None)
    if known is not None:
        kl = float(-estimate.log_weights.mean()) + known
        line += f"; exact log Z = {known:.4f}, KL(q || p) = {kl:.4f} nats"
    return line


def write_plots(flow: Flow, target: Any, records: list[dict[str, float]], run: Path) -> list[Path]:
    """The training curve and, for a 2-D target, its density next to the flow's."""
    from torchnf import plotting

    flow.eval()
    paths = [plotting.plot_history(records, run / "loss.png")]
    if flow.event_shape == (2,):
        log_prob = target.log_prob if hasattr(target, "log_prob") else target
        paths.append(plotting.plot_fit_to_target(flow, log_prob, run / "density.png"))
    return paths
