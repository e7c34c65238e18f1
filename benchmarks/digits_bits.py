"""Test bits/dim on the 8x8 digits: image flows (Glow, RealNVP2d) and dense flows on
flattened images (NSF, MAF, SylvesterNet, GeneralizedSylvesterNet), against the per-pixel
independent baseline.

Every model is an :class:`~torchnf.models.ImageFlow` (logit preprocessing, then the model)
trained with :func:`torchnf.fit` on 8 uniformly dequantized copies of the 1437 training
digits, at one budget: ``--steps`` Adam steps of batch 128 (lr 2e-3, cosine decay). Test
bits/dim are on the original 17-value scale, the importance-weighted dequantization bound with
4 noise draws per test image (:func:`torchnf.diagnostics.bits_per_dim`); the baseline is
exact. Prints a Markdown table::

    python benchmarks/digits_bits.py [--steps 500] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from torchnf.data.images import DIGITS_N_VALUES, load_digits
from torchnf.diagnostics import bits_per_dim, independent_pixels_bits_per_dim
from torchnf.layers import dequantize
from torchnf.models import ImageFlow
from torchnf.train import fit

MODELS = {
    "Glow": {"n_levels": 2, "n_steps": 3, "hidden_channels": 32},
    "RealNVP2d": {"n_levels": 2, "hidden_channels": 32},
    "NSF": {"n_layers": 4, "hidden_sizes": [128, 128], "activation": "relu"},
    "MAF": {"n_layers": 4, "hidden_sizes": [128, 128]},
    "SylvesterNet": {"n_layers": 8, "hidden_size": 64},
    # the models of examples/sylvester_digits.py (seed 000); "model" names the registered one
    "SylvesterNet-32": {
        "model": "SylvesterNet",
        "n_layers": 32,
        "hidden_size": 64,
        "init": "permutation",
        "actnorm": True,
    },
    "GeneralizedSylvesterNet": {
        "n_layers": 8,
        "hidden_sizes": [128, 128],
        "init": "permutation",
        "actnorm": True,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_digits("train"), load_digits("test")
    data = dequantize(train, torch.Generator().manual_seed(0), n_copies=8)
    baseline = independent_pixels_bits_per_dim(train, test, DIGITS_N_VALUES)
    rows = [("independent pixels (exact, Laplace-smoothed counts)", "-", baseline, 0.0)]
    for name in args.models:
        torch.manual_seed(0)
        config = dict(MODELS[name])
        flow = ImageFlow((1, 8, 8), config.pop("model", name), config, DIGITS_N_VALUES)
        tic = time.perf_counter()
        fit(
            flow, data, steps=args.steps, batch_size=128, lr=2e-3, val_fraction=0.05, progress=False
        )
        seconds = time.perf_counter() - tic
        flow.eval()
        bits = bits_per_dim(flow, test, n_samples=4, generator=torch.Generator().manual_seed(1))
        n_params = sum(p.numel() for p in flow.parameters())
        rows.append((f"{name} {MODELS[name]}", f"{n_params:,}", bits, seconds))
        print(f"{name}: {bits:.3f} bits/dim, {seconds:.0f} s", flush=True)
    print(f"\n{args.steps} steps of batch 128, {args.threads} threads\n")
    print("| model | parameters | test bits/dim | train time (s) |")
    print("|---|---:|---:|---:|")
    for label, n_params, bits, seconds in rows:
        print(f"| {label} | {n_params} | {bits:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
