"""Frame bank with view-overlap retrieval (WorldMem style).

Storage
    Every valid frame is kept with its features, pose, intrinsics, lifted feature-cell points and
    timestamp (the row's frame counter), in a ring of ``capacity`` slots per row: when full, the
    oldest frame is overwritten.

Retrieval (:meth:`FrameBank.retrieve`)
    Each target view is divided into ``overlap_grid x overlap_grid`` cells. A stored frame
    *covers* a target cell when one of its valid points projects into it (in front of the target
    camera, within ``max_depth``). Frames are picked greedily, up to ``max_retrieved``: each step
    picks the frame with the largest ``gain - time_penalty * (now - t)``, where ``gain`` is the
    fraction of all target cells (over the L targets) that it covers and no frame picked so far
    covers, ``now`` is the row's frame counter and ``t`` the frame's timestamp; frames with zero
    gain are never picked (ties: the lower slot). So the first pick is the frame that overlaps the
    targets most, discounted by age, and later picks fill in what it misses.

Tokens
    The picked frames' feature cells with Plücker rays relative to the first target camera
    (:func:`frame_tokens`): D = C + 6, N = max_retrieved * h * w (mask False on unpicked places;
    N = 0 while the bank is empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldsim.geometry import project_points
from worldsim.memory.base import DEFAULT_MAX_DEPTH, FrameSlots, LiftedFrames, Memory, lift_frames
from worldsim.memory.image_memory import check_frame_memory_fields
from worldsim.models.encoders import EncoderConfig, FeatureEncoder, build_encoder


@dataclass(frozen=True)
class FrameBankConfig:
    """Settings of :class:`FrameBank`.

    Attributes:
        encoder: image encoder (default VGG16 ``relu3_3``, ImageNet weights).
        capacity: frames stored per row (oldest overwritten), in [1, 4096].
        max_retrieved: frames retrieved per call, in [1, capacity].
        time_penalty: score penalty per frame of age, >= 0.
        overlap_grid: target-view cells per side for the overlap measure, in [1, 64].
        depth_sampling: ``"median"`` or ``"nearest"``.
        max_depth: depths above this are no hit, metres, in (0, 1000].
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    capacity: int = 64
    max_retrieved: int = 4
    time_penalty: float = 0.002
    overlap_grid: int = 8
    depth_sampling: str = "median"
    max_depth: float = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not 1 <= self.capacity <= 4096:
            raise ValueError(f"{owner}.capacity must be in [1, 4096], got {self.capacity}")
        if not 1 <= self.max_retrieved <= self.capacity:
            raise ValueError(
                f"{owner}.max_retrieved must be in [1, capacity = {self.capacity}], "
                f"got {self.max_retrieved}"
            )
        if not self.time_penalty >= 0:
            raise ValueError(f"{owner}.time_penalty must be >= 0, got {self.time_penalty}")
        if not 1 <= self.overlap_grid <= 64:
            raise ValueError(f"{owner}.overlap_grid must be in [1, 64], got {self.overlap_grid}")
        check_frame_memory_fields(self, owner)


