"""Objectives: free functions over a flow, and the one signature the training loop calls.

The loop knows no job: it calls an :class:`Objective`, ``objective(flow, batch) -> loss``, on
each batch a data source yields, and ``objective.name`` names its log records (``train_nll``,
``val_nll``). Maximum likelihood is :data:`NLL`; other jobs (reverse KL against an
unnormalized density, :class:`FlowMatching` of a continuous flow's vector field) are other
objectives over the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call

from torchnf.core.flow import Flow
from torchnf.functional.ode import conditional_path, ot_pairing
from torchnf.layers.continuous import split_continuous


class Batch(NamedTuple):
    """One batch of training data: points ``x`` of shape ``(n, *event_shape)`` and, for a
    conditional flow, their ``context`` of shape ``(n, context_size)``."""

    x: Tensor
    context: Tensor | None = None


class Objective(Protocol):
    """A training objective: ``objective(flow, batch)`` returns the scalar loss to minimize
    (differentiable), the mean over the batch; ``name`` names it in the log records."""

    name: str

    def __call__(self, flow: Flow, batch: Batch) -> Tensor: ...


def nll(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    r"""Mean negative log-likelihood :math:`-\frac1N \sum_i \log p(x_i | c_i)`, in nats.

    Minimizing it is maximum likelihood, and equals minimizing the forward KL divergence
    :math:`KL(p_{data} \| p_\theta)` up to the (constant) entropy of the data.

    Arguments:
        flow: the model.
        x: data of shape ``(N, *event_shape)``.
        context: ``(N, context_size)`` for a conditional flow.

    Returns:
        A scalar tensor (differentiable).

    Example:
        >>> import torch
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> nll(Flow(Reverse(2)), torch.zeros(4, 2))
        tensor(1.8379)
    """
    return -flow.log_prob(x, context).mean()


class NegativeLogLikelihood:
    """Maximum likelihood as an :class:`Objective`: :func:`nll` of the batch's points."""

    name = "nll"

    def __call__(self, flow: Flow, batch: Batch) -> Tensor:
        return nll(flow, batch.x, batch.context)


#: The maximum-likelihood objective, ``fit``'s default.
NLL = NegativeLogLikelihood()


def flow_matching_loss(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    *,
    ot: bool = False,
    sigma_min: float = 0.0,
) -> Tensor:
    r"""Conditional flow-matching loss of a continuous flow's vector field, in squared units.

    .. math:: \mathcal{L} = \frac1N \sum_{i=1}^N \left\| v(x_{t_i}, t_i \mid c_i)
              - u_i \right\|^2, \quad x_{t} = (1 - t)\, y + (\sigma_{min}
              + (1 - \sigma_{min})\, t)\, z,\ u = (1 - \sigma_{min})\, z - y,

    with ``y`` the data after the layers before the flow's
    :class:`~torchnf.layers.ContinuousFlow` (a :class:`~torchnf.models.CNF`'s standardizing
    ActNorm; they are fixed here, no gradient reaches them), ``z`` a draw of the flow's base
    distribution and :math:`t \sim U(0, 1)`: the straight path from data at ``t = 0`` to noise
    at ``t = 1`` (:func:`~torchnf.functional.ode.conditional_path`), in the flow's normalizing
    direction, as its ``forward`` integrates. Its gradient equals that of the regression on the
    marginal velocity field that carries the data distribution to the base (Lipman et al.,
    2023), whose flow is then a bijection between them: training needs no ODE solve and one
    field evaluation per point, and ``log_prob`` afterwards is exact through the ODE. The loss
    does not go to zero (the conditional velocities vary around the marginal one); lower is
    better, and differences of it are differences of the marginal regression error.

    With ``ot=True`` the batch's data and noise are paired by minibatch optimal transport
    (:func:`~torchnf.functional.ode.ot_pairing`: exact with SciPy, Sinkhorn otherwise; Tong et
    al., 2024) before drawing the times: straighter paths, which the solver then integrates
    in fewer steps. Unconditional flows only (pairing across contexts would change the noise
    each context sees).

    Randomness (``z``, ``t``) comes from torch's global generator (``fit`` seeds it).

    Arguments:
        flow: a :class:`~torchnf.models.CNF`, or a flow whose bijector is a
            :class:`~torchnf.layers.ContinuousFlow` or a chain ending in one.
        x: data of shape ``(N, *event_shape)``.
        context: ``(N, *context_shape)`` for a conditional flow.
        ot: pair data and noise by minibatch optimal transport.
        sigma_min: the path's width at the data end, in ``[0, 1)``.

    Returns:
        A scalar tensor (differentiable in the field's parameters).

    Raises:
        ValueError: for a flow without a continuous layer, or ``ot=True`` with a context.

    References:
        Flow Matching for Generative Modeling (Lipman et al., 2023, arXiv:2210.02747); Flow
        Straight and Fast (Liu et al., 2023, arXiv:2209.03003); Improving and Generalizing
        Flow-Based Generative Models with Minibatch Optimal Transport (Tong et al., 2024,
        arXiv:2302.00482).

    Example:
        >>> from torchnf.models import CNF
        >>> flow = CNF(2, hidden_sizes=(16,))
        >>> x = torch.randn(64, 2)
        >>> loss = flow_matching_loss(flow, x)  # the field starts at 0: E|z - x|^2 = 4
        >>> 2.5 < float(loss.detach()) < 5.5
        True
    """
    prefix, layer = split_continuous(flow)
    context = flow._check(x, context, flow.event_shape, "x")
    if ot and context is not None:
        raise ValueError("flow matching with ot=True is for unconditional flows; drop ot")
    encoded = flow._encode(context)
    if prefix is not None:
        with torch.no_grad():
            x = prefix(x, encoded)[0]
    x = x.detach()
    batch = x.shape[: x.dim() - 1]
    with torch.no_grad():
        z = flow.base.sample(tuple(batch))
    if ot:
        z = z[ot_pairing(x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1]))].reshape(z.shape)
    t = torch.rand(batch, dtype=x.dtype, device=x.device)
    x_t, u = conditional_path(x, z, t, sigma_min)
    return (layer.velocity(x_t, t, encoded) - u).square().sum(-1).mean()


