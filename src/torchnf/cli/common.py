"""Pieces the subcommands share: option types, device and data resolution, model building.

The option types are ``type=`` callables for :mod:`argparse`: each turns the option's text
into a value in its valid range or raises :class:`argparse.ArgumentTypeError`, so a bad value
is refused while parsing, before any work, as one line such as
``torchnf train: error: argument --clip-grad: expected a positive number or 'none', got 0``.
Floats are refused when they are NaN or infinite.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchnf.core import registry
from torchnf.core.flow import Flow
from torchnf.data.loaders import SUFFIXES, load_array
from torchnf.data.targets import TARGETS, get_target
from torchnf.models.image import ImageFlow

#: Where the commands run unless told otherwise.
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: The largest ``--seed``: seeds are offset by small integers and must stay below 2**64.
MAX_SEED = 2**63 - 1


# -- option types -----------------------------------------------------------------------------
def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An option type for integers in ``[minimum, maximum]``.

    Arguments:
        minimum: the smallest accepted value.
        maximum: the largest accepted value (``None``: no bound).

    Returns:
        A function from the option's text to the integer.

    Example:
        >>> integer(2)("3")
        3
    """
    if minimum == 1 and maximum is None:
        expected = "a positive integer"
    elif minimum == 0 and maximum is None:
        expected = "a non-negative integer"
    elif maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = f"integer>={minimum}"
    return parse


#: ``type=`` of counts and sizes: an integer >= 1.
positive_int = integer(1)
#: ``type=`` of seeds: an integer from 0 to :data:`MAX_SEED`.
seed_int = integer(0, MAX_SEED)


