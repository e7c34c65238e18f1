r"""Embedding nets: summary networks ``e = g(c)`` for a flow's raw context.

A conditional flow ``z = f(x | g(c))`` learns the embedding ``g`` jointly with ``f``: pass one
as ``Flow(bijector, context_encoder=g)`` (the flow reads the raw context's shape from
``g.context_shape``) or, to a ready-made model, its JSON spec ``embedding={"name": ..., ...}``
(:func:`build_embedding`), which the checkpoint's ``config.json`` records, so the model is
rebuilt with its embedding. ``g`` runs once per call, after the flow's context standardizer
(the flow's context standardizer, which standardizes along ``g.feature_dim``).

Every embedding maps ``(*batch, *context_shape)`` to ``(*batch, output_size)``, treats each
batch item on its own (no batch normalization), and refuses a context of another shape with a
``ValueError`` naming the shape expected:

============================  =====================================  ==================
class                         raw context, one row                   standardized per
============================  =====================================  ==================
:class:`MLPEmbedding`         a vector ``(input_size,)``             feature
:class:`Conv1dEmbedding`      a time series ``(in_channels, length)``  channel
:class:`Conv2dEmbedding`      an image ``(in_channels, height, width)``  channel
:class:`DeepSets`             a set of trials ``(n_trials, input_size)``  trial feature
============================  =====================================  ==================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchnf.nets.mlp import ACTIVATIONS


class Embedding(nn.Module):
    """Base class of the embedding nets: checks ``(*batch, *context_shape)``, flattens the batch.

    A subclass sets ``context_shape``, ``output_size`` and ``feature_dim`` (the axis of
    ``context_shape`` that the flow's standardizer keeps one mean and scale per entry of) and
    writes ``_embed(c)`` on ``(M, *context_shape)``, returning ``(M, output_size)``. Its
    constructor's arguments, recorded in ``config``, rebuild it (:func:`build_embedding`).
    ``nan_padding`` says whether NaN in a context marks padding (data checks must let it in).
    """

    context_shape: tuple[int, ...]
    output_size: int
    feature_dim: int | None = 0
    nan_padding: bool = False

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    @property
    def spec(self) -> dict[str, Any]:
        """The JSON spec that :func:`build_embedding` rebuilds this net from."""
        return {"name": type(self).__name__, **self.config}

    def _embed(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, context: Tensor) -> Tensor:
        """Return ``g(c)`` of shape ``(*batch, output_size)``."""
        shape = self.context_shape
        n = len(shape)
        if (
            not isinstance(context, Tensor)
            or not torch.is_floating_point(context)
            or context.dim() < n
            or tuple(context.shape[context.dim() - n :]) != shape
        ):
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(
                f"{type(self).__name__}: expected a floating-point context of shape "
                f"(..., {', '.join(map(str, shape))}), got {got}"
            )
        batch = context.shape[: context.dim() - n]
        out = self._embed(context.reshape(-1, *shape))
        return out.reshape(*batch, self.output_size)


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of widths ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def _check_sizes(activation: str, **sizes: int | Sequence[int]) -> None:
    """Refuse non-positive sizes and unknown activations, naming them."""
    for name, value in sizes.items():
        values = list(value) if isinstance(value, Sequence) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(f"expected {name} of positive integers, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {activation!r}")


class MLPEmbedding(Embedding):
    r"""Embedding ``e = g(c)`` of a context vector by a multi-layer perceptron.

    Shapes: ``context`` is ``(*batch, input_size)``, the output ``(*batch, output_size)``.

    Arguments:
        input_size: size of the raw context vector.
        output_size: size of the embedding (the flow's conditioners' ``context_size``).
        hidden_sizes: widths of the hidden layers.
        activation: the hidden activation, a key of :data:`torchnf.nets.mlp.ACTIVATIONS`.

    References:
        Automatic posterior transformation for likelihood-free inference (Greenberg et al.,
        2019, arXiv:1905.07488), which learns the summary network jointly with the flow.

    Example:
        >>> net = MLPEmbedding(10, 4, hidden_sizes=(16,))
        >>> net(torch.randn(5, 10)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        _check_sizes(
            activation, input_size=input_size, output_size=output_size, hidden_sizes=hidden_sizes
        )
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            hidden_sizes=tuple(hidden_sizes),
            activation=activation,
        )
        self.context_shape = (input_size,)
        self.output_size = output_size
        self.net = _mlp([input_size, *hidden_sizes, output_size], activation)

    def _embed(self, c: Tensor) -> Tensor:
        return self.net(c)


class _ConvEmbedding(Embedding):
    """Shared body of the 1-D and 2-D CNNs: ``n_layers`` x (conv, activation, max-pool 2),
    then an MLP on the flattened features. ``spatial`` names the spatial sizes in ``config``
    (the constructor's arguments)."""

    def __init__(self, spatial: tuple[str, ...], config: dict[str, Any]) -> None:
        sizes = tuple(config[name] for name in spatial)
        in_channels, n_layers, kernel_size = (
            config["in_channels"],
            config["n_layers"],
            config["kernel_size"],
        )
        hidden_channels, hidden_sizes = config["hidden_channels"], tuple(config["hidden_sizes"])
        _check_sizes(
            config["activation"],
            **{k: v for k, v in config.items() if k != "activation"},
        )
        if kernel_size % 2 == 0:
            raise ValueError(f"expected an odd kernel_size (size-preserving), got {kernel_size}")
        if min(sizes) < 2**n_layers:
            raise ValueError(
                f"expected {' and '.join(spatial)} >= 2**n_layers = {2**n_layers} (each layer "
                f"halves them), got {sizes}"
            )
        super().__init__(**{**config, "hidden_sizes": hidden_sizes})
        self.context_shape = (in_channels, *sizes)
        self.output_size = config["output_size"]
        activation = ACTIVATIONS[config["activation"]]
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if len(sizes) == 1 else (nn.Conv2d, nn.MaxPool2d)
        layers: list[nn.Module] = []
        for i in range(n_layers):
            width = in_channels if i == 0 else hidden_channels
            layers += [
                conv(width, hidden_channels, kernel_size, padding=kernel_size // 2),
                activation(),
                pool(2),
            ]
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = hidden_channels * math.prod(s // 2**n_layers for s in sizes)
        self.head = _mlp([flat, *hidden_sizes, self.output_size], config["activation"])

    def _embed(self, c: Tensor) -> Tensor:
        return self.head(self.features(c))


class Conv1dEmbedding(_ConvEmbedding):
    r"""Embedding ``e = g(c)`` of a time series by a 1-D convolutional network.

    ``n_layers`` blocks of (convolution of odd ``kernel_size`` with zero padding, activation,
    max-pooling by 2), then an MLP from the flattened features to ``output_size``.

    Shapes: ``context`` is ``(*batch, in_channels, length)``, the output
    ``(*batch, output_size)``.

    Arguments:
        in_channels: channels ``C`` of the series (simulator outputs per time step).
        length: number of time steps ``L >= 2**n_layers``.
        output_size: size of the embedding.
        hidden_channels: channels of the convolutions.
        n_layers: number of convolution blocks.
        kernel_size: odd width of the convolution kernels.
        hidden_sizes: widths of the head MLP's hidden layers.
        activation: the activation, a key of :data:`torchnf.nets.mlp.ACTIVATIONS`.

    References:
        Gradient-based learning applied to document recognition (LeCun et al., 1998);
        Automatic posterior transformation for likelihood-free inference (Greenberg et al.,
        2019, arXiv:1905.07488).

    Example:
        >>> net = Conv1dEmbedding(2, 16, 4, hidden_channels=8)
        >>> net(torch.randn(5, 2, 16)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        output_size: int,
        hidden_channels: int = 32,
        n_layers: int = 2,
        kernel_size: int = 5,
        hidden_sizes: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__(
            ("length",),
            dict(
                in_channels=in_channels,
                length=length,
                output_size=output_size,
                hidden_channels=hidden_channels,
                n_layers=n_layers,
                kernel_size=kernel_size,
                hidden_sizes=hidden_sizes,
                activation=activation,
            ),
        )


class Conv2dEmbedding(_ConvEmbedding):
    r"""Embedding ``e = g(c)`` of an image by a 2-D convolutional network.

    ``n_layers`` blocks of (convolution of odd ``kernel_size`` with zero padding, activation,
    2x2 max-pooling), then an MLP from the flattened features to ``output_size``.

    Shapes: ``context`` is ``(*batch, in_channels, height, width)``, the output
    ``(*batch, output_size)``.

    Arguments:
        in_channels: channels ``C`` of the image.
        height: image height ``H >= 2**n_layers``.
        width: image width ``W >= 2**n_layers``.
        output_size: size of the embedding.
        hidden_channels: channels of the convolutions.
        n_layers: number of convolution blocks.
        kernel_size: odd size of the square convolution kernels.
        hidden_sizes: widths of the head MLP's hidden layers.
        activation: the activation, a key of :data:`torchnf.nets.mlp.ACTIVATIONS`.

    References:
        Gradient-based learning applied to document recognition (LeCun et al., 1998);
        Automatic posterior transformation for likelihood-free inference (Greenberg et al.,
        2019, arXiv:1905.07488).

    Example:
        >>> net = Conv2dEmbedding(1, 8, 8, 4, hidden_channels=8)
        >>> net(torch.randn(5, 1, 8, 8)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        output_size: int,
        hidden_channels: int = 32,
        n_layers: int = 2,
        kernel_size: int = 3,
        hidden_sizes: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__(
            ("height", "width"),
            dict(
                in_channels=in_channels,
                height=height,
                width=width,
                output_size=output_size,
                hidden_channels=hidden_channels,
                n_layers=n_layers,
                kernel_size=kernel_size,
                hidden_sizes=hidden_sizes,
                activation=activation,
            ),
        )


class DeepSets(Embedding):
    r"""Permutation-invariant embedding of a set of i.i.d. trials,
    :math:`e = \rho(\mathrm{mean}_{i \le m} \phi(c_i), m / n)`.

    Each trial ``c_i`` (a row of ``input_size`` values) goes through the MLP ``phi``; the
    ``m`` present trials' features are averaged and, with the fraction ``m / n_trials`` of
    trials present (so the embedding knows how much data it saw), go through the MLP ``rho``.
    The output does not depend on the order of the trials.

    **Varying numbers of trials: NaN padding.** A context holds room for ``n_trials`` trials;
    a set with fewer has its missing trials' rows filled with NaN (a row with any NaN is a
    missing trial), e.g. ``torch.full((n_trials, d), float("nan"))`` with the first ``m`` rows
    set. Padded rows are left out of the mean (and out of the flow's context
    standardization); their gradients are 0. A set with no trial at all embeds as
    ``rho(0, 0)``.

    Shapes: ``context`` is ``(*batch, n_trials, input_size)``, the output
    ``(*batch, output_size)``.

    Arguments:
        input_size: values per trial ``d``.
        output_size: size of the embedding.
        n_trials: the most trials a context holds.
        hidden_sizes: widths of ``phi``'s layers (its output has the last width) and of
            ``rho``'s hidden layers.
        activation: the activation, a key of :data:`torchnf.nets.mlp.ACTIVATIONS`.

    References:
        Deep Sets (Zaheer et al., 2017, arXiv:1703.06114); Amortized Bayesian inference for
        models of cognition / BayesFlow (Radev et al., 2020, arXiv:2003.06281), which learns
        such summaries of i.i.d. trials jointly with the flow.

    Example:
        >>> net = DeepSets(2, 4, n_trials=10, hidden_sizes=(16,))
        >>> c = torch.randn(3, 10, 2)
        >>> c[0, 6:] = float("nan")  # the first set has 6 trials
        >>> e = net(c)
        >>> e.shape, bool(e.isfinite().all())
        (torch.Size([3, 4]), True)
        >>> torch.allclose(net(c.flip(-2)), e, atol=1e-6)  # order does not matter
        True
    """

    feature_dim = 1
    nan_padding = True

    def __init__(
        self,
        input_size: int,
        output_size: int,
        n_trials: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        _check_sizes(
            activation,
            input_size=input_size,
            output_size=output_size,
            n_trials=n_trials,
            hidden_sizes=hidden_sizes,
        )
        if not hidden_sizes:
            raise ValueError("expected at least one hidden size (phi's output width)")
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            n_trials=n_trials,
            hidden_sizes=tuple(hidden_sizes),
            activation=activation,
        )
        self.context_shape = (n_trials, input_size)
        self.output_size = output_size
        width = hidden_sizes[-1]
        self.phi = nn.Sequential(
            _mlp([input_size, *hidden_sizes], activation), ACTIVATIONS[activation]()
        )
        self.rho = _mlp([width + 1, *hidden_sizes, output_size], activation)

    def _embed(self, c: Tensor) -> Tensor:
        present = ~c.isnan().any(dim=-1, keepdim=True)  # (M, n_trials, 1)
        features = self.phi(torch.where(present, c, 0.0)) * present
        count = present.sum(dim=-2).to(c.dtype)  # (M, 1)
        mean = features.sum(dim=-2) / count.clamp(min=1)
        return self.rho(torch.cat([mean, count / self.context_shape[0]], dim=-1))


#: The embedding nets :func:`build_embedding` builds, by class name.
EMBEDDINGS: dict[str, type[Embedding]] = {
    cls.__name__: cls for cls in (MLPEmbedding, Conv1dEmbedding, Conv2dEmbedding, DeepSets)
}


def build_embedding(spec: dict[str, Any]) -> Embedding:
    """The embedding net of a JSON ``spec``: ``{"name": class name, **constructor arguments}``.

    ``Embedding.spec`` is the inverse; ready-made models take the spec as ``embedding=`` so
    their recorded config (and a checkpoint's ``config.json``) rebuilds the net.

    Example:
        >>> net = build_embedding({"name": "DeepSets", "input_size": 2, "output_size": 4,
        ...                        "n_trials": 10})
        >>> net.context_shape, build_embedding(net.spec).spec == net.spec
        ((10, 2), True)
    """
    if not isinstance(spec, dict) or spec.get("name") not in EMBEDDINGS:
        raise ValueError(
            f"expected an embedding spec {{'name': one of {sorted(EMBEDDINGS)}, ...}}, got {spec!r}"
        )
    options = {k: v for k, v in spec.items() if k != "name"}
    try:
        return EMBEDDINGS[spec["name"]](**options)
    except TypeError as error:
        raise ValueError(f"bad arguments in embedding spec {spec!r}: {error}") from None


def embedding_context(
    embedding: dict[str, Any] | None, context_size: int
) -> tuple[Embedding | None, int]:
    """For a ready-made model's ``embedding`` and ``context_size`` arguments: the net (or
    ``None``) and the context size its conditioners see (the embedding's ``output_size``).

    A ``context_size`` other than 0 must then equal that output size.

    Example:
        >>> net, size = embedding_context({"name": "MLPEmbedding", "input_size": 9,
        ...                                "output_size": 4}, 0)
        >>> type(net).__name__, size
        ('MLPEmbedding', 4)
    """
    if embedding is None:
        return None, context_size
    net = build_embedding(embedding)
    if context_size not in (0, net.output_size):
        raise ValueError(
            f"with an embedding the conditioners' context_size is its output_size "
            f"{net.output_size}; got context_size={context_size} (pass 0 or omit it)"
        )
    return net, net.output_size
