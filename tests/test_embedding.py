"""Embedding nets for the context (torchnf.nets.embedding), raw context shapes in Flow, and
context standardization: each embedding through the contract's checks in a conditional model."""

from __future__ import annotations

import io
import math

import pytest
import torch

import torchnf
from torchnf import Flow
from torchnf.core.flow import ContextStandardizer
from torchnf.diagnostics import check
from torchnf.layers import Reverse
from torchnf.models import IAF, MAF, NSF, RealNVP
from torchnf.nets import DeepSets, MLPEmbedding, build_embedding
from torchnf.train.checkpoint import load, save

torch.set_num_threads(1)

#: A small spec of every embedding net.
SPECS = {
    "MLPEmbedding": {"name": "MLPEmbedding", "input_size": 5, "output_size": 3},
    "Conv1dEmbedding": {
        "name": "Conv1dEmbedding",
        "in_channels": 2,
        "length": 8,
        "output_size": 3,
        "hidden_channels": 4,
        "n_layers": 2,
        "hidden_sizes": [8],
    },
    "Conv2dEmbedding": {
        "name": "Conv2dEmbedding",
        "in_channels": 1,
        "height": 4,
        "width": 6,
        "output_size": 3,
        "hidden_channels": 4,
        "n_layers": 1,
        "hidden_sizes": [8],
    },
    "DeepSets": {
        "name": "DeepSets",
        "input_size": 2,
        "output_size": 3,
        "n_trials": 4,
        "hidden_sizes": [8],
    },
}
every_spec = pytest.mark.parametrize("name", list(SPECS), ids=list(SPECS))


def _flow(name: str, dtype: torch.dtype = torch.float64) -> RealNVP:
    torch.manual_seed(0)
    flow = RealNVP(3, n_layers=2, hidden_sizes=(8,), embedding=SPECS[name])
    with torch.no_grad():  # away from the identity, as the contract's cases
        g = torch.Generator().manual_seed(1)
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return flow.to(dtype)


