"""A small instance of every registered bijector, for the contract test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchnf.core.bijector import Bijector
from torchnf.core.registry import Entry, entries

CONTEXT_SIZE = 3


@dataclass(frozen=True)
class Case:
    entry: Entry
    context_size: int
    inverse_view: bool

    @property
    def id(self) -> str:
        return (
            self.entry.name
            + ("-context" if self.context_size else "")
            + (".inv" if self.inverse_view else "")
        )

    def build(self, seed: int = 0) -> Bijector:
        """The example instance, its parameters perturbed away from their initial values."""
        torch.manual_seed(seed)
        bijector = self.entry.example(self.context_size)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 1)
            for p in bijector.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        bijector = bijector.double()
        return bijector.inv if self.inverse_view else bijector


def all_cases() -> list[Case]:
    cases = []
    for entry in entries():
        for context_size in (0, CONTEXT_SIZE) if entry.conditional else (0,):
            for inverse_view in (False, True):
                cases.append(Case(entry, context_size, inverse_view))
    return cases


CASES = all_cases()
