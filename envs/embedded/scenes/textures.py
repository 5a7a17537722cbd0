"""Textures of a house: procedural wall and floor patterns and the photographs of its pictures.

The photographs are the real images that scikit-image ships; patterns are seeded from the
material, so every machine draws the same textures.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from envs.embedded.scenes.layout import _SMALL_TEXTURE_PX, MaterialSpec, Picture, _hsv


# --------------------------------------------------------------------------------------- textures
def _periodic_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth value noise in [0, 1] that tiles seamlessly."""
    grid = rng.random((cells, cells))
    coords = np.arange(size) * cells / size
    i0 = np.floor(coords).astype(int)
    i1 = (i0 + 1) % cells
    frac = coords - i0
    w = frac * frac * (3 - 2 * frac)  # smoothstep
    rows = grid[i0] * (1 - w)[:, None] + grid[i1] * w[:, None]  # (size, cells)
    return rows[:, i0] * (1 - w)[None] + rows[:, i1] * w[None]


def _fractal_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """(size, size) sum of periodic noise octaves, rescaled to [0, 1]."""
    total = sum(0.5**k * _periodic_noise(rng, size, cells) for k, cells in enumerate(octaves))
    return (total - total.min()) / max(float(np.ptp(total)), 1e-9)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A photograph bundled with scikit-image, uint8 (H, W, 3) or (H, W) for grey ones."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 4:  # composite on white
        alpha = image[..., 3:] / 255.0
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    image.setflags(write=False)
    return image


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _mirror_tile(rng: np.random.Generator, gray: np.ndarray, size: int) -> np.ndarray:
    """(size, size) seamless tile in [0, 1] from a random crop of a grey photograph, mirrored."""
    crop = min(gray.shape) // 2
    r = int(rng.integers(gray.shape[0] - crop + 1))
    c = int(rng.integers(gray.shape[1] - crop + 1))
    half = _resize(np.ascontiguousarray(gray[r : r + crop, c : c + crop]), size // 2, size // 2)
    tile = np.block([[half, half[:, ::-1]], [half[::-1], half[::-1, ::-1]]]).astype(np.float64)
    return (tile - tile.min()) / max(float(np.ptp(tile)), 1e-9)


def _pattern(spec: MaterialSpec, rng: np.random.Generator) -> np.ndarray:
    """(size, size) pattern in [0, 1] of a material; every pattern tiles seamlessly."""
    size = spec.size
    u = np.arange(size)[None, :] / size  # (1, S) across the texture
    v = np.arange(size)[:, None] / size  # (S, 1) down the texture
    grain = _fractal_noise(rng, size, (4, 8, 16))
    if spec.pattern == "plaster":
        return 0.55 + 0.45 * _fractal_noise(rng, size, (4, 8, 16, 32))
    if spec.pattern == "stripes":
        stripes = np.clip(3 * np.sin(2 * np.pi * int(rng.integers(3, 8)) * u), -1, 1)
        return np.broadcast_to(0.6 + 0.3 * stripes, (size, size)) + 0.1 * grain - 0.05
    if spec.pattern == "dots":
        n = int(rng.integers(3, 7))
        du, dv = (u * n) % 1 - 0.5, (v * n) % 1 - 0.5
        return np.where(np.hypot(du, dv) < 0.22, 0.15, 0.95) - 0.1 * grain + 0.05
    if spec.pattern in ("brick", "stone"):
        return _mirror_tile(rng, _photo("brick" if spec.pattern == "brick" else "gravel"), size)
    if spec.pattern in ("planks", "wood"):
        rows = int(rng.integers(3, 7)) if spec.pattern == "planks" else 1
        row = np.floor(v * rows)
        shift = rng.random(rows + 1)[row.astype(int)]
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * ((u + shift) % 1) + 2.5 * grain))
        pattern = 0.35 + 0.5 * rings + 0.15 * rng.random(rows + 1)[row.astype(int)]
        if spec.pattern == "planks":
            seam = ((v * rows) % 1 < 0.03) | ((v * rows) % 1 > 0.97)
            pattern = np.where(seam, 0.05, pattern)
        return pattern
    if spec.pattern in ("tiles", "checker"):
        n = int(rng.integers(2, 6)) if spec.pattern == "tiles" else 2 * int(rng.integers(1, 3))
        i, j = np.floor(v * n).astype(int), np.floor(u * n).astype(int)
        if spec.pattern == "checker":
            base = np.where((i + j) % 2 == 0, 0.2, 0.95)
        else:
            base = 0.55 + 0.4 * rng.random((n, n))[i % n, j % n]
        grout = ((u * n) % 1 < 0.03) | ((v * n) % 1 < 0.03)
        return np.where(grout, 0.1, base) + 0.08 * grain - 0.04
    if spec.pattern == "carpet":
        return _fractal_noise(rng, size, (16, 32, 64))
    if spec.pattern == "fabric":
        weave = np.sin(2 * np.pi * 32 * u) * np.sin(2 * np.pi * 32 * v)
        return 0.6 + 0.15 * weave + 0.25 * grain
    raise ValueError(f"unknown texture pattern {spec.pattern!r} of material {spec.name!r}")