def _context(flow: Flow, batch: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return 3.0 + 2.0 * torch.randn(batch, *flow.context_shape, generator=g, dtype=dtype)


@every_spec
def test_conditional_model_passes_check(name: str) -> None:
    flow = _flow(name)
    context = _context(flow, batch=3)
    flow.initialize(torch.randn(3, 3, dtype=torch.float64), context)
    report = check(flow, context=context, atol=1e-6)
    assert report.passed, report.failures
    assert all(p.grad is None for p in flow.context_encoder.parameters())  # zeroed by check


@every_spec
def test_gradients_reach_the_embedding(name: str) -> None:
    flow = _flow(name)
    context = _context(flow)
    flow.log_prob(torch.randn(4, 3, dtype=torch.float64), context).sum().backward()
    grads = [p.grad for p in flow.context_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@every_spec
def test_round_trip_sample_and_distribution_shapes(name: str) -> None:
    flow = _flow(name)
    context = _context(flow)
    x = torch.randn(4, 3, dtype=torch.float64)
    z, log_det = flow(x, context)
    assert log_det.shape == (4,)
    torch.testing.assert_close(flow.inverse(z, context), x, atol=1e-9, rtol=1e-9)
    assert flow.sample(5, context).shape == (5, 4, 3)
    assert flow.sample((), context).shape == (4, 3)
    dist = flow.distribution(context)
    draws = dist.rsample((2,))
    assert dist.batch_shape == (4,) and draws.shape == (2, 4, 3)
    assert dist.log_prob(draws).shape == (2, 4)
    assert dist.expand((3, 4)).sample().shape == (3, 4, 3)


@every_spec
def test_dtype_follows_the_flow(name: str) -> None:
    flow = _flow(name, torch.float32)
    context = _context(flow, dtype=torch.float32)
    z, log_det = flow(torch.randn(4, 3), context)
    assert z.dtype == log_det.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        flow(torch.randn(4, 3), context.double())


@every_spec
def test_checkpoint_rebuilds_model_embedding_and_standardizer(name: str, tmp_path) -> None:
    flow = _flow(name, torch.float32)
    context = _context(flow, batch=16, dtype=torch.float32)
    x = torch.randn(16, 3)
    flow.initialize(x, context)
    assert flow.config["embedding"] == SPECS[name]
    loaded = load(save(flow, tmp_path / "run"))
    assert type(loaded.context_encoder) is type(flow.context_encoder)
    assert bool(loaded.context_standardizer.initialized)
    assert torch.equal(loaded.log_prob(x, context), flow.log_prob(x, context))


@every_spec
def test_state_dict_reload_gives_identical_outputs(name: str) -> None:
    source, target = _flow(name), _flow(name)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    context, x = _context(source), torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(source.log_prob(x, context), target.log_prob(x, context))


BAD_CONTEXTS = {
    "wrong-trailing-shape": lambda shape: torch.randn(4, *shape[:-1], shape[-1] + 1),
    "flat-vector": lambda shape: torch.randn(4, math.prod(shape) + 1),
    "wrong-batch": lambda shape: torch.randn(2, *shape),
    "integer": lambda shape: torch.zeros(4, *shape, dtype=torch.long),
}


@every_spec
@pytest.mark.parametrize("bad", list(BAD_CONTEXTS), ids=list(BAD_CONTEXTS))
def test_bad_raw_context_is_refused(name: str, bad: str) -> None:
    flow = _flow(name, torch.float32)
    context = BAD_CONTEXTS[bad](flow.context_shape)
    with pytest.raises(ValueError, match="expected"):
        flow.log_prob(torch.randn(4, 3), context)
    if bad != "wrong-batch":
        with pytest.raises(ValueError, match="expected"):
            flow.sample(2, context)


@every_spec
def test_missing_context_is_refused(name: str) -> None:
    flow = _flow(name, torch.float32)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="context"):
        flow.sample(2)


def test_deep_sets_is_permutation_invariant_and_ignores_nan_padding() -> None:
    torch.manual_seed(0)
    net = DeepSets(2, 3, n_trials=5, hidden_sizes=(8,)).double()
    trials = torch.randn(3, 2, dtype=torch.float64)
    nan = torch.full((2, 2), float("nan"), dtype=torch.float64)
    padded_last = torch.cat([trials, nan])
    padded_mixed = torch.cat([nan[:1], trials.flip(0), nan[1:]])
    out = net(torch.stack([padded_last, padded_mixed]))
    torch.testing.assert_close(out[0], out[1])
    full = torch.randn(5, 2, dtype=torch.float64)
    assert not torch.allclose(net(full), net(torch.cat([full[:3], nan])))  # the count matters


def test_deep_sets_padding_gives_finite_gradients_and_is_left_out_of_standardization() -> None:
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), embedding=SPECS["DeepSets"])
    context = 5.0 + 3.0 * torch.randn(64, 4, 2)
    context[::2, 2:] = float("nan")  # half the sets have 2 trials
    flow.initialize(torch.randn(64, 2), context)
    present = context[~context.isnan().any(-1)]
    standardizer = flow.context_standardizer
    assert standardizer.center.shape == (1, 2)
    torch.testing.assert_close(standardizer.center[0], present.mean(0), atol=0.2, rtol=0)
    loss = -flow.log_prob(torch.randn(64, 2), context).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("shape", "feature_dim", "stat_shape"),
    [((3,), 0, (3,)), ((2, 8), 0, (2, 1)), ((1, 4, 6), 0, (1, 1, 1)), ((4, 2), 1, (1, 2))],
    ids=["vector", "series-per-channel", "image-per-channel", "set-per-feature"],
)
def test_standardizer_statistics_per_feature_axis(shape, feature_dim, stat_shape) -> None:
    standardizer = ContextStandardizer(shape, feature_dim)
    context = torch.randn(200, *shape) * 1e6 + 3e6
    assert torch.equal(standardizer(context), context)  # the identity until initialized
    standardizer.initialize(context)
    assert standardizer.center.shape == stat_shape
    out = standardizer(context)
    axes = [0, *(1 + i for i, n in enumerate(stat_shape) if n == 1)]
    torch.testing.assert_close(out.mean(axes), torch.zeros(stat_shape).squeeze(), atol=0.1, rtol=0)
    torch.testing.assert_close(out.std(axes), torch.ones(stat_shape).squeeze(), atol=0.1, rtol=0)


def test_flow_without_standardization_keeps_raw_contexts() -> None:
    model = RealNVP(2, n_layers=1, hidden_sizes=(4,), context_size=3)
    flow = Flow(model.bijector, standardize_context=False)
    assert flow.context_standardizer is None and flow.initialized
    flow.initialize(torch.randn(8, 2), torch.randn(8, 3) * 1e6)  # nothing to set for contexts


BAD_SPECS = {
    "unknown-name": {"name": "Transformer", "input_size": 2, "output_size": 3},
    "no-name": {"input_size": 2, "output_size": 3},
    "unknown-argument": {"name": "MLPEmbedding", "input_size": 2, "output_size": 3, "x": 1},
    "zero-output": {"name": "MLPEmbedding", "input_size": 2, "output_size": 0},
    "negative-hidden": {"name": "DeepSets", "input_size": 2, "output_size": 3, "n_trials": 4,
                        "hidden_sizes": [-1]},
    "no-hidden": {"name": "DeepSets", "input_size": 2, "output_size": 3, "n_trials": 4,
                  "hidden_sizes": []},
    "zero-trials": {"name": "DeepSets", "input_size": 2, "output_size": 3, "n_trials": 0},
    "even-kernel": {"name": "Conv1dEmbedding", "in_channels": 1, "length": 8, "output_size": 3,
                    "kernel_size": 4},
    "too-short": {"name": "Conv1dEmbedding", "in_channels": 1, "length": 3, "output_size": 3},
    "too-small-image": {"name": "Conv2dEmbedding", "in_channels": 1, "height": 8, "width": 2,
                        "output_size": 3},
    "bad-activation": {"name": "MLPEmbedding", "input_size": 2, "output_size": 3,
                       "activation": "sigmoid"},
}  # fmt: skip


