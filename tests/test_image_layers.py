"""Image layers, preprocessing, image models and bits/dim (the contract test covers the rest)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchnf import Flow
from torchnf.data.images import DIGITS_N_VALUES, load_digits
from torchnf.diagnostics import bits_per_dim, independent_pixels_bits_per_dim
from torchnf.distributions.base import Uniform
from torchnf.layers import (
    AffineImageCoupling,
    Flatten,
    InvertibleConv1x1,
    LogitPreprocessing,
    Rescale,
    Split,
    Squeeze,
    dequantize,
    image_mask,
)
from torchnf.layers.image import multi_scale
from torchnf.models import Glow, ImageFlow, RealNVP2d


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# -- squeeze, split, masks ------------------------------------------------------------------


def test_squeeze_moves_each_block_to_channels() -> None:
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)
    y, log_det = Squeeze((2, 4, 4))(x)
    assert y.shape == (1, 8, 2, 2) and torch.equal(log_det, torch.zeros(1))
    # output channel c*4 + i*2 + j at (h, w) is input channel c at (2h + i, 2w + j)
    for c, i, j, h, w in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 1), (0, 1, 1, 0, 1), (1, 0, 1, 1, 0)]:
        assert y[0, c * 4 + i * 2 + j, h, w] == x[0, c, 2 * h + i, 2 * w + j]


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 3),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    f=st.integers(1, 3),
    batch=st.lists(st.integers(1, 2), max_size=2),
)
def test_squeeze_round_trips_any_shape(c: int, h: int, w: int, f: int, batch: list[int]) -> None:
    layer = Squeeze((c, h * f, w * f), factor=f)
    x = torch.randn(*batch, c, h * f, w * f)
    y = layer(x)[0]
    assert y.shape == (*batch, c * f * f, h, w)
    assert torch.equal(layer.inverse(y), x)
    assert torch.equal(layer.inv(y)[0], x)


def test_squeeze_refuses_indivisible_sizes() -> None:
    with pytest.raises(ValueError, match="divisible by factor=2"):
        Squeeze((1, 3, 4))


@pytest.mark.parametrize(
    ("kind", "parity", "kept"),
    [("checkerboard", 0, 8), ("checkerboard", 1, 8), ("channel", 0, 16), ("channel", 1, 32)],
    ids=["checker0", "checker1", "channel0", "channel1"],
)
def test_image_mask_counts(kind: str, parity: int, kept: int) -> None:
    mask = image_mask((3, 4, 4), kind, parity)
    assert mask.shape == (3, 4, 4) and int(mask.sum()) == (kept if kind == "channel" else 24)
    assert not torch.equal(mask, image_mask((3, 4, 4), kind, 1 - parity))


def test_image_mask_refuses_bad_kinds() -> None:
    with pytest.raises(ValueError, match="at least 2 channels"):
        image_mask((1, 4, 4), "channel")
    with pytest.raises(ValueError, match="'checkerboard' or 'channel'"):
        image_mask((2, 4, 4), "stripes")


def test_split_factors_out_the_last_channels_unchanged() -> None:
    inner = AffineImageCoupling((2, 4, 4), "channel", 8)
    perturb(inner, 0.3)
    layer = Split((4, 4, 4), inner)
    x = torch.randn(3, 4, 4, 4)
    y, log_det = layer(x)
    assert torch.equal(y[:, 2:], x[:, 2:])
    inner_y, inner_log_det = inner(x[:, :2])
    assert torch.equal(y[:, :2], inner_y) and torch.equal(log_det, inner_log_det)


def test_split_refuses_mismatched_inner() -> None:
    with pytest.raises(ValueError, match="inner bijector from and to"):
        Split((4, 4, 4), Squeeze((2, 4, 4)))


def test_multi_scale_keeps_the_input_shape() -> None:
    chain = multi_scale((1, 8, 8), 3, lambda shape, last: [Squeeze(shape)])
    x = torch.randn(2, 1, 8, 8)
    z = chain(x)[0]
    assert z.shape == x.shape and torch.equal(chain.inverse(z), x)
    with pytest.raises(ValueError, match="n_levels >= 1"):
        multi_scale((1, 8, 8), 0, lambda shape, last: [Squeeze(shape)])


# -- coupling and 1x1 convolution --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
def test_image_coupling_starts_at_identity_and_keeps_masked_entries(kind: str) -> None:
    layer = AffineImageCoupling((2, 4, 4), kind, 8)
    x = torch.randn(3, 2, 4, 4)
    y, log_det = layer(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(3))
    perturb(layer, 0.3)
    y = layer(x)[0]
    mask = layer.mask
    assert torch.equal(y[:, mask], x[:, mask]) and not torch.allclose(y[:, ~mask], x[:, ~mask])


@pytest.mark.parametrize("form", ["lu", "qr"])
def test_invertible_conv_is_a_1x1_convolution(form: str) -> None:
    layer = InvertibleConv1x1((3, 4, 5), form).double()
    perturb(layer, 0.2)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y, log_det = layer(x)
    w = layer.matrix.weight()
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w[:, :, None, None]))
    torch.testing.assert_close(log_det, (20 * torch.linalg.slogdet(w)[1]).expand(2))


def test_invertible_conv_refuses_unknown_form() -> None:
    with pytest.raises(ValueError, match="'lu' or 'qr'"):
        InvertibleConv1x1((2, 2, 2), form="svd")


# -- preprocessing ---------------------------------------------------------------------------


def test_dequantize_stays_in_the_bins() -> None:
    x = torch.randint(0, 17, (100, 1, 8, 8)).double()
    v = dequantize(x, torch.Generator().manual_seed(0))
    assert torch.equal(v.floor(), x)
    with pytest.raises(ValueError, match="floating-point"):
        dequantize(x.long())


def test_rescale_log_det_and_refusals() -> None:
    layer = Rescale((1, 2, 2), -0.5, 1.0)
    y, log_det = layer(torch.ones(3, 1, 2, 2))
    assert torch.equal(y, torch.full((3, 1, 2, 2), 0.5))
    torch.testing.assert_close(log_det, torch.full((3,), 4 * math.log(0.5)))
    with pytest.raises(ValueError, match="non-zero scale"):
        Rescale(2, 0.0)


def test_logit_preprocessing_matches_its_formula() -> None:
    n, alpha = 17, 0.05
    layer = LogitPreprocessing((1, 2, 2), n, alpha).double()
    v = dequantize(torch.randint(0, n, (5, 1, 2, 2)).double(), torch.Generator().manual_seed(1))
    y, log_det = layer(v)
    p = alpha + (1 - 2 * alpha) * v / n
    torch.testing.assert_close(y, torch.log(p / (1 - p)))
    expected = (math.log((1 - 2 * alpha) / n) - torch.log(p * (1 - p))).flatten(1).sum(-1)
    torch.testing.assert_close(log_det, expected)
    assert layer.domain.check(v).all()


# -- models ----------------------------------------------------------------------------------

IMAGE_MODELS = {
    "Glow": lambda: Glow((1, 8, 8), n_levels=2, n_steps=2, hidden_channels=8),
    "Glow-qr-3levels": lambda: Glow((1, 8, 8), n_levels=3, n_steps=1, hidden_channels=8, form="qr"),
    "RealNVP2d": lambda: RealNVP2d((1, 8, 8), n_levels=2, hidden_channels=8),
    "ImageFlow-Glow": lambda: ImageFlow(
        (1, 8, 8), "Glow", {"n_levels": 2, "n_steps": 2, "hidden_channels": 8}, DIGITS_N_VALUES
    ),
    "ImageFlow-RealNVP2d": lambda: ImageFlow(
        (1, 8, 8), "realnvp2d", {"hidden_channels": 8}, DIGITS_N_VALUES
    ),
    "ImageFlow-NSF": lambda: ImageFlow((1, 8, 8), "NSF", {"n_layers": 2}, DIGITS_N_VALUES),
    "ImageFlow-MAF": lambda: ImageFlow((1, 8, 8), "MAF", {"n_layers": 2}, DIGITS_N_VALUES),
    "ImageFlow-SylvesterNet": lambda: ImageFlow(
        (1, 8, 8), "SylvesterNet", {"n_layers": 2}, DIGITS_N_VALUES
    ),
}


def digits_batch(n: int = 16) -> torch.Tensor:
    return dequantize(load_digits("test")[:n], torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_image_model_reconstructs_digits_in_float32(name: str) -> None:
    torch.manual_seed(0)
    flow = IMAGE_MODELS[name]()
    x = digits_batch()
    if not isinstance(flow, ImageFlow):
        x = x / DIGITS_N_VALUES - 0.5
    flow.initialize(x)
    perturb(flow, 0.02)
    z, log_det = flow(x)
    assert z.dtype == torch.float32 and torch.isfinite(log_det).all()
    assert (flow.inverse(z) - x).abs().max() < 1e-4


def test_glow_latent_has_the_input_shape_and_refuses_small_images() -> None:
    flow = Glow((2, 8, 4), n_levels=2, n_steps=1, hidden_channels=4)
    assert flow(torch.randn(3, 2, 8, 4))[0].shape == (3, 2, 8, 4)
    with pytest.raises(ValueError, match="divisible"):
        Glow((1, 8, 6), n_levels=2)


def test_image_flow_is_preprocessing_then_the_model() -> None:
    torch.manual_seed(0)
    flow = ImageFlow((1, 4, 4), "RealNVP", {"n_layers": 2, "hidden_sizes": [8]}, 17).double()
    perturb(flow, 0.1)
    x = digits_batch(5)[..., :4, :4].double()
    pre, (flatten, body) = flow.bijector[0], flow.bijector[1:]
    assert isinstance(flatten, Flatten)
    t, ld = pre(x)
    z, ld_body = body(flatten(t)[0])
    torch.testing.assert_close(flow.log_prob(x), flow.base.log_prob(z) + ld + ld_body)
    assert flow.config["model"] == "RealNVP" and flow.config["n_values"] == 17


@pytest.mark.parametrize(
    ("model", "config", "match"),
    [
        ("Glow", {"input_shape": [1, 8, 8]}, "must not set 'input_shape'"),
        ("Squeeze", {}, "name of a model"),
        ("NoSuchModel", {}, "unknown layer or model"),
    ],
    ids=["shape-given", "a-layer", "unknown"],
)
def test_image_flow_refuses_bad_models(model: str, config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageFlow((1, 8, 8), model, config, 17)


def test_sampling_at_a_temperature_scales_the_base_draws() -> None:
    flow = Glow((1, 4, 4), n_levels=2, n_steps=1, hidden_channels=4)
    perturb(flow, 0.1)
    torch.manual_seed(3)
    x_cold = flow.sample(6, temperature=0.5)
    torch.manual_seed(3)
    z = flow.base.sample((6,))
    torch.testing.assert_close(x_cold, flow.inverse(0.5 * z))
    assert torch.equal(flow.sample(2, temperature=0.0), flow.inverse(torch.zeros(2, 1, 4, 4)))


# -- bits per dimension ----------------------------------------------------------------------


def test_bits_per_dim_corrects_for_outside_preprocessing() -> None:
    torch.manual_seed(0)
    inside = ImageFlow((1, 4, 4), "RealNVP", {"n_layers": 2, "hidden_sizes": [8]}, 17).double()
    perturb(inside, 0.1)
    outside = Flow(inside.bijector[1:], inside.base)  # the same model, preprocessing apart
    x = load_digits("test")[:20, :, 2:6, 2:6].double()
    a = bits_per_dim(inside, x, generator=torch.Generator().manual_seed(5))
    b = bits_per_dim(
        outside, x, preprocessing=inside.bijector[0], generator=torch.Generator().manual_seed(5)
    )
    assert a == pytest.approx(b, rel=1e-12) and 0 < a < 20


def test_bits_per_dim_of_an_exact_uniform_model() -> None:
    flow = Flow(Rescale(3, 0.25), Uniform(3, 0.0, 1.0))
    x = torch.randint(0, 4, (50, 3)).double()
    # density 1/4 per dimension on [0, 4): exactly 2 bits, for any number of noise draws
    assert bits_per_dim(flow.double(), x, n_samples=3) == pytest.approx(2.0)


def test_independent_pixels_baseline_matches_counting() -> None:
    train = torch.tensor([[0.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    test = torch.tensor([[1.0, 0.0]])
    bits = independent_pixels_bits_per_dim(train, test, n_values=3, pseudo_count=1.0)
    p0, p1 = (2 + 1) / (3 + 3), (0 + 1) / (3 + 3)
    assert bits == pytest.approx(-(math.log2(p0) + math.log2(p1)) / 2)
    with pytest.raises(ValueError, match="values in 0..2"):
        independent_pixels_bits_per_dim(train, test + 3, n_values=3)
