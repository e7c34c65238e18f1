"""``torchnf check``: :func:`~torchnf.diagnostics.check` on every registered layer and model."""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch

from torchnf.cli.common import nonnegative_float, positive_float, seed_int, table
from torchnf.core import registry
from torchnf.core.bijector import Bijector
from torchnf.diagnostics.check import CheckReport, check

#: Context size of the conditional examples (as in the contract test).
CONTEXT_SIZE = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to the ``torchnf`` command's subparsers."""
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
    p.add_argument(
        "--atol",
        type=positive_float,
        default=1e-6,
        help="tolerance on each relative error, a positive number",
    )
    p.add_argument(
        "--perturb",
        type=nonnegative_float,
        default=0.2,
        help="std of the parameter noise (0: the initial parameters)",
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed of the parameters and test points"
    )
    p.set_defaults(func=run)


def example_instance(
    entry: registry.Entry, context_size: int, perturb: float, seed: int
) -> Bijector:
    """The entry's example in float64, its parameters perturbed.

    Arguments:
        entry: a registered layer or model.
        context_size: the context size of the example (0: unconditional).
        perturb: the standard deviation of the Gaussian noise added to each parameter.
        seed: the seed of the example and of the noise.

    Returns:
        The example.
    """
    torch.manual_seed(seed)
    bijector = entry.example(context_size)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in bijector.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bijector.double()


def run(args: argparse.Namespace) -> int:
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
    print(table(header, rows))
    print(f"{len(rows) - failed} of {len(rows)} passed (relative errors, atol {args.atol:g})")
    return 1 if failed else 0
