"""Neural spline flows: rational-quadratic splines driven by MADEs or coupling MLPs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.linear import ActNorm
from torchnf.layers.splines import SplineAutoregressive, SplineCoupling
from torchnf.models.maf import autoregressive_chain
from torchnf.nets.embedding import embedding_context


@register(
    "model",
    example=lambda context_size: NSF(
        3, n_layers=2, hidden_sizes=(8,), n_bins=4, tail_bound=3.0, context_size=context_size
    ),
    conditional=True,
)
class NSF(Flow):
    r"""Neural spline flow ``z = f(x | c)``: ActNorm, then rational-quadratic spline layers.

    :math:`f = S_K \circ \cdots \circ S_1 \circ A`: ``A`` an :class:`ActNorm` that
    ``flow.initialize(x)`` (called by ``fit`` on the first batch) sets to standardize the data,
    so the splines see standardized values whatever the location and scale of the raw data.
    With ``autoregressive=True`` each ``S_k`` is a :class:`SplineAutoregressive` layer with a
    feature reversal between layers (density in one pass, sampling in ``D`` passes); with
    ``autoregressive=False`` a :class:`SplineCoupling` whose mask alternates between layers
    (both directions in one pass; needs ``input_size >= 2``). The base is :math:`N(0, I)`.

    Each feature's transformer is :math:`y_i = \mathrm{RQS}((x_i + t_i) e^{s_i}; \theta_i)`
    (:class:`~torchnf.layers.RQSTransformer`): a conditional affine map, as in MAF, then the
    spline on ``[-tail_bound, tail_bound]``, which is the identity outside it. The affine map
    brings each conditional's bulk into the spline's interval, whatever its location and
    scale, and gives the tails lines of learned slope, so heavy tails and funnels, which
    splines with identity tails fit badly, are fitted about as well as by MAF. The defaults
    (6 bins, ``tail_bound=5``, GELU conditioners) were chosen by the KL on the built-in
    targets (README, "How good is it"): 8 bins overfit higher-dimensional, nearly Gaussian
    data (``gaussian16``, ``student8``) more in the same number of steps, 4 fit
    well-separated modes worse; with ReLU conditioners, whose spline parameters are piecewise
    linear in :math:`x_{<i}`, the KL on ``gaussian16`` was 0.113 instead of 0.064 and on
    ``student8`` 0.049 instead of 0.040 (on ``checkerboard`` 0.126 instead of 0.187; tanh,
    SiLU and ELU were worse than GELU on the banana, the funnel or the checkerboard).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of spline layers.
        hidden_sizes: widths of each conditioner (MADE or MLP).
        n_bins: number of spline bins.
        tail_bound: half-width of the spline interval (in the affine map's units).
        autoregressive: autoregressive layers if True, coupling layers otherwise.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        affine: the conditional affine map before each spline; ``False`` gives the splines
            of Durkan et al. (identity beyond ``tail_bound``).
        activation: the conditioners' hidden activation, a key of
            :data:`~torchnf.nets.mlp.ACTIVATIONS` (``"relu"``, ``"tanh"``, ``"leaky_relu"``,
            ``"elu"``, ``"gelu"`` (default), ``"silu"``).
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), recorded in ``config``.
        bounds: the support, one entry per dimension (see
            :class:`~torchnf.layers.BoundedSupport`, which then goes first); ``None``: the
            real line.

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        2017, arXiv:1705.07057.

    Example:
        >>> flow = NSF(2, n_layers=2, hidden_sizes=(16,))
        >>> x = 100 * torch.randn(10, 2) + 1000
        >>> _ = flow.initialize(x)
        >>> bool(flow.log_prob(x).isfinite().all()), flow.sample(4).shape
        (True, torch.Size([4, 2]))
    """

    #: Arguments a config recorded before they existed was built with (see
    #: :func:`~torchnf.core.registry.build`): NSF's conditioners used ReLU until
    #: ``activation`` was added with the default GELU.
    legacy_defaults: ClassVar[dict[str, Any]] = {"activation": "relu"}

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        n_bins: int = 6,
        tail_bound: float = 5.0,
        autoregressive: bool = True,
        context_size: int = 0,
        affine: bool = True,
        activation: str = "gelu",
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
    ) -> None:
        encoder, context_size = embedding_context(embedding, context_size)
        if autoregressive:
            layers: list[Bijector] = [
                SplineAutoregressive(
                    input_size,
                    hidden_sizes,
                    context_size,
                    n_bins=n_bins,
                    tail_bound=tail_bound,
                    affine=affine,
                    activation=activation,
                )
                for _ in range(n_layers)
            ]
            chain = autoregressive_chain(layers, bounds)
        else:
            layers = [
                SplineCoupling(
                    input_size,
                    parity=i % 2,
                    hidden_sizes=hidden_sizes,
                    context_size=context_size,
                    n_bins=n_bins,
                    tail_bound=tail_bound,
                    affine=affine,
                    activation=activation,
                )
                for i in range(n_layers)
            ]
            chain = Chain(*support_layers(bounds, input_size), ActNorm(input_size), *layers)
        super().__init__(chain, context_encoder=encoder)
