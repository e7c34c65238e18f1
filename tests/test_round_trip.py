"""Round trips of trained flows in float32: ``inverse(forward(x))`` on heavy-tailed data.

Each ready-made model is trained briefly on heavy-tailed data (4-D Student-t with 2 degrees
of freedom, and Neal's funnel), then ``err(x) = max_i |x'_i - x_i| / max(1, max_i |x_i|)``
with ``x' = inverse(forward(x))`` must stay within 1e-4 for 99% of the training points and
within 1e-3 for all of them. On the Student-t data, whose training points cross a spline's
tail bound ``B`` (in the standardized units of the first ActNorm), points with one coordinate
set just inside and just outside ``+-B`` and at ``+-1.5 B`` and ``+-2 B`` must stay within
1e-3 too. The image models are trained on dequantized 8x8 digits.
"""

from __future__ import annotations

import functools

import pytest
import torch

import torchnf
from torchnf.core.flow import Flow
from torchnf.data.targets import get_target
from torchnf.layers import dequantize
from torchnf.models import (
    IAF,
    MAF,
    NAF,
    NICE,
    NSF,
    UMNN,
    BernsteinFlow,
    GeneralizedSylvesterNet,
    ImageFlow,
    PlanarFlow,
    RadialFlow,
    RealNVP,
    ResidualFlow,
    SylvesterNet,
)

STEPS = 150
BULK, WORST = 1e-4, 1e-3

# Small instances of every vector model; each id names the model.
VECTOR_MODELS = {
    "RealNVP": lambda d: RealNVP(d, n_layers=4, hidden_sizes=(32, 32)),
    "NICE": lambda d: NICE(d, n_layers=4, hidden_sizes=(32, 32)),
    "MAF": lambda d: MAF(d, n_layers=4, hidden_sizes=(32, 32)),
    "IAF": lambda d: IAF(d, n_layers=4, hidden_sizes=(32, 32)),
    "NSF": lambda d: NSF(d, n_layers=3, hidden_sizes=(32, 32)),
    "NSF-coupling": lambda d: NSF(d, n_layers=3, hidden_sizes=(32, 32), autoregressive=False),
    "PlanarFlow": lambda d: PlanarFlow(d, n_layers=8),
    "RadialFlow": lambda d: RadialFlow(d, n_layers=8),
    "SylvesterNet": lambda d: SylvesterNet(4, d),
    "GeneralizedSylvesterNet": lambda d: GeneralizedSylvesterNet(3, d, hidden_sizes=(32, 32)),
    "NAF": lambda d: NAF(d, n_layers=2, hidden_sizes=(32, 32)),
    "UMNN": lambda d: UMNN(d, n_layers=2, hidden_sizes=(32, 32)),
    "BernsteinFlow": lambda d: BernsteinFlow(d, n_layers=2, hidden_sizes=(32, 32)),
    "ResidualFlow": lambda d: ResidualFlow(d, n_layers=3, hidden_sizes=(32, 32)),
}
IMAGE_MODELS = {
    "Glow": {"n_levels": 2, "n_steps": 2, "hidden_channels": 16},
    "RealNVP2d": {"n_levels": 2, "hidden_channels": 16},
}


def _student(n: int, seed: int) -> torch.Tensor:
    """4-D Student-t data with 2 degrees of freedom (infinite variance), mixed linearly."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, 4, generator=g)
    chi2_over_dof = -torch.rand(n, 1, generator=g).log()  # chi^2 with 2 dof, over 2
    mix = torch.eye(4) + 0.5 * torch.diag(torch.ones(3), 1)
    return (normal / chi2_over_dof.sqrt()) @ mix


DATA = {
    "student4": lambda: _student(1500, 0),
    "funnel": lambda: get_target("funnel").sample(1500, seed=0),
}


def _errors(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """``err`` of each point (vectors ``(n, D)`` or images ``(n, C, H, W)``)."""
    with torch.no_grad():
        x_back = flow.inverse(flow(x)[0])
    return (x_back - x).flatten(1).abs().amax(-1) / x.flatten(1).abs().amax(-1).clamp_min(1)


def _near_the_tail_bound(flow: Flow, x: torch.Tensor, bound: float = 5.0) -> torch.Tensor:
    """Training points with one coordinate moved to a standardized value of
    ``+-bound (1 - 1e-6)``, ``+-bound (1 + 1e-6)``, ``+-1.5 bound`` or ``+-2 bound``."""
    g = torch.Generator().manual_seed(1)
    n = 256
    levels = torch.tensor([1 - 1e-6, 1 + 1e-6, 1.5, 2.0]) * bound
    value = levels[torch.randint(0, 4, (n,), generator=g)]
    value = value * (2 * torch.randint(0, 2, (n,), generator=g) - 1)
    column = torch.randint(0, x.shape[-1], (n,), generator=g)
    rows = torch.arange(n)
    with torch.no_grad():
        v = flow.bijector[0](x[:n])[0]  # the first ActNorm's standardized values
        v[rows, column] = value
        return flow.bijector[0].inverse(v)


@functools.cache
def _trained(model: str, data: str) -> tuple[Flow, torch.Tensor]:
    x = DATA[data]()
    torch.manual_seed(0)
    flow = VECTOR_MODELS[model](x.shape[-1])
    torchnf.fit(flow, x, steps=STEPS, lr=3e-3, val_fraction=0, progress=False)
    return flow.eval(), x


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("model", list(VECTOR_MODELS))
def test_trained_vector_flow_round_trip(model: str, data: str) -> None:
    flow, x = _trained(model, data)
    err = _errors(flow, x)
    assert err.quantile(0.99) <= BULK and err.max() <= WORST, (
        f"99th percentile {err.quantile(0.99):.1e}, worst {err.max():.1e}"
    )


@pytest.mark.parametrize("model", list(VECTOR_MODELS))
def test_round_trip_near_and_beyond_the_tail_bound(model: str) -> None:
    flow, x = _trained(model, "student4")
    err = _errors(flow, _near_the_tail_bound(flow, x))
    assert err.max() <= WORST, f"worst {err.max():.1e}"


@pytest.mark.parametrize("model", list(IMAGE_MODELS))
def test_trained_image_flow_round_trip(model: str) -> None:
    pytest.importorskip("sklearn")
    from torchnf.data.images import DIGITS_N_VALUES, load_digits

    x = dequantize(load_digits("train")[:128], torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    flow = ImageFlow((1, 8, 8), model, IMAGE_MODELS[model], DIGITS_N_VALUES)
    torchnf.fit(flow, x, steps=STEPS // 5, batch_size=64, lr=1e-3, val_fraction=0, progress=False)
    err = _errors(flow.eval(), x).max()  # the worst of the 128 images
    assert err <= BULK, f"worst {err:.1e}"
