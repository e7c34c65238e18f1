"""Test session set-up: one intra-op thread, ``torch`` in the doctest namespace, and
hypothesis derandomized (the same examples on every run, so CI is reproducible; run with
``--hypothesis-profile=explore`` to search new ones).

The tests use tiny tensors, for which torch's thread pool costs more than it gives (4x slower
with two threads on a 2-core machine that is doing anything else); the library itself never
changes torch's global settings.
"""

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)
