"""The registry of every public layer and model, for the command line and the tests.

Each public bijector class registers itself with a factory of a *small example instance*,
which the contract test (``tests/test_contract.py``) and ``torchnf check`` run. Models also
record the arguments they were built with (``model.config``), so a checkpoint can rebuild
them with :func:`build`.

The registry is complete whenever any ``torchnf`` module has been imported: importing
``torchnf.core.registry`` imports the package ``torchnf`` first, and ``torchnf/__init__.py``
imports :mod:`torchnf.layers` and :mod:`torchnf.models`, whose decorators fill it. This module
imports nothing above ``core``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from torchnf.core.bijector import Bijector

B = TypeVar("B", bound=type)


@dataclass(frozen=True)
class Entry:
    """A registered bijector class.

    Attributes:
        name: the class name, unique.
        cls: the class.
        kind: ``"layer"`` or ``"model"``.
        example: ``example(context_size)`` builds a small instance; ``context_size=0`` gives
            an unconditional one. Parameters should be away from the identity where that
            matters; the contract test perturbs them further.
        conditional: whether ``example`` accepts ``context_size > 0``.
    """

    name: str
    cls: type
    kind: Literal["layer", "model"]
    example: Callable[[int], Bijector]
    conditional: bool


#: Every registered class by name, filled by :func:`register`.
REGISTRY: dict[str, Entry] = {}


def register(
    kind: Literal["layer", "model"],
    example: Callable[[int], Bijector],
    conditional: bool = False,
) -> Callable[[B], B]:
    """Class decorator adding a bijector class to :data:`REGISTRY`.

    For ``kind="model"`` the constructor's bound arguments (defaults applied) are stored
    as ``instance.config``; they must be JSON-serializable so :func:`build` can rebuild it.
    """
    if kind not in ("layer", "model"):
        raise ValueError(f"expected kind 'layer' or 'model', got {kind!r}")

    def decorate(cls: B) -> B:
        if cls.__name__ in REGISTRY and REGISTRY[cls.__name__].cls is not cls:
            raise ValueError(f"{cls.__name__} is registered twice")
        if kind == "model":
            _record_config(cls)
        REGISTRY[cls.__name__] = Entry(cls.__name__, cls, kind, example, conditional)
        return cls

    return decorate


def _record_config(cls: type) -> None:
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        config = dict(bound.arguments)
        config.pop("self")
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    cls.__init__ = __init__


def entries(kind: str | None = None) -> list[Entry]:
    """All registered entries (of one ``kind`` if given), sorted by name."""
    return sorted(
        (e for e in REGISTRY.values() if kind is None or e.kind == kind), key=lambda e: e.name
    )


def get(name: str) -> Entry:
    """The entry named ``name`` (case-insensitive); ``ValueError`` listing the names otherwise."""
    for entry in REGISTRY.values():
        if entry.name.lower() == name.lower():
            return entry
    raise ValueError(f"unknown layer or model {name!r}; expected one of {sorted(REGISTRY)}")


def build(name: str, config: dict[str, Any]) -> Bijector:
    """Rebuild a registered model from its recorded ``config``.

    An argument added to a model after a config was recorded takes the value the model had
    before it existed, from the class's ``legacy_defaults`` (not its current default, which
    may differ: NSF's ``activation`` became ``"gelu"``; older configs were trained with ReLU).
    """
    entry = get(name)
    legacy = getattr(entry.cls, "legacy_defaults", {})
    return entry.cls(**{**{k: v for k, v in legacy.items() if k not in config}, **config})
