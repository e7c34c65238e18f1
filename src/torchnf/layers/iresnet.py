r"""Invertible residual blocks: ``y = x + g(x | c)`` with a contractive ``g`` (i-ResNet).

``g`` is an MLP with spectrally normalized weights and LipSwish activations, so
:math:`\mathrm{Lip}_x(g) \le c < 1`: the block is invertible, its inverse is a fixed-point
iteration, and its log-determinant is :math:`\log\det(I + J_g)`, exact from the Jacobian
(small ``D``) or estimated without bias by the Russian-roulette power series (Chen et al.),
differentiated directly or by the memory-saving Neumann gradient series.
The maths is in :mod:`torchnf.functional.lipschitz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchnf.core.bijector import Bijector
from torchnf.core.registry import register
from torchnf.functional.lipschitz import (
    Activation,
    contraction_solve,
    elu,
    gradient_in_forward,
    jacobian_product,
    jacobian_transpose_product,
    lipschitz_mlp,
    lipswish,
    residual_log_det,
    roulette_log_det,
    spectral_scale,
)
from torchnf.functional.residual import SOFTPLUS_ONE

#: Up to this many features ``log_det=None`` means ``"exact"``, beyond it ``"roulette"``.
EXACT_LOG_DET_MAX_SIZE = 16
LOG_DET_MODES = ("exact", "roulette", "neumann")
ACTIVATIONS = ("elu", "lipswish")


class _Parts(NamedTuple):
    """The biases, LipSwish slopes and context term of a block's MLP ``g``."""

    biases: list[Tensor]
    betas: list[Tensor]
    offset: Tensor | None


class SpectralBound(nn.Module):
    r"""Parametrization ``W -> W / max(1, ||W||_2 / bound)`` (exact spectral norm).

    Registered with ``torch.nn.utils.parametrize``: every optimizer step on the raw weight
    keeps the weight in use within the bound, and the weight is a deterministic function of
    the raw one (a ``state_dict`` reload, train and eval modes give the same weight).

    Arguments:
        bound: the largest spectral norm allowed, positive.

    Example:
        >>> layer = parametrize.register_parametrization(nn.Linear(4, 4), "weight",
        ...                                              SpectralBound(0.5))
        >>> bool(torch.linalg.matrix_norm(layer.weight, ord=2) <= 0.5 + 1e-6)
        True
    """

    def __init__(self, bound: float) -> None:
        super().__init__()
        if not bound > 0:
            raise ValueError(f"expected bound > 0, got {bound}")
        self.bound = bound

    def forward(self, weight: Tensor) -> Tensor:
        return spectral_scale(weight, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound:.4g}"


