"""Test bits/dim on the 8x8 digits with uniform against variational dequantization, for the
same image model trained the same steps.

Each model is a :class:`~torchnf.models.Dequantized` around an
:class:`~torchnf.models.ImageFlow` (logit preprocessing, then the model), trained with
:func:`torchnf.fit` on the 1437 integer training digits with fresh uniform noise on every
step (``fit``'s default for a ``Dequantized`` model): ``--steps`` Adam steps of batch 128 (lr
2e-3, cosine decay). With ``dequantizer="variational"`` the noise first goes through
:class:`~torchnf.layers.VariationalDequantization`, ``q(u | x)``: autoregressive splines on
the unit cube over the 64 pixels (a MADE of ``--hidden`` units conditioned on the whole
image), trained jointly (Flow++, Ho et al., 2019, arXiv:1902.00275). Test bits/dim are on the
original 17-value scale: the ELBO bound and the importance-weighted bound with ``--iw-samples``
draws per image (:func:`torchnf.models.discrete.discrete_nll`, divided by 64 ln 2). Prints a
Markdown table::

    python benchmarks/digits_dequant.py [--steps 500] [--models RealNVP2d] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from torchnf.data.images import DIGITS_N_VALUES, load_digits
from torchnf.models import Dequantized
from torchnf.models.discrete import discrete_nll
from torchnf.train import fit

#: The image models and their sizes, as in ``benchmarks/digits_bits.py``.
MODELS = {
    "RealNVP2d": {"n_levels": 2, "hidden_channels": 32},
    "Glow": {"n_levels": 2, "n_steps": 3, "hidden_channels": 32},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["RealNVP2d"], choices=list(MODELS))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--iw-samples", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_digits("train"), load_digits("test")
    bits = 1 / (test[0].numel() * math.log(2))
    rows = []
    for name in args.models:
        for dequantizer in ("uniform", "variational"):
            torch.manual_seed(0)
            inner = {"model": name, "model_config": MODELS[name], "n_values": DIGITS_N_VALUES}
            flow = Dequantized(
                (1, 8, 8), "ImageFlow", inner, dequantizer=dequantizer, hidden_sizes=[args.hidden]
            )
            tic = time.perf_counter()
            fit(
                flow,
                train,
                steps=args.steps,
                batch_size=128,
                lr=2e-3,
                val_fraction=0.05,
                progress=False,
            )
            seconds = time.perf_counter() - tic
            g = torch.Generator().manual_seed(1)
            elbo, importance = discrete_nll(flow, test, args.iw_samples, generator=g)
            n_params = sum(p.numel() for p in flow.parameters())
            rows.append((name, dequantizer, n_params, elbo * bits, importance * bits, seconds))
            print(
                f"{name} {dequantizer}: {importance * bits:.3f} bits/dim, {seconds:.0f} s",
                flush=True,
            )
    print(f"\n{args.steps} steps of batch 128, {args.threads} threads\n")
    print(
        f"| model | dequantization | parameters | test bits/dim, ELBO | test bits/dim, "
        f"{args.iw_samples} draws | train time (s) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, dequantizer, n_params, elbo, importance, seconds in rows:
        print(
            f"| {name} {MODELS[name]} | {dequantizer} | {n_params:,} | {elbo:.3f} | "
            f"{importance:.3f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
