r"""Variational autoencoders whose approximate posterior :math:`q(z | x)` is an amortized flow.

The experiment of van den Berg et al. (2018): a VAE on binary images whose encoder produces,
per data point, the parameters of a flow that refines a diagonal Gaussian. Objectives are free
functions over the model (:func:`elbo`, :func:`iwae_bound`, :func:`vae_scores`), as for flows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.layers.autoregressive import MaskedAffineAutoregressive
from torchnf.layers.permutation import Reverse
from torchnf.layers.residual import GeneralizedSylvesterBlock, Planar, Radial, SylvesterBlock

#: The posterior families of :func:`posterior_flow` (``"gaussian"``: no flow).
POSTERIORS = (
    "gaussian",
    "planar",
    "radial",
    "iaf",
    "sylvester-orthogonal",
    "sylvester-householder",
    "sylvester-triangular",
    "generalized-sylvester",
)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def binarize(images: Tensor, n_values: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Binary pixel vectors ``(N, H W)`` from images ``(N, 1, H, W)`` of values ``0..n_values-1``.

    Without a generator, static thresholding: a pixel is 1 when its value is at least half the
    largest, :math:`v \ge (n - 1) / 2` (8 of 16 for the digits, 128 of 255 for MNIST). With a
    generator, one draw of the stochastic binarization :math:`x \sim
    \mathrm{Bernoulli}(v / (n - 1))`.

    Example:
        >>> binarize(torch.tensor([[[[0.0, 7.0], [8.0, 16.0]]]]), n_values=17)
        tensor([[0., 0., 1., 1.]])
    """
    p = images.flatten(1) / (n_values - 1)
    if generator is None:
        return (p >= 0.5).to(images.dtype)
    return torch.bernoulli(p, generator=generator)


def posterior_flow(
    kind: str,
    latent_size: int,
    context_size: int,
    n_layers: int = 4,
    hidden_size: int | None = None,
    n_reflections: int | None = None,
    hidden_sizes: Sequence[int] = (64,),
) -> Bijector | None:
    r"""The amortized flow of a posterior family, in torchnf's direction: ``z_0 = g(z_K | h)``.

    The layers :math:`f_1, \dots, f_K` (all with ``context_size``) are run in their explicit
    direction when sampling, :math:`z_k = f_k(z_{k-1} | h)`: the planar, radial and Sylvester
    maps as written in their papers, with every parameter a linear function of ``h``
    (amortized, see :class:`~torchnf.layers.residual.ContextOffsets`); IAF steps as one MADE
    pass (:class:`~torchnf.layers.MaskedAffineAutoregressive`, features reversed between
    steps) and generalized Sylvester blocks, whose MADEs take ``h`` as an input. The returned
    bijector is their chain's inverse view, :math:`g = (f_K \circ \cdots \circ f_1)^{-1}`,
    so that, as for every torchnf flow, its forward is the normalizing direction
    and ``g.inverse_and_log_det(z_0, h)`` is the sampling pass, returning :math:`z_K` and
    :math:`\log|\det \partial z_K / \partial z_0|`.

    Arguments:
        kind: one of :data:`POSTERIORS`; ``"gaussian"`` returns ``None`` (no flow).
        latent_size: ``D``.
        context_size: size of the encoder's hidden features ``h``.
        n_layers: number of flow layers ``K``.
        hidden_size: Sylvester's ``M`` for ``"sylvester-orthogonal"`` and
            ``"sylvester-householder"`` (default ``D``; the triangular form uses ``D``).
        n_reflections: reflections per ``"sylvester-householder"`` layer (default ``D``).
        hidden_sizes: MADE widths of ``"iaf"`` and ``"generalized-sylvester"``.

    Returns:
        The flow ``g`` (events ``(D,)``, ``context_size``), or ``None`` for ``"gaussian"``.

    References:
        Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018,
        arXiv:1803.05649).

    Example:
        >>> flow = posterior_flow("sylvester-triangular", 4, context_size=8, n_layers=2)
        >>> z, log_det = flow.inverse_and_log_det(torch.randn(5, 4), torch.randn(5, 8))
        >>> z.shape, log_det.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """
    d, c = latent_size, context_size
    builders = {
        "planar": lambda k: [Planar(d, seed=k, context_size=c)],
        "radial": lambda k: [Radial(d, seed=k, context_size=c)],
        "iaf": lambda k: (
            ([Reverse(d)] if k else []) + [MaskedAffineAutoregressive(d, hidden_sizes, c)]
        ),
        "sylvester-orthogonal": lambda k: [
            SylvesterBlock(d, hidden_size, "orthogonal", seed=k, context_size=c)
        ],
        "sylvester-householder": lambda k: [
            SylvesterBlock(d, hidden_size, "householder", n_reflections, seed=k, context_size=c)
        ],
        "sylvester-triangular": lambda k: [
            SylvesterBlock(d, q=("identity", "reverse")[k % 2], seed=k, context_size=c)
        ],
        "generalized-sylvester": lambda k: [GeneralizedSylvesterBlock(d, hidden_sizes, c, seed=k)],
    }
    if kind == "gaussian":
        return None
    if kind not in builders:
        raise ValueError(f"expected a posterior in {POSTERIORS}, got {kind!r}")
    if n_layers < 1:
        raise ValueError(f"expected n_layers >= 1, got {n_layers}")
    return Chain(*(layer for k in range(n_layers) for layer in builders[kind](k))).inv


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * z.square().sum(-1) - z.shape[-1] * _HALF_LOG_2PI