@pytest.mark.parametrize("spec", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_bad_embedding_spec_is_refused(spec: dict) -> None:
    with pytest.raises(ValueError, match="expected|bad arguments"):
        build_embedding(spec)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"context_size": 5}, "output_size 3"),
        ({"context_size": 3}, None),
    ],
    ids=["context-size-mismatch", "context-size-equal"],
)
def test_model_context_size_with_embedding(options: dict, match: str | None) -> None:
    spec = SPECS["MLPEmbedding"]
    if match is None:
        assert RealNVP(2, n_layers=1, embedding=spec, **options).context_shape == (5,)
    else:
        with pytest.raises(ValueError, match=match):
            RealNVP(2, n_layers=1, embedding=spec, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"context_shape": (2, 3)}, "without a context_encoder"),
        ({"context_encoder": torch.nn.Identity()}, "context_shape"),
        ({"context_encoder": MLPEmbedding(4, 3), "context_shape": (0,)}, "positive"),
        ({"context_encoder": MLPEmbedding(4, 3), "context_size": 5, "context_shape": (4,)}, "prod"),
    ],
    ids=["shape-without-encoder", "encoder-without-shape", "zero-shape", "size-shape-mismatch"],
)
def test_flow_raw_context_arguments_are_checked(options: dict, match: str) -> None:
    bijector = RealNVP(2, n_layers=1, hidden_sizes=(4,), context_size=3).bijector
    with pytest.raises(ValueError, match=match):
        Flow(bijector, **options)


def test_unconditional_flow_has_no_context_shape() -> None:
    flow = Flow(Reverse(2))
    assert flow.context_size == 0 and flow.context_shape == () and flow.initialized


def _posterior_task(scale: float) -> tuple[torch.Tensor, ...]:
    """x | c ~ N((c, -c), 0.3^2 I) with c ~ N(0, 1) shown at ``scale``; train and test split."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2400, 1, generator=g)
    x = torch.cat([c, -c], dim=1) + 0.3 * torch.randn(2400, 2, generator=g)
    return x[:2000], scale * c[:2000], x[2000:], scale * c[2000:]


def _held_out_nll(scale: float) -> float:
    x, c, x_test, c_test = _posterior_task(scale)
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=4, hidden_sizes=(32,), context_size=1)
    torchnf.fit(flow, x, c, steps=300, batch_size=200, lr=3e-3, progress=False, seed=0)
    with torch.no_grad():
        return -flow.log_prob(x_test, c_test).mean().item()


def test_contexts_scaled_by_1e6_train_as_standardized_ones() -> None:
    standardized, scaled = _held_out_nll(1.0), _held_out_nll(1e6)
    unconditional_entropy = 0.5 * math.log(2 * math.pi * math.e * 1.09) * 2  # x's marginal
    assert standardized < unconditional_entropy - 0.5  # the context is used
    assert abs(scaled - standardized) < 0.02


MODELS_WITH_EMBEDDING = {
    "MAF": lambda spec: MAF(3, n_layers=2, hidden_sizes=(8,), embedding=spec),
    "IAF": lambda spec: IAF(3, n_layers=2, hidden_sizes=(8,), embedding=spec),
    "NSF": lambda spec: NSF(3, n_layers=2, hidden_sizes=(8,), embedding=spec),
    "NSF-coupling": lambda spec: NSF(
        3, n_layers=2, hidden_sizes=(8,), autoregressive=False, embedding=spec
    ),
}


@pytest.mark.parametrize("make", MODELS_WITH_EMBEDDING.values(), ids=MODELS_WITH_EMBEDDING)
def test_every_ready_made_model_takes_an_embedding(make, tmp_path) -> None:
    torch.manual_seed(0)
    flow = make(SPECS["DeepSets"]).double()
    context = _context(flow, batch=3)
    flow.initialize(torch.randn(3, 3, dtype=torch.float64), context)
    report = check(flow, context=context, atol=1e-6)
    assert report.passed, report.failures
    torchnf.save(flow.eval(), tmp_path)
    x = torch.randn(3, 3, dtype=torch.float64)
    assert torch.equal(torchnf.load(tmp_path).log_prob(x, context), flow.log_prob(x, context))
