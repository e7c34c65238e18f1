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
    DEFAULT_DEVICE,
    build_model,
    check_batch_size,
    first_available,
    fraction,
    max_norm,
    model_entry,
    nonempty_str,
    positive_float,
    positive_int,
    resolve_data,
    resolve_device,
    seed_int,
)
from torchnf.core import registry
from torchnf.core.flow import Flow
from torchnf.data.images import load_images, save_image_grid
from torchnf.data.loaders import data_warnings, open_npy
from torchnf.data.targets import TARGETS
from torchnf.diagnostics.bits import bits_per_dim
from torchnf.layers.preprocessing import dequantize
from torchnf.train import distributed
from torchnf.train.fit import fit
from torchnf.train.loop import COMPILE_MODES
from torchnf.train.run import RunFolder

#: Points of a memory-mapped data set shown in the plots (the first ones).
PLOTTED_POINTS = 20000

#: Built-in data sets tried in order when ``--data`` is not given.
DEFAULT_DATA = ("moons", "ring")
#: Models tried in order when ``--model`` is not given.
DEFAULT_MODELS = ("NSF", "RealNVP")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``torchnf`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="fit a flow to data and write runs/<name>/",
        description=(
            "Fit a flow by maximum likelihood and write OUT/NAME/: the checkpoint "
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
        "--model",
        type=nonempty_str,
        default=None,
        help="a registered model name, see `torchnf train --list-models` "
        f"(default: the first registered of {', '.join(DEFAULT_MODELS)})",
    )
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    p.add_argument(
        "--n-points", type=positive_int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=256, help="global batch size")
    p.add_argument(
        "--lr", type=positive_float, default=2e-3, help="Adam learning rate (cosine decay)"
    )
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
    p.add_argument(
        "--clip-grad",
        type=max_norm,
        default=5.0,
        help="max gradient norm, a positive number; 'none' trains without clipping",
    )
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="fraction held out for validation, in [0, 1)",
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
        type=positive_int,
        default=None,
        help="stop when the validation NLL has not improved for this many log intervals, and "
        "keep the best validation weights (default: train all steps, keep the last)",
    )
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="integer-valued data: add uniform noise in [0, 1) to each point at each step, so "
        "the flow fits a density; its NLL bounds the discrete NLL from above (unit bins)",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``torchnf train``: fit, then write the run directory."""
    if args.list_models:
        print("\n".join(e.name for e in registry.entries("model")))
        return
    device = distributed.setup(resolve_device(args.device))
    threads = torch.get_num_threads()
    try:
        _train(args, device)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown()


def _train(args: argparse.Namespace, device: torch.device) -> None:
    data_name = args.data or first_available(DEFAULT_DATA, list(TARGETS), "data set")
    models = [e.name for e in registry.entries("model")]
    model_name = model_entry(args.model or first_available(DEFAULT_MODELS, models, "model")).name
    images = load_images(data_name, "train")
    if images is not None:  # several dequantized copies of the discrete training images
        if args.dequantize:
            raise ValueError("--dequantize is for integer-valued points; images always are")
        pixels, n_values = images
        copies = max(1, math.ceil(args.n_points / len(pixels)))
        data = dequantize(pixels, torch.Generator().manual_seed(args.seed), copies)
    elif Path(data_name).suffix.lower() == ".npy":
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
            if not (args.dequantize and warning.startswith("all values are integers")):
                print(f"torchnf train: warning: {warning}", file=sys.stderr)
    torch.manual_seed(args.seed)
    features = math.prod(data.shape[1:])
    if args.threads is not None or features <= 100:
        torch.set_num_threads(args.threads or 1)
    flow = build_model(model_name, torch.Size(data.shape[1:]), args, n_values)
    name = args.name or f"{Path(data_name).stem}-{model_name}".lower()
    folder = RunFolder(
        Path(args.out) / name, resume=args.resume, overwrite=args.overwrite, main=main_rank
    )
    tic = time.perf_counter()
    with folder:
        fit(
            flow,
            data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            clip_grad=args.clip_grad,
            val_fraction=args.val_fraction,
            seed=args.seed,
            log_every=min(args.log_every, args.steps),
            progress=not args.quiet,
            run=folder,
            checkpoint_every=args.checkpoint_every,
            checkpoint_minutes=args.checkpoint_minutes,
            patience=args.patience,
            dequantize=args.dequantize,
            device=device,
            compile=args.compile,
            conditioner_dtype=getattr(torch, args.conditioner_dtype)
            if args.conditioner_dtype
            else None,
            metadata={
                "data": data_name,
                "input_size": features,
                "seed": args.seed,
                "n_values": n_values,
            },
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
            else write_plots(flow, shown, records, folder.dir, args.seed, n_values)
        )
    if not args.quiet:
        last = records[-1] if records else {}
        nll = last.get("val_nll", last.get("train_nll", float("nan")))
        bound = " (an upper bound on the discrete NLL)" if args.dequantize else ""
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


def write_plots(
    flow: Flow,
    data: Tensor,
    records: list[dict[str, float]],
    run: Path,
    seed: int,
    n_values: int | None = None,
) -> list[Path]:
    """Write the run's PNG plots.

    Arguments:
        flow: the trained flow.
        data: the training data.
        records: the run's metrics records.
        run: the run directory.
        seed: the seed of the samples.
        n_values: the number of pixel values of image data (``None`` for other data).

    Returns:
        The paths written: the training curve, the learned density (1-D and 2-D data) and
        samples (an image grid for image data).
    """
    from torchnf import plotting

    flow.eval()
    paths = [plotting.plot_history(records, run / "loss.png")]
    if data.dim() == 2 and data.shape[1] <= 2:
        paths.append(plotting.plot_density(flow, data, run / "density.png"))
    torch.manual_seed(seed)
    if n_values is not None:
        return [*paths, save_image_grid(flow.sample(64).cpu(), run / "samples.png", n_values)]
    samples = flow.sample(min(len(data), 5000)).cpu()
    paths.append(plotting.plot_samples(samples, data[: len(samples)], run / "samples.png"))
    return paths
