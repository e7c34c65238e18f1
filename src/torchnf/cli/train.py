"""``torchnf train``: fit a registered model to data and write ``runs/<name>/``.

The run folder holds the checkpoint (``model.safetensors``, with the optimizer state, and
``config.json``), ``metrics.jsonl`` and the PNG plots. Under
``torchrun --nproc_per_node=N -m torchnf train ...`` training is distributed
(DistributedDataParallel; only rank 0 writes).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from torchnf.cli.common import (
    bounds_token,
    build_model,
    check_batch_size,
    first_available,
    fraction,
    integer,
    model_entry,
    nonempty_str,
    positive_int,
    resolve_data,
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
from torchnf.data.images import load_images, save_image_grid
from torchnf.data.loaders import data_warnings, load_array, open_npy
from torchnf.data.targets import TARGETS
from torchnf.diagnostics.bits import bits_per_dim
from torchnf.layers.circular import check_angles
from torchnf.layers.continuous import split_continuous
from torchnf.layers.preprocessing import dequantize
from torchnf.models.discrete import DEQUANTIZERS, Dequantized, check_columns, check_integers
from torchnf.train import distributed
from torchnf.train.fit import fit
from torchnf.train.loop import evaluate_nll
from torchnf.train.objectives import FlowMatching, Objective

#: Points of a memory-mapped data set shown in the plots (the first ones).
PLOTTED_POINTS = 20000

#: Built-in data sets tried in order when ``--data`` is not given.
DEFAULT_DATA = ("moons", "ring")
#: Models tried in order when ``--model`` is not given.
DEFAULT_MODELS = ("NSF", "RealNVP")
#: Training points on which a flow trained by flow matching reports its exact NLL.
FLOW_MATCHING_NLL_POINTS = 2000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="fit a flow to data and write runs/<name>/",
        description=(
            "Fit a flow by maximum likelihood (or a CNF by flow matching) and write OUT/NAME/: "
            "the checkpoint "
            "(model.safetensors, with the optimizer state, and config.json), metrics.jsonl and "
            "PNG plots "
            "(loss.png; density.png for 1-D and 2-D data; samples.png). Launch with "
            "`torchrun --nproc_per_node=N -m torchnf train ...` to train on N processes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        type=nonempty_str,
        default=None,
        help=f"a built-in data set ({', '.join(sorted(TARGETS)) or 'none loaded'}), a .npy/.csv "
        f"file of points, one per row (a .npy file is memory-mapped: each step reads its rows, so "
        f"it may be larger than memory), or images: 'digits' or an MNIST path (IDX, .gz, .npz or "
        f"a directory); images are dequantized, --n-points of them "
        f"(default: the first available of {', '.join(DEFAULT_DATA)})",
    )
    p.add_argument(
        "--context",
        type=nonempty_str,
        default=None,
        metavar="FILE",
        help="a .npy/.csv file of conditioning values, one row per row of --data (e.g. "
        "simulator outputs x for parameters theta): trains the conditional density "
        "p(data | context), an amortized posterior; the model is built with context_size = the "
        "file's columns, and contexts are standardized from the training rows",
    )
    p.add_argument(
        "--n-points", type=positive_int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="fraction held out for validation, in [0, 1)",
    )
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="integer-valued data: add uniform noise in [0, 1) to each point at each step, so "
        "the flow fits a density; its NLL bounds the discrete NLL from above (unit bins)",
    )
    p.add_argument(
        "--discrete-columns",
        type=integer(0),
        nargs="+",
        default=None,
        metavar="J",
        help="integer-valued columns (counts) of a .npy/.csv data set, the others continuous: "
        "they are dequantized (see --dequantizer) and the NLL is a bound on the mixed "
        "likelihood, probabilities on these columns (`torchnf evaluate` reports it)",
    )
    p.add_argument(
        "--categorical-columns",
        type=integer(0),
        nargs="+",
        default=None,
        metavar="J",
        help="categorical columns (codes 0..K-1, K counted from the data): each becomes "
        "ceil(log2 K) bits, dequantized like integer columns (binary argmax dequantization)",
    )
    p.add_argument(
        "--dequantizer",
        choices=DEQUANTIZERS,
        default=None,
        help="how discrete columns (every pixel of image data) are dequantized: uniform noise, "
        "or variational (a conditional spline flow q(u | x) trained jointly, a tighter bound) "
        "(default: uniform)",
    )
    p.add_argument(
        "--bounds",
        type=bounds_token,
        nargs="+",
        default=None,
        metavar="LOW:HIGH",
        help="the data's support, one token per dimension: LOW:HIGH, LOW: or :HIGH (a bound) "
        "or : (the real line), e.g. --bounds 0:1 0: : (comma-separated in one token also "
        "works: write --bounds=-1:1,0: when the first bound is negative); the model gets "
        "bounds=... (a BoundedSupport layer first), so its samples stay inside and points on "
        "or outside a bound have density 0; training data must lie strictly inside",
    )
    p.add_argument(
        "--circular",
        type=integer(0),
        nargs="+",
        default=None,
        metavar="COL",
        help="the columns that are angles, in radians in [-pi, pi) (e.g. --circular 0 2), for "
        "a model that takes them (CircularNSF: circular splines on those columns, a uniform "
        "base there); a built-in data set with angles (torus, cylinder) gives its own; data "
        "outside [-pi, pi) on an angle column is refused",
    )
    p.add_argument(
        "--objective",
        choices=["nll", "flow_matching"],
        default="nll",
        help="what training minimizes: nll (maximum likelihood) or flow_matching (for a "
        "continuous flow, --model CNF: regress its vector field on straight data-to-noise "
        "velocities, no ODE solve per step; the summary then reports the exact NLL through the "
        f"ODE on the first {FLOW_MATCHING_NLL_POINTS} training points)",
    )
    p.add_argument(
        "--ot",
        action="store_true",
        help="with --objective flow_matching: pair data and noise in each batch by minibatch "
        "optimal transport (straighter paths, fewer solver steps afterwards)",
    )
    add_model_options(p, DEFAULT_MODELS)
    add_fit_options(p, loss="NLL (or flow-matching loss)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf train``: fit, then write the run directory."""
    run_training(args, _train)


