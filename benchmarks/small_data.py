"""Small data: default-size flows on seed 001's 510 points, with and without a validation split.

Issue 17, item 2: at the seed's settings (three unit Gaussians at (0, 6), (2.5, 3) and
(-2.5, 3), 510 points, 500 full-batch Adam steps at lr 5e-3) a default-size ``RealNVP(2)``
(5 couplings of width 128) or ``MAF(2)`` (5 MADEs of width 128) memorizes the points: its
training NLL falls below the data's entropy (3.835 nats) while its NLL on fresh points
soars. For each model and seed, three runs:

- ``no split``: ``val_fraction=0`` (what the examples pass), where nothing can tell;
- ``split, all steps``: ``fit``'s default split (10% held out), training all steps and keeping
  the last weights (``patience=None``, the default before this benchmark);
- ``split, defaults``: ``fit``'s defaults: early stopping (``patience="auto"``: 10 log
  intervals, the best validation weights restored) and the overfitting warning.

Each row: the NLL on 20000 fresh points (held out), the KL against the exact mixture (the
held-out NLL minus the entropy), the step of the :class:`~torchnf.train.hooks.OverfittingWarning`
(``-`` when none) and where training stopped.

Run: ``python benchmarks/small_data.py [--seeds 0 1 2] [--models RealNVP MAF]`` (about 20 s a
run on one CPU thread).
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from torchnf import Flow, fit
from torchnf.data.targets import GaussianMixtureTarget
from torchnf.models import MAF, RealNVP
from torchnf.train.hooks import OverfittingWarning

TARGET = GaussianMixtureTarget("three clusters", [[0.0, 6.0], [2.5, 3.0], [-2.5, 3.0]], [1.0] * 3)
MODELS: dict[str, Callable[..., Flow]] = {"RealNVP": RealNVP, "MAF": MAF}
#: name -> fit's options that differ between the runs.
RUNS: dict[str, dict[str, Any]] = {
    "no split": {"val_fraction": 0.0, "patience": None},
    "split, all steps": {"val_fraction": 0.1, "patience": None},
    "split, defaults": {"val_fraction": 0.1},
}


def run(
    model: str, seed: int, options: dict[str, Any], steps: int = 500, **sizes: Any
) -> dict[str, Any]:
    """Train ``model`` (default size unless ``sizes`` say otherwise) on the 510 points of
    ``seed`` and score it on 20000 fresh points."""
    torch.manual_seed(seed)
    data = TARGET.sample(510, seed=seed).float()
    n_train = len(data) - round(options["val_fraction"] * len(data))
    flow = MODELS[model](2, **sizes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OverfittingWarning)
        history = fit(
            flow, data, steps=steps, batch_size=n_train, lr=5e-3, seed=seed, progress=False,
            **options,
        )  # fmt: skip
    warned = [str(w.message) for w in caught if issubclass(w.category, OverfittingWarning)]
    test = TARGET.sample(20000, seed=seed + 100)
    with torch.no_grad():
        nll = -flow.eval().log_prob(test.float()).double().mean().item()
    entropy = -TARGET.log_prob(test).mean().item()
    stopped = re.search(r"at step (\d+)", history.stopped or "")
    return {
        "nll": nll,
        "kl": nll - entropy,
        "warned": re.search(r"at step (\d+)", warned[0]).group(1) if warned else "-",
        "stopped": stopped.group(1) if stopped else str(steps),
    }


def main(models: list[str], seeds: list[int], steps: int = 500, **sizes: Any) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    print("| model | seed | run | held-out NLL | KL | warned at step | stopped at step |")
    print("|---|---|---|---|---|---|---|")
    for model in models:
        for seed in seeds:
            for name, options in RUNS.items():
                row = {"model": model, "seed": seed, "run": name}
                row |= run(model, seed, options, steps, **sizes)
                rows.append(row)
                print(
                    f"| {model} | {seed} | {name} | {row['nll']:.3f} | {row['kl']:.3f} | "
                    f"{row['warned']} | {row['stopped']} |",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    main(args.models, args.seeds)
