"""The ``src/`` trees a benchmark measures: the working tree's and, optionally, a revision's."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_trees(baseline: str | None, tmp: str) -> dict[str, Path]:
    """``{name: src directory}``: ``baseline``'s ``src/`` extracted into ``tmp`` (if given),
    then the working tree's as ``"now"``; run each with ``PYTHONPATH`` set to it."""
    trees = {"now": ROOT / "src"}
    if baseline:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", baseline, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {baseline: Path(tmp) / "src", **trees}
    return trees
