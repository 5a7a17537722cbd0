"""Classical fills of a render's holes: nearest known pixel and harmonic (neighbour averaging).

The map's render (:meth:`worldsim.memory.RenderedMemory.render`) leaves pixels empty: splat
holes, silhouettes, borders that a turn reveals, rooms never seen. These are the no-learning
baselines a generator must beat there, and the prefill a residual generator starts from
(:mod:`worldsim.models.pixel_denoiser`). Both take any channels (RGB, depth, both stacked) and keep
the known pixels bit for bit.

Nearest (:func:`nearest_fill`)
    Every hole takes the value of the known pixel nearest to it in Euclidean pixel distance,
    exactly (no jump-flooding approximation): per column, the nearest known row above and below
    (a cumulative max / min), then per row ``min over x' of (x - x')^2 + g(x', y)^2`` (the
    separable form of the squared distance transform), in integers. Ties go to the smaller
    column, then the upper row. O(B H W^2) work, about a millisecond per 64x64 frame.

Harmonic (:func:`harmonic_fill`)
    The holes solve Laplace's equation with the known pixels as boundary values (Dirichlet) and
    the image border as a mirror (Neumann, zero normal derivative): each hole is the mean of its
    4 neighbours. It is the classical "diffusion" fill: iterated neighbour averaging (Jacobi
    sweeps). Plain Jacobi needs ~N^2 sweeps across an N-pixel hole, so the sweeps run coarse to
    fine: the image is halved (known-weighted 2x2 means) down to ``coarsest`` pixels, solved
    there from a nearest fill, and each finer level starts from the coarser solution upsampled
    bilinearly. Linear ramps are harmonic: inside a hole enclosed by known pixels a ramp is
    reproduced exactly (up to the sweeps' convergence).

An image without any known pixel is filled with ``empty_value`` everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional

FILLS = ("nearest", "harmonic")
"""Names of the fills :func:`fill_holes` knows."""

_MAX_PAIRS = 1 << 24
"""Most (pixel, candidate column) pairs :func:`nearest_index` holds at once (int32: 64 MiB)."""


def _check(image: Tensor, known: Tensor) -> None:
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    expected = (image.shape[0], 1, *image.shape[2:])
    if tuple(known.shape) != expected or known.dtype != torch.bool:
        raise ValueError(
            f"known must be a bool tensor of shape {expected} (B, 1, H, W) for an image of shape "
            f"{tuple(image.shape)}, got {known.dtype} of shape {tuple(known.shape)}"
        )


def nearest_index(known: Tensor) -> Tensor:
    """Flat index ``row * W + column`` of the known pixel nearest to every pixel.

    Args:
        known: (B, 1, H, W) bool.

    Returns:
        (B, H, W) int64: the pixel itself where known; the nearest known pixel (Euclidean,
        exact; ties: smaller column, then upper row) elsewhere; -1 in images without any known
        pixel.
    """
    batch, _, height, width = known.shape
    device = known.device
    mask = known[:, 0]  # (B, H, W)
    rows = torch.arange(height, device=device).view(1, height, 1)
    # Nearest known row at or above / at or below each pixel, per column.
    up = torch.where(mask, rows, -1).cummax(dim=1).values  # (B, H, W), -1: none
    down = torch.where(mask, rows, height).flip(1).cummin(dim=1).values.flip(1)  # height: none
    none = 2 * (height + width)  # farther than any real distance
    to_up = torch.where(up >= 0, rows - up, none)
    to_down = torch.where(down < height, down - rows, none)
    from_up = to_up <= to_down  # ties go to the upper row
    column_distance = torch.minimum(to_up, to_down).int()  # (B, H, W) g(x', y)
    column_row = torch.where(from_up, up, down)  # (B, H, W) the row of that nearest pixel

    columns = torch.arange(width, device=device, dtype=torch.int32)
    offsets = (columns[:, None] - columns[None, :]) ** 2  # (W, W) (x - x')^2
    best = torch.empty(batch, height, width, dtype=torch.int64, device=device)
    chunk = max(1, _MAX_PAIRS // (height * width * width))
    for first in range(0, batch, chunk):
        g = column_distance[first : first + chunk]  # (b, H, W')
        cost = offsets + (g * g)[:, :, None, :]  # (b, H, W, W') int32, exact
        best[first : first + chunk] = cost.argmin(dim=-1)  # first minimum: smaller column
    seed_row = column_row.gather(2, best)  # (B, H, W)
    index = seed_row * width + best
    any_known = mask.flatten(1).any(dim=1)  # (B,)
    return torch.where(any_known[:, None, None], index, torch.full_like(index, -1))


def nearest_fill(image: Tensor, known: Tensor, empty_value: float = 0.0) -> Tensor:
    """Fill every unknown pixel with the nearest known pixel's value (module docstring).

    Args:
        image: (B, C, H, W) float, any channels (RGB, depth, ...).
        known: (B, 1, H, W) bool, True where ``image`` holds a value.
        empty_value: the value of images without any known pixel.

    Returns:
        (B, C, H, W) in ``image``'s dtype; equal to ``image`` (bitwise) where ``known``.
    """
    _check(image, known)
    batch, channels, height, width = image.shape
    index = nearest_index(known)  # (B, H, W)
    flat = index.clamp_min(0).flatten(1)[:, None].expand(batch, channels, height * width)
    filled = image.flatten(2).gather(2, flat).view(batch, channels, height, width)
    filled = torch.where((index >= 0)[:, None], filled, torch.full_like(filled, empty_value))
    return torch.where(known, image, filled)


def _neighbour_mean(values: Tensor) -> Tensor:
    """Mean of each pixel's 4 neighbours, the border mirrored (a zero normal derivative)."""
    padded = functional.pad(values, (1, 1, 1, 1), mode="replicate")
    return 0.25 * (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
    )