@register(
    "layer",
    example=lambda context_size: InvertibleResidualBlock(
        3, hidden_sizes=(8,), context_size=context_size
    ),
    conditional=True,
)
class InvertibleResidualBlock(Bijector):
    r"""Invertible residual block ``y = f(x | c) = x + g(x | c)`` with :math:`\mathrm{Lip}_x(g)
    \le c < 1`.

    :math:`g(x | c) = W_L \phi(\cdots \phi(W_1 x + V c + b_1) \cdots) + b_L`, with ``L =
    len(hidden_sizes) + 1`` weights each spectrally normalized to :math:`\|W_l\|_2 \le c^{1/L}`
    (:class:`SpectralBound`, exact singular values) and activations with
    :math:`|\phi'| \le 1`, so :math:`\mathrm{Lip}_x(g) \le c`: ELU (i-ResNet; the default) or
    LipSwish :math:`\phi(a) = a\,\sigma(\beta a) / 1.1` with a learned :math:`\beta \ge 0` per
    unit (Residual Flows). At :math:`\beta = 1` LipSwish has slope 0.45 at 0, which damps
    :math:`g` well below its bound: on ``moons`` (5 blocks, 400 steps) ELU reached a KL of
    0.66-0.68 nats, LipSwish 0.88 (for ``c`` from 0.9 to 0.99 alike). The context enters the
    first layer through an unconstrained ``V``: only the Lipschitz constant in ``x`` matters.

    Log-determinant :math:`\log\det(I + J_g) = \sum_{k\ge1} (-1)^{k+1} \mathrm{tr}(J_g^k)/k`:
    ``"exact"`` forms :math:`J_g` (``D`` Jacobian-vector products through the MLP) and takes
    ``slogdet`` (:math:`O(D H^2 + D^3)` per sample); ``"roulette"`` uses, in training mode
    only, the unbiased Russian-roulette estimator with one Hutchinson probe per sample
    (:func:`~torchnf.functional.lipschitz.roulette_log_det`, gradients by direct
    differentiation through its random number of Jacobian products), and the exact value in
    eval mode, so ``log_prob`` is deterministic after ``model.eval()``; ``"neumann"`` is the
    same estimate, bit for bit for the same draws, with the unbiased Neumann-series gradient of
    Chen et al. (``roulette_log_det(gradient="neumann")``) computed in the forward pass
    (:func:`~torchnf.functional.lipschitz.gradient_in_forward`, "backward-in-forward"), so no
    graph of the series is kept for the backward pass, only one gradient per input (memory
    independent of the number of terms; see :class:`~torchnf.models.ResidualFlow` for
    measurements). Its parameter gradient is the one of a loss that weighs every sample's
    log-density equally (a mean or sum over the batch, as maximum likelihood and the reverse
    KL are); the backward pass refuses other weights with a ``ValueError``, and the gradient
    is not differentiable twice. Default: ``"exact"`` up to 16 features, ``"roulette"`` beyond.

    Inverse: the fixed point of :math:`x = y - g(x | c)`, a contraction with rate ``c``,
    started at ``y`` and stopped when the a-posteriori bound :math:`\frac{c}{1 - c}\|x_k -
    x_{k-1}\|` (hence the error) is at most :math:`\mathrm{tol}(1 + \|x_k\|)`; the a-priori
    bound :math:`\frac{c^k}{1 - c}\|x_1 - x_0\| \le \frac{c^k}{1 - c} \|g(y)\|` says ``k`` grows
    like :math:`\log(\mathrm{tol}) / \log c` (about 280 for ``c = 0.9`` in float64; usually far
    fewer, as the local rate is below ``c``). A
    :class:`~torchnf.functional.solvers.ConvergenceError` reports the residual when
    ``max_iter`` is not enough. Gradients of the inverse are the exact implicit ones: the
    backward pass solves :math:`a = \bar x - J_g^\top a` by the same iteration.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        hidden_sizes: widths of the hidden layers of ``g``.
        context_size: size of the context (0 for an unconditional block).
        lipschitz: the bound ``c`` on :math:`\mathrm{Lip}_x(g)`, in ``(0, 1)``.
        activation: ``"elu"`` or ``"lipswish"``.
        log_det: ``"exact"``, ``"roulette"``, ``"neumann"`` or None (by ``D``, see above).
        n_exact_terms: series terms the roulette estimator always computes.
        roulette_p: success probability of its geometric truncation, in ``(0, 1)``.
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse (and of its backward pass).

    References:
        Invertible Residual Networks (Behrmann et al., 2019, arXiv:1811.00995).
        Residual Flows for Invertible Generative Modeling (Chen et al., 2019,
        arXiv:1906.02735).

    Example:
        >>> block = InvertibleResidualBlock(2, hidden_sizes=(16,)).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> y, log_det = block(x)
        >>> bool((block.inverse(y) - x).abs().max() < 1e-10), log_det.shape
        (True, torch.Size([5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        lipschitz: float = 0.9,
        activation: str = "elu",
        log_det: str | None = None,
        n_exact_terms: int = 2,
        roulette_p: float = 0.5,
        tol: float | None = None,
        max_iter: int = 1000,
    ) -> None:
        super().__init__(input_size, context_size)
        if not 0 < lipschitz < 1:
            raise ValueError(f"expected 0 < lipschitz < 1, got {lipschitz}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"expected activation in {ACTIVATIONS}, got {activation!r}")
        if log_det is None:
            log_det = "exact" if input_size <= EXACT_LOG_DET_MAX_SIZE else "roulette"
        if log_det not in LOG_DET_MODES:
            raise ValueError(f"expected log_det in {LOG_DET_MODES} or None, got {log_det!r}")
        if not 0 < roulette_p < 1 or n_exact_terms < 1:
            raise ValueError(
                f"expected 0 < roulette_p < 1 and n_exact_terms >= 1, got {roulette_p}, "
                f"{n_exact_terms}"
            )
        if (tol is not None and not tol > 0) or max_iter < 1:
            raise ValueError(f"expected tol > 0 (or None) and max_iter >= 1, got {tol}, {max_iter}")
        if min(hidden_sizes, default=1) < 1:
            raise ValueError(f"expected positive hidden_sizes, got {tuple(hidden_sizes)}")
        self.lipschitz, self.log_det_mode = lipschitz, log_det
        self.n_exact_terms, self.roulette_p = n_exact_terms, roulette_p
        self.tol, self.max_iter = tol, max_iter
        sizes = [input_size, *hidden_sizes, input_size]
        bound = lipschitz ** (1 / (len(sizes) - 1))
        self.linears = nn.ModuleList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            linear = nn.Linear(n_in, n_out)
            parametrize.register_parametrization(linear, "weight", SpectralBound(bound))
            self.linears.append(linear)
        self.activation = activation
        self.beta_raw = nn.ParameterList(
            [nn.Parameter(torch.zeros(h)) for h in hidden_sizes] if activation == "lipswish" else []
        )
        self.context_weight = (
            nn.Linear(context_size, sizes[1], bias=False) if context_size else None
        )

    def weights(self) -> list[Tensor]:
        """The spectrally normalized ``W_l`` in use, ``(H_l, H_{l-1})`` each."""
        return [linear.weight for linear in self.linears]

    def _parts(self, context: Tensor | None) -> _Parts:
        """The tensors besides ``x`` and the weights that ``g`` is computed from."""
        return _Parts(
            biases=[linear.bias for linear in self.linears],
            betas=[F.softplus(raw + SOFTPLUS_ONE) for raw in self.beta_raw],
            offset=None if self.context_weight is None else self.context_weight(context),
        )

    def _mlp(self, x: Tensor, weights: list[Tensor], parts: _Parts) -> tuple[Tensor, list[Tensor]]:
        """``(g(x | c), slopes)`` (see :func:`~torchnf.functional.lipschitz.lipschitz_mlp`)."""
        activations: list[Activation] = (
            [elu] * (len(self.linears) - 1)
            if self.activation == "elu"
            else [partial(lipswish, beta=beta) for beta in parts.betas]
        )
        return lipschitz_mlp(x, weights, parts.biases, activations, parts.offset)

    def _residual(
        self, x: Tensor, context: Tensor | None, weights: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """``(g(x | c), slopes)`` (see :func:`~torchnf.functional.lipschitz.lipschitz_mlp`)."""
        return self._mlp(x, weights, self._parts(context))

    def _log_det(
        self, x: Tensor, weights: list[Tensor], slopes: list[Tensor], parts: _Parts
    ) -> Tensor:
        if self.training and self.log_det_mode == "roulette":
            return self._roulette(x, weights, slopes, "direct")
        if self.training and self.log_det_mode == "neumann":
            return self._neumann(x, weights, parts)
        eye = torch.eye(self.input_size, dtype=x.dtype, device=x.device)
        return residual_log_det(jacobian_product(eye, weights, slopes))

    def _roulette(
        self, x: Tensor, weights: list[Tensor], slopes: list[Tensor], gradient: str
    ) -> Tensor:
        return roulette_log_det(
            lambda v: jacobian_product(v, weights, slopes),
            tuple(x.shape),
            self.n_exact_terms,
            self.roulette_p,
            dtype=x.dtype,
            device=x.device,
            gradient=gradient,
        )

    def _neumann(self, x: Tensor, weights: list[Tensor], parts: _Parts) -> Tensor:
        """The roulette estimate with its Neumann gradient taken in the forward pass, with
        respect to everything ``g``'s Jacobian is computed from (the slopes recomputed from
        copies of them), so that no graph of the series is kept."""
        n_weights, n_biases = len(weights), len(parts.biases)

        def estimate(per_sample: list[Tensor], shared: list[Tensor]) -> Tensor:
            w, rest = shared[:n_weights], shared[n_weights:]
            offset = per_sample[1] if len(per_sample) > 1 else None
            slopes = self._mlp(per_sample[0], w, _Parts(rest[:n_biases], rest[n_biases:], offset))
            return self._roulette(per_sample[0], w, slopes[1], "neumann")

        per_sample = [x] if parts.offset is None else [x, parts.offset]
        return gradient_in_forward(estimate, per_sample, [*weights, *parts.biases, *parts.betas])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        weights, parts = self.weights(), self._parts(context)
        g, slopes = self._mlp(x, weights, parts)
        return x + g, self._log_det(x, weights, slopes, parts)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        weights = self.weights()
        with torch.no_grad():
            fixed = [w.detach() for w in weights]
            x_star = contraction_solve(
                lambda x: y - self._residual(x, context, fixed)[0],
                y,
                self.lipschitz,
                self.tol,
                self.max_iter,
            )
        # One more step with gradients: the value stays within tol, and a hook turns the
        # gradient of this step into the implicit one, (I + J_g)^{-T} applied to x's gradient.
        x = y - self._residual(x_star, context, weights)[0]
        if x.requires_grad:
            with torch.no_grad():
                slopes_star = self._residual(x_star, context, fixed)[1]

            def implicit(grad: Tensor | None) -> Tensor | None:
                if grad is None:
                    return None
                return contraction_solve(
                    lambda a: grad - jacobian_transpose_product(a, fixed, slopes_star),
                    grad,
                    self.lipschitz,
                    self.tol,
                    self.max_iter,
                )

            x.register_hook(implicit)
        parts = self._parts(context)
        slopes = self._mlp(x, weights, parts)[1]
        return x, -self._log_det(x, weights, slopes, parts)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lipschitz={self.lipschitz}, "
            f"activation={self.activation!r}, log_det={self.log_det_mode!r}"
        )
