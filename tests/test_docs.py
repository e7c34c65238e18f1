"""The documentation site covers the library: every public name in the API reference, every
model on a family page, every family figure made by docs/figures.py. (The build itself runs
strict in CI: ``sphinx-build -W -n``.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from torchnf.core.registry import entries

DOCS = Path(__file__).parents[1] / "docs"
PACKAGES = [
    "torchnf",
    "torchnf.core",
    "torchnf.layers",
    "torchnf.models",
    "torchnf.distributions",
    "torchnf.nets",
    "torchnf.train",
    "torchnf.data",
    "torchnf.diagnostics",
]
DIRECTIVE = re.compile(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", re.MULTILINE)


def _automodules() -> dict[str, set[str]]:
    """``module -> excluded members`` for every ``automodule ... :members:`` of the API pages."""
    found: dict[str, set[str]] = {}
    for page in (DOCS / "api").glob("*.md"):
        for module, options in DIRECTIVE.findall(page.read_text()):
            if ":members:" not in options or ":no-index:" in options:
                continue
            excluded = re.search(r":exclude-members: (.*)", options)
            names = {n.strip() for n in excluded.group(1).split(",")} if excluded else set()
            found[module] = names
    return found


def _single_objects() -> set[str]:
    """Names documented one by one (``autodata``, ``autoclass``, ``autofunction``)."""
    pattern = re.compile(r"^\.\. auto(?:data|class|function):: \S*?(\w+)$", re.MULTILINE)
    return {m for page in (DOCS / "api").glob("*.md") for m in pattern.findall(page.read_text())}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_in_the_api_reference(package: str) -> None:
    documented = _automodules()
    top_level = set(importlib.import_module("torchnf").__all__) - documented.get("torchnf", set())
    single = _single_objects()
    missing = [
        name
        for name in importlib.import_module(package).__all__
        if not (package in documented and name not in documented[package])
        and name not in top_level | single
    ]
    assert not missing, f"{package}: not in docs/api: {missing}"


def test_every_model_is_on_a_family_page() -> None:
    text = "\n".join(page.read_text() for page in (DOCS / "families").glob("*.md"))
    missing = [e.name for e in entries("model") if not re.search(rf"\b{e.name}\b", text)]
    assert not missing, f"models on no family page: {missing}"


def test_every_family_figure_is_made_by_the_build() -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    wanted = {
        m.group(1)
        for page in (DOCS / "families").glob("*.md")
        for m in re.finditer(r"/_generated/family_(\w+)\.png", page.read_text())
    }
    assert wanted == set(figures.FIGURES)
