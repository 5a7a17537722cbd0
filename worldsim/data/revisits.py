"""View overlap between frames of an episode: which earlier frames a frame revisits.

Revisits are judged from camera poses alone (:func:`frustum_overlap`): a frame *revisits* an
earlier one when enough of its view frustum (truncated to a working range) lies inside the
earlier camera's frustum. The collector's summary and the clip dataset's revisit sampling both
use :func:`revisit_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from worldsim.geometry import invert_rigid, transform_points, unproject_depth

if TYPE_CHECKING:
    pass


# ================================================================================== view overlap
@dataclass(frozen=True)
class RevisitConfig:
    """When a frame counts as revisiting an earlier one.

    Frame ``t`` revisits frame ``s`` if ``t - s >= min_gap`` and at least ``threshold`` of the
    sample points of ``t``'s view frustum (a grid of ``grid x grid`` pixel rays at
    ``depth_samples`` depths evenly spaced in ``[near, far]``) lie inside ``s``'s frustum
    truncated to the same depth range. Only poses and intrinsics are used, so walls between
    the two cameras are not taken into account; the short default range limits that error.

    Attributes:
        min_gap: frames between the two views, >= 1.
        threshold: fraction of sample points that must be shared, in (0, 1].
        near: nearest sample depth, metres, > 0.
        far: farthest sample depth, metres, > near.
        grid: pixel rays per image side, >= 1.
        depth_samples: sample depths per ray, >= 1.
    """

    min_gap: int = 30
    threshold: float = 0.5
    near: float = 0.5
    far: float = 3.0
    grid: int = 6
    depth_samples: int = 3

    def __post_init__(self) -> None:
        if self.min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 frames, got {self.min_gap}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far metres, got near={self.near}, far={self.far}")
        if self.grid < 1 or self.depth_samples < 1:
            raise ValueError(
                f"grid and depth_samples must be >= 1, got {self.grid} and {self.depth_samples}"
            )


def frustum_samples(
    cam_to_world: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """World points that sample each camera's view frustum.

    Args:
        cam_to_world: (T, 4, 4) camera poses.
        intrinsics: (T, 3, 3) ``K`` of images of ``height`` x ``width`` pixels.
        height: image rows.
        width: image columns.
        config: the grid and depth range.

    Returns:
        (T, P, 3) world points, ``P = depth_samples * grid * grid``, float64.
    """
    frames, grid = cam_to_world.shape[0], config.grid
    # Scaling K maps the pixel centres of a grid x grid image onto the grid cells' centres.
    scale = torch.tensor([grid / width, grid / height, 1.0], dtype=torch.float64)
    k_grid = scale[:, None] * intrinsics.double()  # (T, 3, 3)
    depths = torch.linspace(config.near, config.far, config.depth_samples, dtype=torch.float64)
    planes = depths[None, :, None, None].expand(frames, -1, grid, grid)  # (T, D, g, g)
    points = unproject_depth(planes, k_grid[:, None])  # (T, D, g, g, 3)
    points = rearrange(points, "t d h w c -> t (d h w) c")
    return transform_points(cam_to_world.double(), points)  # (T, P, 3)


def frustum_overlap(
    points: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    config: RevisitConfig,
) -> Tensor:
    """Fraction of each point set that lies inside a camera's truncated view frustum.

    Args:
        points: (N, P, 3) world points (e.g. rows of :func:`frustum_samples`).
        cam_to_world: (N, 4, 4) poses of the cameras to test against.
        intrinsics: (N, 3, 3) their ``K``.
        height: image rows.
        width: image columns.
        config: the depth range ``[near, far]``.

    Returns:
        (N,) fractions in [0, 1], float64.
    """
    world_to_cam = invert_rigid(cam_to_world.double())
    camera = transform_points(world_to_cam, points.double())  # (N, P, 3)
    return _inside_fraction(camera, intrinsics.double(), height, width, config)


def _inside_fraction(
    camera: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """(N,) fraction of camera points (N, P, 3) inside the truncated frustums of K (N, 3, 3)."""
    x, y, z = camera.unbind(-1)
    k = intrinsics[:, None]  # (N, 1, 3, 3)
    # u = fx x / z + cx in [0, W] without dividing: for z > 0, 0 <= fx x + cx z <= W z.
    u_z = k[..., 0, 0] * x + k[..., 0, 2] * z
    v_z = k[..., 1, 1] * y + k[..., 1, 2] * z
    inside = (
        (z >= config.near * (1 - 1e-9))  # slack: samples on the near/far planes count as inside
        & (z <= config.far * (1 + 1e-9))
        & (u_z >= 0)
        & (u_z <= width * z)
        & (v_z >= 0)
        & (v_z <= height * z)
    )
    return inside.double().mean(dim=-1)


def _frustum_radius(intrinsics: Tensor, height: int, width: int, far: float) -> Tensor:
    """(T,) distance from the camera centre to the farthest corner of its truncated frustum."""
    fx, fy = intrinsics[:, 0, 0].double(), intrinsics[:, 1, 1].double()
    cx, cy = intrinsics[:, 0, 2].double(), intrinsics[:, 1, 2].double()
    half_x = torch.maximum(cx, width - cx) / fx
    half_y = torch.maximum(cy, height - cy) / fy
    return far * torch.sqrt(1.0 + half_x**2 + half_y**2)


def revisit_sources(
    cam_to_world: np.ndarray | Tensor,
    intrinsics: np.ndarray | Tensor,
    height: int,
    width: int,
    config: RevisitConfig | None = None,
    batch_pairs: int = 2048,
) -> np.ndarray:
    """For each frame, the earliest earlier frame it revisits (see :class:`RevisitConfig`).

    Args:
        cam_to_world: (T, 4, 4) poses of one trajectory.
        intrinsics: (T, 3, 3) or (3, 3) ``K``.
        height: image rows.
        width: image columns.
        config: the revisit rule; defaults if ``None``.
        batch_pairs: frame pairs evaluated at once (memory vs. speed).

    Returns:
        (T,) int64: the smallest ``s <= t - min_gap`` whose view ``t`` overlaps by at least
        ``threshold``, or -1 where there is none.
    """
    config = config or RevisitConfig()
    poses = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float64)
    frames = poses.shape[0]
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64)
    k = k.expand(frames, 3, 3) if k.dim() == 2 else k
    sources = np.full(frames, -1, dtype=np.int64)
    if frames <= config.min_gap:
        return sources
    points = frustum_samples(poses, k, height, width, config)  # (T, P, 3)
    # Two truncated frustums can only share points if their centres are within both radii.
    radius = _frustum_radius(k, height, width, config.far)
    centres = poses[:, :3, 3]
    reach = torch.cdist(centres, centres) <= radius[:, None] + radius[None, :]
    later, earlier = torch.nonzero(reach, as_tuple=True)
    keep = later - earlier >= config.min_gap
    # Earlier frames first: once a frame has a source, later batches cannot give a smaller one.
    order = torch.argsort(earlier[keep], stable=True)
    later, earlier = later[keep][order].numpy(), earlier[keep][order].numpy()
    world_to_cam = invert_rigid(poses)
    begin = 0
    while begin < len(later):
        t, s = later[begin : begin + batch_pairs], earlier[begin : begin + batch_pairs]
        begin += batch_pairs
        open_pairs = sources[t] < 0
        t, s = t[open_pairs], s[open_pairs]
        if len(t) == 0:
            continue
        camera = transform_points(world_to_cam[s], points[t])  # (B, P, 3)
        hit = (_inside_fraction(camera, k[s], height, width, config) >= config.threshold).numpy()
        # Pairs are sorted by s, so the first hit of each t in this batch is its smallest s.
        t_hit, first = np.unique(t[hit], return_index=True)
        sources[t_hit] = s[hit][first]
    return sources


def revisit_fraction(sources: np.ndarray) -> float:
    """Fraction of frames that revisit an earlier frame, from :func:`revisit_sources`."""
    return float((np.asarray(sources) >= 0).mean()) if len(sources) else 0.0
