"""Adapters to other libraries, each behind an optional extra.

Nothing here is imported by ``import torchnf``, and no adapter imports its library at module
level: :mod:`torchnf.integrations.pyro` (extra ``pyro``) imports Pyro only when its class is
first used.
"""