def _train(args: argparse.Namespace, device: torch.device) -> None:
    data_name = args.data or first_available(DEFAULT_DATA, list(TARGETS), "data set")
    models = [e.name for e in registry.entries("model")]
    model_name = model_entry(args.model or first_available(DEFAULT_MODELS, models, "model")).name
    discrete = bool(args.discrete_columns or args.categorical_columns or args.dequantizer)
    images = load_images(data_name, "train")
    if images is not None:  # several dequantized copies of the discrete training images
        if args.dequantize:
            raise ValueError("--dequantize is for integer-valued points; images always are")
        pixels, n_values = images
        copies = max(1, math.ceil(args.n_points / len(pixels)))
        if discrete:  # integer pixels: fit adds fresh noise each step (a Dequantized model)
            data = pixels
        else:
            data = dequantize(pixels, torch.Generator().manual_seed(args.seed), copies)
    elif Path(data_name).suffix.lower() == ".npy" and not discrete:
        data, n_values = open_npy(data_name), None  # memory-mapped, read batch by batch
    else:
        data, n_values = resolve_data(data_name, args.n_points, args.seed), None
    check_batch_size(len(data), args.val_fraction, args.batch_size)
    main_rank = distributed.rank() == 0
    if images is None:
        warnings = data_warnings(data)
        integers = any(w.startswith("all values are integers") for w in warnings)
        if args.dequantize and not integers:
            raise ValueError(f"--dequantize needs integer-valued data; {data_name} has fractions")
        for warning in warnings if main_rank else ():
            if not ((args.dequantize or discrete) and warning.startswith("all values are")):
                print(f"torchnf train: warning: {warning}", file=sys.stderr)
    torch.manual_seed(args.seed)
    features = math.prod(data.shape[1:])
    if args.threads is not None or features <= 100:
        torch.set_num_threads(args.threads or 1)
    known = TARGETS[data_name].circular if data_name in TARGETS else None
    if discrete:
        flow = dequantized_model(model_name, data, args, n_values)
        data = flow.encode(data)
    else:
        flow = build_model(model_name, torch.Size(data.shape[1:]), args, n_values, known)
    if getattr(flow, "circular", None):
        check_angles(data, flow.circular)
    context = None
    if args.context is not None:
        context = load_context(args.context, len(data), images is not None)
        flow = conditional_model(flow, model_name, context.shape[1])
    if args.bounds is not None:
        check_inside(data, flow)
    objective = training_objective(args, flow, model_name)
    folder = run_folder(args, f"{Path(data_name).stem}-{model_name}".lower(), main_rank)
    tic = time.perf_counter()
    with folder:
        fit(
            flow,
            data,
            context,
            val_fraction=args.val_fraction,
            run=folder,
            objective=objective,
            dequantize=args.dequantize or None,  # None: a Dequantized model's own columns
            metadata={
                "data": data_name,
                "input_size": features,
                "seed": args.seed,
                "n_values": n_values,
                "context": args.context,
            },
            **fit_options(args, device),
        )
        if not main_rank:
            return
        records = folder.records()  # the whole run's, those before a resume included
        shown = (
            data if isinstance(data, Tensor) else torch.from_numpy(np.array(data[:PLOTTED_POINTS]))
        )
        plots = (
            []
            if args.no_plots
            else write_plots(flow, shown, records, folder.dir, args.seed, n_values, context)
        )
    if not args.quiet:
        last = records[-1] if records else {}
        nll = last.get("val_nll", last.get("train_nll", float("nan")))
        bound = " (an upper bound on the discrete NLL)" if args.dequantize or discrete else ""
        if objective != "nll":  # flow matching reports no NLL: compute it through the ODE
            n = min(len(shown), FLOW_MATCHING_NLL_POINTS)
            dtype = next(flow.parameters()).dtype
            rows = None if context is None else context[:n].to(device, dtype)
            nll = evaluate_nll(flow, shown[:n].to(device, dtype), rows)
            loss = last.get("val_flow_matching", last.get("train_flow_matching", float("nan")))
            bound += f" on the first {n} training points (flow-matching loss {loss:.4f})"
        print(
            f"{model_name} on {data_name}: NLL {nll:.4f} nats{bound} "
            f"({nll / features:.4f} per dimension) after step {last.get('step', 0)} in "
            f"{time.perf_counter() - tic:.0f} s; wrote {folder.path}/ "
            f"(model.safetensors, config.json, metrics.jsonl"
            + "".join(f", {p.name}" for p in plots)
            + ")"
        )
        if images is not None:
            test = load_images(data_name, "test")[0]
            bits = bits_per_dim(flow, test.to(device), generator=torch.Generator().manual_seed(0))
            print(f"test bits/dim on {data_name}: {bits:.4f} over {len(test)} images")


