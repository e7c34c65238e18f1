"""Amortized planar, radial and Sylvester layers, and the VAE with flow posteriors."""

from __future__ import annotations

import math

import pytest
import torch

from torchnf.data.images import DIGITS_N_VALUES, load_digits
from torchnf.diagnostics import check
from torchnf.functional.solvers import ConvergenceError
from torchnf.layers import Planar, Radial, SylvesterBlock
from torchnf.models.vae import (
    POSTERIORS,
    VAE,
    binarize,
    elbo,
    fit_vae,
    iwae_bound,
    posterior_flow,
    vae_scores,
)

D, C = 4, 3

#: Amortized layers, built with ``context_size`` (0 for the unconditional twin).
AMORTIZED = {
    "planar": lambda c: Planar(D, seed=1, context_size=c),
    "radial": lambda c: Radial(D, seed=1, context_size=c),
    "sylvester-orthogonal": lambda c: SylvesterBlock(D, 3, "orthogonal", seed=1, context_size=c),
    "sylvester-householder": lambda c: SylvesterBlock(
        D, 3, "householder", n_reflections=2, seed=1, context_size=c
    ),
    "sylvester-identity": lambda c: SylvesterBlock(D, q="identity", seed=1, context_size=c),
    "sylvester-reverse": lambda c: SylvesterBlock(D, 2, "reverse", seed=1, context_size=c),
}
NAMES = sorted(AMORTIZED)


def _perturbed(layer, scale: float = 0.5):
    """In float64, every parameter (the context map's too) moved away from its initial value."""
    g = torch.Generator().manual_seed(2)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _points(batch: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=g, dtype=torch.float64)
    return x, torch.randn(batch, C, generator=g, dtype=torch.float64)


def _scattered(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, like: torch.Tensor):
    out = torch.zeros_like(like)
    out[rows, cols] = values
    return out