class FrameBank(Memory):
    """Pose-indexed frame bank with greedy view-overlap retrieval (see the module docstring).

    Args:
        config: settings; default :class:`FrameBankConfig`.
        encoder: a ready encoder to use instead of building ``config.encoder``.
    """

    def __init__(
        self, config: FrameBankConfig | None = None, encoder: FeatureEncoder | None = None
    ) -> None:
        super().__init__()
        self.config = config or FrameBankConfig()
        self.encoder = encoder if encoder is not None else build_encoder(self.config.encoder)
        self.token_dim = self.encoder.out_channels + 6
        self.slots: FrameSlots | None = None
        self.steps: Tensor | None = None

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all rows (see :meth:`Memory.reset`)."""
        self._start_reset(batch_size, device)
        self.slots = FrameSlots(
            batch_size, self.config.capacity, self.encoder.out_channels, self.device
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
        """Store every valid frame (see :meth:`Memory.update`)."""
        frames = self._check_frames(rgb, depth, intrinsics, cam_to_world, valid)
        if frames.rgb.shape[0] == 0:
            return
        lifted = lift_frames(
            frames, self.encoder, self.config.depth_sampling, self.config.max_depth
        )
        rows = frames.batch_index
        counts = torch.bincount(rows, minlength=self.batch_size)
        rank = (
            torch.arange(rows.numel(), device=self.device)
            - (torch.cumsum(counts, 0) - counts)[rows]
        )
        time = self.steps[rows] + rank  # (Nv,) frames arrive row-major, in time order per row
        self.steps += counts
        # Frames beyond the capacity within one update would overwrite each other: keep the last.
        keep = rank >= counts[rows] - self.config.capacity
        slots = time % self.config.capacity
        piece = LiftedFrames(
            lifted.features[keep],
            lifted.feature_k[keep],
            lifted.points[keep],
            lifted.point_valid[keep],
        )
        self.slots.write(rows[keep], slots[keep], piece, frames.cam_to_world[keep], time[keep])

    def retrieve(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Greedy overlap retrieval (see the module docstring).

        Args:
            target_cam_to_world: (B, L, 4, 4) target poses.
            target_intrinsics: (B, L, 3, 3) target ``K``, pixels.
            image_size: ``(H, W)`` of the target images.

        Returns:
            ``(slots, picked)``: (B, max_retrieved) slot indices in pick order (-1 where nothing
            was picked) and (B, max_retrieved) bool.
        """
        targets, target_k = self._check_targets(target_cam_to_world, target_intrinsics, image_size)
        cover = self._coverage(targets, target_k, image_size)  # (B, S, L*G*G)
        b, _, cells = cover.shape
        age = (self.steps[:, None] - self.slots.time).float()  # (B, S)
        covered = torch.zeros(b, cells, dtype=torch.bool, device=self.device)
        available = self.slots.filled.clone()
        picks = torch.full((b, self.config.max_retrieved), -1, dtype=torch.long, device=self.device)
        rows = torch.arange(b, device=self.device)
        for step in range(self.config.max_retrieved):
            gain = (cover & ~covered[:, None]).sum(-1).float() / cells  # (B, S)
            score = gain - self.config.time_penalty * age
            eligible = available & (gain > 0)
            score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
            best = score.argmax(dim=1)  # (B,), first maximum = lower slot on ties
            ok = eligible[rows, best]
            picks[ok, step] = best[ok]
            covered |= cover[rows, best] & ok[:, None]
            available[rows[ok], best[ok]] = False
        return picks, picks >= 0

    def _coverage(self, targets: Tensor, target_k: Tensor, image_size: tuple[int, int]) -> Tensor:
        """(B, S, L*G*G) bool: which target-view cells each stored frame covers."""
        b, length = targets.shape[:2]
        grid = self.config.overlap_grid
        s = self.config.capacity
        if self.slots.points is None:
            return torch.zeros(b, s, length * grid * grid, dtype=torch.bool, device=self.device)
        height, width = image_size
        p = self.slots.points.shape[2]
        points = self.slots.points.reshape(b, 1, s * p, 3).expand(b, length, s * p, 3)
        uv, z = project_points(
            points.reshape(b * length, s * p, 3),
            target_k.reshape(b * length, 3, 3),
            targets.reshape(b * length, 4, 4),
        )
        uv, z = uv.reshape(b, length, s, p, 2), z.reshape(b, length, s, p)
        ok = (self.slots.point_valid & self.slots.filled[..., None])[:, None]  # (B, 1, S, P)
        ok = ok & (z > 0) & (z <= self.config.max_depth)
        ok = (
            ok
            & (uv[..., 0] >= 0)
            & (uv[..., 0] < width)
            & (uv[..., 1] >= 0)
            & (uv[..., 1] < height)
        )
        # Points are inside the image here; the clamp only absorbs float rounding at u -> W.
        col = torch.floor(uv[..., 0] * grid / width).long().clamp(0, grid - 1)
        row = torch.floor(uv[..., 1] * grid / height).long().clamp(0, grid - 1)
        view = torch.arange(length, device=self.device)[None, :, None, None]
        cell = (view * grid + row) * grid + col  # (B, L, S, P)
        cover = torch.zeros(b, s, length * grid * grid, dtype=torch.bool, device=self.device)
        bi, li, si, pi = ok.nonzero(as_tuple=True)
        cover[bi, si, cell[bi, li, si, pi]] = True
        return cover

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Tokens of the retrieved frames (see the module docstring)."""
        picks, picked = self.retrieve(target_cam_to_world, target_intrinsics, image_size)
        reference = target_cam_to_world[:, 0].to(self.device).float()
        if not bool(picked.any()):
            picks, picked = picks[:, :0], picked[:, :0]
        return self.slots.tokens(picks, picked, reference)

    def num_frames(self) -> Tensor:
        """(B,) frames stored per row."""
        self._require_reset()
        return self.slots.filled.sum(dim=1)

    def frame_times(self) -> tuple[Tensor, Tensor]:
        """``(time, filled)``: (B, S) timestamp of each slot and its occupancy."""
        self._require_reset()
        return self.slots.time.clone(), self.slots.filled.clone()

    def select(self, index: Tensor) -> FrameBank:
        """Copies of rows ``index`` (see :meth:`Memory.select`); the encoder is shared."""
        index = self._check_select_index(index)
        out = FrameBank(self.config, encoder=self.encoder)
        out.device, out.batch_size = self.device, index.numel()
        out.slots = self.slots.select(index)
        out.steps = self.steps[index].clone()
        return out
