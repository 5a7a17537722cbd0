"""The persistent 3D feature map (the paper's DINO-map) and the grid machinery it shares with BEV.

Update
    Each valid frame is lifted to feature cells with world points (:func:`lift_frames`); each
    point falls in voxel ``floor(p / voxel_size)`` (world frame, metres) and the voxel keeps the
    element-wise maximum of the features that ever fell in it (:class:`SparseMaxGrid`). Max is
    order-free, so a voxel's features do not depend on the order frames arrive in, and seeing the
    same view twice changes nothing.

Tokens
    One token per selected occupied voxel: its max-pooled features, then a 3D sinusoidal
    embedding (:class:`PositionEncoding`) of the voxel centre expressed in the camera frame of the
    *first target camera* (OpenCV axes: x right, y down, z forward, metres) — so the model sees
    where each voxel is relative to where it is about to look, and tokens are unchanged when the
    whole world (map and targets) is moved rigidly by a motion that maps voxel centres to voxel
    centres.

Selection rule (per row)
    Voxels whose centre lies within ``token_radius`` metres of the nearest target camera centre
    (all voxels if ``token_radius`` is None), nearest first (ties: smaller voxel key), at most
    ``max_tokens`` of them. Tokens come in that order; rows with fewer tokens are padded with
    zeros and mask False; ``N`` = the largest count over rows (0 when every row is empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldsim.geometry import invert_rigid
from worldsim.memory.base import (
    DEFAULT_MAX_DEPTH,
    DEPTH_SAMPLING,
    Memory,
    PositionEncoding,
    lift_frames,
)
from worldsim.memory.voxel_grid import SparseMaxGrid
from worldsim.models.encoders import EncoderConfig, FeatureEncoder, build_encoder


def _check_grid_fields(config, owner: str) -> None:
    if not 0.001 <= config.voxel_size <= 10.0:
        raise ValueError(
            f"{owner}.voxel_size must be in [0.001, 10] metres, got {config.voxel_size}"
        )
    if config.max_voxels < 1:
        raise ValueError(f"{owner}.max_voxels must be >= 1, got {config.max_voxels}")
    if config.max_tokens is not None and config.max_tokens < 1:
        raise ValueError(f"{owner}.max_tokens must be >= 1 or None, got {config.max_tokens}")
    if config.token_radius is not None and not config.token_radius > 0:
        raise ValueError(
            f"{owner}.token_radius must be > 0 metres or None, got {config.token_radius}"
        )
    if not 0 < config.max_depth <= 1000:
        raise ValueError(f"{owner}.max_depth must be in (0, 1000] metres, got {config.max_depth}")
    if config.depth_sampling not in DEPTH_SAMPLING:
        raise ValueError(
            f"{owner}.depth_sampling must be one of {DEPTH_SAMPLING}, got {config.depth_sampling!r}"
        )


@dataclass(frozen=True)
class FeatureMapConfig:
    """Settings of :class:`FeatureMap3D`.

    Attributes:
        encoder: image encoder (default VGG16 ``relu3_3``, ImageNet weights).
        voxel_size: voxel edge, metres, in [0.001, 10].
        max_voxels: most voxels per map, >= 1 (least recently observed evicted beyond it).
        max_tokens: most tokens per row, >= 1, or None for all selected voxels.
        token_radius: only voxels within this distance of a target camera, metres (> 0), or None.
        depth_sampling: ``"median"`` or ``"nearest"`` (see :mod:`worldsim.memory.base`).
        max_depth: depths above this are no hit, metres, in (0, 1000].
        position: the sinusoidal position embedding.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    voxel_size: float = 0.1
    max_voxels: int = 1 << 18
    max_tokens: int | None = 4096
    token_radius: float | None = None
    depth_sampling: str = "median"
    max_depth: float = DEFAULT_MAX_DEPTH
    position: PositionEncoding = field(default_factory=PositionEncoding)

    def __post_init__(self) -> None:
        _check_grid_fields(self, type(self).__name__)


