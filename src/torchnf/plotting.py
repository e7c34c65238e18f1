"""Figures of a training run: the training curve, the learned density, samples.

matplotlib is an optional dependency (``pip install torchnf[plot]``), imported inside each
function; figures are drawn with ``matplotlib.figure.Figure`` (no pyplot, no global backend
switch) and written to PNG files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from torchnf.core.flow import Flow


def plot_history(records: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Plot the training and validation loss against the step; write a PNG to ``path``.

    Arguments:
        records: log records with ``step``, ``train_<loss>`` and maybe ``val_<loss>`` (as in
            ``fit``'s history or its ``metrics.jsonl``; ``<loss>`` is ``nll`` for maximum
            likelihood, ``reverse_kl`` for variational inference).
        path: the PNG file.
    """
    fig = _figure(1, (5, 3.5))
    ax = fig.axes[0]
    losses = [
        k.removeprefix("train_") for k in (records[0] if records else {}) if k.startswith("train_")
    ]
    for loss in losses:
        for key, label in ((f"train_{loss}", "train"), (f"val_{loss}", "validation")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=2, label=label)
    names = {"nll": "NLL", "reverse_kl": "reverse KL - log Z"}
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(names.get(loss, loss) for loss in losses) + " (nats)")
    ax.set_title("training curve")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    return _save(fig, path)


