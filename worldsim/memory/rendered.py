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
    whatever the order of the parallel writes.

Tokens
    This memory is read through :meth:`RenderedMemory.render`, not through tokens:
    :meth:`RenderedMemory.tokens` validates its inputs and returns ``N = 0`` tokens of width
    ``config.token_dim`` (like :class:`~worldsim.memory.NoMemory`), so cross-attention consumers
    still run.

Bad input
    As :mod:`worldsim.memory.base` (non-rigid poses, bad focal lengths, mismatched shapes:
    ``ValueError``; invalid depth: masked), plus: RGB outside [0, 1] and intrinsics whose
    principal point does not fit the frame size (:func:`check_principal_point`) raise.
"""

from __future__ import annotations

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
from worldsim.memory.voxel_grid import BITS

_HALF = 1 << (BITS - 1)
_AXES = 3
_ROW_SHIFT = BITS * _AXES
_INDEX_BITS = 32  # low bits of a z-buffer key: the point's index in its row
_EMPTY = torch.iinfo(torch.long).max
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
        token_dim: D reported by :meth:`RenderedMemory.tokens` (which gives N = 0), >= 1.
    """

    voxel_size: float = 0.03
    max_points: int = 1 << 20
    max_depth: float = DEFAULT_MAX_DEPTH
    splat_scale: float = 0.5
    fill_scale: float | None = 1.0
    max_splat_radius: float = 4.0
    near_plane: float = 0.05
    surface_band: float = 0.03
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
        if self.token_dim < 1:
            raise ValueError(f"{owner}.token_dim must be >= 1, got {self.token_dim}")


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

    def __init__(self, config: RenderedMemoryConfig | None = None, encoder: None = None) -> None:
        super().__init__()
        if encoder is not None:
            raise ValueError("RenderedMemory stores colours and takes no feature encoder")
        self.config = config or RenderedMemoryConfig()
        self.token_dim = self.config.token_dim
        self.steps: Tensor | None = None  # (B,) frames seen per row
        self._evicted_warned = False
        self._clear(1)

    def _clear(self, batch_size: int) -> None:
        device = self.device
        self.keys = torch.zeros(0, dtype=torch.long, device=device)  # (M,) sorted row|voxel
        self.xyz = torch.zeros(0, 3, device=device)  # (M, 3) world points, metres
        self.rgb = torch.zeros(0, 3, device=device)  # (M, 3) in [0, 1]
        self.size = torch.zeros(0, device=device)  # (M,) metres
        self.observed = torch.zeros(0, dtype=torch.bool, device=device)  # (M,)
        self.last_seen = torch.zeros(0, dtype=torch.long, device=device)  # (M,)
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)

    # Interface ------------------------------------------------------------------------------

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all maps (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)
        if batch_size >= 1 << (63 - _ROW_SHIFT):
            raise ValueError(f"batch_size must be < {1 << (63 - _ROW_SHIFT)}, got {batch_size}")
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

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Empty tokens (B, 0, D) and mask (B, 0): read this memory with :meth:`render`."""
        self._check_targets(target_cam_to_world, target_intrinsics, image_size)
        return (
            torch.zeros(self.batch_size, 0, self.token_dim, device=self.device),
            torch.zeros(self.batch_size, 0, dtype=torch.bool, device=self.device),
        )

    def select(self, index: Tensor) -> RenderedMemory:
        """Copies of rows ``index`` (see :meth:`Memory.select`); repeats allowed."""
        index = self._check_select_index(index)
        out = RenderedMemory(self.config)
        out.device, out.batch_size = self.device, index.numel()
        out._evicted_warned = self._evicted_warned
        starts = self.counts.cumsum(0) - self.counts
        take = self.counts[index]  # (B',)
        new_rows = torch.repeat_interleave(torch.arange(index.numel(), device=self.device), take)
        offset = (
            torch.arange(int(take.sum()), device=self.device) - (take.cumsum(0) - take)[new_rows]
        )
        source = starts[index][new_rows] + offset  # (M',) positions in this storage
        voxel_bits = (1 << _ROW_SHIFT) - 1
        out.keys = (new_rows << _ROW_SHIFT) | (self.keys[source] & voxel_bits)
        out.xyz = self.xyz[source].clone()
        out.rgb = self.rgb[source].clone()
        out.size = self.size[source].clone()
        out.observed = self.observed[source].clone()
        out.last_seen = self.last_seen[source].clone()
        out.counts = take.clone()
        out.steps = self.steps[index].clone()
        return out

    # Queries --------------------------------------------------------------------------------

    def num_points(self) -> Tensor:
        """(B,) points per row (a copy)."""
        self._require_reset()
        return self.counts.clone()

    def points(self) -> MapPoints:
        """All stored points in storage order (row, then voxel key), as copies."""
        self._require_reset()
        return MapPoints(
            self.keys >> _ROW_SHIFT,
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

        # Pad the flat storage to (B, N) so all rows project in one batched matmul.
        rows = self.keys >> _ROW_SHIFT  # (M,)
        starts = self.counts.cumsum(0) - self.counts
        rank = torch.arange(rows.numel(), device=self.device) - starts[rows]
        width_n = int(self.counts.max()) if rows.numel() else 0
        padded = torch.zeros(batch, width_n, 3, device=self.device)
        padded[rows, rank] = self.xyz  # (B, N, 3)
        size_padded = torch.zeros(batch, width_n, device=self.device)
        size_padded[rows, rank] = self.size  # (B, N)
        present = torch.zeros(batch, width_n, dtype=torch.bool, device=self.device)
        present[rows, rank] = True
        observed = torch.zeros(batch, width_n, dtype=torch.bool, device=self.device)
        observed[rows, rank] = self.observed  # (B, N)
        world_to_cam = invert_rigid(poses)  # (B, T, 4, 4)
        camera = torch.einsum("btij,bnj->btni", world_to_cam[..., :3, :3], padded)
        camera = camera + world_to_cam[:, :, None, :3, 3]  # (B, T, N, 3)
        z = camera[..., 2]
        drawn = present[:, None] & (z >= config.near_plane) & torch.isfinite(z)  # (B, T, N)
        # Cull points whose square cannot reach a pixel centre: every footprint is at most
        # max_splat_radius pixels, so a centre farther outside the image draws nothing.
        depth_safe = z.clamp_min(config.near_plane)
        u_all = k[..., 0, 0, None] * camera[..., 0] / depth_safe + k[..., 0, 2, None]  # (B, T, N)
        v_all = k[..., 1, 1, None] * camera[..., 1] / depth_safe + k[..., 1, 2, None]
        reach = config.max_splat_radius
        drawn &= (u_all > -reach) & (u_all < width + reach)
        drawn &= (v_all > -reach) & (v_all < height + reach)
        b, t, n = drawn.nonzero(as_tuple=True)  # (Q,) each
        x, y, z = camera[b, t, n].unbind(-1)
        fx, fy = k[b, t, 0, 0], k[b, t, 1, 1]
        u = fx * x / z + k[b, t, 0, 2]
        v = fy * y / z + k[b, t, 1, 2]
        pixels = batch * frames * height * width
        target = b * frames + t  # (Q,) index into B*T
        point_size = size_padded[b, n]  # (Q,)
        arrays = (u, v, z, n, point_size, fx, fy, target)
        shape = (pixels // (height * width), height, width)
        buffer = torch.full((pixels,), _EMPTY, dtype=torch.int64, device=self.device)
        # Observed points first, generated ones only where no observed point covers a pixel;
        # each source's wider fill splat only where its own and earlier splats left a hole.
        from_observed = observed[b, n]  # (Q,)
        scales = (config.splat_scale, config.fill_scale)
        for source in (from_observed, ~from_observed):
            if not source.any():
                continue
            points = [array[source] for array in arrays]
            for scale in scales:
                if scale is not None and bool((buffer == _EMPTY).any()):
                    layer = _splat(*points, shape, config, scale)
                    buffer = torch.where(buffer == _EMPTY, layer, buffer)

        mask = buffer != _EMPTY  # (B*T*H*W,)
        hit = mask.nonzero()[:, 0]
        winner = buffer[hit] & ((1 << _INDEX_BITS) - 1)  # index in the row
        hit_row = torch.div(hit, frames * height * width, rounding_mode="floor")
        hit_target = torch.div(hit, height * width, rounding_mode="floor")
        point = (starts[hit_row] + winner).long()  # index in the flat storage
        depth_out = torch.zeros(pixels, device=self.device)
        depth_out[hit] = camera.reshape(batch * frames, width_n, 3)[hit_target, winner, 2]
        rgb_out = torch.zeros(pixels, 3, device=self.device)
        rgb_out[hit] = self.rgb[point]
        observed_out = torch.zeros_like(mask)
        observed_out[hit] = self.observed[point]
        seen_out = torch.full_like(buffer, -1)
        seen_out[hit] = self.last_seen[point]

        def image(flat: Tensor) -> Tensor:
            return flat.reshape(batch, frames, height, width, -1).permute(0, 1, 4, 2, 3)

        return MemoryRender(
            rgb=image(rgb_out),  # (B, T, 3, H, W)
            depth=image(depth_out),  # (B, T, 1, H, W)
            mask=image(mask),
            observed=image(observed_out),
            last_seen=image(seen_out),
        )

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
        if cells.numel() and (int(cells.min()) < -_HALF or int(cells.max()) >= _HALF):
            raise ValueError(
                f"voxel coordinates must lie in [{-_HALF}, {_HALF}), got "
                f"[{int(cells.min())}, {int(cells.max())}]: points are too far from the world "
                f"origin for voxel_size = {self.config.voxel_size} m (use larger voxels or "
                "recentre the world)"
            )
        key = rows.long()
        for axis in range(_AXES):
            key = (key << BITS) | (cells[:, axis] + _HALF)
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
            self.xyz[at_r] = points[candidate_r]
            self.rgb[at_r] = colours[candidate_r]
            self.size[at_r] = size[candidate_r]
            self.observed[at_r] = observed[candidate_r]
            self.last_seen[at] = torch.maximum(self.last_seen[at], seen[old])
        new = (~found).nonzero()[:, 0]
        if new.numel():
            self._merge(
                unique[new],
                position[new],
                points[first[new]],
                colours[first[new]],
                size[first[new]],
                observed[first[new]],
                seen[new],
            )
            self.counts += torch.bincount(unique[new] >> _ROW_SHIFT, minlength=self.batch_size)
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
        rows = self.keys >> _ROW_SHIFT
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


def _splat(
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
        (G * H * W,) int64 keys: the winning point's ``index`` in the low 32 bits, ``_EMPTY``
        where no point covers the pixel.
    """
    images, height, width = shape
    extent = scale * size / z
    radius_u = (fx * extent).clamp(0.5, config.max_splat_radius)
    radius_v = (fy * extent).clamp(0.5, config.max_splat_radius)
    # Pixels whose centre (c + 0.5) lies within [u - r, u + r]; clamped to the image in float
    # first so far off-screen points cannot overflow the integer conversion.
    col0 = torch.ceil(u - radius_u - 0.5).clamp(0, width).long()
    col1 = torch.floor(u + radius_u - 0.5).clamp(-1, width - 1).long()
    row0 = torch.ceil(v - radius_v - 0.5).clamp(0, height).long()
    row1 = torch.floor(v + radius_v - 0.5).clamp(-1, height - 1).long()
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
    key = (offset_bits << _INDEX_BITS) | index[splat]  # (S,)
    buffer = torch.full((pixels,), _EMPTY, device=z.device)
    buffer.scatter_reduce_(0, pixel[near_front], key[near_front], "amin")
    return buffer