class GridMemory(Memory):
    """Shared machinery of the voxel map (3 axes) and the bird's-eye map (2 axes).

    Subclasses define :attr:`axes`, :meth:`cells_of` and :meth:`token_coords`.

    Args:
        config: a config with the fields of :class:`FeatureMapConfig`.
        encoder: a ready encoder to use instead of building ``config.encoder`` (may be shared).
    """

    axes: int = 3

    def __init__(self, config, encoder: FeatureEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder)
        self.token_dim = self.encoder.out_channels + config.position.dim(self.axes)
        self.grid: SparseMaxGrid | None = None
        self.steps: Tensor | None = None  # (B,) frames observed per row

    def cells_of(self, points: Tensor) -> Tensor:
        """Integer cell coordinates (P, A) of world points (P, 3)."""
        raise NotImplementedError

    def cell_centers(self, cells: Tensor) -> Tensor:
        """World coordinates (P, A) of cell centres (metres, the axes of :meth:`cells_of`)."""
        return (cells.float() + 0.5) * self.config.voxel_size

    def token_coords(self, centres: Tensor, world_to_reference: Tensor) -> Tensor:
        """Coordinates (P, A) to embed for cell centres (P, A) given (P, 4, 4) world->camera."""
        raise NotImplementedError

    def camera_distance(self, centres: Tensor, cameras: Tensor) -> Tensor:
        """Distance (P,) from cell centres (P, A) to the nearest of (P, L, 3) camera centres."""
        raise NotImplementedError

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all maps (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)
        self.grid = SparseMaxGrid(
            self.axes, self.encoder.out_channels, self.config.max_voxels, batch_size, self.device
        )
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
        """Max-pool the frames' features into the maps (see :meth:`Memory.update`)."""
        frames = self._check_frames(rgb, depth, intrinsics, cam_to_world, valid)
        if frames.rgb.shape[0] == 0:
            return
        lifted = lift_frames(
            frames, self.encoder, self.config.depth_sampling, self.config.max_depth
        )
        # Observation time of each frame: its row's frame counter.
        per_row = torch.zeros_like(self.steps).index_add_(
            0, frames.batch_index, torch.ones_like(frames.batch_index)
        )
        order_in_row = _rank_within_groups(frames.batch_index)
        time = self.steps[frames.batch_index] + order_in_row  # (Nv,)
        self.steps += per_row
        self.insert_points(
            lifted.points, lifted.point_valid, lifted.features, frames.batch_index, time
        )

    def insert_points(
        self, points: Tensor, point_valid: Tensor, features: Tensor, rows: Tensor, time: Tensor
    ) -> None:
        """Max-pool already lifted points into the grid.

        Args:
            points: (Nv, h, w, 3) world points, metres.
            point_valid: (Nv, h, w) bool.
            features: (Nv, C, h, w) features.
            rows: (Nv,) map row of each frame.
            time: (Nv,) observation time of each frame.
        """
        nv, _, h, w = features.shape
        flat_valid = point_valid.reshape(-1)  # (Nv*h*w,)
        flat_points = points.reshape(-1, 3)[flat_valid]  # (P, 3)
        flat_features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])[flat_valid]
        point_rows = rows[:, None].expand(nv, h * w).reshape(-1)[flat_valid]
        point_time = time[:, None].expand(nv, h * w).reshape(-1)[flat_valid]
        self.grid.insert(point_rows, self.cells_of(flat_points), flat_features, point_time)

    def num_cells(self) -> Tensor:
        """(B,) occupied cells per map."""
        self._require_reset()
        return self.grid.row_counts()

    def cells(self) -> tuple[Tensor, Tensor, Tensor]:
        """All occupied cells, for inspection and pictures.

        Returns:
            ``(rows, centres, features)``: (M,) map row, (M, A) world coordinates of the cell
            centres (metres; x, y, z for voxels, x, z for the bird's-eye map), (M, C) features.
        """
        self._require_reset()
        rows, cells = self.grid.decode(self.grid.keys)
        return rows, self.cell_centers(cells), self.grid.cell_features()

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Map tokens for target cameras (selection rule in the module docstring).

        Returns:
            ``(tokens, mask)``: (B, N, C + position width) and (B, N) bool.
        """
        targets, _ = self._check_targets(target_cam_to_world, target_intrinsics, image_size)
        batch = self.batch_size
        rows, cells = self.grid.decode(self.grid.keys)  # (M,), (M, A), rows ascending
        centres = self.cell_centers(cells)
        distance = self.camera_distance(centres, targets[rows, :, :3, 3])  # (M,)
        if self.config.token_radius is not None:
            distance = torch.where(distance <= self.config.token_radius, distance, torch.inf)
        order = self._nearest_per_row(rows, distance)  # (K,) by row, then distance, then key
        counts = torch.bincount(rows[order], minlength=batch)
        rank = (
            torch.arange(order.numel(), device=self.device)
            - (counts.cumsum(0) - counts)[rows[order]]
        )
        width = int(counts.max()) if order.numel() else 0
        tokens = torch.zeros(batch, width, self.token_dim, device=self.device)
        mask = torch.zeros(batch, width, dtype=torch.bool, device=self.device)
        if width:
            selected_rows = rows[order]
            to_reference = invert_rigid(targets[:, 0])  # (B, 4, 4) world -> first target camera
            position = self.config.position(
                self.token_coords(centres[order], to_reference[selected_rows])
            )
            features = self.grid.features.index_select(0, self.grid.slots[order])
            tokens[selected_rows, rank] = torch.cat([features, position.to(features.dtype)], -1)
            mask[selected_rows, rank] = True
        return tokens, mask

    def _nearest_per_row(self, rows: Tensor, distance: Tensor) -> Tensor:
        """Indices of the selected cells: finite distance, nearest first, ``max_tokens`` per row.

        ``rows`` is ascending and, within a row, cells are in key order, so stable sorts break
        distance ties by key. With a ``max_tokens`` limit, each row's cut-off distance comes from
        ``topk`` on a padded (B, max count) table and only cells up to it are sorted.
        """
        batch = self.batch_size
        limit = self.config.max_tokens
        finite = torch.isfinite(distance)
        if limit is not None and rows.numel():
            counts = torch.bincount(rows, minlength=batch)
            rank = (
                torch.arange(rows.numel(), device=self.device) - (counts.cumsum(0) - counts)[rows]
            )
            table = torch.full((batch, int(counts.max())), torch.inf, device=self.device)
            table[rows, rank] = distance
            k = min(limit, table.shape[1])
            cutoff = table.topk(k, dim=1, largest=False).values[:, -1]  # (B,) k-th smallest
            finite &= distance <= cutoff[rows]
        candidates = finite.nonzero()[:, 0]
        order = candidates[torch.sort(distance[candidates], stable=True).indices]
        order = order[torch.sort(rows[order], stable=True).indices]
        if limit is not None:
            counts = torch.bincount(rows[order], minlength=batch)
            rank = (
                torch.arange(order.numel(), device=self.device)
                - (counts.cumsum(0) - counts)[rows[order]]
            )
            order = order[rank < limit]  # cells tied at the cut-off: the smaller keys stay
        return order

    def select(self, index: Tensor) -> GridMemory:
        """Copies of rows ``index`` (see :meth:`Memory.select`); the encoder is shared."""
        index = self._check_select_index(index)
        out = type(self)(self.config, encoder=self.encoder)
        out.device = self.device
        out.batch_size = index.numel()
        out.grid = self.grid.select(index)
        out.steps = self.steps[index].clone()
        return out


def _rank_within_groups(groups: Tensor) -> Tensor:
    """Position of each element among the earlier elements of its group, for sorted groups."""
    counts = torch.bincount(groups)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - starts[groups]


class FeatureMap3D(GridMemory):
    """Persistent 3D feature map: max-pooled encoder features in a sparse voxel grid.

    See the module docstring for the update, the tokens and the selection rule.

    Args:
        config: settings; default :class:`FeatureMapConfig`.
        encoder: a ready encoder to use instead of building ``config.encoder``.
    """

    axes = 3

    def __init__(
        self, config: FeatureMapConfig | None = None, encoder: FeatureEncoder | None = None
    ) -> None:
        super().__init__(config or FeatureMapConfig(), encoder)

    def cells_of(self, points: Tensor) -> Tensor:
        """Voxel indices ``floor(p / voxel_size)`` (P, 3) of world points (P, 3)."""
        return torch.floor(points / self.config.voxel_size).long()

    def token_coords(self, centres: Tensor, world_to_reference: Tensor) -> Tensor:
        """Voxel centres (P, 3) in the OpenCV frame of the reference cameras (world->camera)."""
        rotation, translation = world_to_reference[:, :3, :3], world_to_reference[:, :3, 3]
        return torch.einsum("pij,pj->pi", rotation, centres) + translation

    def camera_distance(self, centres: Tensor, cameras: Tensor) -> Tensor:
        """Euclidean distance (P,) to the nearest camera centre of (P, L, 3)."""
        return (centres[:, None, :] - cameras).norm(dim=-1).amin(dim=-1)
