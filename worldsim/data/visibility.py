"""Which pixels of a target frame other RGB-D frames see, by depth consistency.

A frame *sees* a target pixel when the pixel's 3D point (target depth, unprojected through the
pixel centre) projects inside that frame, in front of it, and lands on a pixel whose measured depth
agrees with the point's depth in that frame: ``|z_proj - d| < rel_tol * d + abs_tol``. This is a
visibility test, not a frustum test: a point hidden behind something nearer in that frame (a box
in front of a wall) reads the nearer depth there and is not seen. The frame's depth is read at the
pixel the point falls in (nearest pixel, no interpolation, so depth edges are never blended into
phantom surfaces).

:func:`memory_only_coverage` is the measure the clip sampler and the evaluation use to say how
much of a future frame only the memory can explain: the share of the target's pixels that some
*memory* frame sees and no *context* frame sees.

Pixels whose own depth is invalid (0, NaN, infinite, negative, beyond ``max_depth``) have no 3D
point: they are never seen and the fractions leave them out of the denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from worldsim.geometry import (
    DEFAULT_MAX_DEPTH_M,
    check_rigid,
    depth_to_world_points,
    project_points,
)
from worldsim.memory.base import check_intrinsics, check_principal_point, valid_depth_mask


@dataclass(frozen=True)
class DepthConsistency:
    """When a frame's depth agrees with a projected point (see the module docstring).

    Attributes:
        rel_tol: tolerance relative to the frame's depth, in [0, 1].
        abs_tol: absolute tolerance, metres, in [0, 10].
        max_depth: depths above this are no measurement, metres, in (0, 1000].
    """

    rel_tol: float = 0.05
    abs_tol: float = 0.02
    max_depth: float = DEFAULT_MAX_DEPTH_M

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not 0 <= self.rel_tol <= 1:
            raise ValueError(f"{owner}.rel_tol must be in [0, 1], got {self.rel_tol}")
        if not 0 <= self.abs_tol <= 10:
            raise ValueError(f"{owner}.abs_tol must be in [0, 10] metres, got {self.abs_tol}")
        if not 0 < self.max_depth <= 1000:
            raise ValueError(f"{owner}.max_depth must be in (0, 1000] metres, got {self.max_depth}")


def _check_set(
    name: str, depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor, batch: int | None
) -> None:
    if depth.dim() != 5 or depth.shape[2] != 1:
        raise ValueError(f"{name}_depth must have shape (B, T, 1, H, W), got {tuple(depth.shape)}")
    b, t, _, height, width = depth.shape
    if batch is not None and b != batch:
        raise ValueError(f"{name}_depth has batch size {b}, but the targets have {batch}")
    for what, value, shape in (
        ("intrinsics", intrinsics, (b, t, 3, 3)),
        ("cam_to_world", cam_to_world, (b, t, 4, 4)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name}_{what} must have shape {shape} to match {name}_depth "
                f"{tuple(depth.shape)}, got {tuple(value.shape)}"
            )
    check_rigid(cam_to_world, f"{name}_cam_to_world")
    check_intrinsics(intrinsics, f"{name}_intrinsics")
    check_principal_point(intrinsics, (height, width), f"{name}_intrinsics")


def seen_by(
    target_depth: Tensor,
    target_intrinsics: Tensor,
    target_cam_to_world: Tensor,
    frame_depth: Tensor,
    frame_intrinsics: Tensor,
    frame_cam_to_world: Tensor,
    frame_valid: Tensor | None = None,
    consistency: DepthConsistency | None = None,
) -> Tensor:
    """Target pixels that at least one of the frames sees (rule in the module docstring).

    Args:
        target_depth: (B, L, 1, H, W) metric z-depth of the target frames, metres.
        target_intrinsics: (B, L, 3, 3) their ``K``, pixels.
        target_cam_to_world: (B, L, 4, 4) their rigid poses.
        frame_depth: (B, S, 1, H', W') depth of the frames that may see them (S may be 0).
        frame_intrinsics: (B, S, 3, 3) their ``K``.
        frame_cam_to_world: (B, S, 4, 4) their poses.
        frame_valid: (B, S) bool, False for padding frames (never see anything); None = all.
        consistency: the depth tolerances; default :class:`DepthConsistency`.

    Returns:
        (B, L, 1, H, W) bool, True where some valid frame of the same row sees the pixel.
    """
    consistency = consistency or DepthConsistency()
    _check_set("target", target_depth, target_intrinsics, target_cam_to_world, None)
    batch, length, _, height, width = target_depth.shape
    _check_set("frame", frame_depth, frame_intrinsics, frame_cam_to_world, batch)
    count, frame_h, frame_w = frame_depth.shape[1], frame_depth.shape[3], frame_depth.shape[4]
    if frame_valid is None:
        frame_valid = torch.ones(batch, count, dtype=torch.bool, device=frame_depth.device)
    elif frame_valid.dtype != torch.bool or tuple(frame_valid.shape) != (batch, count):
        raise ValueError(
            f"frame_valid must be a bool tensor of shape {(batch, count)}, "
            f"got {frame_valid.dtype} {tuple(frame_valid.shape)}"
        )

    depth = target_depth.float().reshape(batch * length, height, width)
    points = depth_to_world_points(
        depth,
        target_intrinsics.float().reshape(batch * length, 3, 3),
        target_cam_to_world.float().reshape(batch * length, 4, 4),
    ).reshape(batch, length * height * width, 3)  # (B, L*H*W, 3)
    has_point = valid_depth_mask(depth, consistency.max_depth).reshape(batch, -1)  # (B, L*H*W)
    frame_ok = valid_depth_mask(frame_depth.float()[:, :, 0], consistency.max_depth)
    frame_d = torch.where(frame_ok, frame_depth.float()[:, :, 0], 0.0)  # (B, S, H', W')

    seen = torch.zeros_like(has_point)
    rows = torch.arange(batch, device=depth.device)[:, None]
    for s in range(count):  # one frame at a time keeps memory at O(B L H W)
        uv, z = project_points(
            points, frame_intrinsics[:, s].float(), frame_cam_to_world[:, s].float()
        )  # (B, L*H*W, 2), (B, L*H*W)
        u, v = uv.unbind(-1)
        inside = (z > 0) & (u >= 0) & (u < frame_w) & (v >= 0) & (v < frame_h)
        col = torch.where(inside, u, 0.0).floor().long()
        row = torch.where(inside, v, 0.0).floor().long()
        measured = frame_d[:, s][rows, row, col]  # (B, L*H*W)
        agree = (z - measured).abs() < consistency.rel_tol * measured + consistency.abs_tol
        seen |= inside & (measured > 0) & agree & frame_valid[:, s, None]
    return (seen & has_point).reshape(batch, length, 1, height, width)


def memory_only_coverage(
    target_depth: Tensor,
    target_intrinsics: Tensor,
    target_cam_to_world: Tensor,
    memory_depth: Tensor,
    memory_intrinsics: Tensor,
    memory_cam_to_world: Tensor,
    context_depth: Tensor,
    context_intrinsics: Tensor,
    context_cam_to_world: Tensor,
    memory_valid: Tensor | None = None,
    context_valid: Tensor | None = None,
    consistency: DepthConsistency | None = None,
    return_masks: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Share of each target frame's pixels that the memory frames see and the context does not.

    Args:
        target_depth: (B, L, 1, H, W) metric z-depth of the target frames, metres.
        target_intrinsics: (B, L, 3, 3) ``K``, pixels.
        target_cam_to_world: (B, L, 4, 4) rigid poses.
        memory_depth: (B, S, 1, H', W') depth of the memory frames.
        memory_intrinsics: (B, S, 3, 3).
        memory_cam_to_world: (B, S, 4, 4).
        context_depth: (B, C, 1, H'', W'') depth of the context frames (C may be 0).
        context_intrinsics: (B, C, 3, 3).
        context_cam_to_world: (B, C, 4, 4).
        memory_valid: (B, S) bool, False for padding; None = all valid.
        context_valid: (B, C) bool, False for padding; None = all valid.
        consistency: the depth tolerances; default :class:`DepthConsistency`.
        return_masks: also return the per-pixel masks.

    Returns:
        ``(fraction, mask)``: (B, L) float in [0, 1], memory-only pixels over the target's
        valid-depth pixels (0 for a frame without any), and (B, L, 1, H, W) bool memory-only
        pixels if ``return_masks`` (else None).
    """
    by_memory = seen_by(
        target_depth,
        target_intrinsics,
        target_cam_to_world,
        memory_depth,
        memory_intrinsics,
        memory_cam_to_world,
        memory_valid,
        consistency,
    )
    by_context = seen_by(
        target_depth,
        target_intrinsics,
        target_cam_to_world,
        context_depth,
        context_intrinsics,
        context_cam_to_world,
        context_valid,
        consistency,
    )
    max_depth = (consistency or DepthConsistency()).max_depth
    valid = valid_depth_mask(target_depth.float(), max_depth).flatten(2).sum(-1)  # (B, L)
    only = by_memory & ~by_context  # (B, L, 1, H, W)
    fraction = only.flatten(2).sum(-1) / valid.clamp(min=1)
    return fraction, (only if return_masks else None)
