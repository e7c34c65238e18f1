"""VAEs with flow posteriors on binarized digits: test -ELBO and importance-weighted NLL.

The experiment of van den Berg et al. (2018, Sylvester Normalizing Flows for Variational
Inference, arXiv:1803.05649), scaled to scikit-learn's 8x8 digits (or MNIST from a file the
user has, ``--data PATH``). Every posterior gets the same encoder and decoder (ReLU MLPs,
identical initial weights), latent size, number of flow layers, steps, batch, learning rate
and minibatch sequence: only q(z | x) differs. Pixels are binarized statically (value >= half
the largest: 8 of 16 for the digits), the training split's 1437 digits are fitted by Adam on
the one-sample ELBO, and the 360 test digits are scored by -ELBO and by the importance-weighted
NLL estimate -log (1/K) sum_k p(x, z_k) / q(z_k | x) (Burda et al., 2016, arXiv:1509.00519),
both from the same K draws per digit, averaged over the test digits with their standard
errors (train -ELBO: 100 draws per training digit). The differences to the first posterior
(the Gaussian) are per test digit, with the standard error of the paired differences; the
time is the training's CPU time (one thread), unaffected by other load. Prints a Markdown
table::

    python benchmarks/vae.py [--steps 4000] [--n-samples 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from torchnf.data.images import load_images
from torchnf.models.vae import POSTERIORS, VAE, binarize, fit_vae, posterior_flow, vae_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="'digits' or an MNIST path")
    parser.add_argument("--posteriors", nargs="+", default=list(POSTERIORS), choices=POSTERIORS)
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--made-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-samples", type=int, default=2000, help="K of the IWAE estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = [load_images(args.data, split) for split in ("train", "test")]
    if loaded[0] is None or loaded[1] is None:
        raise SystemExit(f"--data: expected 'digits' or an MNIST path, got {args.data!r}")
    (train, n_values), (test, _) = loaded
    train, test = binarize(train, n_values), binarize(test, n_values)
    context_size = args.hidden_sizes[-1]

    rows, baseline = [], None
    for kind in args.posteriors:
        torch.manual_seed(args.seed)
        flow = posterior_flow(
            kind, args.latent_size, context_size, args.n_layers, hidden_sizes=args.made_sizes
        )
        torch.manual_seed(args.seed)  # the same encoder and decoder for every posterior
        vae = VAE(train.shape[1], args.latent_size, flow, args.hidden_sizes)
        tic = time.process_time()
        fit_vae(
            vae,
            train,
            args.steps,
            args.batch_size,
            args.lr,
            generator=torch.Generator().manual_seed(args.seed),
        )
        seconds = time.process_time() - tic
        fitted = vae_scores(vae, train, 100, generator=torch.Generator().manual_seed(args.seed))
        scores = vae_scores(
            vae, test, args.n_samples, generator=torch.Generator().manual_seed(args.seed + 1)
        )
        if baseline is None:
            baseline = scores
        n_flow = 0 if flow is None else sum(p.numel() for p in flow.parameters())
        s = scores.summary()
        rows.append(
            f"| {kind} | {n_flow:,} | {fitted.summary()['neg_elbo']:.2f} "
            f"| {s['neg_elbo']:.2f} ± {s['neg_elbo_se']:.2f} | {s['nll']:.2f} ± {s['nll_se']:.2f} "
            f"| {_paired(scores.neg_elbo, baseline.neg_elbo)} "
            f"| {_paired(scores.nll, baseline.nll)} | {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)

    print(
        f"\n{args.data}: latent {args.latent_size}, {args.n_layers} flow layers, encoder "
        f"{args.hidden_sizes}, MADE {args.made_sizes}, {args.steps} steps of batch "
        f"{args.batch_size}, lr {args.lr}, K = {args.n_samples}, {args.threads} thread(s)\n"
    )
    first = args.posteriors[0]
    print(
        "| posterior | flow parameters | train -ELBO | test -ELBO | test NLL (IWAE, "
        f"K = {args.n_samples}) | -ELBO − {first} | NLL − {first} | training CPU time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def _paired(values: torch.Tensor, baseline: torch.Tensor) -> str:
    """Mean difference over the test digits ± the standard error of the paired differences."""
    diff = (values - baseline).double()
    return f"{float(diff.mean()):+.2f} ± {float(diff.std() / math.sqrt(len(diff))):.2f}"


if __name__ == "__main__":
    main()