class FlowMatching:
    """Flow matching as an :class:`Objective`: :func:`flow_matching_loss` of the batch.

    In training mode each call draws fresh noise and times. In eval mode (validation, where
    ``fit`` reports it as ``val_flow_matching``) the draws are seeded by ``seed``, so every
    log interval scores the validation points on the same noise and times and the values are
    comparable (for early stopping); the global random state is left as it was.

    Arguments:
        ot: pair data and noise by minibatch optimal transport.
        sigma_min: the path's width at the data end.
        seed: seed of the validation draws.
    """

    name = "flow_matching"
    #: The layers before the field and a learnable base get no gradient, and DDP must know.
    find_unused_parameters = True

    def __init__(self, ot: bool = False, sigma_min: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"expected sigma_min in [0, 1), got {sigma_min}")
        self.ot, self.sigma_min, self.seed = ot, sigma_min, seed

    def __call__(self, flow: Flow, batch: Batch) -> Tensor:
        if flow.training:
            return flow_matching_loss(
                flow, batch.x, batch.context, ot=self.ot, sigma_min=self.sigma_min
            )
        device = batch.x.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return flow_matching_loss(
                flow, batch.x, batch.context, ot=self.ot, sigma_min=self.sigma_min
            )


def get_objective(objective: str | Objective) -> Objective:
    """The objective ``"nll"`` or ``"flow_matching"`` names, or ``objective`` itself when it is
    one already (a callable with a ``name``)."""
    if isinstance(objective, str):
        named = {"nll": NLL, "flow_matching": FlowMatching()}
        if objective not in named:
            raise ValueError(
                f"expected objective 'nll' or 'flow_matching' (or an Objective), got {objective!r}"
            )
        return named[objective]
    if not callable(objective) or not isinstance(getattr(objective, "name", None), str):
        raise ValueError(
            "expected objective 'nll', 'flow_matching' or an Objective (a callable "
            f"objective(flow, batch) with a name), got {type(objective).__name__}"
        )
    return objective


#: What a target log-density may be, a callable on ``(n, D)`` points returning ``(n,)``
#: (unnormalized is fine), or a ``torch.distributions.Distribution``.
LogDensity = Callable[[Tensor], Tensor] | Distribution


def reverse_kl(
    flow: Flow,
    log_prob: LogDensity,
    n_samples: int,
    context: Tensor | None = None,
    *,
    path_gradient: bool = False,
    beta: float = 1.0,
) -> Tensor:
    r"""Reparameterized Monte Carlo estimate of the reverse KL objective, in nats.

    .. math:: \mathcal{L} = \frac1n \sum_{i=1}^n \left[\log q(x_i) - \beta \log \tilde p(x_i)
              \right], \quad x_i = f^{-1}(z_i \mid c),\ z_i \sim p_Z,

    which at :math:`\beta = 1` equals :math:`KL(q \| p) - \log Z` for an unnormalized target
    :math:`\tilde p = Z p` (the negative ELBO): minimizing it fits ``flow`` (``q``) to ``p``
    without samples of ``p``. Gradients flow through the samples (the reparameterization
    trick), so the sampling direction ``f^{-1}`` must be differentiable, which it is for every
    torchnf model. It costs one inverse pass: one pass for couplings and IAF (whose sampling
    direction is the fast one), ``D`` sequential passes for MAF and the autoregressive NSF.

    With ``path_gradient=True`` the gradient is the path-derivative ("sticking the landing")
    estimator: ``log q`` is evaluated with the flow's parameters detached, dropping the score
    term :math:`\nabla_\theta \log q_\theta(x)|_{x\ \text{fixed}}`, whose expectation is zero;
    its variance vanishes as ``q`` approaches ``p``. It costs one extra density pass.

    Arguments:
        flow: the variational distribution ``q``.
        log_prob: :math:`\log \tilde p`, a callable on ``(n, *event_shape)`` returning ``(n,)``
            (unnormalized is fine), or a ``torch.distributions.Distribution``.
        n_samples: Monte Carlo samples ``n``.
        context: for a conditional flow, one context row ``(context_size,)``; ``log_prob`` is
            then the target for that context.
        path_gradient: use the path-derivative gradient estimator.
        beta: the inverse temperature on :math:`\log \tilde p` (annealing: from small to 1).

    Returns:
        A scalar tensor (differentiable).

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770); Sticking the Landing: Simple, Lower-Variance Gradient Estimators
        for Variational Inference (Roeder, Wu & Duvenaud, 2017, arXiv:1703.09194).

    Example:
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> target = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> float(reverse_kl(Flow(Reverse(2)), target, 64).abs()) < 1e-5  # q = p: KL = 0
        True
    """
    if n_samples < 1:
        raise ValueError(f"expected n_samples >= 1, got {n_samples}")
    log_q, log_p, _ = _kl_terms(flow, as_log_density(log_prob), n_samples, context, path_gradient)
    return (log_q - beta * log_p).mean()


