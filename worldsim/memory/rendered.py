"""A rendered memory: a persistent world-frame map of coloured points that renders into any camera.

This is the 3D cache of GEN3C / PERSIST: the world model reads the map *pixel-aligned*, as the
RGB, depth and validity of the remembered scene seen from each camera it is about to generate.

Map (per row)
    Every valid pixel of every frame (depth valid: finite, > 0, <= ``max_depth``) is lifted to a
    world point (:func:`worldsim.geometry.depth_to_world_points`) and falls in the voxel
    ``floor(p / voxel_size)``. A voxel holds one point (a surfel without normal): its position,
    RGB, its size ``max(voxel_size, d / min(fx, fy))`` metres (the voxel, or the width of the
    pixel it was lifted from at depth ``d`` if that is larger: far pixels are sparser than
    voxels), whether it came from an *observed* or a *generated* frame, and ``last_seen``, the
    row's frame counter at the latest frame that put a point in the voxel.

Which point a voxel keeps
    Observed outranks generated: a generated point never replaces an observed one. Otherwise the
    newer frame's point replaces the older (the map follows the latest view). Among the points
    one frame puts in one voxel, the one nearest the voxel centre is kept (ties: the earlier
    pixel in row-major order). Every point that lands in a voxel, kept or not, refreshes its
    ``last_seen``. The result does not depend on how frames are split into updates, only on their
    order.

Bound and eviction
    A row holds at most ``max_points`` points. When an update takes a row past it, points are
    dropped in this order until it fits: generated before observed, then least recently seen
    (smallest ``last_seen``), then smaller voxel key. The first eviction of a memory raises a
    ``UserWarning`` with the numbers (row, points, bound, evicted).

Rendering (:meth:`RenderedMemory.render`)
    Each point is projected into each target camera and splatted as an axis-aligned square of
    half-width ``r = clamp(splat_scale * f * size / z, 0.5, max_splat_radius)`` pixels (``f`` =
    ``fx`` for columns, ``fy`` for rows, ``size`` the point's size above), so the footprint grows as
    the depth ``z`` shrinks. With the default ``splat_scale = 0.5`` a square is the projection of
    the patch the point stands for: a view the map holds gets one point per pixel back, and
    silhouettes and slanted floors are not fattened. Irregular point positions inside voxels and new
    viewpoints leave holes; a second splat with ``fill_scale`` (default 1.0, footprints twice as
    wide) fills only the pixels the first left empty. Observed points are drawn first (both splats);
    generated points are drawn after them into the pixels still empty, so a generated point never
    hides an observed one, even in front of it (generated depth can be wrong). ``r >= 0.5`` means a
    point always covers the pixel it falls in; a pixel is covered when its centre lies in the square
    (``|column + 0.5 - u| <= r``); points with ``z < near_plane`` are not drawn. Each splat's
    z-buffer works in two passes. First the *front* ``z_f`` of each pixel, the smallest ``z`` over
    the points covering it. Then, among the covering points on that front surface (``z <= z_f * (1 +
    surface_band) + voxel_size``), the one whose projected centre is nearest the pixel centre (in
    units of its footprint; ties: the smaller index in the row's key-sorted storage, i.e. the
    smaller voxel key). So occluded points never show, and where several views left samples of one
    surface the pixel takes the sample that lies on its own ray: a view the map holds renders back
    to itself. Both passes are ``scatter_reduce(amin)``, the second over one int64 key (float32 bits
    of the offset above, the index below): min is order-free, so the render is bit-identical
    whatever the order of the parallel writes. Before any of this, whole cells of 16^3 voxels
    whose bounding sphere lies outside a target's frustum (widened by ``max_splat_radius``
    pixels) or before its near plane are skipped: a conservative cull that changes no pixel.

Level of detail (``level_of_detail``, off by default)
    A far cell projects many points into each pixel, and only the front one shows. With
    ``level_of_detail = s`` a cell whose nearest point is ``d`` metres from a camera is drawn from
    one point per voxel of ``2^l`` voxels on a side, the largest ``l <= 3`` with ``2^l *
    voxel_size <= s * d / max(fx, fy)`` (``s`` pixels' width at ``d``): the point an observed
    frame put there first, then the one nearest that coarse voxel's centre (then the smaller
    voxel key), its size at least the coarse voxel. Renders then differ slightly from the exact
    ones (the sample of a surface a pixel shows) and cost several times less.

Copies
    :meth:`RenderedMemory.select` returns rows that share the source's storage until they are
    written to (copy on write), so K candidates planned from one episode map cost one map, and
    their renders project its points once per camera rather than per copy.

Tokens
    This memory gives a render, not tokens (``gives_render``; ``tokens`` raises ``TypeError``).

Bad input
    As :mod:`worldsim.memory.base` (non-rigid poses, bad focal lengths, mismatched shapes:
    ``ValueError``; invalid depth: masked), plus: RGB outside [0, 1] and intrinsics whose
    principal point does not fit the frame size (:func:`check_principal_point`) raise.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from worldsim.geometry import depth_to_world_points, invert_rigid
from worldsim.memory.base import (
    DEFAULT_MAX_DEPTH,
    Memory,
    check_principal_point,
    valid_depth_mask,
)
from worldsim.memory.culling import AXES, HALF, ROW_SHIFT, Cells, build_cells, visible_pairs
from worldsim.memory.splatting import (
    EMPTY,
    INDEX_BITS,
    MemoryRender,
    reaching_holes,
    splat,
    to_camera,
)
from worldsim.memory.voxel_grid import BITS

SOURCES = ("observed", "generated")
"""Where an update's frames come from (see the module docstring)."""


