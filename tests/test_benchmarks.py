"""Benchmarks run end to end at tiny settings: the speed benchmark that `benchmarks/gpu.sh` runs
on a GPU machine, and the sbi benchmark (`benchmarks/sbi.py --quick`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def test_compare_speed_prints_a_row_with_the_floor() -> None:
    argv = [sys.executable, str(COMPARE), "--speed", "--models", "MAF", "NSF", "--dims", "3"]
    argv += ["--batch-size", "64", "--libraries", "torchnf", "--repeats", "1", "--calls", "1"]
    argv += ["--n-eval", "32", "--hidden-sizes", "8", "--n-layers", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| MAF")]
    rows += [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| NSF")]
    assert len(rows) == 2, done.stdout
    for row in rows:
        step_ms, ops, floor_ms, ratio = (
            float(row[4]),
            int(row[6]),
            float(row[10]),
            float(row[11][:-2]),
        )
        assert step_ms > 0 and ops > 0 and floor_ms > 0 and ratio > 0


SBI_BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sbi.py"


def test_sbi_benchmark_quick_prints_a_row_per_task_and_method() -> None:
    pytest.importorskip("sbi")
    argv = [sys.executable, str(SBI_BENCHMARK), "--quick"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 * 4, done.stdout  # the header, 3 tasks x 4 methods
    for row in rows[1:]:
        c2st, seconds = float(row[2].split(" ± ")[0]), float(row[3])
        assert 0.0 <= c2st <= 1.0 and seconds >= 0
