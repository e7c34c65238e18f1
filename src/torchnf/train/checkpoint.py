"""Checkpoints: weights in safetensors plus a JSON config that rebuilds the model.

A checkpoint is a directory holding

- ``model.safetensors``: the flow's ``state_dict`` (parameters and buffers, so data-dependent
  initialization such as ActNorm's survives);
- ``config.json``: ``{"format": "torchnf-checkpoint", "model": <registry name>, "config":
  model.config, "dtype": ..., ...metadata}``, enough to rebuild a registered model with
  :func:`torchnf.core.registry.build` without the script that made it;
- optionally ``training_state.pt`` (optimizer state and step, written by ``fit`` to resume).

Every file is written atomically: to a temporary file in the same directory, then moved over
the old one with ``os.replace``, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from torchnf.core.registry import REGISTRY, build

FORMAT = "torchnf-checkpoint"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"


def save(flow: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Write ``flow`` to the checkpoint directory ``path`` (created if needed).

    Arguments:
        flow: the model. A registered model (one with ``.config``) can be rebuilt by
            :func:`load` alone; any other module is saved too, but ``load`` then needs the
            module to load the weights into.
        path: the checkpoint directory.
        **metadata: JSON-serializable values stored in ``config.json`` (e.g. ``step``,
            ``data``, ``val_nll``).

    Returns:
        The checkpoint directory.

    Example:
        >>> import tempfile
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> path = save(Flow(Reverse(2)), tempfile.mkdtemp(), step=0)
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'model.safetensors']
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    name = type(flow).__name__
    registered = name in REGISTRY and REGISTRY[name].cls is type(flow) and hasattr(flow, "config")
    config = {
        "format": FORMAT,
        "model": name if registered else None,
        "class": f"{type(flow).__module__}.{type(flow).__qualname__}",
        "config": flow.config if registered else None,
        "dtype": _dtype_name(flow),
        **metadata,
    }
    try:
        text = json.dumps(config, indent=2)
    except TypeError as error:
        raise ValueError(f"expected JSON-serializable checkpoint metadata: {error}") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in flow.state_dict().items()}
    _atomic_write(path / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    _atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def load(
    path: str | Path, model: nn.Module | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """Load a checkpoint written by :func:`save` (or a run directory of ``torchnf train``).

    Arguments:
        path: the checkpoint directory, or its ``config.json`` / ``model.safetensors``.
        model: a module to load the weights into; required when the checkpoint's model was
            not a registered one, otherwise the model is rebuilt from its config.
        device: where to put the model (default: CPU).

    Returns:
        The model in eval mode, in the dtype it was saved in, with identical parameters and
        buffers (so identical ``log_prob``, to the bit).

    Raises:
        FileNotFoundError: when the checkpoint is missing, naming the file looked for.
        ValueError: when it is corrupt or does not match ``model``, naming the file.
    """
    directory = checkpoint_dir(path)
    info = read_config(directory)
    if model is None:
        if info.get("model") is None:
            raise ValueError(
                f"{directory / CONFIG}: the saved model {info.get('class')} is not registered; "
                "pass the module to load the weights into with load(path, model=...)"
            )
        try:
            model = build(info["model"], info["config"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{directory / CONFIG}: cannot rebuild the model: {error}") from None
    if info.get("dtype"):
        model = model.to(getattr(torch, info["dtype"]))
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: checkpoint weights not found")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{weights}: corrupt checkpoint weights ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{weights}: weights do not match the model ({first})") from None
    return model.to(device or "cpu").eval()


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory for ``path`` (a directory, or one of its files)."""
    path = Path(path)
    if path.name in (CONFIG, WEIGHTS, TRAINING_STATE):
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of the checkpoint at ``path``, checked."""
    file = checkpoint_dir(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no checkpoint config found (is this a torchnf run?)")
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: corrupt checkpoint config ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{file}: not a torchnf checkpoint config (no 'format': '{FORMAT}')")
    return info


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write the optimizer/scheduler state and step next to the weights."""
    _atomic_write(Path(path) / TRAINING_STATE, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The training state written by :func:`save_training_state`, or ``None`` if absent."""
    file = Path(path) / TRAINING_STATE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged pickle
        raise ValueError(f"{file}: corrupt training state ({type(error).__name__})") from None


def _atomic_write(target: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dtype_name(module: nn.Module) -> str | None:
    for tensor in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(tensor):
            return str(tensor.dtype).removeprefix("torch.")
    return None
