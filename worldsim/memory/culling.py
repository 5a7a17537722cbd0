"""Which points of a rendered memory can reach which camera: culling cells, levels of detail.

The map's storage is grouped into cells of ``2^4`` voxels on a side. A cell whose bounding
sphere lies wholly before a camera's near plane or outside its frustum (widened by
``max_splat_radius`` pixels) is skipped: a conservative cull that changes no pixel. With
``level_of_detail`` a cell far from a camera is drawn from one point per coarse voxel of
``2^l`` voxels on a side (:mod:`worldsim.memory.rendered` states the rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from worldsim.memory.splatting import to_camera
from worldsim.memory.voxel_grid import BITS

if TYPE_CHECKING:
    from worldsim.memory.rendered import RenderedMemory

HALF = 1 << (BITS - 1)
"""Voxel coordinates are stored offset by this many voxels (non-negative bit fields)."""
AXES = 3
ROW_SHIFT = BITS * AXES
"""A storage key holds the map row above this many bits of voxel coordinates."""
_CELL_SHIFT = 4  # a culling cell is 2^4 voxels on a side
_CELL_BITS = BITS - _CELL_SHIFT
_LEVELS = 4  # level of detail l in [0, 4): one point per 2^l voxels on a side


class Cells(NamedTuple):
    """The storage grouped into culling cells (rows first, then cell key).

    Attributes:
        order: (M',) storage positions, level by level (level 0: every point), cell by cell.
        size: (M',) the point size at that level, metres.
        first: (L, C) position in ``order`` of each cell's first point at each level.
        count: (L, C) points per cell and level.
        centre: (C, 3) world centre of each cell, metres.
        row_first: (P,) index of each storage row's first cell.
        row_count: (P,) cells per storage row.
    """

    order: Tensor
    size: Tensor
    first: Tensor
    count: Tensor
    centre: Tensor
    row_first: Tensor
    row_count: Tensor


def visible_pairs(
    memory: RenderedMemory,
    cells: Cells,
    world_to_cam: Tensor,
    k: Tensor,
    camera_row: Tensor,
    size: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(image, storage position, size) of every point in a cell that can reach the image.

    A cell is kept when its bounding sphere is not wholly before the near plane or wholly
    outside one of the four planes through the camera centre and the image borders widened
    by ``max_splat_radius`` pixels: every point the per-point test would draw is kept.

    Args:
        memory: the map.
        cells: its storage grouped into cells (:func:`build_cells`).
        world_to_cam: (G, 4, 4) the images' world-to-camera transforms.
        k: (G, 3, 3) their ``K``.
        camera_row: (G,) the storage row each image renders.
        size: ``(H, W)`` of the images.

    Returns:
        ``(image, position, size)``: (Q,) int64, int64 and float (the point's size at the
        cell's level of detail, metres).
    """
    height, width = size
    reach = memory.config.max_splat_radius
    per_image = cells.row_count[camera_row]  # (G,) candidate cells
    image = torch.repeat_interleave(
        torch.arange(camera_row.numel(), device=memory.device), per_image
    )
    local = (
        torch.arange(image.numel(), device=memory.device) - (per_image.cumsum(0) - per_image)[image]
    )
    cell = cells.row_first[camera_row][image] + local  # (Q',)
    x, y, z = to_camera(world_to_cam, cells.centre[cell], image)
    # Sphere radius: half the cell diagonal, a little more for float rounding.
    radius = (1 << _CELL_SHIFT) * memory.config.voxel_size * (3**0.5 / 2) * 1.001 + 1e-4
    fx, fy, cx, cy = k[image, 0, 0], k[image, 1, 1], k[image, 0, 2], k[image, 1, 2]
    keep = z >= memory.config.near_plane - radius
    # Plane n . p = 0 with inward normal n; the sphere is outside when n . c < -r |n|.
    for a, b in ((fx, cx + reach), (-fx, width + reach - cx)):
        keep &= a * x + b * z >= -radius * torch.sqrt(a.square() + b.square())
    for a, b in ((fy, cy + reach), (-fy, height + reach - cy)):
        keep &= a * y + b * z >= -radius * torch.sqrt(a.square() + b.square())
    image, cell = image[keep], cell[keep]
    level = torch.zeros_like(cell)
    if memory.config.level_of_detail is not None:
        nearest = (z[keep] - radius).clamp_min(memory.config.near_plane)
        pixel = nearest / torch.maximum(fx, fy)[keep]  # metres per pixel at the nearest point
        coarse = torch.log2(memory.config.level_of_detail * pixel / memory.config.voxel_size)
        level = torch.floor(coarse).clamp(0, _LEVELS - 1).long()
    count = cells.count[level, cell]
    pair = torch.repeat_interleave(torch.arange(cell.numel(), device=memory.device), count)
    local = torch.arange(pair.numel(), device=memory.device) - (count.cumsum(0) - count)[pair]
    entry = cells.first[level, cell][pair] + local
    return image[pair], cells.order[entry], cells.size[entry]


def build_cells(memory: RenderedMemory) -> Cells:
    """A map's storage grouped by cells of 16^3 voxels, with its coarser levels of detail."""
    mask = (1 << BITS) - 1
    voxel = [(memory.keys >> (BITS * (AXES - 1 - a))) & mask for a in range(AXES)]
    cell_key = memory.keys >> ROW_SHIFT
    for coordinate in voxel:
        cell_key = (cell_key << _CELL_BITS) | (coordinate >> _CELL_SHIFT)
    order = torch.sort(cell_key, stable=True).indices  # (M,)
    unique, count = torch.unique_consecutive(cell_key[order], return_counts=True)
    coordinates = torch.stack(
        [(unique >> (_CELL_BITS * (AXES - 1 - a))) & ((1 << _CELL_BITS) - 1) for a in range(AXES)],
        dim=-1,
    )  # (C, 3) cell coordinates, offset by HALF voxels
    side = 1 << _CELL_SHIFT
    centre = ((coordinates * side + side // 2 - HALF).double() * memory.config.voxel_size).float()
    cell_row = unique >> (_CELL_BITS * AXES)
    rows = memory.counts.numel()
    row_count = torch.bincount(cell_row, minlength=rows)
    orders, sizes, counts = [order], [memory.size[order]], [count]
    if memory.config.level_of_detail is not None:
        cell_of = torch.empty_like(order)
        cell_of[order] = torch.repeat_interleave(
            torch.arange(unique.numel(), device=memory.device), count
        )  # (M,) cell index of each stored point
        for level in range(1, _LEVELS):
            picked = coarse_points(memory, voxel, level)  # storage positions, key order
            # Coarse voxels nest in cells, so every cell keeps at least one point.
            by_cell = picked[torch.sort(cell_of[picked], stable=True).indices]
            orders.append(by_cell)
            sizes.append(memory.size[by_cell].clamp_min(memory.config.voxel_size * (1 << level)))
            counts.append(torch.bincount(cell_of[by_cell], minlength=unique.numel()))
    count_all = torch.stack(counts)  # (L', C)
    offsets = torch.tensor([0] + [o.numel() for o in orders[:-1]], device=memory.device)
    first = count_all.cumsum(1) - count_all + offsets.cumsum(0)[:, None]
    if count_all.shape[0] < _LEVELS:  # no level of detail: every level reads level 0
        count_all = count_all.expand(_LEVELS, -1)
        first = first.expand(_LEVELS, -1)
    return Cells(
        torch.cat(orders),
        torch.cat(sizes),
        first,
        count_all,
        centre,
        row_count.cumsum(0) - row_count,
        row_count,
    )


def coarse_points(memory: RenderedMemory, voxel: list[Tensor], level: int) -> Tensor:
    """Storage positions of one point per voxel of ``2^level`` voxels (module docstring).

    Args:
        memory: the map.
        voxel: the stored points' voxel coordinates (offset by ``HALF``), (M,) per axis.
        level: the level of detail, >= 1.

    Returns:
        (M_l,) int64 positions, in coarse-key order.
    """
    key = memory.keys >> ROW_SHIFT
    for coordinate in voxel:
        key = (key << BITS) | (coordinate >> level)
    coarse = 1 << level
    centre = torch.stack([(c >> level) * coarse + coarse / 2 - HALF for c in voxel], dim=-1)
    offset = (memory.xyz / memory.config.voxel_size - centre).square().sum(-1)  # (M,)
    # Observed first, then nearest the coarse centre, then the smaller key (stable sorts,
    # least significant rule first; storage is key-sorted).
    order = torch.sort(offset, stable=True).indices
    order = order[torch.sort((~memory.observed[order]).long(), stable=True).indices]
    order = order[torch.sort(key[order], stable=True).indices]
    _, group = torch.unique_consecutive(key[order], return_counts=True)
    return order[group.cumsum(0) - group]
