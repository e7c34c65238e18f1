r"""Importance sampling with a flow as the proposal: the evidence and how far to trust it.

A flow :math:`q` fitted to an unnormalized target :math:`\tilde p = Z p` (by reverse KL)
is a proposal for importance sampling: with :math:`x_i \sim q` and the log weights
:math:`\log w_i = \log \tilde p(x_i) - \log q(x_i)`,

.. math:: \hat Z = \frac1n \sum_i w_i, \qquad
          \mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}, \qquad
          \mathrm{se}(\log \hat Z) \approx \frac{\operatorname{sd}(w)}{\sqrt n\, \bar w},

and the Pareto :math:`\hat k` of the largest weights says whether these numbers can be
believed (:func:`pareto_k`). Reverse KL is mode-seeking: a flow that puts too little mass
where the target has some gives rare, huge weights, which a large :math:`\hat k` flags
while the ESS may still look fine. Mass the flow never samples (a missed mode) is
invisible to every importance sampling diagnostic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from torchnf.core.flow import Flow
from torchnf.diagnostics.kl import seeded

_PRIOR_K, _PRIOR_N = 0.5, 10  # PSIS's weakly informative prior on k: 10 pseudo-tail-weights
_MIN_TAIL = 5  # fewest tail weights the generalized Pareto fit is tried on
_FLAT_TAIL = 1e-4  # log-weight spread of the tail below which it is rounding noise (float32)


def _gpd_shape(x: Tensor) -> float:
    r"""Shape :math:`\hat k` of a generalized Pareto fitted to the ascending exceedances
    ``x`` (float64, ``x[-1] > 0``) by Zhang and Stephens (2009), with PSIS's prior.

    The GPD :math:`F(x) = 1 - (1 + k x / \sigma)^{-1/k}` is written with
    :math:`\theta = -k / \sigma`; given :math:`\theta` the likelihood is maximized by
    :math:`k(\theta) = \overline{\log(1 - \theta x)}`, with profile log-likelihood
    :math:`\ell(\theta) = M (\log(-\theta / k(\theta)) - k(\theta) - 1)`. :math:`\hat\theta`
    is the posterior mean of :math:`\theta` over the :math:`m = 30 + \lfloor\sqrt M\rfloor`
    quantiles :math:`\theta_j = 1 / x_{(M)} + (1 - \sqrt{m / (j - 1/2)}) / (3 x_{(q)})` of
    Zhang and Stephens' prior (:math:`x_{(q)}` the first quartile, or the smallest positive
    exceedance when ties at the threshold make it 0), with weights
    :math:`\propto e^{\ell(\theta_j)}`; then :math:`\hat k = k(\hat\theta)`, shrunk towards
    0.5 as if by 10 more observations: :math:`(M \hat k + 5) / (M + 10)`.
    """
    m_tail = len(x)
    x_q = x[int(m_tail / 4 + 0.5) - 1]
    if x_q <= 0:
        x_q = x[x > 0][0]
    m = 30 + int(math.sqrt(m_tail))
    j = torch.arange(1, m + 1, dtype=x.dtype)
    theta = 1 / x[-1] + (1 - torch.sqrt(m / (j - 0.5))) / (3 * x_q)
    k = torch.log1p(-theta[:, None] * x).mean(-1)
    profile = m_tail * (torch.log(-theta / k) - k - 1)
    profile = torch.where(profile.isnan(), -math.inf, profile)  # theta == 0 exactly: 0 / 0
    theta_hat = (torch.softmax(profile, 0) * theta).sum()
    k_hat = float(torch.log1p(-theta_hat * x).mean())
    return (m_tail * k_hat + _PRIOR_N * _PRIOR_K) / (m_tail + _PRIOR_N)


def pareto_k(log_weights: Tensor) -> float:
    r"""The Pareto :math:`\hat k` of importance weights, as in Pareto smoothed importance
    sampling (PSIS).

    A generalized Pareto distribution is fitted to the :math:`M = \lceil \min(n / 5,
    3\sqrt n) \rceil` largest weights, as exceedances over the :math:`(M+1)`-th largest, by
    the estimator of Zhang and Stephens (2009) with the weakly informative prior of PSIS
    (the estimate is shrunk towards 0.5 as if by 10 more tail weights). Its shape
    :math:`\hat k` estimates the tail of the weights' distribution: their moments of order
    below :math:`1 / \hat k` are finite. Read it as the PSIS paper says:

    - :math:`\hat k < 0.5`: the variance of the weights is finite; the estimates converge
      at the usual :math:`1/\sqrt n` rate and the standard error is meaningful. Bounded
      weights (a proposal with heavier tails than the target) give :math:`\hat k < 0`.
    - :math:`0.5 \le \hat k < 0.7`: finite mean but infinite variance: usable, converging
      more slowly; the standard error understates the error.
    - :math:`\hat k \ge 0.7`: unreliable; the estimates are dominated by a few weights and
      may be far off (the proposal misses mass of the target).

    The paper's current guidance refines the 0.7 to the sample-size-dependent threshold
    :math:`\min(1 - 1 / \log_{10} n, 0.7)` (:attr:`ImportanceEstimate.pareto_k_threshold`),
    stricter than 0.7 for :math:`n < 2154` (0.5 at :math:`n = 100`).

    The weights only matter up to a common factor (the fit is on :math:`w / \max w`).
    Returns ``nan`` when :math:`M < 5` (:math:`n \le 20`), and ``-inf`` when the
    :math:`M + 1` largest log weights are within :math:`10^{-4}` of each other: the tail is
    flat, and what spread there is is rounding (a float32 flow equal to the target gives
    log weights that differ by about :math:`10^{-5}`; fitted, such noise can give any
    :math:`\hat k`, even above 1).

    Arguments:
        log_weights: ``(n,)`` log importance weights, unnormalized.

    Returns:
        :math:`\hat k`, a float.

    References:
        Vehtari, Simpson, Gelman, Yao, Gabry, "Pareto Smoothed Importance Sampling", 2015
        (JMLR 2024), arXiv:1507.02646.
        Zhang, Stephens, "A New and Efficient Estimation Method for the Generalized Pareto
        Distribution", Technometrics, 2009.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> u = torch.rand(100_000, generator=g, dtype=torch.float64)
        >>> log_w = -0.5 * torch.log1p(-u)  # w = (1 - u)^(-1/2): Pareto, k = 0.5
        >>> round(pareto_k(log_w), 1)
        0.5
    """
    if not torch.is_tensor(log_weights) or log_weights.dim() != 1:
        raise ValueError(
            f"expected log_weights of shape (n,), got {getattr(log_weights, 'shape', log_weights)}"
        )
    lw = log_weights.detach().double()
    n = len(lw)
    m_tail = math.ceil(min(n / 5, 3 * math.sqrt(n)))
    if m_tail < _MIN_TAIL:
        return math.nan
    top = torch.topk(lw, m_tail + 1).values  # descending
    if top[0] - top[-1] <= _FLAT_TAIL:
        return -math.inf
    w = torch.exp(top - top[0])  # largest weight 1
    return _gpd_shape((w[:-1] - w[-1]).flip(0))  # ascending exceedances over the threshold


@dataclass(frozen=True, eq=False)
class ImportanceEstimate:
    r"""Importance samples of a target with their weights, the evidence and diagnostics.

    Attributes:
        samples: ``(n, *event_shape)`` draws of the proposal (``(n, D)`` for a vector flow),
            in the flow's dtype and on its device.
        log_weights: ``(n,)`` unnormalized :math:`\log w_i = \log \tilde p(x_i) - \log
            q(x_i)`, float64 on the CPU. Self-normalized expectations are
            ``softmax(log_weights)`` times a function of the samples.
        ess: Kish's effective sample size :math:`(\sum w)^2 / \sum w^2`, a count in
            :math:`[1, n]` (:math:`n` when the proposal is the target).
        log_evidence: :math:`\log \hat Z = \operatorname{logsumexp}(\log w) - \log n`.
        stderr: standard error of ``log_evidence`` by the delta method,
            :math:`\operatorname{sd}(w) / (\sqrt n\, \bar w)` (sd with :math:`n - 1`); to be
            trusted only when ``pareto_k`` is below :attr:`pareto_k_threshold`.
        pareto_k: the PSIS :math:`\hat k` of the weights (:func:`pareto_k`): below 0.5
            good, 0.5 to 0.7 usable but slower to converge, 0.7 and above unreliable.

    Example:
        >>> log_w = torch.tensor([1.0, 1.0, 2.0, 4.0]).log()
        >>> est = ImportanceEstimate.from_log_weights(torch.zeros(4, 2), log_w)
        >>> round(est.ess, 3), round(est.log_evidence, 4), round(est.stderr, 4)  # 64 / 22, log 2
        (2.909, 0.6931, 0.3536)
    """

    samples: Tensor
    log_weights: Tensor
    ess: float
    log_evidence: float
    stderr: float
    pareto_k: float

    @classmethod
    def from_log_weights(cls, samples: Tensor, log_weights: Tensor) -> ImportanceEstimate:
        """The estimate from ``(n, ...)`` samples and their ``(n,)`` log weights (computed
        in float64, stably: every sum is a ``logsumexp`` or taken on :math:`w / \\max w`)."""
        if not torch.is_tensor(log_weights) or log_weights.dim() != 1 or len(log_weights) < 2:
            raise ValueError(
                "expected log_weights of shape (n,) with n >= 2, got "
                f"{getattr(log_weights, 'shape', log_weights)}"
            )
        if len(samples) != len(log_weights):
            raise ValueError(
                f"expected {len(log_weights)} samples like the log weights, got {len(samples)}"
            )
        lw = log_weights.detach().double().cpu()
        if lw.isnan().any() or (lw == math.inf).any() or (lw == -math.inf).all():
            raise ValueError(
                "expected log weights in [-inf, inf) with at least one finite, i.e. a target "
                "log_prob that is finite (or -inf) and finite somewhere on the samples; got "
                f"{int(lw.isnan().sum())} nan, {int((lw == math.inf).sum())} +inf and "
                f"{int((lw == -math.inf).sum())} -inf of {len(lw)}"
            )
        n = len(lw)
        log_sum = torch.logsumexp(lw, 0)
        ess = float(torch.exp(2 * log_sum - torch.logsumexp(2 * lw, 0)))
        w = torch.exp(lw - lw.max())
        stderr = float(w.std() / (math.sqrt(n) * w.mean()))
        return cls(samples, lw, ess, float(log_sum) - math.log(n), stderr, pareto_k(lw))

    @property
    def n(self) -> int:
        """The number of samples."""
        return len(self.log_weights)

    @property
    def pareto_k_threshold(self) -> float:
        r"""The PSIS paper's sample-size-dependent threshold on :math:`\hat k`,
        :math:`\min(1 - 1 / \log_{10} n, 0.7)`: above it the estimates are unreliable."""
        return min(1 - 1 / math.log10(self.n), 0.7)

    def __str__(self) -> str:
        return (
            f"log Z = {self.log_evidence:.4f} ± {self.stderr:.4f}, "
            f"ESS = {self.ess:.1f} of {self.n}, k = {self.pareto_k:.2f}"
        )


def _log_prob_function(log_prob: object) -> Callable[[Tensor], Tensor]:
    method = getattr(log_prob, "log_prob", None)
    if callable(method):
        return method
    if callable(log_prob):
        return log_prob
    raise ValueError(
        "expected log_prob to be a callable x -> log p(x) of shape (n,), a "
        f"torch.distributions.Distribution, or an object with a log_prob method; got "
        f"{type(log_prob).__name__}"
    )


def _one_context(flow: Flow, context: Tensor | None) -> Tensor | None:
    if context is None or not flow.context_size:
        return context
    if context.shape not in ((flow.context_size,), (1, flow.context_size)):
        raise ValueError(
            f"expected one context of shape ({flow.context_size},) or "
            f"(1, {flow.context_size}), got {tuple(context.shape)}"
        )
    return context.reshape(flow.context_size)


@torch.no_grad()
def importance_sample(
    flow: Flow,
    log_prob: Callable[[Tensor], Tensor] | Distribution | object,
    n: int,
    context: Tensor | None = None,
    batch_size: int = 8192,
    seed: int | None = None,
) -> ImportanceEstimate:
    r"""Importance sampling of an unnormalized target :math:`\tilde p` with the flow
    :math:`q` as the proposal.

    Draws :math:`x_i \sim q` (``flow.sample_and_log_prob``, in eval mode, without
    gradients; the flow's mode is restored afterwards) and weighs them by
    :math:`\log w_i = \log \tilde p(x_i) - \log q(x_i)` (float64). The returned
    :class:`ImportanceEstimate` has the evidence :math:`\log \hat Z`, its standard error,
    Kish's ESS and the PSIS :math:`\hat k` (:func:`pareto_k`), which says whether to
    believe them: :math:`\hat k < 0.5` good, :math:`0.5 \le \hat k < 0.7` usable (slower
    convergence), :math:`\hat k \ge 0.7` unreliable; more precisely the PSIS paper's
    threshold :math:`\min(1 - 1/\log_{10} n, 0.7)`
    (:attr:`ImportanceEstimate.pareto_k_threshold`).

    A conditional flow is a proposal for one context: ``context`` of shape
    ``(context_size,)`` or ``(1, context_size)``, and all ``n`` samples are drawn given it.

    Arguments:
        flow: the proposal :math:`q`.
        log_prob: the target's unnormalized :math:`\log \tilde p`: a callable on
            ``(n, *event_shape)`` samples (in the flow's dtype) returning ``(n,)``, a
            :class:`torch.distributions.Distribution`, or any object with such a
            ``log_prob`` method (a :class:`~torchnf.data.Energy`, a
            :class:`~torchnf.data.Target`). ``-inf`` (outside the support) is allowed.
        n: number of samples, at least 2 (the Pareto :math:`\hat k` needs more than 20).
        context: the one context of a conditional flow.
        batch_size: samples per pass of the flow (bounds the memory).
        seed: seed of the draws, run under a fork of torch's global generators (which are
            left as they were); ``None`` draws from them as they are.

    Returns:
        An :class:`ImportanceEstimate`.

    References:
        Kish, "Survey Sampling", 1965 (the effective sample size).
        Vehtari, Simpson, Gelman, Yao, Gabry, "Pareto Smoothed Importance Sampling", 2015,
        arXiv:1507.02646.

    Example:
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> target = torch.distributions.MultivariateNormal(torch.zeros(2), 0.5 * torch.eye(2))
        >>> est = importance_sample(Flow(Reverse(2)), target, 4000, seed=0)  # exact: log Z = 0
        >>> abs(est.log_evidence) < 3 * est.stderr, est.ess > 2000, est.pareto_k < 0.5
        (True, True, True)
        >>> wide = torch.distributions.MultivariateNormal(torch.zeros(2), 4 * torch.eye(2))
        >>> importance_sample(Flow(Reverse(2)), wide, 4000, seed=0).pareto_k > 0.7  # too narrow
        True
    """
    if not isinstance(flow, Flow):
        raise ValueError(f"expected a torchnf Flow as the proposal, got {type(flow).__name__}")
    log_p = _log_prob_function(log_prob)
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"expected a number of samples n >= 2, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
    context = _one_context(flow, context)
    training = flow.training
    flow.eval()
    samples, log_weights = [], []
    try:
        with seeded(seed):
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                x, log_q = flow.sample_and_log_prob(m, context)
                lp = log_p(x)
                if not torch.is_tensor(lp) or lp.shape != (m,):
                    raise ValueError(
                        f"expected log_prob to return a tensor of shape ({m},) for samples of "
                        f"shape {tuple(x.shape)}, got {getattr(lp, 'shape', type(lp).__name__)}"
                    )
                samples.append(x)
                log_weights.append(lp.double().cpu() - log_q.double().cpu())
    finally:
        flow.train(training)
    return ImportanceEstimate.from_log_weights(torch.cat(samples), torch.cat(log_weights))