def material_texture(spec: MaterialSpec) -> np.ndarray | None:
    """The texture of a material.

    Args:
        spec: the material.

    Returns:
        uint8 (size, size, 3) RGB image, or ``None`` for ``plain`` materials.
    """
    if spec.pattern == "plain":
        return None
    pattern = np.clip(_pattern(spec, np.random.default_rng(spec.seed)), 0.0, 1.0)
    a, b = np.asarray(spec.color_a), np.asarray(spec.color_b)
    return np.round(255 * (a + (b - a) * pattern[..., None])).astype(np.uint8)


def picture_image(picture: Picture) -> np.ndarray:
    """The image of a wall picture: a crop of a photograph or an abstract composition.

    Args:
        picture: the picture.

    Returns:
        uint8 (h, w, 3) RGB image, 128 pixels on its longer side, with the picture's aspect ratio.
    """
    rng = np.random.default_rng(picture.seed)
    aspect = picture.width / picture.height
    width_px = _SMALL_TEXTURE_PX if aspect >= 1 else max(8, round(_SMALL_TEXTURE_PX * aspect))
    height_px = _SMALL_TEXTURE_PX if aspect < 1 else max(8, round(_SMALL_TEXTURE_PX / aspect))
    if picture.source.startswith("photo:"):
        photo = _photo(picture.source.removeprefix("photo:"))
        rows, cols = photo.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        crop_w = min(cols, rows * aspect) * scale
        crop_h = crop_w / aspect
        r = int(rng.uniform(0, rows - crop_h))
        c = int(rng.uniform(0, cols - crop_w))
        crop = np.ascontiguousarray(photo[r : r + int(crop_h), c : c + int(crop_w)])
        image = _resize(crop, width_px, height_px)
        if image.ndim == 2:  # stretch the contrast, then map dark..light to two hues
            lo, hi = np.percentile(image, [2, 98])
            gray = np.clip((image - lo) / max(hi - lo, 1.0), 0.0, 1.0)[..., None]
            dark = np.array(_hsv(picture.hue, 0.9, 0.2))
            light = np.array(_hsv(picture.hue + 0.4, 0.5, 1.0))
            image = np.round(255 * (dark + (light - dark) * gray))
        return image.astype(np.uint8)
    image = np.empty((height_px, width_px, 3))
    image[:] = _hsv(picture.hue, rng.uniform(0.3, 0.6), rng.uniform(0.7, 1.0))
    yy, xx = np.mgrid[0:height_px, 0:width_px] / _SMALL_TEXTURE_PX
    for _ in range(int(rng.integers(6, 13))):
        color = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.3, 1.0))
        cx, cy, r = rng.random() * aspect, rng.random(), rng.uniform(0.05, 0.3)
        if rng.random() < 0.5:
            mask = np.hypot(xx - cx, yy - cy) < r
        else:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < rng.uniform(0.05, 0.3))
        image[mask] = color
    return np.round(255 * image).astype(np.uint8)
