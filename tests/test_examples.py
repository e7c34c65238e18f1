"""Each seed-demonstration example runs end to end with a few steps and writes its figure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("matplotlib")
EXAMPLES = Path(__file__).parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


RUNS = {
    "mixture_1d": {"steps": 3},
    "mixture_2d": {"steps": 3},
    "flow_matching": {"steps": 3},
    "triangular_chains": {"epochs": 1},
    "colour_palette": {"epochs": 1, "steps": 3},
    "moons_realnvp": {"steps": (3, 3)},
    "iresnet": {"steps": 3},
    "torus": {"steps": 3},
}


@pytest.mark.parametrize("name", list(RUNS), ids=list(RUNS))
def test_example_runs_and_writes_its_figure(name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"{name}.png"
    _load(name).main([0], out=out, **RUNS[name])
    assert out.stat().st_size > 10_000
    assert "seed" in capsys.readouterr().out


def test_the_amortized_posterior_example_runs(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "posterior.png"
    argv = ["--simulations", "600", "--steps", "5", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "amortized_posterior.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "samples inside the prior's box: True" in result.stdout
    assert out.stat().st_size > 10_000


def test_the_mixed_tabular_example_runs(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "mixed.png"
    argv = ["--rows", "500", "--steps", "5", "--iw-samples", "2", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "mixed_tabular.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    exact = float(lines[0].split(": ")[1].split()[0])
    bounds = [float(line.split("ELBO bound ")[1].split()[0]) for line in lines[1:3]]
    assert all(bound > exact for bound in bounds)  # a bound never beats the exact NLL
    assert out.stat().st_size > 10_000


def test_the_sylvester_digits_example_runs(tmp_path: Path) -> None:
    results = _load("sylvester_digits").main(steps=2, n_layers=1, out_dir=tmp_path)
    assert list(results) == ["SylvesterNet", "GeneralizedSylvesterNet"]
    for name, (bits, error) in results.items():
        assert 1 < bits < 8 and error < 1e-9  # bits/dim on the 17-value scale; exact inverse
        for figure in ("inversion", "generation"):
            assert (tmp_path / f"{name.lower()}_digits_{figure}.png").stat().st_size > 10_000
