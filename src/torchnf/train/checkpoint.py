"""Checkpoints: weights in safetensors plus a JSON config that rebuilds the model.

A checkpoint is a directory holding

- ``model.safetensors``: the flow's ``state_dict`` (parameters and buffers, so data-dependent
  initialization such as ActNorm's survives). A training checkpoint also holds, in the same
  file, the training state of the same step (step, optimizer state, the hooks' state):
  non-tensor values as JSON in the file's header, tensors under keys starting with
  ``__training__.``, which :func:`load` leaves out. One file is one consistent unit: weights
  and optimizer state can never come from different steps;
- ``config.json``: ``{"format": "torchnf-checkpoint", "model": <registry name>, "config":
  model.config, "dtype": ..., ...metadata}``, enough to rebuild a registered model with
  :func:`torchnf.core.registry.build` without the script that made it.

Every file is written atomically: to a temporary file in the same directory, then moved over
the old one with ``os.replace``, so a crash never leaves a half-written checkpoint. Files are
created with the permissions the user's umask gives (as ``open`` would).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from torchnf.core.registry import REGISTRY, build

FORMAT = "torchnf-checkpoint"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: Key prefix of the training state's tensors in ``model.safetensors``.
TRAINING_PREFIX = "__training__."
#: The dtypes a checkpoint may name.
DTYPES = ("float16", "bfloat16", "float32", "float64")


def _count(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


#: What :func:`read_config` accepts for each field of ``config.json`` it knows (the library's
#: and the command's), as (what is expected, test).
FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("a registered model name or null", lambda v: v is None or isinstance(v, str)),
    "class": ("a class name", lambda v: isinstance(v, str)),
    "config": (
        "an object of constructor arguments or null",
        lambda v: v is None or isinstance(v, dict),
    ),
    "dtype": (f"one of {DTYPES} or null", lambda v: v is None or v in DTYPES),
    "data": ("a data set name or file, or null", lambda v: v is None or isinstance(v, str)),
    "target": ("an energy's name or FILE.py:FUNCTION", lambda v: isinstance(v, str)),
    "input_size": ("a positive integer", lambda v: _count(v, 1)),
    "seed": ("a non-negative integer", _count),
    "step": ("a non-negative integer", _count),
    "n_values": ("a positive integer or null", lambda v: v is None or _count(v, 1)),
    "data_fingerprint": ("an object or null", lambda v: v is None or isinstance(v, dict)),
}


def save(
    flow: nn.Module,
    path: str | Path,
    *,
    training_state: dict[str, Any] | None = None,
    **metadata: Any,
) -> Path:
    """Write ``flow`` to the checkpoint directory ``path`` (created if needed).

    Arguments:
        flow: the model. A registered model (one with ``.config``) can be rebuilt by
            :func:`load` alone; any other module is saved too, but ``load`` then needs the
            module to load the weights into.
        path: the checkpoint directory.
        training_state: what ``fit`` needs to resume (nested dicts and lists of tensors and
            JSON values, e.g. an optimizer's ``state_dict``), stored in the same file as the
            weights; read it back with :func:`load_training_state`.
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
    text = json.dumps(config_of(flow, metadata), indent=2)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: _cpu(v) for k, v in flow.state_dict().items()}
    header = {"format": FORMAT}
    if training_state is not None:
        header["training_state"] = json.dumps(_encode(training_state, tensors))
    _atomic_write(path / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=header))
    config_file = path / CONFIG
    if not config_file.is_file() or config_file.read_text() != text + "\n":
        _atomic_write(config_file, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def config_of(flow: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` content for ``flow``: format, registry name and config (a registered
    model), class, dtype and ``metadata``; ``ValueError`` when that is not JSON."""
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
        return json.loads(json.dumps(config))
    except TypeError as error:
        raise ValueError(f"expected JSON-serializable checkpoint metadata: {error}") from None


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
        except Exception as error:  # any nonsense in an edited config.json: one clear line
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"{directory / CONFIG}: cannot rebuild the model: {first or type(error).__name__}"
            ) from None
    if info.get("dtype"):
        model = model.to(getattr(torch, info["dtype"]))
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: checkpoint weights not found")
    try:
        state = {k: v for k, v in load_file(weights).items() if not k.startswith(TRAINING_PREFIX)}
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
    if path.name in (CONFIG, WEIGHTS):
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
    for key, (expected, ok) in FIELDS.items():
        if key in info and not ok(info[key]):
            raise ValueError(f"{file}: expected {key!r} to be {expected}, got {info[key]!r}")
    if (info.get("model") is None) != (info.get("config") is None):
        raise ValueError(f"{file}: expected 'model' and 'config' both set or both null")
    return info


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The training state saved with the weights by ``save(..., training_state=...)``, or
    ``None`` when the checkpoint has none (or there is no checkpoint)."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        return None
    try:
        with safe_open(file, framework="pt") as f:
            text = (f.metadata() or {}).get("training_state")
            if text is None:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(TRAINING_PREFIX)}
        return _decode(json.loads(text), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file}: corrupt training state ({error})") from None


def _cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().cpu().contiguous().clone()


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` (under :data:`TRAINING_PREFIX`);
    dicts become ``{"dict": [[key, value], ...]}`` so integer keys survive."""
    if isinstance(value, Tensor):
        key = f"{TRAINING_PREFIX}{len(tensors)}"
        tensors[key] = _cpu(value)
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v, tensors) for v in value]
    return value


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if "tensor" in value:
            return tensors[value["tensor"]]
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["dict"]}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Write ``target`` through ``write(temporary_path)`` and ``os.replace``. The file gets
    the permissions ``open`` would give it (0o666 less the umask), whatever ``write`` does."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, then restore
    os.umask(mask)
    return mask


def _dtype_name(module: nn.Module) -> str | None:
    for tensor in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(tensor):
            return str(tensor.dtype).removeprefix("torch.")
    return None
