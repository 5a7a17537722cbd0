"""Drawing points into cameras: the render a map gives, z-buffered splats and hole fills.

:class:`MemoryRender` is what a rendered memory gives per target camera
(:meth:`worldsim.memory.RenderedMemory.render`). The splatting functions draw a map's points as
z-buffered squares whose side grows as depth shrinks (the module docstring of
:mod:`worldsim.memory.rendered` gives the rules); :func:`grow_into_holes` and :func:`fill_rings`
fill a render's empty pixels from their drawn neighbours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from worldsim.memory.rendered import RenderedMemoryConfig

_AXES = 3
INDEX_BITS = 32
"""Low bits of a z-buffer key: the drawn point's index in its storage row."""
EMPTY = torch.iinfo(torch.long).max
"""A z-buffer cell that no point reached."""


class MemoryRender(NamedTuple):
    """What :meth:`RenderedMemory.render` gives per target camera.

    Attributes:
        rgb: (B, T, 3, H, W) float RGB in [0, 1]; 0 where ``mask`` is False.
        depth: (B, T, 1, H, W) float z-depth of the drawn point, metres; 0 where ``mask`` is False.
        mask: (B, T, 1, H, W) bool, True where a point was drawn.
        observed: (B, T, 1, H, W) bool, True where the drawn point came from an observed frame.
        last_seen: (B, T, 1, H, W) int64 row frame counter when the drawn point's voxel was last
            hit; -1 where ``mask`` is False (the age is ``memory.steps[b] - last_seen``).
    """

    rgb: Tensor
    depth: Tensor
    mask: Tensor
    observed: Tensor
    last_seen: Tensor

    @classmethod
    def empty(
        cls, batch: int, frames: int, size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> MemoryRender:
        """The render of an empty map: nothing drawn anywhere."""
        height, width = size
        zeros = torch.zeros(batch, frames, 1, height, width, device=device)
        return cls(
            rgb=zeros.expand(-1, -1, 3, -1, -1).clone(),
            depth=zeros,
            mask=zeros.bool(),
            observed=zeros.bool(),
            last_seen=torch.full_like(zeros, -1, dtype=torch.int64),
        )

    def observed_only(self) -> MemoryRender:
        """The render with the pixels of generated points left empty (as if never drawn)."""
        keep = self.mask & self.observed
        return MemoryRender(
            rgb=self.rgb * keep,
            depth=self.depth * keep,
            mask=keep,
            observed=keep,
            last_seen=torch.where(keep, self.last_seen, torch.full_like(self.last_seen, -1)),
        )


def grow_into_holes(image: Tensor, known: Tensor, passes: int) -> tuple[Tensor, Tensor]:
    """Fill unknown pixels next to known ones with their known neighbours' mean, ring by ring.

    Each pass gives every unknown pixel with a known pixel among its 8 neighbours their mean.

    Args:
        image: (B, F, C, H, W) float.
        known: (B, F, 1, H, W) bool.
        passes: rings of pixels filled, >= 0.

    Returns:
        ``(image, known)``: the image with the rings filled (unknown pixels beyond them keep
        their values) and (B, F, 1, H, W) bool, True where known or filled.
    """
    shape = image.shape
    values = (image * known).flatten(0, 1)  # (B*F, C, H, W)
    weight = known.flatten(0, 1).to(image.dtype)  # (B*F, 1, H, W)
    for _ in range(passes):
        if bool(weight.all()):
            break
        total = torch.nn.functional.avg_pool2d(values, 3, 1, 1, count_include_pad=False)
        count = torch.nn.functional.avg_pool2d(weight, 3, 1, 1, count_include_pad=False)
        grow = (weight == 0) & (count > 0)
        values = torch.where(grow, total / count.clamp_min(1e-12), values)
        weight = torch.where(grow, torch.ones_like(weight), weight)
    filled = weight.reshape(*shape[:2], 1, *shape[3:]) > 0
    return torch.where(filled, values.reshape(shape), image), filled


def fill_rings(image: Tensor, known: Tensor, default: float, passes: int = 4) -> Tensor:
    """Fill unknown pixels from their known neighbours, ``passes`` rings deep, else ``default``.

    Args:
        image: (B, F, C, H, W) float.
        known: (B, F, 1, H, W) bool.
        default: the value of pixels still unknown after the passes.
        passes: rings of pixels filled (:func:`grow_into_holes`), >= 0.

    Returns:
        (B, F, C, H, W) ``image`` where known, filled elsewhere.
    """
    grown, filled = grow_into_holes(image, known, passes)
    return torch.where(filled, grown, torch.full_like(grown, default))


def to_camera(world_to_cam: Tensor, xyz: Tensor, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Camera coordinates ``(x, y, z)`` (Q,) each of points seen by images.

    Args:
        world_to_cam: (G, 4, 4) the images' transforms.
        xyz: (Q, 3) world points.
        image: (Q,) non-decreasing image of each point.

    Computed image by image, element-wise, so a point's coordinates are bit-identical however
    many points are transformed with it.
    """
    counts = torch.bincount(image, minlength=world_to_cam.shape[0]).tolist()
    parts: list[list[Tensor]] = [[], [], []]
    for g, points in enumerate(torch.split(xyz, counts)):
        if not counts[g]:
            continue
        rotation, shift = world_to_cam[g, :3, :3], world_to_cam[g, :3, 3]
        px, py, pz = points.unbind(-1)
        for i in range(_AXES):
            parts[i].append(
                rotation[i, 0] * px + rotation[i, 1] * py + rotation[i, 2] * pz + shift[i]
            )
    empty = xyz.new_zeros(0)
    return tuple(torch.cat(part) if part else empty for part in parts)


def footprint(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    size: Tensor,
    fx: Tensor,
    fy: Tensor,
    config: RenderedMemoryConfig,
    scale: float,
    height: int,
    width: int,
) -> tuple[Tensor, ...]:
    """``(col0, col1, row0, row1, radius_u, radius_v)`` of each point's square (Q,) each.

    The pixels whose centre (c + 0.5) lies within [u - r, u + r], as inclusive bounds (empty
    when ``col1 < col0``), clamped to the image in float first so far off-screen points cannot
    overflow the integer conversion.
    """
    extent = scale * size / z
    radius_u = (fx * extent).clamp(0.5, config.max_splat_radius)
    radius_v = (fy * extent).clamp(0.5, config.max_splat_radius)
    col0 = torch.ceil(u - radius_u - 0.5).clamp(0, width).long()
    col1 = torch.floor(u + radius_u - 0.5).clamp(-1, width - 1).long()
    row0 = torch.ceil(v - radius_v - 0.5).clamp(0, height).long()
    row1 = torch.floor(v + radius_v - 0.5).clamp(-1, height - 1).long()
    return col0, col1, row0, row1, radius_u, radius_v


def reaching_holes(
    points: list[Tensor], empty: Tensor, config: RenderedMemoryConfig, scale: float
) -> list[Tensor]:
    """The points (arrays as :func:`splat` takes them) whose square covers an empty pixel.

    A splat that only fills empty pixels is decided there by the points covering them, so
    dropping the others changes nothing; a summed-area table counts each square's holes.

    Args:
        points: ``(u, v, z, index, size, fx, fy, image)`` (Q,) each.
        empty: (G, H, W) bool, True where no point has been drawn.
        config: the memory's settings.
        scale: footprint half-width in projected point sizes.
    """
    u, v, z, _, size, fx, fy, image = points
    images, height, width = empty.shape
    col0, col1, row0, row1, _, _ = footprint(u, v, z, size, fx, fy, config, scale, height, width)
    table = torch.zeros(images, height + 1, width + 1, dtype=torch.int32, device=empty.device)
    table[:, 1:, 1:] = empty.int().cumsum(1).cumsum(2)  # holes in [0, i) x [0, j)
    flat = table.reshape(-1)
    base = image * (height + 1) * (width + 1)
    top, bottom = row0.clamp(max=height), (row1 + 1).clamp(min=0)
    left, right = col0.clamp(max=width), (col1 + 1).clamp(min=0)
    holes = (
        flat[base + bottom * (width + 1) + right]
        - flat[base + top * (width + 1) + right]
        - flat[base + bottom * (width + 1) + left]
        + flat[base + top * (width + 1) + left]
    )
    keep = (holes > 0) & (col1 >= col0) & (row1 >= row0)
    return [array[keep] for array in points]


def splat(
    u: Tensor,
    v: Tensor,
    z: Tensor,
    index: Tensor,
    size: Tensor,
    fx: Tensor,
    fy: Tensor,
    target: Tensor,
    shape: tuple[int, int, int],
    config: RenderedMemoryConfig,
    scale: float,
) -> Tensor:
    """Z-buffer of square splats (rules in the module docstring).

    Args:
        u: (Q,) projected column of each point in its target, pixels.
        v: (Q,) projected row.
        z: (Q,) camera z-depth, metres, >= near_plane.
        index: (Q,) the point's index in its row's storage, < 2^31.
        size: (Q,) point size, metres.
        fx: (Q,) horizontal focal length of the target, pixels.
        fy: (Q,) vertical focal length.
        target: (Q,) target image of each point, in [0, G).
        shape: ``(G, H, W)`` target images and their size.
        config: the memory's settings.
        scale: footprint half-width in projected point sizes.

    Returns:
        (G * H * W,) int64 keys: the winning point's ``index`` in the low 32 bits, ``EMPTY``
        where no point covers the pixel.
    """
    images, height, width = shape
    col0, col1, row0, row1, radius_u, radius_v = footprint(
        u, v, z, size, fx, fy, config, scale, height, width
    )
    cols = (col1 - col0 + 1).clamp(min=0)
    lines = (row1 - row0 + 1).clamp(min=0)
    area = cols * lines  # (Q,) pixels per footprint

    splat = torch.repeat_interleave(torch.arange(area.numel(), device=z.device), area)
    local = torch.arange(splat.numel(), device=z.device) - (area.cumsum(0) - area)[splat]
    pixel_col = col0[splat] + local % cols[splat]
    pixel_row = row0[splat] + torch.div(local, cols[splat], rounding_mode="floor")
    target = target[splat]  # (S,)
    pixel = (target * height + pixel_row) * width + pixel_col  # (S,)
    # Pass 1, the front surface: smallest z per pixel.
    pixels = images * height * width
    front = torch.full((pixels,), torch.inf, device=z.device)
    front.scatter_reduce_(0, pixel, z[splat], "amin")
    # Pass 2: among the points within the surface band behind the front, the one whose
    # centre is nearest the pixel centre (ties: smaller index in the row). Both parts of the
    # key are non-negative float32, whose bits order like the values.
    splat_z = z[splat]
    near_front = splat_z <= front[pixel] * (1 + config.surface_band) + config.voxel_size
    du = (pixel_col.float() + 0.5 - u[splat]) / radius_u[splat]
    dv = (pixel_row.float() + 0.5 - v[splat]) / radius_v[splat]
    offset_bits = (du.square() + dv.square()).float().view(torch.int32).long()
    key = (offset_bits << INDEX_BITS) | index[splat]  # (S,)
    buffer = torch.full((pixels,), EMPTY, device=z.device)
    buffer.scatter_reduce_(0, pixel[near_front], key[near_front], "amin")
    return buffer
