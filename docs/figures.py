"""Every figure of the documentation site, made by the library at build time.

Each family page shows one ready-made model of its family trained by :func:`torchnf.fit` on a
2-D target of known density (moons, or the torus for circular flows), next to the target:
``python docs/figures.py --out docs/_generated`` (run by ``docs/conf.py`` at every build).
Sizes and steps are small so the whole set takes about a minute on one CPU core; the KL
tables of the benchmarks page are the measured comparison, not these pictures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from torchnf import Flow, fit  # noqa: E402
from torchnf.data import get_target  # noqa: E402
from torchnf.models import (  # noqa: E402
    CNF,
    MAF,
    NAF,
    NSF,
    BernsteinFlow,
    CircularNSF,
    GeneralizedSylvesterNet,
    RealNVP,
    ResidualFlow,
)
from torchnf.plotting import plot_fit_to_target  # noqa: E402

#: ``page name -> (model factory, target, fit options)``; each makes ``family_<name>.png``.
FIGURES: dict[str, tuple[Callable[[], Flow], str, dict]] = {
    "coupling": (lambda: RealNVP(2, n_layers=6, hidden_sizes=(64, 64)), "moons", {}),
    "autoregressive": (lambda: MAF(2, n_layers=5, hidden_sizes=(64, 64)), "moons", {}),
    "splines": (lambda: NSF(2, n_layers=4, hidden_sizes=(64, 64)), "moons", {}),
    "residual": (lambda: GeneralizedSylvesterNet(n_layers=4, input_size=2), "moons", {}),
    "iresnet": (lambda: ResidualFlow(2, n_layers=4, hidden_sizes=(64, 64)), "moons", {}),
    "neural": (lambda: NAF(2, n_layers=3, hidden_sizes=(64, 64)), "moons", {}),
    "polynomial": (lambda: BernsteinFlow(2, n_layers=4, hidden_sizes=(64, 64)), "moons", {}),
    "continuous": (
        lambda: CNF(2, hidden_sizes=(64, 64)),
        "moons",
        {"objective": "flow_matching", "steps": 4000, "batch_size": 1024, "lr": 5e-3},
    ),
    "circular": (lambda: CircularNSF(2, circular=(0, 1), n_layers=4), "torus", {}),
}


def make(name: str, out: Path, steps: int = 600, seed: int = 0) -> Path:
    """Train the page's model on its target and write ``out/family_<name>.png``."""
    factory, target_name, options = FIGURES[name]
    torch.manual_seed(seed)
    target = get_target(target_name)
    flow = factory()
    options = {"steps": steps, "lr": 3e-3, "progress": False, "seed": seed, **options}
    fit(flow, target.sample(8000, seed=seed), **options)
    flow.eval()
    window = (-torch.pi, torch.pi, -torch.pi, torch.pi) if target.circular else None
    return plot_fit_to_target(flow, target.log_prob, out / f"family_{name}.png", window, 150)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "_generated")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per model")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=sorted(FIGURES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name in args.only:
        start = time.perf_counter()
        make(name, args.out, args.steps)
        print(f"family_{name}.png: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