@torch.no_grad()
def plot_density(flow: Flow, data: Tensor, path: str | Path, resolution: int = 200) -> Path:
    """Show the data next to the flow's learned density; write a PNG to ``path``.

    2-D data: a histogram of the data beside ``exp(log_prob)`` on a grid over the same
    window. 1-D data: the data's histogram with the learned density curve over it.

    Arguments:
        flow: an unconditional flow on vectors of size 1 or 2.
        data: ``(N, 1)`` or ``(N, 2)`` points.
        path: the PNG file.
        resolution: grid points per axis.
    """
    data = data.detach().cpu().double()
    dim = data.shape[-1]
    if dim not in (1, 2) or flow.context_size:
        raise ValueError(f"expected unconditional 1-D or 2-D data to plot, got shape {data.shape}")
    low, high = _window(data)
    reference = next(iter(flow.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    axes = [
        torch.linspace(float(a), float(b), resolution, dtype=torch.float64)
        for a, b in zip(low, high, strict=True)
    ]
    if dim == 1:
        fig = _figure(1, (5, 3.5))
        ax = fig.axes[0]
        grid = axes[0]
        density = _density(flow, grid[:, None], device, dtype)
        ax.hist(
            data[:, 0].numpy(),
            bins=100,
            range=(float(low[0]), float(high[0])),
            density=True,
            alpha=0.5,
            label="data",
        )
        ax.plot(grid.numpy(), density.numpy(), label="learned density")
        ax.legend()
        ax.set_title("data and learned density")
        return _save(fig, path)
    fig = _figure(2, (9, 4.2))
    extent = (float(low[0]), float(high[0]), float(low[1]), float(high[1]))
    fig.axes[0].hist2d(
        data[:, 0].numpy(),
        data[:, 1].numpy(),
        bins=resolution // 2,
        range=[extent[:2], extent[2:]],
        cmap="viridis",
    )
    fig.axes[0].set_title("data")
    gx, gy = torch.meshgrid(*axes, indexing="xy")
    density = _density(flow, torch.stack([gx, gy], -1).reshape(-1, 2), device, dtype)
    fig.axes[1].imshow(
        density.reshape(resolution, resolution).numpy(),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap="viridis",
    )
    fig.axes[1].set_title("learned density")
    for ax in fig.axes:
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
    return _save(fig, path)


def plot_samples(samples: Tensor, data: Tensor | None, path: str | Path) -> Path:
    """Scatter the flow's samples (and the data beside them); write a PNG to ``path``.

    The first two features are shown (a histogram for 1-D data).

    Arguments:
        samples: ``(M, D)`` samples of the flow.
        data: ``(N, D)`` data to compare with, or ``None``.
        path: the PNG file.
    """
    samples = samples.detach().cpu().double().reshape(len(samples), -1)
    panels = [("samples", samples)]
    if data is not None:
        panels.insert(0, ("data", data.detach().cpu().double().reshape(len(data), -1)))
    low, high = _window(panels[0][1])
    fig = _figure(len(panels), (4.5 * len(panels), 4.2))
    for ax, (title, points) in zip(fig.axes, panels, strict=True):
        if points.shape[-1] == 1:
            ax.hist(
                points[:, 0].numpy(), bins=100, range=(float(low[0]), float(high[0])), density=True
            )
        else:
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=1, alpha=0.4)
            ax.set_xlim(float(low[0]), float(high[0]))
            ax.set_ylim(float(low[1]), float(high[1]))
        ax.set_title(title)
    return _save(fig, path)


def _density(flow: Flow, points: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    flow.eval()
    values = [
        flow.log_prob(chunk.to(device, dtype)).double().exp().cpu() for chunk in points.split(16384)
    ]
    return torch.cat(values).nan_to_num(0.0)


def _window(data: Tensor) -> tuple[Tensor, Tensor]:
    low = torch.quantile(data[:, :2], 0.005, dim=0)
    high = torch.quantile(data[:, :2], 0.995, dim=0)
    margin = 0.15 * (high - low).clamp_min(1e-6)
    return low - margin, high + margin


def _figure(n_axes: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    fig.subplots(1, n_axes)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


@torch.no_grad()
def plot_fit_to_target(
    flow: Flow,
    log_prob: Callable[[Tensor], Tensor],
    path: str | Path,
    window: tuple[float, float, float, float] | None = None,
    resolution: int = 300,
) -> Path:
    r"""Show a 2-D target density next to the flow's density; write a PNG to ``path``.

    Both panels show densities normalized on the grid (the target's :math:`\tilde p` need not
    be normalized), so they compare directly.

    Arguments:
        flow: an unconditional flow on 2-D vectors (variational inference's ``q``).
        log_prob: the target's (unnormalized) log-density on ``(n, 2)`` points.
        path: the PNG file.
        window: ``(x_low, x_high, y_low, y_high)`` (default: around 5000 samples of ``q``).
        resolution: grid points per axis.
    """
    if flow.event_shape != (2,) or flow.context_size:
        raise ValueError(f"expected an unconditional 2-D flow, got events {flow.event_shape}")
    reference = next(iter(flow.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    if window is None:
        low, high = _window(flow.sample(5000).double().cpu())
        window = (float(low[0]), float(high[0]), float(low[1]), float(high[1]))
    xs = torch.linspace(window[0], window[1], resolution, dtype=torch.float64)
    ys = torch.linspace(window[2], window[3], resolution, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, ys)
    with torch.no_grad():
        target = torch.cat(
            [log_prob(c.to(device, dtype)).double().cpu() for c in grid.split(16384)]
        )
    panels = {
        "target": (target - target.max()).exp().nan_to_num(0.0),
        "flow": _density(flow, grid, device, dtype),
    }
    fig = _figure(2, (9, 4.2))
    for ax, (title, density) in zip(fig.axes, panels.items(), strict=True):
        image = (density / density.sum().clamp_min(1e-300)).reshape(resolution, resolution)
        ax.imshow(image.T.numpy(), origin="lower", extent=window, cmap="viridis", aspect="auto")
        ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def plot_image_inversion(
    flow: Flow, x: Tensor, n_values: int, path: str | Path, title: str = "x -> z -> x"
) -> float:
    r"""Images, their latents ``z = f(x)`` and reconstructions ``f^{-1}(z)``, in three rows.

    The latents are reshaped to the images' shape (a vector model behind a flattening layer
    has as many latents as pixels) and drawn on a symmetric diverging scale; the images on
    the pixel scale ``[0, n_values]``. The title ends with the largest reconstruction error.

    Arguments:
        flow: an unconditional flow on images ``(C, H, W)`` with ``C`` 1.
        x: ``(N, 1, H, W)`` images on the pixel scale (dequantized values).
        n_values: the pixel scale ``K``.
        path: the PNG file.
        title: the start of the title.

    Returns:
        :math:`\max |f^{-1}(f(x)) - x|`.
    """
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 1, H, W), got {tuple(x.shape)}")
    z, _ = flow(x)
    x_back = flow.inverse(z)
    error = float((x_back - x).abs().max())
    rows = [("images x", x), ("latents z = f(x)", z.reshape(x.shape)), ("f^-1(z)", x_back)]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0 * len(x) + 1.4, 3.8), layout="constrained")
    axes = fig.subplots(3, len(x), squeeze=False)
    limit = float(z.abs().max())
    for r, (label, images) in enumerate(rows):
        for i, ax in enumerate(axes[r]):
            image = images[i, 0].cpu().numpy()
            if r == 1:
                ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                ax.imshow(image / n_values, cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{title}: max |f^-1(f(x)) - x| = {error:.1e} ({str(x.dtype)[6:]})", fontsize=10)
    _save(fig, path)
    return error


@torch.no_grad()
def plot_image_samples(
    flow: Flow,
    n_values: int,
    path: str | Path,
    temperatures: Sequence[float] = (0.5, 0.8, 1.0),
    n: int = 36,
    seed: int = 0,
    title: str = "samples",
) -> Path:
    r"""Grids of samples :math:`x = \lfloor f^{-1}(T z) \rfloor`, :math:`z \sim N(0, I)`, one per
    temperature ``T``; write a PNG to ``path``.

    Samples of a flow on dequantized pixels are floored to the discrete values they stand
    for. Each grid draws its ``n`` samples from the same seeded generator state, so the
    grids differ only by the temperature and the figure is the same on every run.

    Arguments:
        flow: an unconditional flow on images ``(C, H, W)``, ``C`` 1 or 3.
        n_values: the pixel scale ``K``: discrete values ``0, ..., K - 1``.
        path: the PNG file.
        temperatures: one grid each.
        n: samples per grid.
        seed: seed of the latent draws (the global torch generator is reseeded, then
            restored).
        title: the figure's title.
    """
    from torchnf.data.images import image_grid

    fig = _figure(len(temperatures), (4.2 * len(temperatures), 4.6))
    for ax, t in zip(fig.axes, temperatures, strict=True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            samples = flow.sample(n, temperature=t).floor().clamp(0, n_values - 1)
        ax.imshow(image_grid(samples.cpu(), n_values - 1), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"T = {t}")
        ax.set_axis_off()
    fig.suptitle(title)
    return _save(fig, path)
