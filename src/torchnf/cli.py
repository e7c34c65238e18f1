"""The ``torchnf`` command: train a flow, sample from it, evaluate it.

``torchnf train`` fits a registered model to a built-in data set or a ``.npy``/``.csv`` file
and writes ``runs/<name>/`` (checkpoint, ``metrics.jsonl``, PNG plots); ``torchnf sample``
and ``torchnf evaluate`` load such a run. Errors are reported on one line, with a non-zero
exit status. Under ``torchrun --nproc_per_node=N -m torchnf train ...`` training is
distributed (DistributedDataParallel; only rank 0 writes).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from torchnf.core import registry
from torchnf.core.flow import Flow
from torchnf.data.images import load_images, save_image_grid
from torchnf.data.loaders import SUFFIXES, check_data, load_array, save_array
from torchnf.data.targets import TARGETS, get_target
from torchnf.diagnostics import commands as diagnostics_commands
from torchnf.diagnostics.bits import bits_per_dim
from torchnf.layers.preprocessing import dequantize
from torchnf.models.image import ImageFlow
from torchnf.train import distributed
from torchnf.train.checkpoint import load
from torchnf.train.loop import COMPILE_MODES, evaluate_nll, fit

#: Built-in data sets tried in order when ``--data`` is not given.
DEFAULT_DATA = ("moons", "ring")
#: Models tried in order when ``--model`` is not given.
DEFAULT_MODELS = ("NSF", "RealNVP")
#: Where the commands run unless told otherwise.
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except (ValueError, OSError) as error:
        print(f"torchnf {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"torchnf {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="torchnf",
        description="Normalizing flows: train a model, sample from it, evaluate it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(subparsers)
    add_sample_parser(subparsers)
    add_evaluate_parser(subparsers)
    diagnostics_commands.add_parsers(subparsers)
    return parser


# -- train ------------------------------------------------------------------------------------
def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fit a flow to data and write runs/<name>/",
        description=(
            "Fit a flow by maximum likelihood and write OUT/NAME/: the checkpoint "
            "(model.safetensors, config.json, training_state.pt), metrics.jsonl and PNG plots "
            "(loss.png; density.png for 1-D and 2-D data; samples.png). Launch with "
            "`torchrun --nproc_per_node=N -m torchnf train ...` to train on N processes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=None,
        help=f"a built-in data set ({', '.join(sorted(TARGETS)) or 'none loaded'}), a .npy/.csv "
        f"file of points, one per row, or images: 'digits' or an MNIST path (IDX, .gz, .npz or "
        f"a directory); images are dequantized, --n-points of them "
        f"(default: the first available of {', '.join(DEFAULT_DATA)})",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a registered model name, see `torchnf train --list-models` "
        f"(default: the first registered of {', '.join(DEFAULT_MODELS)})",
    )
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    p.add_argument(
        "--n-points", type=int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay)")
    p.add_argument(
        "--hidden-sizes",
        type=int,
        nargs="+",
        default=[64, 64],
        help="widths of each conditioner network's hidden layers",
    )
    p.add_argument("--n-layers", type=int, default=5, help="number of flow layers")
    p.add_argument("--n-levels", type=int, default=None, help="scales of an image model (Glow)")
    p.add_argument("--n-steps", type=int, default=None, help="steps per scale of Glow")
    p.add_argument("--hidden-channels", type=int, default=None, help="conv width of an image model")
    p.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction held out for validation"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialization and order")
    p.add_argument("--out", default="runs", help="directory holding the runs")
    p.add_argument("--name", default=None, help="run name (default: <data>-<model>)")
    p.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="torch device to train on",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: 1 for data of at most 100 features, where more "
        "threads only add overhead to the small matrix products; otherwise torch's default)",
    )
    p.add_argument("--log-every", type=int, default=100, help="steps between log records")
    p.add_argument(
        "--checkpoint-every", type=int, default=None, help="steps between checkpoints (and the end)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's checkpoint if it has one"
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
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> None:
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
    data_name = args.data or _first_available(DEFAULT_DATA, TARGETS, "data set")
    model_name = args.model or _first_available(
        DEFAULT_MODELS, {e.name: e for e in registry.entries("model")}, "model"
    )
    images = load_images(data_name, "train")
    if images is None:
        data, n_values = resolve_data(data_name, args.n_points, args.seed), None
    else:  # several dequantized copies of the discrete training images
        pixels, n_values = images
        copies = max(1, math.ceil(args.n_points / len(pixels)))
        data = dequantize(pixels, torch.Generator().manual_seed(args.seed), copies)
    torch.manual_seed(args.seed)
    if args.threads is not None or data.shape[1:].numel() <= 100:
        torch.set_num_threads(args.threads or 1)
    flow = build_model(model_name, data.shape[1:], args, n_values)
    name = args.name or f"{Path(data_name).stem}-{registry.get(model_name).name}".lower()
    run = Path(args.out) / name
    main_rank = distributed.rank() == 0
    if main_rank:
        run.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
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
        log_path=run / "metrics.jsonl",
        checkpoint_dir=run,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        device=device,
        compile=args.compile,
        conditioner_dtype=getattr(torch, args.conditioner_dtype)
        if args.conditioner_dtype
        else None,
        metadata={
            "data": data_name,
            "input_size": data.shape[1:].numel(),
            "seed": args.seed,
            "n_values": n_values,
        },
    )
    if not main_rank:
        return
    # The whole run's records, those before a resume included.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    plots = [] if args.no_plots else write_plots(flow, data, records, run, args.seed, n_values)
    if not args.quiet:
        last = records[-1] if records else {}
        nll = last.get("val_nll", last.get("train_nll", float("nan")))
        dims = data.shape[1:].numel()
        print(
            f"{registry.get(model_name).name} on {data_name}: NLL {nll:.4f} nats "
            f"({nll / dims:.4f} per dimension) after {args.steps} steps in "
            f"{time.perf_counter() - tic:.0f} s; wrote {run}/ "
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
    """The run's PNG plots: training curve, learned density (1-D/2-D), samples (an image
    grid for image data of ``n_values`` pixel values)."""
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


# -- sample -----------------------------------------------------------------------------------
def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw N samples from the flow saved in RUN and write them to FILE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `torchnf train`")
    p.add_argument("-n", "--n-samples", type=int, default=1000, help="number of samples N")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="output .npy or .csv file, or a .png image grid for image runs",
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="scale of the base draws, z ~ T z_0"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=65536, help="samples drawn per pass")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to sample on")
    p.set_defaults(func=sample_command)


def sample_command(args: argparse.Namespace) -> None:
    """``torchnf sample``: load a run, draw samples, write them."""
    output = Path(args.output)
    grid = output.suffix.lower() == ".png"
    if output.suffix.lower() not in SUFFIXES and not grid:
        raise ValueError(f"{output}: expected a .npy, .csv or .png output file")
    if args.n_samples < 1:
        raise ValueError(f"expected -n >= 1, got {args.n_samples}")
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


# -- evaluate ---------------------------------------------------------------------------------
def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
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
        required=True,
        help="a .npy/.csv file of points, a built-in data set name, or image data ('digits', "
        "an MNIST path): bits/dim of its test split",
    )
    p.add_argument(
        "--n-points", type=int, default=20000, help="points drawn from a built-in data set"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of a built-in data set's points")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="torch device to evaluate on")
    p.set_defaults(func=evaluate_command)


def evaluate_command(args: argparse.Namespace) -> None:
    """``torchnf evaluate``: mean NLL of data under a saved flow."""
    flow = load(args.run, device=resolve_device(args.device))
    if flow.context_size:
        raise ValueError(f"{args.run}: the model is conditional; evaluate it from Python")
    dtype = next(iter(flow.parameters())).dtype
    images = load_images(args.data, "test")
    if images is not None:
        test = images[0].to(args.device, dtype)
        check_data(test, flow.event_shape, f"images in {args.data}")
        bits = bits_per_dim(flow, test, generator=torch.Generator().manual_seed(args.seed))
        print(f"{bits:.6f} bits/dim over the {len(test)} test images of {args.data}")
        return
    data = resolve_data(args.data, args.n_points, args.seed)
    check_data(data, flow.event_shape, f"data in {args.data}")
    nll = evaluate_nll(flow, data.to(args.device, dtype))
    dims = data.shape[1:].numel()
    print(
        f"mean NLL: {nll:.6f} nats ({nll / dims:.6f} nats per dimension) "
        f"over {len(data)} points of {args.data}"
    )


# -- shared pieces ----------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """The torch device ``--device`` names, refused with a clear error where it does not
    exist here (e.g. CUDA with a CPU-only torch, or a GPU index past the last)."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"expected --device cpu, cuda or cuda:N, got {name!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_data(spec: str, n_points: int, seed: int) -> Tensor:
    """The data named by ``spec``: a ``.npy``/``.csv`` file, or a built-in data set's
    ``n_points`` seeded points. Returns a checked ``(N, *event_shape)`` tensor."""
    if Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        return load_array(spec)
    if spec not in TARGETS:
        raise ValueError(
            f"unknown data set {spec!r}; expected one of {sorted(TARGETS)} or a .npy/.csv file"
        )
    if n_points < 1:
        raise ValueError(f"expected --n-points >= 1, got {n_points}")
    return get_target(spec).sample(n_points, seed=seed)


def build_model(
    name: str, event_shape: torch.Size, args: argparse.Namespace, n_values: int | None = None
) -> Flow:
    """The registered model ``name`` for events of ``event_shape``, with the command's sizes
    (``--n-layers``, ``--hidden-sizes``, ``--n-levels``, ``--n-steps``, ``--hidden-channels``)
    where its constructor takes them; for discrete images of ``n_values`` pixel values, inside
    an :class:`~torchnf.models.ImageFlow` (logit preprocessing, flattening for vector models)."""
    entry = registry.get(name)
    if entry.kind != "model":
        names = [e.name for e in registry.entries("model")]
        raise ValueError(f"{entry.name} is a layer, not a model; expected one of {names}")
    accepted = inspect.signature(entry.cls).parameters
    options = {"n_layers": args.n_layers, "hidden_sizes": list(args.hidden_sizes)}
    for key in ("n_levels", "n_steps", "hidden_channels"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    kwargs = {k: v for k, v in options.items() if k in accepted}
    if n_values is not None:
        return ImageFlow(list(event_shape), entry.name, kwargs, n_values)
    if "input_size" in accepted:
        if len(event_shape) != 1:
            raise ValueError(f"{entry.name} models vectors; got points of shape {event_shape}")
        kwargs["input_size"] = event_shape[0]
    elif "input_shape" in accepted:
        kwargs["input_shape"] = list(event_shape)
    try:
        return entry.cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"cannot build {entry.name} from the command line: {error}") from None


def _first_available(preferred: Sequence[str], available: dict, what: str) -> str:
    for name in preferred:
        if name in available:
            return name
    if available:
        return sorted(available)[0]
    raise ValueError(f"no {what} is available")
