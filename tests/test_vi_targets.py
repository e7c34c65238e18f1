"""Reverse KL fits each variational-inference test problem to a stated KL(q || p): the
potentials U1-U4 of Rezende & Mohamed (2015), Neal's funnel, a banana and a multimodal
mixture (the ring of 8 Gaussians), each with its known log Z, so the KL is exact up to Monte
Carlo error. (Importance sampling's recovery of every log Z is in tests/test_energies.py.)"""

from __future__ import annotations

import pytest
import torch

import torchnf
from torchnf.data.energies import get_energy
from torchnf.diagnostics import importance_sample
from torchnf.models import RealNVP

#: KL(q || p) in nats that a 4-layer RealNVP reaches in 400 steps of batch 256 (about twice
#: what it measured, seed 0). The ring's 8 modes are the reverse KL's known weakness: it drops
#: some (KL about log 8/5), which the stated bound allows and the README says.
STATED_KL = {
    "u1": 0.3,
    "u2": 0.5,
    "u3": 0.75,
    "u4": 0.85,
    "funnel": 0.02,
    "banana": 0.03,
    "ring": 1.0,
}


@pytest.mark.parametrize("name", list(STATED_KL))
def test_reverse_kl_reaches_the_stated_kl(name):
    energy = get_energy(name)  # one thread, as conftest.py sets for the whole session
    torch.manual_seed(0)
    flow = RealNVP(energy.dim, n_layers=4, hidden_sizes=(32, 32))
    options = dict(steps=400, batch_size=256, lr=5e-3, anneal_steps=100, log_every=400)
    torchnf.fit(flow, target=energy, progress=False, **options)
    estimate = importance_sample(flow, energy, 20000, seed=0)
    kl = float(-estimate.log_weights.mean()) + energy.log_normalizer
    assert 0 <= kl + 3 * float(estimate.log_weights.std()) / 20000**0.5
    assert kl < STATED_KL[name]
