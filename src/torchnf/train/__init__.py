"""Training: the NLL objective, the ``fit`` loop (one process or DDP) and checkpoints."""

from torchnf.train.checkpoint import load, save
from torchnf.train.loop import History, evaluate_nll, fit
from torchnf.train.losses import nll

__all__ = ["History", "evaluate_nll", "fit", "load", "nll", "save"]