@dataclass(frozen=True)
class RenderedMemoryConfig:
    """Settings of :class:`RenderedMemory`.

    Attributes:
        voxel_size: voxel edge (one point per voxel), metres, in [0.001, 10].
        max_points: most points per row, in [1, 2^31) (evictions beyond it: module docstring).
        max_depth: depths above this are no hit, metres, in (0, 1000].
        splat_scale: footprint half-width in projected point sizes (``r = splat_scale * f *
            size / z`` pixels; module docstring), in (0, 10].
        fill_scale: footprint scale of a second splat that only fills pixels the first left
            empty, in [splat_scale, 10], or None for no filling.
        max_splat_radius: largest footprint half-width, pixels, in [0.5, 64].
        near_plane: points closer to a target camera than this (z, metres) are not drawn, in
            (0, max_depth).
        surface_band: relative depth band behind a pixel's front point within which points count
            as the same surface (the band is ``surface_band * z_front + voxel_size``), in [0, 1].
        level_of_detail: draw far cells from coarser voxels no wider than this many pixels
            (module docstring), in (0, 4], or None to draw every point (exact).
        token_dim: the ``token_dim`` attribute every memory has, >= 1; this memory gives no
            tokens (it gives a render), so nothing reads it.
    """

    voxel_size: float = 0.03
    max_points: int = 1 << 20
    max_depth: float = DEFAULT_MAX_DEPTH
    splat_scale: float = 0.5
    fill_scale: float | None = 1.0
    max_splat_radius: float = 4.0
    near_plane: float = 0.05
    surface_band: float = 0.03
    level_of_detail: float | None = None
    token_dim: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not 0.001 <= self.voxel_size <= 10.0:
            raise ValueError(
                f"{owner}.voxel_size must be in [0.001, 10] metres, got {self.voxel_size}"
            )
        if not 1 <= self.max_points < (1 << 31):
            raise ValueError(f"{owner}.max_points must be in [1, 2^31), got {self.max_points}")
        if not 0 < self.max_depth <= 1000:
            raise ValueError(f"{owner}.max_depth must be in (0, 1000] metres, got {self.max_depth}")
        if not 0 < self.splat_scale <= 10:
            raise ValueError(f"{owner}.splat_scale must be in (0, 10], got {self.splat_scale}")
        if self.fill_scale is not None and not self.splat_scale <= self.fill_scale <= 10:
            raise ValueError(
                f"{owner}.fill_scale must be in [splat_scale = {self.splat_scale}, 10] or None, "
                f"got {self.fill_scale}"
            )
        if not 0.5 <= self.max_splat_radius <= 64:
            raise ValueError(
                f"{owner}.max_splat_radius must be in [0.5, 64] pixels, got {self.max_splat_radius}"
            )
        if not 0 < self.near_plane < self.max_depth:
            raise ValueError(
                f"{owner}.near_plane must be in (0, max_depth = {self.max_depth}) metres, "
                f"got {self.near_plane}"
            )
        if not 0 <= self.surface_band <= 1:
            raise ValueError(f"{owner}.surface_band must be in [0, 1], got {self.surface_band}")
        if self.level_of_detail is not None and not 0 < self.level_of_detail <= 4:
            raise ValueError(
                f"{owner}.level_of_detail must be in (0, 4] pixels or None, "
                f"got {self.level_of_detail}"
            )
        if self.token_dim < 1:
            raise ValueError(f"{owner}.token_dim must be >= 1, got {self.token_dim}")