def _harmonic(image: Tensor, known: Tensor, iterations: int, coarsest: int) -> Tensor:
    """Jacobi sweeps on the holes from a coarse solution (or a nearest fill at the coarsest)."""
    height, width = image.shape[-2:]
    if height % 2 == 0 and width % 2 == 0 and min(height, width) >= 2 * coarsest:
        weight = functional.avg_pool2d(known.to(image.dtype), 2)  # (B, 1, H/2, W/2)
        total = functional.avg_pool2d(image * known, 2)
        coarse_known = weight > 0
        coarse = total / weight.clamp_min(1e-12)
        coarse = _harmonic(coarse, coarse_known, iterations, coarsest)
        start = functional.interpolate(coarse, size=(height, width), mode="bilinear")
    else:
        start = nearest_fill(image, known)
    values = torch.where(known, image, start)
    for _ in range(iterations):
        values = torch.where(known, image, _neighbour_mean(values))
    return values


def harmonic_fill(
    image: Tensor,
    known: Tensor,
    iterations: int = 32,
    coarsest: int = 4,
    empty_value: float = 0.0,
) -> Tensor:
    """Fill the unknown pixels with the harmonic interpolation of the known ones (module docstring).

    Args:
        image: (B, C, H, W) float, any channels.
        known: (B, 1, H, W) bool, True where ``image`` holds a value.
        iterations: Jacobi sweeps per pyramid level, >= 0 (0: the coarse solution upsampled).
        coarsest: the pyramid halves the image while both sides are even and at least twice
            this, pixels, >= 1.
        empty_value: the value of images without any known pixel.

    Returns:
        (B, C, H, W) in ``image``'s dtype; equal to ``image`` (bitwise) where ``known``.

    Raises:
        ValueError: for bad shapes, ``iterations < 0`` or ``coarsest < 1``.
    """
    _check(image, known)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if coarsest < 1:
        raise ValueError(f"coarsest must be >= 1 pixel, got {coarsest}")
    any_known = known.flatten(1).any(dim=1)[:, None, None, None]  # (B, 1, 1, 1)
    filled = _harmonic(image, known, iterations, coarsest)
    filled = torch.where(any_known, filled, torch.full_like(filled, empty_value))
    return torch.where(known, image, filled)


def fill_holes(image: Tensor, known: Tensor, method: str, empty_value: float = 0.0) -> Tensor:
    """Fill unknown pixels with one of :data:`FILLS` (its default settings).

    Args:
        image: (B, C, H, W) float.
        known: (B, 1, H, W) bool.
        method: ``"nearest"`` or ``"harmonic"``.
        empty_value: the value of images without any known pixel.

    Returns:
        (B, C, H, W), ``image`` where known.
    """
    fills: dict[str, Callable[..., Tensor]] = {"nearest": nearest_fill, "harmonic": harmonic_fill}
    if method not in fills:
        raise ValueError(f"unknown fill {method!r}; choose one of {FILLS}")
    return fills[method](image, known, empty_value=empty_value)
