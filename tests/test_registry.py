"""No public bijector without a registry entry (and so without a contract-test case)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torchnf
import torchnf.layers
import torchnf.models
from torchnf.core.bijector import Bijector
from torchnf.core.registry import REGISTRY, entries

# Abstract or structural classes: tested through their registered subclasses.
NOT_REGISTERED = {"Bijector", "Inverse", "Chain", "Flow", "Permutation"}


def _public_bijectors() -> set[str]:
    names = set()
    for module in (torchnf, torchnf.layers, torchnf.models):
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, Bijector):
                names.add(name)
    return names


def test_every_public_bijector_is_registered() -> None:
    entries()
    missing = _public_bijectors() - set(REGISTRY) - NOT_REGISTERED
    assert not missing, f"public bijectors without a registry entry: {sorted(missing)}"


def test_every_registered_class_is_public() -> None:
    hidden = {e.name for e in entries()} - _public_bijectors()
    assert not hidden, f"registered but not exported from torchnf.layers/models: {sorted(hidden)}"


def test_readme_lists_every_registered_class() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [e.name for e in entries() if f"`{e.name}`" not in readme]
    assert not missing, f"README.md does not list: {missing}"