class MapPoints(NamedTuple):
    """The points of a :class:`RenderedMemory`, in storage order (row, then voxel key).

    Attributes:
        rows: (M,) int64 map row.
        xyz: (M, 3) world position, metres.
        rgb: (M, 3) colour in [0, 1].
        observed: (M,) bool, False for points from generated frames.
        last_seen: (M,) int64 row frame counter at the latest hit of the point's voxel.
        size: (M,) point size, metres (module docstring).
    """

    rows: Tensor
    xyz: Tensor
    rgb: Tensor
    observed: Tensor
    last_seen: Tensor
    size: Tensor


class RenderedMemory(Memory):
    """Persistent coloured point map, voxel-downsampled, rendered by z-buffered splatting.

    See the module docstring for the update, eviction and rendering rules.

    Args:
        config: settings; default :class:`RenderedMemoryConfig`.
        encoder: unused (accepted so :func:`~worldsim.memory.build_memory` can pass one); must
            be None.
    """

    gives_tokens = False
    gives_render = True

    def __init__(self, config: RenderedMemoryConfig | None = None, encoder: None = None) -> None:
        super().__init__()
        if encoder is not None:
            raise ValueError("RenderedMemory stores colours and takes no feature encoder")
        self.config = config or RenderedMemoryConfig()
        self.token_dim = self.config.token_dim
        self.steps: Tensor | None = None  # (B,) frames seen per row
        self._evicted_warned = False
        self._clear(1)

    # Storage: the tensors below hold P storage rows; ``_rows`` (B,) names the storage row of
    # each of the B rows when they share a source's storage (copy on write), else it is None.

    def _clear(self, batch_size: int) -> None:
        device = self.device
        self.keys = torch.zeros(0, dtype=torch.long, device=device)  # (M,) sorted row|voxel
        self.xyz = torch.zeros(0, 3, device=device)  # (M, 3) world points, metres
        self.rgb = torch.zeros(0, 3, device=device)  # (M, 3) in [0, 1]
        self.size = torch.zeros(0, device=device)  # (M,) metres
        self.observed = torch.zeros(0, dtype=torch.bool, device=device)  # (M,)
        self.last_seen = torch.zeros(0, dtype=torch.long, device=device)  # (M,)
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=device)  # (P,)
        self._rows: Tensor | None = None  # (B,) storage row of each row, None = the identity
        self._cells: Cells | None = None  # culling cells, rebuilt after a write

    # Interface ------------------------------------------------------------------------------

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all maps (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)
        if batch_size >= 1 << (63 - ROW_SHIFT):
            raise ValueError(f"batch_size must be < {1 << (63 - ROW_SHIFT)}, got {batch_size}")
        self._clear(batch_size)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def update(
        self,
        rgb: Tensor,
        depth: Tensor,
        intrinsics: Tensor,
        cam_to_world: Tensor,
        valid: Tensor | None = None,
        source: str | Tensor = "observed",
    ) -> None:
        """Lift the frames' valid pixels into the maps (see :meth:`Memory.update`).

        Args:
            rgb: (B, T, 3, H, W) float RGB in [0, 1].
            depth: (B, T, 1, H, W) metric z-depth, metres; 0, NaN, inf, negative or beyond
                ``max_depth`` is masked.
            intrinsics: (B, T, 3, 3) ``K`` in pixels, for H x W images.
            cam_to_world: (B, T, 4, 4) rigid camera poses.
            valid: (B, T) bool, False for padding frames; ``None`` = all valid.
            source: ``"observed"`` (real sensor frames), ``"generated"`` (the model's own
                frames), or a (B, T) bool tensor, True where the frame is observed.
        """
        frames = self._check_frames(rgb, depth, intrinsics, cam_to_world, valid)
        self._own_storage()
        observed = self._frame_sources(source, rgb.shape[:2])[
            frames.batch_index.to(self.device), frames.time_index.to(self.device)
        ]  # (Nv,)
        height, width = frames.depth.shape[-2:]
        check_principal_point(frames.intrinsics, (height, width), "intrinsics")
        if frames.rgb.numel() and not (
            float(frames.rgb.min()) >= 0.0 and float(frames.rgb.max()) <= 1.0
        ):
            raise ValueError(
                f"rgb must lie in [0, 1], got values in [{float(frames.rgb.min()):.3g}, "
                f"{float(frames.rgb.max()):.3g}]"
            )
        if frames.rgb.shape[0] == 0:
            return
        rows = frames.batch_index.to(self.device)
        counts = torch.bincount(rows, minlength=self.batch_size)
        rank = torch.arange(rows.numel(), device=self.device) - (counts.cumsum(0) - counts)[rows]
        time = self.steps[rows] + rank  # (Nv,) frames arrive row-major, in time order per row
        self.steps += counts

        points = depth_to_world_points(frames.depth, frames.intrinsics, frames.cam_to_world)
        ok = valid_depth_mask(frames.depth, self.config.max_depth)  # (Nv, H, W)
        frame_of = ok.nonzero()[:, 0]  # (P,) frame of each valid pixel, pixels row-major
        focal = frames.intrinsics[:, [0, 1], [0, 1]].amin(-1)  # (Nv,)
        pixel_size = (frames.depth / focal[:, None, None])[ok]  # (P,) metres
        self._insert(
            rows[frame_of],
            points[ok],  # (P, 3)
            frames.rgb.permute(0, 2, 3, 1)[ok],  # (P, 3)
            pixel_size.clamp(min=self.config.voxel_size),
            observed[frame_of],
            time[frame_of],
        )

    def select(self, index: Tensor) -> RenderedMemory:
        """Copies of rows ``index`` (see :meth:`Memory.select`); repeats allowed.

        The copies share this memory's storage until either is written to (copy on write).
        """
        index = self._check_select_index(index)
        out = RenderedMemory(self.config)
        out.device, out.batch_size = self.device, index.numel()
        out._evicted_warned = self._evicted_warned
        for name in ("keys", "xyz", "rgb", "size", "observed", "last_seen", "counts", "_cells"):
            setattr(out, name, getattr(self, name))  # shared: writes replace, never modify
        out._rows = self._storage_rows()[index]
        out.steps = self.steps[index].clone()
        return out

    def with_level_of_detail(self, level_of_detail: float | None) -> RenderedMemory:
        """This map drawn at another level of detail: the same points, shared, never copied.

        Args:
            level_of_detail: as :class:`RenderedMemoryConfig` (``None``: every point).
        """
        config = dataclasses.replace(self.config, level_of_detail=level_of_detail)
        out = self.select(torch.arange(self._require_reset(), device=self.device))
        out.config, out._cells = config, None  # culling cells depend on the level of detail
        return out

    def rows_alike(self) -> bool:
        """Whether every row is a copy of one storage row (a row selected K times)."""
        rows = self._storage_rows()
        return bool((rows == rows[0]).all())

    def _storage_rows(self) -> Tensor:
        """(B,) the storage row of each row."""
        if self._rows is None:
            return torch.arange(self.batch_size, device=self.device)
        return self._rows

    def _own_storage(self) -> None:
        """Give the rows storage of their own (one storage row each) before a write."""
        if self._rows is None:
            return
        index = self._rows
        starts = self.counts.cumsum(0) - self.counts
        take = self.counts[index]  # (B,)
        new_rows = torch.repeat_interleave(torch.arange(index.numel(), device=self.device), take)
        offset = (
            torch.arange(int(take.sum()), device=self.device) - (take.cumsum(0) - take)[new_rows]
        )
        source = starts[index][new_rows] + offset  # (M',) positions in the shared storage
        voxel_bits = (1 << ROW_SHIFT) - 1
        self.keys = (new_rows << ROW_SHIFT) | (self.keys[source] & voxel_bits)
        for name in ("xyz", "rgb", "size", "observed", "last_seen"):
            setattr(self, name, getattr(self, name)[source])
        self.counts = take
        self._rows = None
        self._cells = None

    # Queries --------------------------------------------------------------------------------

    def num_points(self) -> Tensor:
        """(B,) points per row (a copy)."""
        self._require_reset()
        return self.counts[self._storage_rows()].clone()

    def points(self) -> MapPoints:
        """All stored points in storage order (row, then voxel key), as copies."""
        self._require_reset()
        self._own_storage()
        return MapPoints(
            self.keys >> ROW_SHIFT,
            self.xyz.clone(),
            self.rgb.clone(),
            self.observed.clone(),
            self.last_seen.clone(),
            self.size.clone(),
        )

    def render(
        self, cam_to_world: Tensor, intrinsics: Tensor, size: tuple[int, int]
    ) -> MemoryRender:
        """Render every row's map into its target cameras (rules in the module docstring).

        Args:
            cam_to_world: (B, T, 4, 4) rigid target camera poses.
            intrinsics: (B, T, 3, 3) their ``K`` in pixels, for images of ``size``.
            size: ``(H, W)`` of the rendered images, pixels.

        Returns:
            A :class:`MemoryRender` (``rgb, depth, mask, observed, last_seen``), each (B, T, C, H,
            W) with C = 3 for ``rgb`` and 1 otherwise.
        """
        poses, k = self._check_targets(cam_to_world, intrinsics, size)
        check_principal_point(k, size, "intrinsics")
        batch, frames = poses.shape[:2]
        height, width = size
        config = self.config
        images = batch * frames
        camera_row = self._storage_rows().repeat_interleave(frames)  # (G,) storage row per image
        world_to_cam = invert_rigid(poses).reshape(images, 4, 4)  # (G, 4, 4)
        k = k.reshape(images, 3, 3)
        starts = self.counts.cumsum(0) - self.counts  # (P,)

        # (image, point) pairs of the cells that can reach each image, then per point: in front
        # of the near plane and its centre within max_splat_radius pixels of the image.
        image, position, point_size = self._pairs(world_to_cam, k, camera_row, size)  # (Q,)
        x, y, z = to_camera(world_to_cam, self.xyz[position], image)
        reach = config.max_splat_radius
        fx, fy = k[image, 0, 0], k[image, 1, 1]
        depth_safe = z.clamp_min(config.near_plane)
        u = fx * x / depth_safe + k[image, 0, 2]
        v = fy * y / depth_safe + k[image, 1, 2]
        drawn = (z >= config.near_plane) & torch.isfinite(z)
        drawn &= (u > -reach) & (u < width + reach) & (v > -reach) & (v < height + reach)
        # Drawn points have z >= near_plane, so their u, v above already divide by z itself.
        image, position, point_size, z, fx, fy, u, v = (
            array[drawn] for array in (image, position, point_size, z, fx, fy, u, v)
        )
        index = position - starts[camera_row[image]]  # (Q,) index in its storage row
        arrays = (u, v, z, index, point_size, fx, fy, image)
        pixels = images * height * width
        shape = (images, height, width)
        buffer = torch.full((pixels,), EMPTY, dtype=torch.int64, device=self.device)
        # Observed points first, generated ones only where no observed point covers a pixel;
        # each source's wider fill splat only where its own and earlier splats left a hole.
        from_observed = self.observed[position]  # (Q,)
        scales = (config.splat_scale, config.fill_scale)
        for source in (from_observed, ~from_observed):
            if not source.any():
                continue
            points = [array[source] for array in arrays]
            for scale in scales:
                empty = buffer == EMPTY
                if scale is None or not bool(empty.any()):
                    continue
                if not bool(empty.all()):  # only points that can reach a hole matter now
                    points = reaching_holes(points, empty.reshape(shape), config, scale)
                layer = splat(*points, shape, config, scale)
                buffer = torch.where(empty, layer, buffer)

        mask = buffer != EMPTY  # (G*H*W,)
        hit = mask.nonzero()[:, 0]
        winner = buffer[hit] & ((1 << INDEX_BITS) - 1)  # index in the storage row
        hit_image = torch.div(hit, height * width, rounding_mode="floor")
        point = (starts[camera_row[hit_image]] + winner).long()  # index in the flat storage
        depth_out = torch.zeros(pixels, device=self.device)
        depth_out[hit] = to_camera(world_to_cam, self.xyz[point], hit_image)[2]
        rgb_out = torch.zeros(pixels, 3, device=self.device)
        rgb_out[hit] = self.rgb[point]
        observed_out = torch.zeros_like(mask)
        observed_out[hit] = self.observed[point]
        seen_out = torch.full_like(buffer, -1)
        seen_out[hit] = self.last_seen[point]

        def image_of(flat: Tensor) -> Tensor:
            return flat.reshape(batch, frames, height, width, -1).permute(0, 1, 4, 2, 3)

        return MemoryRender(
            rgb=image_of(rgb_out),  # (B, T, 3, H, W)
            depth=image_of(depth_out),  # (B, T, 1, H, W)
            mask=image_of(mask),
            observed=image_of(observed_out),
            last_seen=image_of(seen_out),
        )

    def _pairs(
        self, world_to_cam: Tensor, k: Tensor, camera_row: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(image, storage position, size) of every point that can reach an image (culling)."""
        if self._cells is None:  # cached until the next write
            self._cells = build_cells(self)
        return visible_pairs(self, self._cells, world_to_cam, k, camera_row, size)

    # Internals ------------------------------------------------------------------------------

    def _frame_sources(self, source: str | Tensor, shape: tuple[int, int]) -> Tensor:
        """(B, T) bool, True where a frame is observed."""
        if isinstance(source, str):
            if source not in SOURCES:
                raise ValueError(
                    f"source must be one of {SOURCES} or a bool tensor, got {source!r}"
                )
            return torch.full(tuple(shape), source == "observed", device=self.device)
        if not isinstance(source, Tensor) or source.dtype != torch.bool:
            raise ValueError(
                f"source must be one of {SOURCES} or a (B, T) bool tensor (True = observed), "
                f"got {type(source).__name__} {getattr(source, 'dtype', '')}"
            )
        if tuple(source.shape) != tuple(shape):
            raise ValueError(
                f"source must have shape {tuple(shape)} to match rgb, got {tuple(source.shape)}"
            )
        return source.to(self.device)

    def _voxel_keys(self, rows: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """Voxel keys of world points and their squared distance to the voxel centre.

        Args:
            rows: (P,) map row of each point.
            points: (P, 3) world points, metres.

        Returns:
            ``(keys, offset)``: (P,) int64 ``row | voxel`` keys and (P,) squared distance to the
            voxel centre in voxel units.
        """
        scaled = points / self.config.voxel_size
        cells = torch.floor(scaled).long()
        if cells.numel() and (int(cells.min()) < -HALF or int(cells.max()) >= HALF):
            raise ValueError(
                f"voxel coordinates must lie in [{-HALF}, {HALF}), got "
                f"[{int(cells.min())}, {int(cells.max())}]: points are too far from the world "
                f"origin for voxel_size = {self.config.voxel_size} m (use larger voxels or "
                "recentre the world)"
            )
        key = rows.long()
        for axis in range(AXES):
            key = (key << BITS) | (cells[:, axis] + HALF)
        offset = (scaled - cells - 0.5).square().sum(-1)
        return key, offset

    def _insert(
        self,
        rows: Tensor,
        points: Tensor,
        colours: Tensor,
        size: Tensor,
        observed: Tensor,
        time: Tensor,
    ) -> None:
        """Put lifted points (P,) into the maps (keep rule in the module docstring)."""
        if rows.numel() == 0:
            return
        keys, offset = self._voxel_keys(rows, points)
        # One candidate per voxel: observed first, then the newest frame, then nearest the
        # voxel centre, then the earlier pixel (stable sorts, least significant rule first).
        order = torch.sort(offset, stable=True).indices
        order = order[torch.sort(-time[order], stable=True).indices]
        order = order[torch.sort((~observed[order]).long(), stable=True).indices]
        order = order[torch.sort(keys[order], stable=True).indices]
        unique, group_size = torch.unique_consecutive(keys[order], return_counts=True)
        first = order[group_size.cumsum(0) - group_size]  # (U,) the candidate of each voxel
        group = torch.repeat_interleave(
            torch.arange(unique.numel(), device=self.device), group_size
        )
        seen = torch.full_like(unique, torch.iinfo(torch.long).min)
        seen.scatter_reduce_(0, group, time[order], "amax")  # (U,) latest hit per voxel

        position = torch.searchsorted(self.keys, unique)  # (U,)
        if self.keys.numel():
            probe = self.keys[position.clamp(max=self.keys.numel() - 1)]
            found = (position < self.keys.numel()) & (probe == unique)
        else:
            found = torch.zeros_like(unique, dtype=torch.bool)
        old = found.nonzero()[:, 0]
        if old.numel():
            at = position[old]
            candidate = first[old]
            replace = observed[candidate] | ~self.observed[at]  # generated never beats observed
            at_r, candidate_r = at[replace], candidate[replace]
            # Out of place: a select() made before this write may still share these tensors.
            self.xyz = self.xyz.index_put((at_r,), points[candidate_r])
            self.rgb = self.rgb.index_put((at_r,), colours[candidate_r])
            self.size = self.size.index_put((at_r,), size[candidate_r])
            self.observed = self.observed.index_put((at_r,), observed[candidate_r])
            latest = torch.maximum(self.last_seen[at], seen[old])
            self.last_seen = self.last_seen.index_put((at,), latest)
            self._cells = None
        new = (~found).nonzero()[:, 0]
        if new.numel():
            self._cells = None
            self._merge(
                unique[new],
                position[new],
                points[first[new]],
                colours[first[new]],
                size[first[new]],
                observed[first[new]],
                seen[new],
            )
            added = torch.bincount(unique[new] >> ROW_SHIFT, minlength=self.batch_size)
            self.counts = self.counts + added  # out of place: copies may share ``counts``
            if int(self.counts.max()) > self.config.max_points:
                self._evict()

    def _merge(
        self,
        keys: Tensor,
        position: Tensor,
        xyz: Tensor,
        rgb: Tensor,
        size: Tensor,
        observed: Tensor,
        last_seen: Tensor,
    ) -> None:
        """Merge sorted new ``keys`` (absent from storage) at their ``searchsorted`` positions."""
        old = self.keys.numel()
        # Old entry j moves right by the number of new keys inserted at or before it.
        shift = torch.bincount(position, minlength=old + 1).cumsum(0)[:old]
        old_target = torch.arange(old, device=self.device) + shift
        new_target = position + torch.arange(keys.numel(), device=self.device)
        for name, new_values in (
            ("keys", keys),
            ("xyz", xyz),
            ("rgb", rgb),
            ("size", size),
            ("observed", observed),
            ("last_seen", last_seen),
        ):
            values = getattr(self, name)
            merged = values.new_empty((old + keys.numel(), *values.shape[1:]))
            merged[old_target] = values
            merged[new_target] = new_values.to(values.dtype)
            setattr(self, name, merged)

    def _evict(self) -> None:
        """Drop points of over-full rows: generated first, then least recently seen, then key."""
        bound = self.config.max_points
        rows = self.keys >> ROW_SHIFT
        excess = (self.counts - bound).clamp(min=0)  # (B,)
        # Storage is key-sorted, so stable sorts on the later rules keep key order for ties.
        order = torch.sort(self.last_seen, stable=True).indices
        order = order[torch.sort(self.observed[order].long(), stable=True).indices]
        order = order[torch.sort(rows[order], stable=True).indices]
        starts = self.counts.cumsum(0) - self.counts
        rank = torch.arange(rows.numel(), device=self.device) - starts[rows[order]]
        keep = torch.empty_like(rows, dtype=torch.bool)
        keep[order] = rank >= excess[rows[order]]
        if not self._evicted_warned:
            row = int(excess.argmax())
            warnings.warn(
                f"RenderedMemory row {row} reached {int(self.counts[row])} points, over "
                f"max_points = {bound}: evicted {int(excess[row])} (generated first, then least "
                f"recently seen); {int(excess.sum())} evicted over {int((excess > 0).sum())} "
                "row(s) this update. Raise max_points or voxel_size to keep more. "
                "(Warned once per memory.)",
                stacklevel=4,
            )
            self._evicted_warned = True
        for name in ("keys", "xyz", "rgb", "size", "observed", "last_seen"):
            setattr(self, name, getattr(self, name)[keep])
        self.counts = self.counts - excess
        self._cells = None
