"""The import structure: the command on top, ``core`` at the bottom, a complete registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import torchnf

SRC = Path(torchnf.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, relative ones resolved."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


ABOVE_CORE = ("torchnf.layers", "torchnf.models", "torchnf.train", "torchnf.cli")


#: Every module but the command and its entry point (``python -m torchnf``).
BELOW = [p for p in MODULES if not _inside(_name(p), "torchnf.cli") and p.name != "__main__.py"]


@pytest.mark.parametrize("path", BELOW, ids=[_name(p) for p in BELOW])
def test_nothing_below_the_command_imports_it(path: Path) -> None:
    assert not any(_inside(m, "torchnf.cli") for m in _imports(path))


CORE = [p for p in MODULES if _inside(_name(p), "torchnf.core")]


@pytest.mark.parametrize("path", CORE, ids=[_name(p) for p in CORE])
def test_core_imports_nothing_above_it(path: Path) -> None:
    upward = {m for m in _imports(path) if any(_inside(m, p) for p in ABOVE_CORE)}
    assert not upward


def test_the_registry_is_complete_after_importing_it_alone() -> None:
    code = (
        "from torchnf.core import registry; "
        "print(len(registry.entries('layer')), len(registry.entries('model')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from torchnf.core import registry

    expected = f"{len(registry.entries('layer'))} {len(registry.entries('model'))}"
    assert result.stdout.split() == expected.split() and registry.get("NSF").kind == "model"
