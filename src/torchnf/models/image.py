"""Flows on discrete images: preprocessing to logits, then any registered model."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import get, register
from torchnf.layers.image import Flatten
from torchnf.layers.preprocessing import LogitPreprocessing


@register(
    "model",
    example=lambda context_size: ImageFlow(
        (1, 2, 2),
        "RealNVP",
        {"n_layers": 2, "hidden_sizes": [4], "context_size": context_size},
        n_values=4,
        alpha=0.0,
    ),
    conditional=True,
)
class ImageFlow(Flow):
    r"""A flow on dequantized discrete images ``z = f(x | c) = g(h(x) | c)``.

    ``h`` is :class:`~torchnf.layers.LogitPreprocessing`,
    :math:`\mathrm{logit}(\alpha + (1 - 2\alpha) x / K)`, and ``g`` the registered model
    ``model`` built with ``model_config``: an image model (``input_shape``, e.g.
    :class:`Glow`, :class:`RealNVP2d`) on ``(C, H, W)``, or a vector model (``input_size``,
    e.g. NSF, MAF, SylvesterNet) after a :class:`~torchnf.layers.Flatten`. The base is the
    model's. ``x`` lives on the original pixel scale: dequantized values in ``[0, K]``
    (:func:`~torchnf.layers.preprocessing.dequantize`), so ``log_prob`` is the density on the
    discrete scale (bins of width 1) and ``sample`` returns pixel values (``floor`` them for
    discrete ones).

    Shapes: ``x`` is ``(*batch, C, H, W)``; ``z`` is the model's latent.

    Arguments:
        input_shape: ``(C, H, W)``.
        model: name of a registered model (case-insensitive).
        model_config: its other arguments (the shape or size is filled in).
        n_values: number of discrete pixel values ``K``.
        alpha: logit squeeze. With ``alpha > 0`` the preprocessing maps ``[0, K]`` onto a
            box of logits, not all of R, so the density on ``[0, K]^D`` has total mass a
            little below one (log-likelihoods stay valid bounds) and a rare sample can fall
            just outside ``[0, K]``; ``alpha = 0`` makes ``f`` a bijection onto R^D.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803), section 4.1.

    Example:
        >>> flow = ImageFlow((1, 8, 8), "Glow", {"n_levels": 2, "n_steps": 2}, n_values=17)
        >>> x = torch.randint(0, 17, (4, 1, 8, 8)).float() + torch.rand(4, 1, 8, 8)
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([4]), torch.Size([3, 1, 8, 8]))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        model: str = "Glow",
        model_config: dict[str, Any] | None = None,
        n_values: int = 256,
        alpha: float = 0.05,
    ) -> None:
        shape = tuple(int(s) for s in input_shape)
        entry = get(model)
        config = dict(model_config or {})
        parameters = inspect.signature(entry.cls).parameters
        if entry.kind != "model" or entry.cls is ImageFlow:
            raise ValueError(f"expected the name of a model other than ImageFlow, got {model!r}")
        layers: list[Bijector] = [LogitPreprocessing(shape, n_values, alpha)]
        for key, value, extra in (
            ("input_shape", list(shape), []),
            ("input_size", math.prod(shape), [Flatten(shape)]),
        ):
            if key in parameters:
                if key in config:
                    raise ValueError(f"model_config must not set {key!r}: it is {value}")
                config[key] = value
                layers += extra
                break
        else:
            raise ValueError(f"expected a model taking input_shape or input_size, got {model!r}")
        body = entry.cls(**config)
        if body.context_encoder is not None:
            raise ValueError(f"expected a model without context_encoder, got {model!r}")
        super().__init__(Chain(*layers, body.bijector), body.base)
