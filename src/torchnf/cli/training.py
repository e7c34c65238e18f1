"""What the training commands (``train``, ``vi``) share: the model options, the options of
``fit`` and of the run folder, and turning them into ``fit``'s arguments."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchnf.cli.common import (
    DEFAULT_DEVICE,
    max_norm,
    nonempty_str,
    patience_option,
    positive_float,
    positive_int,
    resolve_device,
    seed_int,
)
from torchnf.core import registry
from torchnf.train import distributed
from torchnf.train.hooks import OverfittingWarning
from torchnf.train.loop import COMPILE_MODES
from torchnf.train.run import RunFolder


def add_model_options(p: argparse.ArgumentParser, default_models: Sequence[str]) -> None:
    """``--model`` (and ``--list-models``) and the sizes of the model."""
    p.add_argument(
        "--model",
        type=nonempty_str,
        default=None,
        help=f"a registered model name, see `torchnf {p.prog.split()[-1]} --list-models` "
        f"(default: the first registered of {', '.join(default_models)})",
    )
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    p.add_argument(
        "--hidden-sizes",
        type=positive_int,
        nargs="+",
        default=[64, 64],
        help="widths of each conditioner network's hidden layers",
    )
    p.add_argument("--n-layers", type=positive_int, default=5, help="number of flow layers")
    p.add_argument(
        "--n-levels", type=positive_int, default=None, help="scales of an image model (Glow)"
    )
    p.add_argument("--n-steps", type=positive_int, default=None, help="steps per scale of Glow")
    p.add_argument(
        "--hidden-channels", type=positive_int, default=None, help="conv width of an image model"
    )


def add_fit_options(p: argparse.ArgumentParser, loss: str) -> None:
    """The optimizer, the run folder (checkpoints, resume, overwrite), early stopping on the
    validation ``loss``, the device and the output options."""
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=256, help="global batch size")
    p.add_argument(
        "--lr", type=positive_float, default=2e-3, help="Adam learning rate (cosine decay)"
    )
    p.add_argument(
        "--clip-grad",
        type=max_norm,
        default=5.0,
        help="max gradient norm, a positive number; 'none' trains without clipping",
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed of data, initialization and order"
    )
    p.add_argument("--out", type=nonempty_str, default="runs", help="directory holding the runs")
    p.add_argument(
        "--name", type=nonempty_str, default=None, help="run name (default: <data>-<model>)"
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to train on")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads of torch (default: 1 for data of at most 100 features, where more "
        "threads only add overhead to the small matrix products; otherwise torch's default)",
    )
    p.add_argument("--log-every", type=positive_int, default=100, help="steps between log records")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help="steps between checkpoints (a checkpoint is also written at the end, every "
        "--checkpoint-minutes, and on Ctrl-C or SIGTERM)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=positive_float,
        default=10.0,
        help="minutes of training between checkpoints",
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument(
        "--resume",
        action="store_true",
        help="continue the run OUT/NAME from its checkpoint (the same model, config and data, "
        "or it refuses)",
    )
    runs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUT/NAME; the earlier run stays until the new one completes",
    )
    p.add_argument(
        "--patience",
        type=patience_option,
        default="auto",
        help=f"stop when the validation {loss} has not improved for this many log intervals, "
        "and keep the best validation weights ('auto': 10 when fitting data with a validation "
        "split; 'none': train all steps, keep the last weights)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=False,
        choices=COMPILE_MODES,
        help="compile the training step with torch.compile, in this mode (bare --compile: "
        "'default'); 'reduce-overhead' also replays it as CUDA graphs on a GPU, the fastest "
        "training mode there",
    )
    p.add_argument(
        "--conditioner-dtype",
        choices=["bfloat16", "float16"],
        default=None,
        help="train with the conditioner networks in this precision (the flow stays exact; "
        "faster on GPU tensor cores)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def fit_options(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``fit``'s keyword arguments from the options of :func:`add_fit_options`."""
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "clip_grad": args.clip_grad,
        "seed": args.seed,
        "log_every": min(args.log_every, args.steps),
        "progress": not args.quiet,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_minutes": args.checkpoint_minutes,
        "patience": args.patience,
        "device": device,
        "compile": args.compile,
        "conditioner_dtype": getattr(torch, args.conditioner_dtype)
        if args.conditioner_dtype
        else None,
    }


def run_training(
    args: argparse.Namespace, body: Callable[[argparse.Namespace, torch.device], None]
) -> None:
    """Run a training command's ``body(args, device)``: ``--list-models`` instead, or the
    body on this rank's device (joining the ``torchrun`` process group), restoring torch's
    thread count and leaving the group afterwards."""
    if args.list_models:
        print("\n".join(e.name for e in registry.entries("model")))
        return
    device = distributed.setup(resolve_device(args.device))
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _one_line(f"torchnf {args.command}", warnings.showwarning)
            body(args, device)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown()


def _one_line(prefix: str, show: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints an :class:`OverfittingWarning` as one line,
    ``PREFIX: warning: MESSAGE``, and leaves other warnings to ``show``."""

    def one_line(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
        if issubclass(category, OverfittingWarning):
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kw)

    return one_line


def run_folder(args: argparse.Namespace, default_name: str, main: bool) -> RunFolder:
    """The run folder ``OUT/NAME`` in the mode ``--resume`` / ``--overwrite`` ask for."""
    path = Path(args.out) / (args.name or default_name)
    return RunFolder(path, resume=args.resume, overwrite=args.overwrite, main=main)
