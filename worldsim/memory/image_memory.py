"""Image memory (3D-Mem style): a compact set of informative snapshot frames.

Which frames are kept
    Each frame's feature cells are lifted to world points and binned into coverage voxels of
    ``coverage_voxel`` metres. A frame is *informative* when at least ``novelty`` of its voxels are
    not covered by the current snapshots of its row. An informative frame is stored while the row
    has fewer than ``max_snapshots``; when full, every snapshot and the candidate get a *unique
    coverage* (their voxels that no other member covers) and the member with the smallest one is
    dropped (ties: the oldest); if that is the candidate, nothing changes. Frames without any
    valid depth are never stored. This greedily keeps a small set of frames that together see as
    much of the scene as possible.

Tokens
    Every feature cell of every stored snapshot, with the Plücker ray of the cell centre relative
    to the first target camera (:func:`frame_tokens`): D = C + 6, N = max_snapshots * h * w
    (all-False mask on empty slots; N = 0 before the first snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldsim.memory.base import (
    DEFAULT_MAX_DEPTH,
    DEPTH_SAMPLING,
    FrameSlots,
    LiftedFrames,
    Memory,
    lift_frames,
)
from worldsim.models.encoders import EncoderConfig, FeatureEncoder, build_encoder


def check_frame_memory_fields(config, owner: str) -> None:
    """Validate the fields shared by frame-based memory configs (errors name the field)."""
    if not 0 < config.max_depth <= 1000:
        raise ValueError(f"{owner}.max_depth must be in (0, 1000] metres, got {config.max_depth}")
    if config.depth_sampling not in DEPTH_SAMPLING:
        raise ValueError(
            f"{owner}.depth_sampling must be one of {DEPTH_SAMPLING}, got {config.depth_sampling!r}"
        )


def coverage_keys(points: Tensor, valid: Tensor, voxel: float) -> Tensor:
    """Sorted unique voxel keys (K,) of the valid points (P, 3) of one frame."""
    cells = torch.floor(points[valid] / voxel).long() + (1 << 20)  # shift to non-negative
    keys = (cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2]
    return torch.unique(keys)


@dataclass(frozen=True)
class ImageMemoryConfig:
    """Settings of :class:`ImageMemory`.

    Attributes:
        encoder: image encoder (default VGG16 ``relu3_3``, ImageNet weights).
        max_snapshots: snapshots per row, in [1, 256].
        novelty: fraction of a frame's coverage voxels that must be new for it to be stored,
            in [0, 1].
        coverage_voxel: coverage voxel edge, metres, in [0.01, 10].
        depth_sampling: ``"median"`` or ``"nearest"``.
        max_depth: depths above this are no hit, metres, in (0, 1000].
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    max_snapshots: int = 8
    novelty: float = 0.3
    coverage_voxel: float = 0.25
    depth_sampling: str = "median"
    max_depth: float = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not 1 <= self.max_snapshots <= 256:
            raise ValueError(f"{owner}.max_snapshots must be in [1, 256], got {self.max_snapshots}")
        if not 0.0 <= self.novelty <= 1.0:
            raise ValueError(f"{owner}.novelty must be in [0, 1], got {self.novelty}")
        if not 0.01 <= self.coverage_voxel <= 10.0:
            raise ValueError(
                f"{owner}.coverage_voxel must be in [0.01, 10] metres, got {self.coverage_voxel}"
            )
        check_frame_memory_fields(self, owner)


