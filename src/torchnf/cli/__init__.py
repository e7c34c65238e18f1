"""The ``torchnf`` command: train a flow, sample from it, evaluate it, check and benchmark.

One module per subcommand (:mod:`~torchnf.cli.train`, :mod:`~torchnf.cli.sample`,
:mod:`~torchnf.cli.evaluate`, :mod:`~torchnf.cli.check`, :mod:`~torchnf.cli.bench`,
:mod:`~torchnf.cli.trace`), each with ``add_parser(subparsers)`` and ``run(args)``;
:mod:`~torchnf.cli.common` holds the option types and the helpers they share. Nothing in
the library below imports this package.

Every error is reported on one line, ``torchnf COMMAND: error: ...``, never a traceback: a
bad option value while parsing (exit status 2, before any work), anything refused later
(exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from torchnf.cli import bench, check, evaluate, sample, trace, train, vi
from torchnf.cli.common import build_model, resolve_data, resolve_device
from torchnf.train.loop import Interrupted

SUBCOMMANDS = (train, vi, sample, evaluate, check, bench, trace)


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command.

    Arguments:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the command fails or refuses its input, 2 for
        a bad option (or none given), 128 + the signal's number when interrupted (130 for
        Ctrl-C, 143 for SIGTERM).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad option already reported on one line
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except (ValueError, OSError) as error:
        print(f"torchnf {args.command}: error: {_one_line(str(error))}", file=sys.stderr)
        return 1
    except Interrupted as stop:  # SIGINT or SIGTERM during training, checkpoint written
        print(f"torchnf {args.command}: {stop}{_resume_hint(stop)}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        print(f"torchnf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, not bad input: still one line, with where it happened
        where = traceback.extract_tb(error.__traceback__)[-1]
        print(
            f"torchnf {args.command}: error: {type(error).__name__}: {_one_line(str(error))} "
            f"({Path(where.filename).name}:{where.lineno})",
            file=sys.stderr,
        )
        return 1
    return status or 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = Parser(
        prog="torchnf",
        description="Normalizing flows: train a model, sample from it, evaluate it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def _resume_hint(stop: Interrupted) -> str:
    if stop.run is None:
        return ""
    if stop.run.dir == stop.run.path:
        return "; continue it with --resume"
    return (
        f"; the earlier run in {stop.run.path} is intact; continue this one with "
        f"--name {stop.run.dir.name} --resume"
    )


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


__all__ = ["build_model", "build_parser", "main", "resolve_data", "resolve_device"]