class VAE(nn.Module):
    r"""Variational autoencoder for binary vectors with an amortized flow posterior.

    Generative model: :math:`p(z) = N(0, I)`, :math:`p(x | z) = \prod_i
    \mathrm{Bernoulli}(x_i; \sigma(\mathrm{decoder}(z)_i))`. Posterior: the encoder MLP
    gives hidden features :math:`h(x)` (the context of the flow, ``hidden_sizes[-1]`` wide),
    a linear map of ``h`` gives :math:`(\mu, \log \sigma)`, and

    .. math::
        z_0 = \mu + \sigma \odot \epsilon,\ \epsilon \sim N(0, I), \qquad
        z_K = g^{-1}(z_0 | h), \qquad
        \log q(z_K | x) = \log N(z_0; \mu, \sigma^2) - \log|\det \partial z_K / \partial z_0|,

    where ``g`` is the posterior ``flow`` in torchnf's normalizing direction
    (:func:`posterior_flow`), whose layers take their parameters from ``h``. The Gaussian is
    computed here rather than as the flow's base, because a torchnf base distribution is
    shared by all data points and this one is not.

    Shapes: ``x`` is ``(*batch, input_size)`` with values in {0, 1}; :meth:`log_weights`
    returns ``(n_samples, *batch)``.

    Arguments:
        input_size: number of binary pixels ``P``.
        latent_size: ``D``.
        flow: the posterior flow (``context_size == hidden_sizes[-1]``, events ``(D,)``), or
            ``None`` for a diagonal Gaussian posterior.
        hidden_sizes: widths of the encoder's hidden layers (the decoder mirrors them).

    References:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2013, arXiv:1312.6114).
        Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018,
        arXiv:1803.05649).

    Example:
        >>> vae = VAE(64, 4, posterior_flow("planar", 4, context_size=32), hidden_sizes=(32,))
        >>> x = torch.randint(0, 2, (10, 64)).float()
        >>> vae.log_weights(x, n_samples=3).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        input_size: int,
        latent_size: int,
        flow: Bijector | None = None,
        hidden_sizes: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("expected at least one hidden layer in hidden_sizes")
        context_size = hidden_sizes[-1]
        if flow is not None and (
            flow.event_shape != (latent_size,) or flow.context_size != context_size
        ):
            raise ValueError(
                f"expected a flow over ({latent_size},) with context_size={context_size} "
                f"(hidden_sizes[-1]), got {flow.event_shape} and {flow.context_size}"
            )
        self.input_size, self.latent_size = input_size, latent_size
        self.encoder = _mlp([input_size, *hidden_sizes], last_activation=True)
        self.gaussian = nn.Linear(context_size, 2 * latent_size)
        self.flow = flow
        self.decoder = _mlp([latent_size, *reversed(hidden_sizes), input_size], False)

    def posterior_sample(
        self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``z ~ q(z | x)``, ``(n_samples, *batch, D)``, with ``log q(z | x)`` in one
        differentiable pass."""
        h = self.encoder(x)
        mu, log_sigma = self.gaussian(h).chunk(2, dim=-1)
        eps = torch.randn(
            (n_samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device
        )
        z = mu + log_sigma.exp() * eps
        log_q = _standard_normal_log_prob(eps) - log_sigma.sum(-1)
        if self.flow is not None:
            z, log_det = self.flow.inverse_and_log_det(z, h.expand(n_samples, *h.shape))
            log_q = log_q - log_det
        return z, log_q

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(x, z) = \log p(x | z) + \log p(z)` for ``z (..., *batch, D)``."""
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        return log_px + _standard_normal_log_prob(z)

    def log_weights(
        self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Importance log-weights :math:`\log p(x, z_k) - \log q(z_k | x)`, ``z_k ~ q(z | x)``,
        of shape ``(n_samples, *batch)``."""
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected x of shape (..., {self.input_size}), got {tuple(x.shape)}")
        z, log_q = self.posterior_sample(x, n_samples, generator)
        return self.log_joint(x, z) - log_q


def elbo(
    vae: VAE, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    r"""The evidence lower bound :math:`E_q[\log p(x, z) - \log q(z | x)]`, estimated with
    ``n_samples`` reparametrized draws per data point; ``(*batch,)``."""
    return vae.log_weights(x, n_samples, generator).mean(0)


def iwae_bound(
    vae: VAE, x: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""The importance-weighted bound :math:`\log \frac1K \sum_k p(x, z_k) / q(z_k | x)`,
    ``K = n_samples``; ``(*batch,)``. It equals the ELBO's one-sample estimate for ``K = 1``,
    increases with ``K`` in expectation and tends to :math:`\log p(x)`.

    References:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016,
        arXiv:1509.00519).
    """
    log_w = vae.log_weights(x, n_samples, generator)
    return torch.logsumexp(log_w, dim=0) - math.log(n_samples)


@dataclass(frozen=True)
class VAEScores:
    """Per-example test scores in nats, from the same ``n_samples`` draws per example.

    Attributes:
        neg_elbo: :math:`-\\mathrm{ELBO}` (mean of the log-weights), ``(N,)``.
        nll: the importance-weighted NLL estimate :math:`-\\mathrm{IWAE}_K`, ``(N,)``.
        n_samples: ``K``.
    """

    neg_elbo: Tensor
    nll: Tensor
    n_samples: int

    def summary(self) -> dict[str, float]:
        """Means over the examples and their standard errors (``*_se``)."""
        out = {}
        for name in ("neg_elbo", "nll"):
            values = getattr(self, name).double()
            out[name] = float(values.mean())
            out[f"{name}_se"] = float(values.std() / math.sqrt(len(values)))
        return out


@torch.no_grad()
def vae_scores(
    vae: VAE,
    x: Tensor,
    n_samples: int = 1000,
    batch_size: int = 50,
    generator: torch.Generator | None = None,
) -> VAEScores:
    """-ELBO and the importance-weighted NLL of each row of ``x (N, P)``, in batches.

    Example:
        >>> vae = VAE(16, 2, hidden_sizes=(8,))
        >>> scores = vae_scores(vae, torch.ones(5, 16), n_samples=20)
        >>> bool((scores.nll <= scores.neg_elbo).all())
        True
    """
    neg_elbo, nll = [], []
    for chunk in x.split(batch_size):
        log_w = vae.log_weights(chunk, n_samples, generator)
        neg_elbo.append(-log_w.mean(0))
        nll.append(math.log(n_samples) - torch.logsumexp(log_w, dim=0))
    return VAEScores(torch.cat(neg_elbo), torch.cat(nll), n_samples)


def fit_vae(
    vae: VAE,
    data: Tensor,
    steps: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Maximize the one-sample ELBO with Adam on minibatches of ``data (N, P)``.

    ``data`` holds pixel intensities in [0, 1]: each minibatch is binarized by a fresh draw
    :math:`x \\sim \\mathrm{Bernoulli}(p)` (dynamic binarization), which leaves data that are
    already binary unchanged. Returns the loss (the minibatch's mean -ELBO) of every step.

    Example:
        >>> vae = VAE(16, 2, hidden_sizes=(8,))
        >>> losses = fit_vae(vae, torch.rand(40, 16), steps=3, batch_size=10)
        >>> len(losses)
        3
    """
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        x = torch.bernoulli(data[index], generator=generator)
        loss = -elbo(vae, x, generator=generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