def _raw_offsets(layer, context: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unconditional layer's raw parameters that equal ``layer``'s at one context row."""
    w = layer.offsets.linear.weight
    sizes = layer.offsets.sizes
    flat = dict(zip(sizes, (w @ context).split(list(sizes.values())), strict=True))
    state = {k: v for k, v in layer.state_dict().items() if not k.startswith("offsets.")}
    if isinstance(layer, Planar):
        return {
            "u": state["u"] + flat["u"],
            "w": state["w"] + flat["w"],
            "b": state["b"] + flat["b"][0],
        }
    if isinstance(layer, Radial):
        return {
            "x0": state["x0"] + flat["x0"],
            "alpha_raw": state["alpha_raw"] + flat["alpha"][0],
            "beta_raw": state["beta_raw"] + flat["beta"][0],
        }
    m = layer.hidden_size
    upper = torch.triu_indices(m, m)
    out = state | {
        "r1": state["r1"] + _scattered(flat["r1"], *upper, state["r1"]),
        "r2": state["r2"] + _scattered(flat["r2"], *upper, state["r2"]),
        "b": state["b"] + flat["b"],
    }
    if layer.q_form == "orthogonal":
        key = "q.parametrizations.weight.original"
        lower = torch.tril_indices(D, m)
        out[key] = state[key] + _scattered(flat["q"], *lower, state[key])
    elif layer.q_form == "householder":
        out["q.vectors"] = state["q.vectors"] + flat["q"].view(state["q.vectors"].shape)
    return out


# -- amortized layers ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_amortized_layer_shapes_and_per_sample_parameters(name: str) -> None:
    layer = _perturbed(AMORTIZED[name](C))
    x, context = _points(6)
    y, log_det = layer(x, context)
    assert y.shape == (6, D) and log_det.shape == (6,)
    pairs = zip(layer.params(context), layer.params(), strict=True)
    for i, (per_sample, shared) in enumerate(pairs):
        if name in ("sylvester-identity", "sylvester-reverse") and i == 0:
            assert torch.equal(per_sample, shared)  # a permutation Q stays shared
        elif name == "radial" and shared.dim() == 0:
            assert per_sample.shape == (6, 1)  # alpha and beta, broadcast over the features
        else:
            assert per_sample.shape == (6, *shared.shape)


@pytest.mark.parametrize("name", NAMES)
def test_two_contexts_give_two_maps(name: str) -> None:
    layer = _perturbed(AMORTIZED[name](C))
    x, context = _points(1)
    with torch.no_grad():
        y1, ld1 = layer(x, context)
        y2, ld2 = layer(x, context + 1)
    assert float((y1 - y2).abs().max()) > 1e-3 and float((ld1 - ld2).abs().max()) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_one_context_is_the_unconditional_layer_with_those_parameters(name: str) -> None:
    layer = _perturbed(AMORTIZED[name](C))
    x, context = _points(5)
    row = context[2]
    twin = AMORTIZED[name](0).double()
    twin.load_state_dict(_raw_offsets(layer, row))
    y, log_det = layer(x, row.expand(5, C))
    y_twin, log_det_twin = twin(x)
    torch.testing.assert_close(y, y_twin, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_det, log_det_twin, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_amortized_layer_starts_as_its_unconditional_self(name: str) -> None:
    x, context = _points(5)
    y, log_det = AMORTIZED[name](C).double()(x, 10 * context)
    y0, log_det0 = AMORTIZED[name](0).double()(x)
    torch.testing.assert_close(y, y0, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(log_det, log_det0, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_expanded_context_is_computed_once_and_broadcast(name: str) -> None:
    layer = _perturbed(AMORTIZED[name](C))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, D, generator=g, dtype=torch.float64)
    context = torch.randn(5, C, generator=g, dtype=torch.float64).expand(7, 5, C)
    offsets = layer.offsets(context)
    assert all(v.shape[:2] == (1, 5) for v in offsets.values())
    y, log_det = layer(x, context)
    y_full, log_det_full = layer(x, context.contiguous())
    torch.testing.assert_close(y, y_full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(log_det, log_det_full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.inverse(y, context), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_inverse_is_exact_over_a_batch(name: str) -> None:
    # Every sample has its own parameters; the solvers run on the whole batch at once.
    layer = _perturbed(AMORTIZED[name](C), scale=1.0)
    x, context = _points(256)
    x = 2 * x
    with torch.no_grad():
        y, log_det = layer(x, context)
        x_back, log_det_inv = layer.inverse_and_log_det(y, context)
    assert float(((x_back - x).abs() / (1 + x.abs())).max()) < 1e-10
    torch.testing.assert_close(log_det_inv, -log_det, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_amortized_layer_passes_the_checks(name: str) -> None:
    report = check(_perturbed(AMORTIZED[name](C)), atol=1e-6)
    assert report.passed, report.failures


@pytest.mark.parametrize("name", NAMES)
def test_constraints_hold_for_any_context(name: str) -> None:
    # Offsets of a few units, unconstrained products far below -1: the constraints apply
    # after the offsets (in float64 the margins round to 0 below ~-37, see Planar).
    layer = _perturbed(AMORTIZED[name](C), scale=0.7)
    _, context = _points(64)
    params = layer.params(context)
    if name == "planar":
        u, w, _ = params
        assert bool(((u * w).sum(-1) > -1).all())
    elif name == "radial":
        _, alpha, beta = params
        assert bool((alpha > 0).all() and (beta > -alpha).all())
    else:
        _, r1, r2, _ = params
        product = r1.diagonal(dim1=-2, dim2=-1) * r2.diagonal(dim1=-2, dim2=-1)
        assert bool((product > -1).all()) and torch.equal(r1, r1.triu())


@pytest.mark.parametrize("name", NAMES)
def test_amortized_layer_stays_invertible_after_large_steps(name: str) -> None:
    # Thirty Adam steps at lr=0.5 on the likelihood of shifted, heavy-tailed data, with
    # contexts of several units: the per-sample parameters move far from their start.
    layer = AMORTIZED[name](C).double()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5)
    x, context = _points(64)
    x = 3 * x**3 + 2
    for _ in range(30):
        y, log_det = layer(x, 3 * context)
        loss = (0.5 * y.square().sum(-1) - log_det).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = check(layer, atol=1e-6)
    assert report.passed, report.failures


def test_amortized_inverse_raises_with_the_residual() -> None:
    layer = _perturbed(SylvesterBlock(D, max_iter=1, context_size=C))
    x, context = _points(8)
    with pytest.raises(ConvergenceError, match=r"max_iter=1 .* residual up to"):
        layer.inverse(4 * x, context)


# -- the VAE ---------------------------------------------------------------------------------
LATENT, HIDDEN = 3, (16,)
KINDS = [k for k in POSTERIORS if k != "gaussian"]


def _vae(kind: str) -> VAE:
    torch.manual_seed(0)
    flow = posterior_flow(kind, LATENT, HIDDEN[-1], n_layers=2, hidden_sizes=(8,))
    return _perturbed(VAE(16, LATENT, flow, HIDDEN), scale=0.2)


def _binary(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 16), 0.4, dtype=torch.float64), generator=_g(5))


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_log_density_is_the_flows(kind: str) -> None:
    # log q(z | x) from the sampling pass equals the density of the flow, evaluated in its
    # normalizing direction: log N(g(z | h); mu, sigma) + log|det dg/dz|.
    vae = _vae(kind)
    x = _binary()
    z, log_q = vae.posterior_sample(x, n_samples=2, generator=_g(0))
    h = vae.encoder(x)
    mu, log_sigma = vae.gaussian(h).chunk(2, dim=-1)
    z0, log_det = vae.flow(z, h.expand(2, *h.shape))
    base = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z0).sum(-1)
    torch.testing.assert_close(log_q, base + log_det, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", POSTERIORS)
def test_iwae_with_one_sample_is_the_elbo(kind: str) -> None:
    vae = _vae(kind)
    x = _binary()
    assert torch.equal(iwae_bound(vae, x, 1, _g(1)), elbo(vae, x, 1, _g(1)))


@pytest.mark.parametrize("kind", ["gaussian", "planar", "sylvester-orthogonal"])
def test_importance_weighted_nll_is_below_the_negative_elbo(kind: str) -> None:
    vae = _vae(kind)
    x = _binary(20)
    scores = vae_scores(vae, x, n_samples=64, batch_size=7, generator=_g(2))
    assert bool((scores.nll <= scores.neg_elbo).all())  # same draws: log-mean-exp >= mean
    with torch.no_grad():  # independent draws: on average
        assert float(-iwae_bound(vae, x, 64, _g(3)).mean()) < float(-elbo(vae, x, 64, _g(4)).mean())
    summary = scores.summary()
    expected = float(scores.nll.double().std()) / math.sqrt(20)
    assert summary["nll_se"] == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["gaussian", "planar", "sylvester-triangular"])
def test_training_decreases_the_negative_elbo(kind: str) -> None:
    torch.manual_seed(0)
    train = binarize(load_digits("train")[:300], DIGITS_N_VALUES)
    flow = posterior_flow(kind, LATENT, 32, n_layers=2)
    vae = VAE(64, LATENT, flow, hidden_sizes=(32,))
    before = vae_scores(vae, train, n_samples=4, generator=_g(0)).summary()["neg_elbo"]
    losses = fit_vae(vae, train, steps=150, batch_size=50, lr=3e-3, generator=_g(1))
    after = vae_scores(vae, train, n_samples=4, generator=_g(0)).summary()["neg_elbo"]
    assert after < before - 5 and len(losses) == 150


def test_binarize_threshold_and_draws() -> None:
    images = torch.arange(17.0).view(1, 1, 1, 17)
    assert binarize(images, DIGITS_N_VALUES).tolist() == [[0.0] * 8 + [1.0] * 9]
    draws = binarize(images.expand(4000, 1, 1, 17), DIGITS_N_VALUES, _g(0)).mean(0)
    assert torch.allclose(draws, torch.arange(17.0) / 16, atol=0.03)


@pytest.mark.parametrize(
    "make",
    [
        lambda: posterior_flow("maf", 3, 8),
        lambda: posterior_flow("planar", 3, 8, n_layers=0),
        lambda: VAE(16, 3, posterior_flow("planar", 3, 8), hidden_sizes=(16,)),
        lambda: VAE(16, 4, posterior_flow("planar", 3, 16), hidden_sizes=(16,)),
        lambda: VAE(16, 3).log_weights(torch.zeros(2, 15)),
    ],
    ids=["kind", "n_layers", "context_size", "latent_size", "x_size"],
)
def test_invalid_arguments_are_refused(make) -> None:
    with pytest.raises(ValueError, match="expected"):
        make()
