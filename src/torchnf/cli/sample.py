"""``torchnf sample``: draw samples from a trained run and write them to a file.

For a conditional run (``torchnf train --context``), ``--context FILE`` gives the observations:
``N`` samples are drawn for each of its ``M`` rows, and the output holds ``M * N`` rows, the
``N`` samples of context row 0 first, then those of row 1, and so on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from torchnf.cli.common import (
    DEFAULT_DEVICE,
    nonempty_str,
    positive_float,
    positive_int,
    resolve_device,
    seed_int,
)
from torchnf.core import registry
from torchnf.core.flow import Flow
from torchnf.data.images import save_image_grid
from torchnf.data.loaders import SUFFIXES, load_array, save_array
from torchnf.models.discrete import Dequantized
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
    p.add_argument(
        "-n",
        "--n-samples",
        type=positive_int,
        default=1000,
        help="number of samples N (per context row with --context)",
    )
    p.add_argument(
        "--context",
        type=nonempty_str,
        default=None,
        metavar="FILE",
        help="a conditional run's observations: a .npy/.csv file with one context per row; "
        "N samples are drawn per row and written row after row (those of row 0 first)",
    )
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
    context = _context(args, flow)
    n_values = _n_values(flow)
    if grid and n_values is None:
        raise ValueError(f"{output}: a .png image grid needs an image run (--data digits, ...)")
    torch.manual_seed(args.seed)
    if context is None:
        chunks = [
            flow.sample(min(args.batch_size, args.n_samples - start), temperature=args.temperature)
            for start in range(0, args.n_samples, args.batch_size)
        ]
    else:
        tensor = next(iter([*flow.parameters(), *flow.buffers()]))
        chunks = _conditional_samples(flow, context.to(tensor.device, tensor.dtype), args)
    output.parent.mkdir(parents=True, exist_ok=True)
    if grid:
        save_image_grid(torch.cat(chunks).cpu(), output, n_values)
    elif isinstance(flow, Dequantized):  # raw rows: integer and categorical columns decoded
        save_array(flow.decode(torch.cat(chunks)).cpu(), output)
    else:
        save_array(torch.cat(chunks).cpu(), output)
    per_row = "" if context is None else f" for each of {len(context)} context rows"
    print(f"wrote {args.n_samples} samples{per_row} to {output}")


def _n_values(flow: Flow) -> int | None:
    """The pixel values of an image run's flow (an :class:`ImageFlow`, or one inside a
    :class:`Dequantized`), else ``None``."""
    if isinstance(flow, ImageFlow):
        return flow.config["n_values"]
    if isinstance(flow, Dequantized) and registry.get(flow.config["model"]).cls is ImageFlow:
        return flow.config["model_config"]["n_values"]
    return None


def _context(args: argparse.Namespace, flow: Flow) -> Tensor | None:
    """The ``--context`` rows, checked against the run's flow (``None`` without it)."""
    if args.context is None:
        if flow.context_size:
            raise ValueError(
                f"{args.run}: the model is conditional; give --context FILE with one "
                f"context of shape {flow.context_shape} per row"
            )
        return None
    if not flow.context_size:
        raise ValueError(f"{args.run}: the model is unconditional; drop --context")
    if Path(args.output).suffix.lower() == ".png":
        raise ValueError("--context: a .png image grid is for unconditional image runs")
    context = load_array(args.context, dtype=torch.float64)
    if tuple(context.shape[1:]) != flow.context_shape:
        raise ValueError(
            f"{args.context}: expected contexts of shape (M, "
            f"{', '.join(map(str, flow.context_shape))}) for this run, got {tuple(context.shape)}"
        )
    return context


def _conditional_samples(flow: Flow, context: Tensor, args: argparse.Namespace) -> list[Tensor]:
    """``n`` samples per context row, row after row, in passes of about ``batch_size``."""
    n, chunks = args.n_samples, []
    rows = max(1, args.batch_size // n)
    for start in range(0, len(context), rows):
        block = context[start : start + rows]
        parts = [
            flow.sample(min(args.batch_size, n - first), block, temperature=args.temperature)
            for first in range(0, n, args.batch_size)
        ]  # each (m, rows, *event)
        samples = torch.cat(parts).transpose(0, 1)  # (rows, n, *event)
        chunks.append(samples.reshape(-1, *samples.shape[2:]))
    return chunks
