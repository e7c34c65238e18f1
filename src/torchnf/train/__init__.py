"""Training: objectives, data sources, the run folder, hooks and the ``fit`` loop (one process
or DDP), and checkpoints."""

from torchnf.train.checkpoint import load, save
from torchnf.train.fit import fit
from torchnf.train.hooks import History, Hook
from torchnf.train.loop import Interrupted, evaluate_nll
from torchnf.train.objectives import FlowMatching, flow_matching_loss, nll, reverse_kl
from torchnf.train.run import RunFolder

__all__ = [
    "FlowMatching",
    "History",
    "Hook",
    "Interrupted",
    "RunFolder",
    "evaluate_nll",
    "fit",
    "flow_matching_loss",
    "load",
    "nll",
    "reverse_kl",
    "save",
]
