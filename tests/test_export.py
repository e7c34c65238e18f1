"""torchnf.export: .pt2 archives (torch only, always run) and ONNX files run by onnxruntime.

The .pt2 cases cover every ready-made vector model's ``log_prob``, each model at input_size=2
in its conditional form where it has one, and its sampling too when the ONNX packages are
missing (``"sample"`` alone on one model: ``"sample_and_log_prob"`` holds its graph). The
ONNX cases, the slow ones (each conversion re-traces the program), cover each model once: its
sampling direction where that exports, whose graph holds the operators of its ``log_prob`` too
(conditioner and transformer), else its ``log_prob``. Each file is exported at a batch of 4
and run at batches of 1 and 9.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from torchnf import Flow, export
from torchnf.core.registry import Entry, entries, get
from torchnf.export import NOT_EXPORTABLE

#: onnxruntime against PyTorch in float32: rtol 1e-5, and an atol for samples near zero (the
#: largest atol that rtol=1e-5 needed over every model and method, when written: 5e-7).
RTOL, ATOL = 1e-5, 2e-6

VECTOR = [e for e in entries("model") if len(e.example(0).event_shape) == 1]


def _blocked(entry: Entry, method: str) -> bool:
    return (entry.name, method.removesuffix("_and_log_prob")) in NOT_EXPORTABLE


#: With the export extra installed, each model's ONNX case exports its sampling through the
#: same torch.export program, so the .pt2 cases need only its log_prob (the slow traces are the
#: numerical inverses' loops; tracing them twice cost a minute of the suite).
ONNX_INSTALLED = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
CASES = [
    pytest.param(entry, method, id=f"{entry.name}-{method}")
    for entry in VECTOR
    for method in (("log_prob",) if ONNX_INSTALLED else ("log_prob", "sample_and_log_prob"))
    if not _blocked(entry, method)
] + [
    pytest.param(get("RealNVP"), "sample", id="RealNVP-sample"),
    pytest.param(get("RealNVP"), "sample_and_log_prob", id="RealNVP-sample_and_log_prob"),
]

ONNX_CASES = [
    pytest.param(entry, method, id=f"{entry.name}-{method}")
    for entry in VECTOR
    for method in ["log_prob" if _blocked(entry, "sample") else "sample_and_log_prob"]
    if not _blocked(entry, method)
]

BLOCKED = [
    pytest.param(entry, method, id=f"{entry.name}-{method}")
    for entry in VECTOR
    for method in ("log_prob", "sample", "sample_and_log_prob")
    if _blocked(entry, method)
]


def _flow(entry: Entry) -> Flow:
    """The registry's example at input_size=2, conditional where possible, off the identity,
    initialized. (Sequential inverses unroll D passes a layer: export time grows with D.)"""
    torch.manual_seed(0)
    example = entry.example(2 if entry.conditional else 0)
    flow = entry.cls(**{**example.config, "input_size": 2})
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    flow.initialize(*_inputs(flow, 64))
    return flow


def _inputs(flow: Flow, n: int) -> tuple[Tensor, ...]:
    x = torch.randn(n, *flow.event_shape)
    return (x, torch.randn(n, flow.context_size)) if flow.context_size else (x,)


def _reference(flow: Flow, method: str, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    with torch.no_grad():
        if method == "log_prob":
            return (flow.log_prob(*inputs),)
        x, log_det = flow.inverse_and_log_det(*inputs)
        return (x, flow.base.log_prob(inputs[0]) - log_det) if method != "sample" else (x,)


@pytest.mark.parametrize(("entry", "method"), CASES)
def test_pt2_archive_matches_the_flow_at_any_batch_size(entry, method, tmp_path) -> None:
    flow = _flow(entry)
    path = export(flow, tmp_path / "flow.pt2", *_inputs(flow, 4), method=method)
    program = torch.export.load(path).module()
    for n in (1, 9):
        inputs = _inputs(flow, n)
        out = program(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        torch.testing.assert_close(out, _reference(flow, method, inputs))


@pytest.mark.parametrize(("entry", "method"), ONNX_CASES)
def test_onnxruntime_matches_the_flow_at_any_batch_size(entry, method, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    flow = _flow(entry)
    path = export(flow, tmp_path / "flow.onnx", *_inputs(flow, 4), method=method)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.onnx"]  # weights inside
    names = [i.name for i in session.get_inputs()]
    assert names == ["x" if method == "log_prob" else "z", "context"][: len(names)]
    outputs = ["log_prob"] if method == "log_prob" else ["x", "log_prob"]
    assert [o.name for o in session.get_outputs()] == outputs
    for n in (1, 9):
        inputs = _inputs(flow, n)
        out = session.run(None, {name: t.numpy() for name, t in zip(names, inputs, strict=True)})
        for got, expected in zip(out, _reference(flow, method, inputs), strict=True):
            np.testing.assert_allclose(got, expected.numpy(), rtol=RTOL, atol=ATOL)


def test_an_example_batch_of_one_still_exports_a_dynamic_batch(tmp_path) -> None:
    flow = _flow(get("RealNVP"))
    program = torch.export.load(export(flow, tmp_path / "a.pt2", *_inputs(flow, 1))).module()
    inputs = _inputs(flow, 5)
    torch.testing.assert_close(program(*inputs), flow.log_prob(*inputs))


@pytest.mark.parametrize(("entry", "method"), BLOCKED)
def test_not_exportable_models_fail_with_the_reason(entry, method, tmp_path) -> None:
    flow = _flow(entry)
    reason = re.escape(NOT_EXPORTABLE[entry.name, method.removesuffix("_and_log_prob")])
    with pytest.raises(ValueError, match=f"cannot export {entry.name} '{method}': {reason}"):
        export(flow, tmp_path / "flow.pt2", *_inputs(flow, 4), method=method)


class _Inverse(nn.Module):
    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.flow.inverse(z, context)


@pytest.mark.parametrize(
    "entry", [e for e in VECTOR if (e.name, "sample") in NOT_EXPORTABLE], ids=lambda e: e.name
)
def test_the_not_exportable_table_is_true(entry) -> None:
    """torch.export itself refuses these inverses; when it stops, drop the table entry."""
    flow = _flow(entry)
    with pytest.raises(GuardOnDataDependentSymNode), torch.no_grad():
        torch.export.export(_Inverse(flow), _inputs(flow, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "flow.onnx2"}, "expected a path ending in .onnx or .pt2, got '.*flow.onnx2'"),
        ({"method": "rsample"}, "expected method in"),
        ({"x": torch.randn(4, 2)}, r"expected x of shape \(n, 3\), got \(4, 2\)"),
        ({"x": torch.randn(2, 4, 3)}, r"expected x of shape \(n, 3\), got \(2, 4, 3\)"),
        ({"x": torch.randn(0, 3)}, "expected x with at least one row, got 0"),
        ({"x": torch.randn(4, 3).double()}, "expected x of dtype torch.float32"),
        ({"flow": get("RealNVP").example(2)}, "RealNVP is conditional: expected context"),
        (
            {"flow": get("RealNVP").example(2), "context": torch.randn(3, 2)},
            r"expected context of shape \(4, 2\) like x, got \(3, 2\)",
        ),
        ({"flow": get("RealNVP").example(0).bijector}, "expected a torchnf.Flow, got Chain"),
    ],
    ids=[
        "suffix",
        "method",
        "event-size",
        "batch-dims",
        "empty",
        "dtype",
        "no-context",
        "context-rows",
        "not-a-flow",
    ],
)
def test_bad_arguments_are_refused(kwargs, message, tmp_path) -> None:
    arguments = {"flow": get("RealNVP").example(0), "path": "flow.pt2", "x": torch.randn(4, 3)}
    arguments = {**arguments, **kwargs}
    with pytest.raises(ValueError, match=message):
        export(**{**arguments, "path": tmp_path / arguments["path"]})


def test_onnx_without_its_packages_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    flow = _flow(get("RealNVP"))
    with pytest.raises(ImportError, match=r"pip install 'torchnf\[export\]'"):
        export(flow, tmp_path / "flow.onnx", *_inputs(flow, 4))
