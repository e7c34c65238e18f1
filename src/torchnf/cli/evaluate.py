"""``torchnf evaluate``: the mean negative log-likelihood of data under a trained run."""

from __future__ import annotations

import argparse

import torch

from torchnf.cli.common import (
    DEFAULT_DEVICE,
    nonempty_str,
    positive_int,
    resolve_data,
    resolve_device,
    seed_int,
)
from torchnf.data.images import load_images
from torchnf.data.loaders import check_data
from torchnf.diagnostics.bits import bits_per_dim
from torchnf.train.checkpoint import load
from torchnf.train.loop import evaluate_nll


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="mean negative log-likelihood of data under a trained run",
        description=(
            "Print the mean NLL of the points in DATA under the flow saved in RUN, in nats and "
            "in nats per dimension."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `torchnf train`")
    p.add_argument(
        "--data",
        type=nonempty_str,
        required=True,
        help="a .npy/.csv file of points, a built-in data set name, or image data ('digits', "
        "an MNIST path): bits/dim of its test split",
    )
    p.add_argument(
        "--n-points", type=positive_int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument("--seed", type=seed_int, default=1, help="seed of a built-in data set's points")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to evaluate on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf evaluate``: mean NLL of data under a saved flow."""
    device = resolve_device(args.device)
    flow = load(args.run, device=device)
    if flow.context_size:
        raise ValueError(f"{args.run}: the model is conditional; evaluate it from Python")
    dtype = next(iter(flow.parameters())).dtype
    images = load_images(args.data, "test")
    if images is not None:
        test = images[0].to(device, dtype)
        check_data(test, flow.event_shape, f"images in {args.data}")
        bits = bits_per_dim(flow, test, generator=torch.Generator().manual_seed(args.seed))
        print(f"{bits:.6f} bits/dim over the {len(test)} test images of {args.data}")
        return
    data = resolve_data(args.data, args.n_points, args.seed)
    check_data(data, flow.event_shape, f"data in {args.data}")
    nll = evaluate_nll(flow, data.to(device, dtype))
    dims = data.shape[1:].numel()
    print(
        f"mean NLL: {nll:.6f} nats ({nll / dims:.6f} nats per dimension) "
        f"over {len(data)} points of {args.data}"
    )
