"""Checkpoints: bit-identical round trips for every model, atomic writes, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from cases import CASES

import torchnf
from torchnf import Flow
from torchnf.distributions.base import DiagonalNormal
from torchnf.layers import Reverse
from torchnf.models import RealNVP
from torchnf.train import checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    # These small models run fastest on one thread, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODEL_CASES = [c for c in CASES if c.entry.kind == "model" and not c.inverse_view]


def _data(flow, n: int = 16, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *flow.event_shape, generator=g, dtype=dtype)
    x = torch.distributions.transform_to(flow.domain)(x)
    c = torch.randn(n, flow.context_size, generator=g, dtype=dtype) if flow.context_size else None
    return x, c


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_round_trip_gives_identical_log_prob(case, tmp_path):
    flow = case.build()  # float64, parameters perturbed
    x, c = _data(flow)
    flow.initialize(x, c)  # data-dependent state (ActNorm) must survive
    flow.eval()
    checkpoint.save(flow, tmp_path, step=7)
    loaded = torchnf.load(tmp_path)
    assert type(loaded) is type(flow) and loaded.config == flow.config
    assert next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))
    for key, value in flow.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_float32_round_trip_and_metadata(tmp_path):
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
    x = torch.randn(32, 2) * 3 + 1
    flow.initialize(x)
    path = torchnf.save(flow, tmp_path / "run", step=5, data="moons")
    info = json.loads((path / "config.json").read_text())
    assert info["model"] == "RealNVP" and info["config"] == flow.config
    assert (info["dtype"], info["step"], info["data"]) == ("float32", 5, "moons")
    loaded = torchnf.load(path / "model.safetensors")  # a file of the checkpoint works too
    assert bool(loaded.bijector[0].initialized)
    assert torch.equal(loaded.log_prob(x), flow.eval().log_prob(x))
    assert not loaded.training


def test_unregistered_flow_needs_a_module_to_load_into(tmp_path):
    flow = Flow(Reverse(2), DiagonalNormal(2))
    with torch.no_grad():
        flow.base.loc.fill_(1.5)
    torchnf.save(flow, tmp_path)
    with pytest.raises(ValueError, match="is not registered; pass the module"):
        torchnf.load(tmp_path)
    loaded = torchnf.load(tmp_path, model=Flow(Reverse(2), DiagonalNormal(2)))
    assert torch.equal(loaded.base.loc, flow.base.loc)


def test_write_is_atomic(tmp_path, monkeypatch):
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
    torchnf.save(flow, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with torch.no_grad():
        next(flow.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        torchnf.save(flow, tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # old checkpoint intact, no temporary file left


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="expected JSON-serializable checkpoint metadata"):
        torchnf.save(RealNVP(2, n_layers=1), tmp_path, bad=object())


def _corrupt(path, name, content):
    (path / name).write_bytes(content)


BROKEN = {
    "missing-dir": (lambda p: None, "nope", FileNotFoundError, "no such checkpoint directory"),
    "missing-config": (
        lambda p: (p / "config.json").unlink(),
        "",
        FileNotFoundError,
        "config.json: no checkpoint config found",
    ),
    "missing-weights": (
        lambda p: (p / "model.safetensors").unlink(),
        "",
        FileNotFoundError,
        "model.safetensors: checkpoint weights not found",
    ),
    "garbage-config": (
        lambda p: _corrupt(p, "config.json", b"{not json"),
        "",
        ValueError,
        "config.json: corrupt checkpoint config",
    ),
    "foreign-config": (
        lambda p: _corrupt(p, "config.json", b'{"a": 1}'),
        "",
        ValueError,
        "config.json: not a torchnf checkpoint config",
    ),
    "garbage-weights": (
        lambda p: _corrupt(p, "model.safetensors", b"\x00" * 100),
        "",
        ValueError,
        "model.safetensors: corrupt checkpoint weights",
    ),
    "truncated-weights": (
        lambda p: _corrupt(p, "model.safetensors", (p / "model.safetensors").read_bytes()[:-9]),
        "",
        ValueError,
        "model.safetensors: corrupt checkpoint weights",
    ),
    "mismatched-config": (
        lambda p: (p / "config.json").write_text(
            (p / "config.json").read_text().replace('"n_layers": 2', '"n_layers": 3')
        ),
        "",
        ValueError,
        "model.safetensors: weights do not match the model",
    ),
    "unknown-model": (
        lambda p: (p / "config.json").write_text(
            (p / "config.json").read_text().replace('"RealNVP"', '"Nope"')
        ),
        "",
        ValueError,
        "config.json: cannot rebuild the model: unknown layer or model 'Nope'",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_checkpoint_gives_a_clear_error_naming_the_file(tmp_path, case):
    damage, sub, error, message = case
    torchnf.save(RealNVP(2, n_layers=2, hidden_sizes=(8,)), tmp_path)
    damage(tmp_path)
    with pytest.raises(error, match=message) as info:
        torchnf.load(tmp_path / sub)
    assert str(tmp_path) in str(info.value)