def _finite_float(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """``type=`` of rates, scales and tolerances: a finite number > 0.

    Example:
        >>> positive_float("2e-3")
        0.002
    """
    value = _finite_float(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """``type=`` of amounts that may be zero (e.g. a noise scale): a finite number >= 0.

    Example:
        >>> nonnegative_float("0")
        0.0
    """
    value = _finite_float(text, "a non-negative number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def fraction(text: str) -> float:
    """``type=`` of a held-out fraction: a number in ``[0, 1)``.

    Example:
        >>> fraction("0.1")
        0.1
    """
    value = _finite_float(text, "a fraction in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def max_norm(text: str) -> float | None:
    """``type=`` of ``--clip-grad``: a finite number > 0, or ``none`` (no clipping).

    Example:
        >>> max_norm("5"), max_norm("none")
        (5.0, None)
    """
    if text.strip().lower() == "none":
        return None
    value = _finite_float(text, "a positive number or 'none'")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'none', got {text}")
    return value


def patience_option(text: str) -> int | str | None:
    """``type=`` of ``--patience``: log intervals >= 1, ``auto`` (10 with a validation split)
    or ``none`` (train all steps).

    Example:
        >>> patience_option("5"), patience_option("auto"), patience_option("none")
        (5, 'auto', None)
    """
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else word
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, 'auto' or 'none', got {text}"
        ) from None


def nonempty_str(text: str) -> str:
    """``type=`` of names and paths: any text but an empty one.

    Example:
        >>> nonempty_str("moons")
        'moons'
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty name, got {text!r}")
    return text


def bounds_token(text: str) -> list[list[float | None] | None]:
    """``type=`` of ``--bounds``: ``LOW:HIGH``, ``LOW:``, ``:HIGH`` or ``:`` (unbounded) per
    dimension; one token may hold several, comma-separated (``--bounds=-1:1,0:`` when the
    first bound is negative, which argparse would otherwise take for an option).

    Returns:
        The token's dimensions, each ``[low, high]`` (``None`` for an open side) or ``None``.

    Example:
        >>> bounds_token("0:1"), bounds_token("-2:,:"), bounds_token(":5")
        ([[0.0, 1.0]], [[-2.0, None], None], [[None, 5.0]])
    """
    expected = "LOW:HIGH, LOW:, :HIGH or : per dimension with finite LOW < HIGH"
    parsed: list[list[float | None] | None] = []
    for part in text.split(","):
        ends = part.split(":")
        if len(ends) != 2:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {part!r}")
        low, high = (
            None if not end.strip() else _finite_float(end, f"{expected} (in {part!r})")
            for end in ends
        )
        if low is not None and high is not None and not low < high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {part!r}")
        parsed.append(None if low is None and high is None else [low, high])
    return parsed


# -- resolution -------------------------------------------------------------------------------
def resolve_device(spec: str) -> torch.device:
    """The torch device ``--device`` names.

    Arguments:
        spec: ``cpu``, ``cuda``, ``cuda:N``, or another torch device string.

    Returns:
        The device.

    Raises:
        ValueError: where the device does not exist here (e.g. CUDA with a CPU-only torch, or
            a GPU index past the last).
    """
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"expected --device cpu, cuda or cuda:N, got {spec!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {spec}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_data(spec: str, n_points: int, seed: int) -> Tensor:
    """The data named by ``spec``.

    Arguments:
        spec: a ``.npy``/``.csv`` file, or a built-in data set's name.
        n_points: how many points to draw from a built-in data set.
        seed: the seed of those points.

    Returns:
        A checked ``(N, *event_shape)`` tensor.
    """
    if Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        return load_array(spec)
    if spec not in TARGETS:
        raise ValueError(
            f"unknown data set {spec!r}; expected one of {sorted(TARGETS)} or a .npy/.csv file"
        )
    if n_points < 1:
        raise ValueError(f"expected --n-points >= 1, got {n_points}")
    return get_target(spec).sample(n_points, seed=seed)


def model_entry(spec: str) -> registry.Entry:
    """The registered model ``spec`` names (case-insensitive); ``ValueError`` for an unknown
    name or a layer."""
    entry = registry.get(spec)
    if entry.kind != "model":
        names = [e.name for e in registry.entries("model")]
        raise ValueError(f"{entry.name} is a layer, not a model; expected one of {names}")
    return entry


def build_model(
    spec: str,
    event_shape: torch.Size,
    args: argparse.Namespace,
    n_values: int | None = None,
    circular: Sequence[int] | None = None,
) -> Flow:
    """The registered model ``spec`` for events of ``event_shape``, with the command's sizes.

    ``--n-layers``, ``--hidden-sizes``, ``--n-levels``, ``--n-steps`` and ``--hidden-channels``
    are passed where the model's constructor takes them; ``--bounds`` (a list of
    :func:`bounds_token` results) to a vector model that takes ``bounds``, or refused;
    ``--circular`` (the angle columns) to a model that takes ``circular``, or refused, and
    else the data set's own ``circular`` columns where known. For
    discrete images of ``n_values`` pixel values, the model goes inside an
    :class:`~torchnf.models.ImageFlow` (logit preprocessing, flattening for vector models).

    Arguments:
        spec: a registered model name.
        event_shape: the shape of one data point.
        args: the parsed options.
        n_values: the number of pixel values of image data (``None`` for other data).
        circular: the data's angle columns where the data set says (a built-in target's
            ``circular``); ``None``: unknown (the model's default).

    Returns:
        The model.

    Raises:
        ValueError: for an unknown name, a layer, or a model that cannot be built for this
            data from these options (its constructor's error, on one line).
    """
    entry = model_entry(spec)
    accepted = inspect.signature(entry.cls).parameters
    options: dict[str, Any] = {"n_layers": args.n_layers, "hidden_sizes": list(args.hidden_sizes)}
    for key in ("n_levels", "n_steps", "hidden_channels"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    kwargs = {k: v for k, v in options.items() if k in accepted}
    shape = tuple(event_shape)
    if getattr(args, "bounds", None) is not None:
        if n_values is not None:
            raise ValueError("--bounds is for vector data, not images")
        if "bounds" not in accepted:
            takers = [
                e.name
                for e in registry.entries("model")
                if "bounds" in inspect.signature(e.cls).parameters
            ]
            raise ValueError(f"--bounds: {entry.name} takes no bounds; use one of {takers}")
        kwargs["bounds"] = [bound for token in args.bounds for bound in token]
    if getattr(args, "circular", None) is not None and "circular" not in accepted:
        takers = [
            e.name
            for e in registry.entries("model")
            if "circular" in inspect.signature(e.cls).parameters
        ]
        raise ValueError(f"--circular: {entry.name} takes no angle columns; use one of {takers}")
    if "circular" in accepted:
        columns = getattr(args, "circular", None)
        columns = circular if columns is None else columns
        if columns is not None:
            kwargs["circular"] = list(columns)
    if n_values is None and "input_size" in accepted:
        if len(event_shape) != 1:
            raise ValueError(f"{entry.name} models vectors; got points of shape {shape}")
        kwargs["input_size"] = event_shape[0]
    elif n_values is None and "input_shape" in accepted:
        kwargs["input_shape"] = list(event_shape)
    try:
        if n_values is not None:
            return ImageFlow(list(event_shape), entry.name, kwargs, n_values)
        return entry.cls(**kwargs)
    except Exception as error:  # the constructor's own refusal, reported on the command's line
        raise ValueError(f"cannot build {entry.name} for data of shape {shape}: {error}") from None


def check_batch_size(n_points: int, val_fraction: float, batch_size: int) -> None:
    """Refuse a batch larger than the training split, before any work.

    Arguments:
        n_points: the number of data points.
        val_fraction: the fraction of them held out for validation (rounded up, as ``fit``).
        batch_size: the batch size.
    """
    n_val = math.ceil(n_points * val_fraction)
    if n_points - n_val < batch_size:
        raise ValueError(
            f"expected --batch-size at most the {n_points - n_val} training points "
            f"({n_points} points, {n_val} held out for validation), got {batch_size}"
        )


def first_available(preferred: Sequence[str], available: Sequence[str], what: str) -> str:
    """The first of ``preferred`` in ``available``, else the first available in sorted order."""
    for candidate in preferred:
        if candidate in available:
            return candidate
    if available:
        return sorted(available)[0]
    raise ValueError(f"no {what} is available")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to align in a terminal.

    Example:
        >>> print(table(["a", "bb"], [["1", "2"]]))
        | a | bb |
        | - | -- |
        | 1 | 2  |
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def resolve_target(spec: str, dim: int | None = None) -> tuple[Any, int]:
    """The target log-density named by ``spec`` and its dimension.

    Arguments:
        spec: a built-in energy's name (:func:`torchnf.data.energies.get_energy`, with a
            known log-normalizer), or ``FILE.py:FUNCTION``, a function of ``(n, D)`` points
            returning their unnormalized log-density ``(n,)``.
        dim: the dimension ``D``; required for ``FILE.py:FUNCTION``, checked for an energy.

    Returns:
        ``(target, D)``: an energy, or the user's function.
    """
    from torchnf.data.energies import get_energy

    file, _, name = spec.rpartition(":")
    if not file.endswith(".py"):
        energy = get_energy(spec)
        if dim is not None and dim != energy.dim:
            raise ValueError(f"--dim {dim}: the energy {spec!r} is {energy.dim}-dimensional")
        return energy, energy.dim
    if not Path(file).is_file():
        raise FileNotFoundError(f"{file}: no such Python file")
    if dim is None:
        raise ValueError(f"--target {spec}: a function's dimension is unknown; give --dim")
    module_spec = importlib.util.spec_from_file_location(Path(file).stem, file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's file: any error is theirs, reported in one line
        raise ValueError(f"{file}: cannot run it ({type(error).__name__}: {error})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{file}: expected a function {name!r} of (n, D) points")
    return function, dim
