"""``torchnf sample``: draw samples from a trained run and write them to a file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchnf.cli.common import (
    DEFAULT_DEVICE,
    nonempty_str,
    positive_float,
    positive_int,
    resolve_device,
    seed_int,
)
from torchnf.data.images import save_image_grid
from torchnf.data.loaders import SUFFIXES, save_array
from torchnf.models.image import ImageFlow
from torchnf.train.checkpoint import load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw N samples from the flow saved in RUN and write them to FILE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `torchnf train`")
    p.add_argument("-n", "--n-samples", type=positive_int, default=1000, help="number of samples N")
    p.add_argument(
        "-o",
        "--output",
        type=nonempty_str,
        required=True,
        metavar="FILE",
        help="output .npy or .csv file, or a .png image grid for image runs",
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="scale of the base draws, z ~ T z_0, a positive number",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=positive_int, default=65536, help="samples drawn per pass")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to sample on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf sample``: load a run, draw samples, write them."""
    output = Path(args.output)
    grid = output.suffix.lower() == ".png"
    if output.suffix.lower() not in SUFFIXES and not grid:
        raise ValueError(f"{output}: expected a .npy, .csv or .png output file")
    flow = load(args.run, device=resolve_device(args.device))
    if flow.context_size:
        raise ValueError(f"{args.run}: the model is conditional; sample it from Python")
    if grid and not isinstance(flow, ImageFlow):
        raise ValueError(f"{output}: a .png image grid needs an image run (--data digits, ...)")
    torch.manual_seed(args.seed)
    chunks = [
        flow.sample(min(args.batch_size, args.n_samples - start), temperature=args.temperature)
        for start in range(0, args.n_samples, args.batch_size)
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    if grid:
        save_image_grid(torch.cat(chunks).cpu(), output, flow.config["n_values"])
    else:
        save_array(torch.cat(chunks).cpu(), output)
    print(f"wrote {args.n_samples} samples to {output}")