def training_objective(args: argparse.Namespace, flow: Flow, model_name: str) -> str | Objective:
    """``fit``'s objective from ``--objective`` and ``--ot``, refusing a combination that
    cannot train (before any work)."""
    if args.objective != "flow_matching":
        if args.ot:
            raise ValueError("--ot pairs data and noise for --objective flow_matching")
        return args.objective
    try:
        split_continuous(flow)
    except ValueError:
        raise ValueError(
            f"--objective flow_matching trains the vector field of a continuous flow; "
            f"{model_name} is not one (use --model CNF, or --objective nll)"
        ) from None
    if args.ot and args.context is not None:
        raise ValueError("--ot is for unconditional flows; drop it with --context")
    return FlowMatching(ot=args.ot, seed=args.seed)


def dequantized_model(
    model_name: str, data: Tensor, args: argparse.Namespace, n_values: int | None
) -> Dequantized:
    """``model_name`` inside a :class:`~torchnf.models.Dequantized` for the columns that
    ``--discrete-columns`` and ``--categorical-columns`` name (all with ``--dequantize``),
    after checking them (in range, distinct, integer-valued); ``K`` of a categorical column
    is its largest code plus one. Images of ``n_values`` pixel values (``--dequantizer``
    alone) get the model's :class:`~torchnf.models.ImageFlow` inside, every pixel discrete."""
    if n_values is not None:
        if args.discrete_columns or args.categorical_columns:
            raise ValueError("images take --dequantizer alone: every pixel is discrete")
        inner = build_model(model_name, torch.Size(data.shape[1:]), args, n_values)
        config = {k: v for k, v in inner.config.items() if k != "input_shape"}
        shape = list(data.shape[1:])
        return Dequantized(shape, "ImageFlow", config, dequantizer=args.dequantizer)
    if data.dim() != 2:
        raise ValueError("--discrete-columns, --categorical-columns and --dequantizer are for rows")
    for option in ("--context", "--bounds", "--circular"):
        value = getattr(args, option[2:])
        if value is not None:
            raise ValueError(f"{option} cannot be combined with discrete or categorical columns")
    discrete, categorical = args.discrete_columns or [], args.categorical_columns or []
    if args.dequantize and (discrete or categorical):
        raise ValueError("--dequantize makes every column discrete; drop it or name the columns")
    if args.dequantize:
        discrete = list(range(data.shape[1]))
    if not (discrete or categorical):
        raise ValueError(
            "--dequantizer needs --discrete-columns, --categorical-columns or --dequantize"
        )
    check_columns(data.shape[1], discrete, categorical)
    check_integers(data, discrete)
    check_integers(data, categorical, "categorical")
    n_categories = [max(2, int(data[:, j].max()) + 1) for j in categorical]
    width = data.shape[1] + sum(math.ceil(math.log2(k)) - 1 for k in n_categories)
    inner = build_model(model_name, torch.Size([width]), args)
    config = {k: v for k, v in inner.config.items() if k != "input_size"}
    dequantizer = args.dequantizer or "uniform"
    return Dequantized(
        data.shape[1], model_name, config, discrete, categorical, n_categories, dequantizer
    )


