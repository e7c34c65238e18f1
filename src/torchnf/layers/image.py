"""Image layers on ``(*batch, C, H, W)``: squeeze, multi-scale split, 1x1 convolution, coupling.

Every layer here is a :class:`~torchnf.core.bijector.Bijector` on image events, so a whole
multi-scale flow (:class:`~torchnf.models.Glow`) is one bijector with one output tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.chain import Chain
from torchnf.core.registry import register
from torchnf.layers.linear import LUWeight, QRWeight
from torchnf.layers.transformers import AffineTransformer, Transformer
from torchnf.nets.conv import ConvNet


def _image_shape(event_shape: Shape, name: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in event_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: expected an image event shape (C, H, W), got {event_shape}")
    return shape  # type: ignore[return-value]


def _batch(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape[:-3])


@register("layer", example=lambda context_size: Squeeze((1, 4, 4)))
class Squeeze(Bijector):
    r"""Space-to-channel reshaping ``y = f(x)``: ``(C, H, W) -> (C f^2, H / f, W / f)``.

    Each ``f x f`` block of pixels becomes ``f^2`` channels at one pixel: output channel
    ``c f^2 + i f + j`` at ``(h, w)`` is input channel ``c`` at ``(h f + i, w f + j)``.
    A permutation, so ``log_det = 0``; ``Squeeze(...).inv`` is the channel-to-space inverse.

    Shapes: ``x`` is ``(*batch, C, H, W)``, ``y`` is ``(*batch, C f^2, H / f, W / f)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``(C, H, W)`` with ``H`` and ``W`` divisible by ``factor``.
        factor: block size ``f``.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> layer = Squeeze((1, 4, 4))
        >>> y, log_det = layer(torch.arange(16.0).reshape(1, 1, 4, 4))
        >>> y.shape, y[0, :, 0, 0]
        (torch.Size([1, 4, 2, 2]), tensor([0., 1., 4., 5.]))
    """

    def __init__(self, event_shape: Shape, factor: int = 2) -> None:
        c, h, w = _image_shape(event_shape, "Squeeze")
        if factor < 1 or h % factor or w % factor:
            raise ValueError(
                f"Squeeze: expected height and width divisible by factor={factor}, got {(h, w)}"
            )
        super().__init__((c, h, w), output_event_shape=(c * factor**2, h // factor, w // factor))
        self.factor = factor

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        (c, h, w), f, batch = self.event_shape, self.factor, _batch(x)
        y = x.reshape(*batch, c, h // f, f, w // f, f)
        n = len(batch)
        y = y.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
        return y.reshape(*batch, *self.output_event_shape), x.new_zeros(batch)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        (c, h, w), f, batch = self.event_shape, self.factor, _batch(y)
        x = y.reshape(*batch, c, f, f, h // f, w // f)
        n = len(batch)
        x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
        return x.reshape(*batch, c, h, w), y.new_zeros(batch)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", factor={self.factor}"


@register("layer", example=lambda context_size: Flatten((2, 2, 3)))
class Flatten(Bijector):
    r"""Reshape ``y = f(x)``: events ``event_shape`` to vectors ``(D,)``, ``D`` their size.

    Lets vector flows (NSF, MAF, SylvesterNet) model images; ``log_det = 0``.

    Shapes: ``x`` is ``(*batch, *event_shape)``, ``y`` is ``(*batch, D)``.

    Arguments:
        event_shape: shape of one input event, e.g. ``(C, H, W)``.

    Example:
        >>> Flatten((1, 8, 8))(torch.zeros(5, 1, 8, 8))[0].shape
        torch.Size([5, 64])
    """

    def __init__(self, event_shape: Shape) -> None:
        shape = tuple(int(s) for s in event_shape)
        super().__init__(shape, output_event_shape=math.prod(shape))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - self.event_dim]
        return x.reshape(*batch, -1), x.new_zeros(batch)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = y.shape[:-1]
        return y.reshape(*batch, *self.event_shape), y.new_zeros(batch)


@register(
    "layer",
    example=lambda context_size: Split(
        (2, 4, 4), AffineImageCoupling((1, 4, 4), "checkerboard", 8, context_size=context_size)
    ),
    conditional=True,
)
class Split(Bijector):
    r"""Multi-scale factoring out ``y = f(x | c) = [g(x_{1:k} | c), x_{k+1:C}]``.

    The first ``n_kept`` channels go on through the deeper bijector ``g`` (the next scale);
    the other channels leave the flow here unchanged: they are the latent of this scale.
    Their own (learned, conditional) prior is expressed as a bijector placed just before the
    split, e.g. a channel :class:`AffineImageCoupling` (Glow's ``split2d`` prior
    :math:`N(\mu(x_{1:k}), \sigma(x_{1:k}))` is exactly that coupling followed by a standard
    normal), so the output stays one tensor of the input's shape and the base one module.
    :math:`\log|\det| = \log|\det \partial g|`.

    Shapes: ``x`` and ``y`` are ``(*batch, C, H, W)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``(C, H, W)``.
        inner: the bijector of the kept channels, on events ``(n_kept, H, W)`` to the same
            shape (end it with ``Squeeze(...).inv`` if it squeezes).
        n_kept: channels kept (default ``C // 2``).

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803), section 3.6;
        Glow (Kingma & Dhariwal, 2018, arXiv:1807.03039).

    Example:
        >>> layer = Split((2, 4, 4), AffineImageCoupling((1, 4, 4), hidden_channels=8))
        >>> layer(torch.randn(3, 2, 4, 4))[0].shape
        torch.Size([3, 2, 4, 4])
    """

    def __init__(self, event_shape: Shape, inner: Bijector, n_kept: int | None = None) -> None:
        c, h, w = _image_shape(event_shape, "Split")
        n_kept = c // 2 if n_kept is None else n_kept
        if not 0 < n_kept < c:
            raise ValueError(f"Split: expected 0 < n_kept < C = {c}, got {n_kept}")
        if inner.event_shape != (n_kept, h, w) or inner.output_event_shape != inner.event_shape:
            raise ValueError(
                f"Split: expected an inner bijector from and to {(n_kept, h, w)}, got "
                f"{inner.event_shape} -> {inner.output_event_shape}"
            )
        super().__init__((c, h, w), inner.context_size)
        self.inner = inner
        self.n_kept = n_kept

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.split([self.n_kept, self.event_shape[0] - self.n_kept], dim=-3)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        kept, out = self._halves(x)
        kept, log_det = self.inner(kept, context)
        return torch.cat([kept, out], dim=-3), log_det

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        kept, out = self._halves(y)
        kept, log_det = self.inner.inverse_and_log_det(kept, context)
        return torch.cat([kept, out], dim=-3), log_det

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = self._check(x, context, self.event_shape, "x")
        kept, out = self._halves(x)
        return torch.cat([self.inner.initialize(kept, context), out], dim=-3)


@register("layer", example=lambda context_size: InvertibleConv1x1((3, 2, 2)))
class InvertibleConv1x1(Bijector):
    r"""Invertible 1x1 convolution ``y = f(x)``: :math:`y_{:, h, w} = W x_{:, h, w}`.

    The ``C x C`` matrix ``W`` is an :class:`~torchnf.layers.LUWeight` (``form="lu"``,
    :math:`W = PLU`) or :class:`~torchnf.layers.QRWeight` (``form="qr"``, :math:`W = QR`),
    invertible for every parameter value; :math:`\log|\det| = H W \log|\det W|` and the
    inverse is triangular solves.

    Shapes: ``x`` and ``y`` are ``(*batch, C, H, W)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``(C, H, W)``.
        form: ``"lu"`` or ``"qr"``.
        seed: seed of the initial random rotation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039); Emerging Convolutions for Generative Normalizing Flows
        (Hoogeboom et al., 2019, arXiv:1901.11137) for the QR form.

    Example:
        >>> layer = InvertibleConv1x1((3, 4, 4), form="qr")
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-5)
        True
    """

    def __init__(self, event_shape: Shape, form: str = "lu", seed: int = 0) -> None:
        c, h, w = _image_shape(event_shape, "InvertibleConv1x1")
        forms = {"lu": LUWeight, "qr": QRWeight}
        if form not in forms:
            raise ValueError(f"InvertibleConv1x1: expected form 'lu' or 'qr', got {form!r}")
        super().__init__((c, h, w))
        self.form = form
        self.matrix = forms[form](c, seed)

    def _log_det(self, x: Tensor) -> Tensor:
        _, h, w = self.event_shape
        return (h * w * self.matrix.log_abs_det()).expand(_batch(x))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y = self.matrix.matmul(x.movedim(-3, -1)).movedim(-1, -3)
        return y, self._log_det(x)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.matrix.solve(y.movedim(-3, -1)).movedim(-1, -3)
        return x, -self._log_det(y)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", form={self.form!r}"


def image_mask(event_shape: Shape, kind: str = "checkerboard", parity: int = 0) -> Tensor:
    """Boolean mask ``(C, H, W)`` of the kept entries of an image coupling.

    ``"checkerboard"`` keeps pixels with ``(h + w + parity)`` even, in every channel;
    ``"channel"`` keeps the first ``C // 2`` channels (``parity=0``) or the others
    (``parity=1``).

    Example:
        >>> image_mask((1, 2, 2)).int()
        tensor([[[1, 0],
                 [0, 1]]], dtype=torch.int32)
    """
    c, h, w = _image_shape(event_shape, "image_mask")
    if kind == "checkerboard":
        grid = torch.arange(h).unsqueeze(-1) + torch.arange(w) + parity
        return (grid % 2 == 0).expand(c, h, w).clone()
    if kind == "channel":
        if c < 2:
            raise ValueError(
                f"a channel mask needs at least 2 channels, got event shape {(c, h, w)}"
            )
        kept = torch.arange(c) < c // 2
        return (kept if parity % 2 == 0 else ~kept).view(c, 1, 1).expand(c, h, w).clone()
    raise ValueError(f"expected mask kind 'checkerboard' or 'channel', got {kind!r}")


@register(
    "layer",
    example=lambda context_size: ImageCoupling(
        AffineTransformer(), ConvNet(2, 4, 4, 0, context_size), image_mask((2, 2, 2))
    ),
    conditional=True,
)
class ImageCoupling(Bijector):
    r"""Image coupling layer ``y = f(x | c)`` with a boolean mask ``m`` over ``(C, H, W)``.

    :math:`y_m = x_m` and :math:`y_{\bar m} = \tau(x_{\bar m}; g(m \odot x, c))`: the conditioner
    ``g`` (a conv net) sees the kept entries (the others zeroed) and returns the
    transformer's parameters at every entry, of which those of the transformed entries are
    used. :math:`\log|\det| = \sum_{\bar m} \log \tau'`. The transformer is any of
    :mod:`torchnf.layers.transformers`, as in the vector :class:`~torchnf.layers.Coupling`.

    Shapes: ``x`` and ``y`` are ``(*batch, C, H, W)``, ``context`` is
    ``(*batch, context_size)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        transformer: elementwise transformer with ``params_per_feature = P``.
        conditioner: module mapping ``(*batch, C, H, W)`` (and ``context``) to
            ``(*batch, C * P, H, W)``, channel ``c * P + p`` holding parameter ``p`` of
            channel ``c``; its ``context_size`` attribute (0 if absent) is the layer's.
        mask: bool ``(C, H, W)``, ``True`` where entries pass through (see :func:`image_mask`).

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> mask = image_mask((2, 4, 4), "channel")
        >>> layer = ImageCoupling(AffineTransformer(), ConvNet(2, 4, 8), mask)
        >>> x = torch.randn(3, 2, 4, 4)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x)
        True
    """

    def __init__(self, transformer: Transformer, conditioner: nn.Module, mask: Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        _image_shape(mask.shape, "ImageCoupling mask")
        if mask.all() or not mask.any():
            raise ValueError("expected a mask with at least one kept and one transformed entry")
        super().__init__(tuple(mask.shape), getattr(conditioner, "context_size", 0))
        self.transformer = transformer
        self.conditioner = conditioner
        self.register_buffer("mask", mask)

    def _transform(self, method, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, p = _batch(x), self.transformer.params_per_feature
        kept = x * self.mask.to(x.dtype)
        params = self.conditioner(kept, context).unflatten(-3, (self.event_shape[0], p))
        params = params.movedim(-3, -1).reshape(*batch, self.input_size, p)
        out, log_det = method(x.reshape(*batch, self.input_size), params)
        out = torch.where(self.mask, x, out.reshape(x.shape))
        log_det = (log_det.reshape(x.shape) * (~self.mask).to(x.dtype)).flatten(-3).sum(-1)
        return out, log_det

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._transform(self.transformer.forward, x, context)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._transform(self.transformer.inverse, y, context)


@register(
    "layer",
    example=lambda context_size: AffineImageCoupling(
        (2, 4, 4), "checkerboard", 4, context_size=context_size
    ),
    conditional=True,
)
class AffineImageCoupling(ImageCoupling):
    r"""Affine image coupling ``y = f(x | c)``: :math:`y_{\bar m} = x_{\bar m} e^{s} + t`.

    ``(t, s) = ConvNet(m \odot x, c)`` (a small ResNet with zero-initialized output, so the
    layer starts as the identity), ``s`` soft-clamped to ``(-scale_bound, scale_bound)``;
    :math:`\log|\det| = \sum_{\bar m} s`. Shapes as :class:`ImageCoupling`.

    Arguments:
        event_shape: ``(C, H, W)``.
        mask: ``"checkerboard"`` or ``"channel"`` (see :func:`image_mask`).
        hidden_channels: width of the conditioner.
        parity: which half is kept (alternate it between layers).
        n_blocks: residual blocks of the conditioner.
        context_size: size of the context (0 for none).
        scale_bound: bound on the log-scale.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> layer = AffineImageCoupling((1, 4, 4), "checkerboard", hidden_channels=8)
        >>> y, log_det = layer(torch.randn(5, 1, 4, 4))
        >>> y.shape, log_det.shape
        (torch.Size([5, 1, 4, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        event_shape: Shape,
        mask: str = "checkerboard",
        hidden_channels: int = 64,
        parity: int = 0,
        n_blocks: int = 1,
        context_size: int = 0,
        scale_bound: float = 3.0,
    ) -> None:
        transformer = AffineTransformer(scale_bound)
        c = _image_shape(event_shape, "AffineImageCoupling")[0]
        net = ConvNet(c, 2 * c, hidden_channels, n_blocks, context_size)
        super().__init__(transformer, net, image_mask(event_shape, mask, parity))


def multi_scale(
    event_shape: Shape, n_levels: int, level: Callable[[Shape, bool], list[Bijector]]
) -> Chain:
    r"""A multi-scale bijector from and to ``event_shape``, one output tensor.

    ``level(shape, last)`` returns the layers of one scale starting at ``shape`` (typically
    steps, a :class:`Squeeze`, more steps); then, unless ``last``, the first half of the
    channels goes on through the next scale inside a :class:`Split` and the other half is
    factored out; finally a ``Squeeze(...).inv`` brings the events back to ``shape``. So the
    latent has the input's shape, each scale's factored-out channels at their positions.

    Arguments:
        event_shape: ``(C, H, W)`` of the input.
        n_levels: number of scales (``>= 1``).
        level: builds one scale's layers; ``last`` is ``True`` at the deepest one.

    Example:
        >>> def level(shape, last):
        ...     return [Squeeze(shape)]
        >>> flow = multi_scale((1, 4, 4), 2, level)
        >>> flow(torch.randn(3, 1, 4, 4))[0].shape
        torch.Size([3, 1, 4, 4])
    """
    shape = _image_shape(event_shape, "multi_scale")
    if n_levels < 1:
        raise ValueError(f"expected n_levels >= 1, got {n_levels}")
    layers = list(level(shape, n_levels == 1))
    out = layers[-1].output_event_shape
    if n_levels > 1:
        c, h, w = out
        layers.append(Split(out, multi_scale((c // 2, h, w), n_levels - 1, level)))
    if out != shape:
        layers.append(Squeeze(shape, shape[1] // out[1]).inv)
    return Chain(*layers)