class ReverseKL:
    r"""Reverse KL against a target log-density as an :class:`Objective` (``fit(target=...)``).

    Each call is :func:`reverse_kl` with ``n_samples`` draws, or, when the batch has
    ``context`` rows (a conditional flow), one draw per row. ``beta`` is the annealing inverse
    temperature (set by :class:`~torchnf.train.hooks.Annealing`). :meth:`metrics` reports the
    effective sample size of the last batch's importance weights :math:`\tilde p(x) / q(x)` as
    a fraction of the batch (Kish's :math:`(\sum w)^2 / (n \sum w^2)`: 1 when ``q = p``).

    Arguments:
        log_prob: the target :math:`\log \tilde p` (see :func:`reverse_kl`).
        n_samples: draws per step of an unconditional flow.
        path_gradient: use the path-derivative gradient estimator.
    """

    name = "reverse_kl"

    def __init__(self, log_prob: LogDensity, n_samples: int, path_gradient: bool = False) -> None:
        if n_samples < 1:
            raise ValueError(f"expected n_samples >= 1, got {n_samples}")
        self.log_prob = as_log_density(log_prob)
        self.n_samples, self.path_gradient = n_samples, path_gradient
        self.beta = 1.0
        self._log_weights: Tensor | None = None

    def __call__(self, flow: Flow, batch: Batch) -> Tensor:
        n = self.n_samples if batch.context is None else ()
        log_q, log_p, log_w = _kl_terms(flow, self.log_prob, n, batch.context, self.path_gradient)
        self._log_weights = log_w
        return (log_q - self.beta * log_p).mean()

    def metrics(self) -> dict[str, float]:
        """The last batch's effective sample size as a fraction of the batch, ``ess``."""
        if self._log_weights is None:
            return {}
        w = self._log_weights.double()
        return {"ess": float(torch.exp(2 * w.logsumexp(0) - (2 * w).logsumexp(0)) / len(w))}


def as_log_density(log_prob: LogDensity) -> Callable[[Tensor], Tensor]:
    """``log_prob`` as a callable on points: the ``log_prob`` method of a ``Distribution`` (or
    of any object that has one), or the callable itself; anything else is refused."""
    if isinstance(log_prob, Distribution) or callable(getattr(log_prob, "log_prob", None)):
        return log_prob.log_prob
    if not callable(log_prob):
        raise ValueError(
            "expected the target as a callable log-density on (n, D) points, an object with a "
            f"log_prob method or a torch.distributions.Distribution, got {type(log_prob).__name__}"
        )
    return log_prob


class _LogProb(nn.Module):
    """``flow.log_prob`` as a module's forward, so :func:`torch.func.functional_call` can run
    it with other (detached) parameters."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.flow.log_prob(x, context)


def _kl_terms(
    flow: Flow,
    log_prob: Callable[[Tensor], Tensor],
    n: int | tuple[()],
    context: Tensor | None,
    path_gradient: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(log q(x), log p~(x), detached log weights)`` at reparameterized samples ``x ~ q``;
    ``log q`` with frozen parameters for the path-derivative estimator."""
    x, log_q = flow.rsample_and_log_prob(n, context)
    log_p = log_prob(x)
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"expected the target log_prob to return shape {tuple(log_q.shape)} for points of "
            f"shape {tuple(x.shape)}, got {tuple(log_p.shape)}"
        )
    log_weights = (log_p - log_q).detach()
    if path_gradient:
        frozen = {f"flow.{k}": v.detach() for k, v in flow.named_parameters()}
        log_q = functional_call(_LogProb(flow), frozen, (x, context))
    return log_q, log_p, log_weights