def load_context(path: str, n_rows: int, images: bool) -> Tensor:
    """The ``--context`` file: ``(n_rows, k)`` finite values, one row per data row."""
    if images:
        raise ValueError("--context is for vector data (.npy/.csv), not images")
    context = load_array(path)
    if context.dim() != 2 or len(context) != n_rows:
        raise ValueError(
            f"{path}: expected one context row per data row, shape ({n_rows}, k), got "
            f"{tuple(context.shape)}"
        )
    return context


def check_inside(data: Tensor | np.ndarray, flow: Flow, chunk: int = 65536) -> None:
    """Refuse training data on or outside the ``--bounds`` (its log_prob would be -inf)."""
    support = flow.bijector[0]  # the BoundedSupport layer that --bounds put first
    dtype = next(flow.parameters()).dtype
    for start in range(0, len(data), chunk):
        rows = data[start : start + chunk]  # a tensor, or rows of a memory-mapped file
        rows = (rows if isinstance(rows, Tensor) else torch.from_numpy(np.array(rows))).to(dtype)
        outside = support(rows)[1] == -math.inf
        if outside.any():
            row = start + int(outside.nonzero()[0])
            raise ValueError(
                f"--bounds: data row {row}, {rows[row - start].tolist()}, is on or outside the "
                f"bounds {support.bounds}; expected every point strictly inside"
            )


def conditional_model(flow: Flow, model_name: str, context_size: int) -> Flow:
    """``flow``'s model rebuilt from its recorded config with ``context_size``."""
    if "context_size" not in getattr(flow, "config", {}):
        raise ValueError(f"--context: {model_name} takes no context; use RealNVP, MAF, NSF or CNF")
    return registry.build(model_name, {**flow.config, "context_size": context_size})


def write_plots(
    flow: Flow,
    data: Tensor,
    records: list[dict[str, float]],
    run: Path,
    seed: int,
    n_values: int | None = None,
    context: Tensor | None = None,
) -> list[Path]:
    """Write the run's PNG plots.

    Arguments:
        flow: the trained flow.
        data: the training data.
        records: the run's metrics records.
        run: the run directory.
        seed: the seed of the samples.
        n_values: the number of pixel values of image data (``None`` for other data).
        context: the training contexts of a conditional flow: the samples are then drawn one
            per context row (the first rows), next to the data of those rows.

    Returns:
        The paths written: the training curve, the learned density (1-D and 2-D
        unconditional data) and samples (an image grid for image data).
    """
    from torchnf import plotting

    flow.eval()
    paths = [plotting.plot_history(records, run / "loss.png")]
    if context is not None:
        torch.manual_seed(seed)
        rows = context[:5000].to(next(flow.parameters()).device)
        samples = flow.sample((), rows).cpu()
        return [*paths, plotting.plot_samples(samples, data[: len(samples)], run / "samples.png")]
    if data.dim() == 2 and data.shape[1] <= 2:
        paths.append(plotting.plot_density(flow, data, run / "density.png"))
    torch.manual_seed(seed)
    if n_values is not None:
        return [*paths, save_image_grid(flow.sample(64).cpu(), run / "samples.png", n_values)]
    samples = flow.sample(min(len(data), 5000)).cpu()
    paths.append(plotting.plot_samples(samples, data[: len(samples)], run / "samples.png"))
    return paths