class ImageMemory(Memory):
    """Snapshot-frame memory (see the module docstring).

    Args:
        config: settings; default :class:`ImageMemoryConfig`.
        encoder: a ready encoder to use instead of building ``config.encoder``.
    """

    def __init__(
        self, config: ImageMemoryConfig | None = None, encoder: FeatureEncoder | None = None
    ) -> None:
        super().__init__()
        self.config = config or ImageMemoryConfig()
        self.encoder = encoder if encoder is not None else build_encoder(self.config.encoder)
        self.token_dim = self.encoder.out_channels + 6
        self.slots: FrameSlots | None = None
        self.steps: Tensor | None = None

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all rows (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)
        self.slots = FrameSlots(
            batch_size, self.config.max_snapshots, self.encoder.out_channels, self.device
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
        """Consider each valid frame, in time order, as a snapshot (see :meth:`Memory.update`)."""
        frames = self._check_frames(rgb, depth, intrinsics, cam_to_world, valid)
        if frames.rgb.shape[0] == 0:
            return
        lifted = lift_frames(
            frames, self.encoder, self.config.depth_sampling, self.config.max_depth
        )
        nv = frames.rgb.shape[0]
        # Frame-level decisions, in (time, row) order so each row sees its frames in time order.
        order = sorted(
            range(nv), key=lambda i: (int(frames.time_index[i]), int(frames.batch_index[i]))
        )
        for n in order:
            row = int(frames.batch_index[n])
            time = int(self.steps[row])
            self.steps[row] += 1
            points = lifted.points[n].reshape(-1, 3)
            slot = self._choose_slot(row, points, lifted.point_valid[n].reshape(-1))
            if slot is None:
                continue
            one = torch.tensor([n], device=self.device)
            piece = LiftedFrames(
                lifted.features[one],
                lifted.feature_k[one],
                lifted.points[one],
                lifted.point_valid[one],
            )
            where = torch.tensor([[row], [slot], [time]], device=self.device)
            self.slots.write(where[0], where[1], piece, frames.cam_to_world[one], where[2])

    def _choose_slot(self, row: int, points: Tensor, valid: Tensor) -> int | None:
        """Slot for a candidate frame, or None if it is not kept."""
        voxel = self.config.coverage_voxel
        candidate = coverage_keys(points, valid, voxel)
        if candidate.numel() == 0:
            return None
        filled = self.slots.filled[row].nonzero()[:, 0].tolist()
        members = [
            coverage_keys(self.slots.points[row, s], self.slots.point_valid[row, s], voxel)
            for s in filled
        ]
        covered = torch.cat(members) if members else candidate[:0]
        novelty = 1.0 - torch.isin(candidate, covered).float().mean().item()
        if novelty < self.config.novelty:
            return None
        if len(filled) < self.config.max_snapshots:
            return int((~self.slots.filled[row]).nonzero()[0, 0])
        members.append(candidate)
        unique = []
        for i, keys in enumerate(members):
            others = torch.cat([m for j, m in enumerate(members) if j != i])
            unique.append(int((~torch.isin(keys, others)).sum()))
        times = [int(self.slots.time[row, s]) for s in filled] + [int(self.steps[row])]
        drop = min(range(len(members)), key=lambda i: (unique[i], times[i]))
        return None if drop == len(filled) else filled[drop]

    def num_snapshots(self) -> Tensor:
        """(B,) stored snapshots per row."""
        self._require_reset()
        return self.slots.filled.sum(dim=1)

    def snapshot_times(self) -> tuple[Tensor, Tensor]:
        """``(time, filled)``: (B, S) frame counter of each stored snapshot and slot occupancy."""
        self._require_reset()
        return self.slots.time.clone(), self.slots.filled.clone()

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Tokens of all stored snapshots (see the module docstring)."""
        targets, _ = self._check_targets(target_cam_to_world, target_intrinsics, image_size)
        b, s = self.batch_size, self.config.max_snapshots
        if not bool(self.slots.filled.any()):
            return self.slots.tokens(
                torch.zeros(b, 0, dtype=torch.long), self.slots.filled[:, :0], targets[:, 0]
            )
        picked = torch.arange(s, device=self.device).expand(b, s)
        return self.slots.tokens(picked, self.slots.filled, targets[:, 0])

    def select(self, index: Tensor) -> ImageMemory:
        """Copies of rows ``index`` (see :meth:`Memory.select`); the encoder is shared."""
        index = self._check_select_index(index)
        out = ImageMemory(self.config, encoder=self.encoder)
        out.device, out.batch_size = self.device, index.numel()
        out.slots = self.slots.select(index)
        out.steps = self.steps[index].clone()
        return out
