"""Where NSF's gap on the banana and the funnel comes from (issue 15; benchmarks/RESULTS.md).

The README's KL protocol (``torchnf bench``: hidden [64, 64], 5 layers, 1000 steps of batch
256, lr 2e-3 with cosine decay, 20000 points of seed 0, 10% held out, KL on 20000 fresh points
of seed 1), three measurements, each printed as a markdown table of KL ± s.e.:

- ``seeds``: RealNVP, MAF and NSF with 6 (default), 4 and 3 bins, training seeds 0, 1, 2;
- ``penalty``: NSF (seed 0) trained on the NLL plus ``lam`` times the squared spline part of
  each MADE's output layer (weights and biases; all zero is the identity spline), or its
  weights only (``lam`` suffixed ``w``: unconditional splines), against the checkerboard too;
- ``early``: NSF for 3000 steps at lr 1e-3 with ``fit``'s early stopping
  (``patience="auto"``) and without (``patience=None``);
- ``others``: NSF with 3 bins (seed 0) on the README table's other six targets.

Run: ``python benchmarks/nsf_gap.py [--parts seeds penalty early others]`` (one thread;
about 25 minutes for all four on one CPU core).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from torchnf import Flow, fit, nll
from torchnf.data import get_target
from torchnf.diagnostics.kl import kl_divergence
from torchnf.models import MAF, NSF, RealNVP
from torchnf.nets.made import MADE
from torchnf.train import Hook
from torchnf.train.hooks import TrainingState

MODELS: dict[str, Callable[[int], Flow]] = {
    "RealNVP": lambda d: RealNVP(d, hidden_sizes=(64, 64)),
    "MAF": lambda d: MAF(d, hidden_sizes=(64, 64)),
    "NSF": lambda d: NSF(d, hidden_sizes=(64, 64)),
    "NSF, 4 bins": lambda d: NSF(d, hidden_sizes=(64, 64), n_bins=4),
    "NSF, 3 bins": lambda d: NSF(d, hidden_sizes=(64, 64), n_bins=3),
}


class PenalizedNLL:
    """The NLL plus ``lam`` times the squared spline outputs' weights (and biases) of every
    MADE: a pull of each spline towards the identity."""

    name = "nll"

    def __init__(self, flow: Flow, lam: float, biases: bool) -> None:
        self.mades = [m for m in flow.modules() if isinstance(m, MADE)]
        self.lam, self.biases = lam, biases

    def penalty(self) -> Tensor:
        total = torch.zeros(())
        for made in self.mades:
            n_spline = made.params_per_feature - 2  # the affine map's (t, s) come last
            shape = (made.input_size, made.params_per_feature)
            total = total + made.output.weight.view(*shape, -1)[:, :n_spline].square().sum()
            if self.biases:
                total = total + made.output.bias.view(shape)[:, :n_spline].square().sum()
        return total

    def __call__(self, flow: Flow, batch: tuple[Tensor, ...]) -> Tensor:
        return nll(flow, *batch) + self.lam * self.penalty()


def run(
    model: str, target_name: str, seed: int = 0, steps: int = 1000, lr: float = 2e-3, **options
) -> tuple[str, Flow]:
    """Train ``model`` on the target's points as ``torchnf bench`` does; return 'KL ± s.e.'."""
    target = get_target(target_name)
    data = target.sample(20000, seed=0)
    torch.manual_seed(seed)
    flow = MODELS[model](target.dim)
    objective = options.pop("objective", None)
    if objective is not None:
        options["objective"] = objective(flow)
    fit(flow, data, steps=steps, batch_size=256, lr=lr, seed=seed, progress=False, **options)
    flow.eval()
    kl = kl_divergence(flow, target, 20000, seed=1)
    return f"{kl.value:.4f} ± {kl.stderr:.4f}", flow


def seeds() -> None:
    print("| model | banana, seeds 0 / 1 / 2 | funnel, seeds 0 / 1 / 2 |\n|---|---|---|")
    for model in MODELS:
        cells = [" / ".join(run(model, t, s)[0] for s in (0, 1, 2)) for t in ("banana", "funnel")]
        print(f"| {model} | {' | '.join(cells)} |", flush=True)


def penalty() -> None:
    print("| lam | banana | funnel | checkerboard |\n|---|---|---|---|")
    for label in ("0", "1e-3", "1e-2", "1e-1", "1", "1w"):
        lam, biases = float(label.rstrip("w")), not label.endswith("w")
        cells = []
        for target in ("banana", "funnel", "checkerboard"):
            objective = lambda flow, lam=lam, biases=biases: PenalizedNLL(flow, lam, biases)  # noqa: E731
            cells.append(run("NSF", target, objective=objective)[0])
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


def early() -> None:
    print("| target | all 3000 steps | early stopping (stopped at) |\n|---|---|---|")
    for target in ("banana", "funnel"):
        # At lr 1e-3, where the banana's validation NLL plateaus at three quarters of the rate.
        full = run("NSF", target, steps=3000, lr=1e-3, patience=None)[0]
        history: list[int] = []
        stopped = run("NSF", target, steps=3000, lr=1e-3, hooks=[_Steps(history)])[0]
        print(f"| {target} | {full} | {stopped} ({history[-1]}) |", flush=True)


class _Steps(Hook):
    """Records the step of each log record."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps

    def on_log(self, state: TrainingState, record: dict[str, float]) -> None:
        self.steps.append(state.step)


def others() -> None:
    targets = ("moons", "ring", "checkerboard", "spirals", "student8", "gaussian16")
    print(f"| model | {' | '.join(targets)} |\n|---|{'---|' * len(targets)}")
    print(f"| NSF, 3 bins | {' | '.join(run('NSF, 3 bins', t)[0] for t in targets)} |", flush=True)


PARTS = {"seeds": seeds, "penalty": penalty, "early": early, "others": others}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for part in args.parts:
        print(f"\n## {part}")
        PARTS[part]()


if __name__ == "__main__":
    main()
