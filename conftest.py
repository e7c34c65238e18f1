"""Test session set-up: one intra-op thread, and ``torch`` in the doctest namespace.

The tests use tiny tensors, for which torch's thread pool costs more than it gives (4x slower
with two threads on a 2-core machine that is doing anything else); the library itself never
changes torch's global settings.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)
