"""``torchnf evaluate``: the mean negative log-likelihood of data under a trained run (for a
run with discrete columns, its discrete-scale bounds), or, with ``--importance N``, importance
sampling of a target density with the run's flow as the proposal (log Z with its standard
error, the ESS and the Pareto k-hat)."""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor

from torchnf.cli.common import (
    DEFAULT_DEVICE,
    integer,
    nonempty_str,
    positive_int,
    resolve_data,
    resolve_device,
    resolve_target,
    seed_int,
)
from torchnf.cli.vi import summary
from torchnf.data.images import load_images
from torchnf.data.loaders import check_data
from torchnf.diagnostics.bits import bits_per_dim
from torchnf.diagnostics.importance import importance_sample
from torchnf.models.discrete import Dequantized, discrete_nll
from torchnf.train.checkpoint import load, read_config
from torchnf.train.loop import evaluate_nll


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="mean negative log-likelihood of data under a trained run, or log Z of a target",
        description=(
            "Print the mean NLL of the points in DATA under the flow saved in RUN, in nats and "
            "in nats per dimension; or, with --importance N, estimate the log-normalizer log Z "
            "of a target density by importance sampling with N draws of the flow (the run's own "
            "target for a `torchnf vi` run), with its standard error, the effective sample "
            "size and the Pareto k-hat (below 0.5 good, 0.5 to 0.7 usable, 0.7 and above "
            "unreliable)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `torchnf train`")
    p.add_argument(
        "--data",
        type=nonempty_str,
        default=None,
        help="a .npy/.csv file of points, a built-in data set name, or image data ('digits', "
        "an MNIST path): bits/dim of its test split",
    )
    p.add_argument(
        "--importance",
        type=integer(2),
        default=None,
        metavar="N",
        help="importance-sample the target with N draws of the flow, instead of --data",
    )
    p.add_argument(
        "--target",
        type=nonempty_str,
        default=None,
        help="with --importance: a built-in energy or FILE.py:FUNCTION (default: the run's)",
    )
    p.add_argument(
        "--n-points", type=positive_int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument("--seed", type=seed_int, default=1, help="seed of a built-in data set's points")
    p.add_argument(
        "--iw-samples",
        type=integer(1),
        default=16,
        metavar="S",
        help="a run with discrete columns (`train --discrete-columns`): dequantization draws "
        "per point of its NLL bounds, the ELBO and the tighter importance-weighted one",
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to evaluate on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf evaluate``: mean NLL of data under a saved flow."""
    if (args.data is None) == (args.importance is None):
        raise ValueError("expected --data (an NLL) or --importance N (log Z), one of them")
    device = resolve_device(args.device)
    flow = load(args.run, device=device)
    if flow.context_size:
        raise ValueError(f"{args.run}: the model is conditional; evaluate it from Python")
    if args.importance is not None:
        spec = args.target or read_config(args.run).get("target")
        if spec is None:
            raise ValueError(f"{args.run}: not a `torchnf vi` run; name the target with --target")
        target, _ = resolve_target(spec, flow.input_size)
        estimate = importance_sample(flow, target, args.importance, seed=args.seed)
        print(f"{spec}: {summary(estimate, target)}")
        return
    dtype = next(iter(flow.parameters())).dtype
    images = load_images(args.data, "test")
    if images is not None:
        test = images[0].to(device, dtype)
        check_data(test, flow.event_shape, f"images in {args.data}")
        bits = bits_per_dim(flow, test, generator=torch.Generator().manual_seed(args.seed))
        print(f"{bits:.6f} bits/dim over the {len(test)} test images of {args.data}")
        return
    data = resolve_data(args.data, args.n_points, args.seed)
    if isinstance(flow, Dequantized):
        print(discrete_summary(flow, data.to(device, dtype), args))
        return
    check_data(data, flow.event_shape, f"data in {args.data}")
    nll = evaluate_nll(flow, data.to(device, dtype))
    dims = data.shape[1:].numel()
    print(
        f"mean NLL: {nll:.6f} nats ({nll / dims:.6f} nats per dimension) "
        f"over {len(data)} points of {args.data}"
    )


def discrete_summary(flow: Dequantized, data: Tensor, args: argparse.Namespace) -> str:
    """The discrete-scale NLL bounds of raw ``data`` under a :class:`Dequantized` run (see
    :func:`~torchnf.models.discrete.discrete_nll`), in nats and bits per point."""
    check_data(data, flow.raw_shape, f"data in {args.data}")
    generator = torch.Generator().manual_seed(args.seed)
    elbo, importance = discrete_nll(flow, data, args.iw_samples, generator=generator)
    return (
        f"discrete-scale NLL over {len(data)} points of {args.data}: ELBO bound {elbo:.6f} "
        f"nats ({elbo / math.log(2):.6f} bits), importance-weighted bound ({args.iw_samples} "
        f"draws) {importance:.6f} nats ({importance / math.log(2):.6f} bits)"
    )
