"""Frames, units and actions of the whole project, written down once.

World frame
    Right-handed, **y up**, metres, floor at ``y = 0`` (as Habitat). An agent stands at a floor
    position ``(x, 0, z)`` with a heading ``yaw`` in radians about +y. ``yaw = 0`` looks along
    world -z; a positive yaw turns the agent to its left (counter-clockwise seen from above).

Camera frame
    OpenCV: x right, y down, z forward. A frame's pose is its 4x4 ``cam_to_world`` matrix, which
    maps camera coordinates to world coordinates. The camera sits ``sensor_height`` metres above
    the agent's floor position and looks horizontally.

Pixels and intrinsics
    Pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)`` in image coordinates, so its
    centre is at ``u = j + 0.5, v = i + 0.5``. ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in
    pixels; a pinhole camera of horizontal field of view ``hfov`` over ``W`` columns has
    ``fx = (W / 2) / tan(hfov / 2)``, square pixels (``fy = fx``) and ``cx, cy = W / 2, H / 2``.

Depth
    Metric z-depth (distance along the optical axis, not along the ray), float32, in metres;
    ``0`` where nothing was hit or beyond the sensor's range.

Actions (as Habitat)
    ``0 = stop``, ``1 = move_forward``, ``2 = turn_left``, ``3 = turn_right``; step sizes in
    :class:`ActionSpec`. Continuous actions are local waypoints ``(dx, dz, dyaw)``: metres to the
    right and forward in the agent's current frame, and a heading change in radians (left
    positive). Every action becomes a *relative camera pose* through :func:`action_to_relative_pose`
    or :func:`waypoint_to_relative_pose`; the world model only ever sees relative poses.

All functions here take and return torch tensors with arbitrary leading batch dimensions
(written ``...``) and work on any device and floating dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

DEFAULT_HFOV_DEG = 90.0
"""Horizontal field of view of the default sensor, degrees (Habitat's navigation tasks)."""
DEFAULT_SENSOR_HEIGHT_M = 1.25
"""Height of the default camera above the floor, metres."""
DEFAULT_MAX_DEPTH_M = 10.0
"""Range of the default depth sensor, metres; farther surfaces read 0."""


class Action(IntEnum):
    """Discrete navigation actions, numbered as in Habitat."""

    STOP = 0
    MOVE_FORWARD = 1
    TURN_LEFT = 2
    TURN_RIGHT = 3


NUM_ACTIONS = len(Action)


@dataclass(frozen=True)
class ActionSpec:
    """Step sizes of the discrete actions.

    Attributes:
        forward_step_m: distance of ``move_forward``, metres, in (0, 5].
        turn_step_deg: angle of ``turn_left`` / ``turn_right``, degrees, in (0, 180].
    """

    forward_step_m: float = 0.25
    turn_step_deg: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.forward_step_m <= 5.0:
            raise ValueError(f"forward_step_m must be in (0, 5] metres, got {self.forward_step_m}")
        if not 0.0 < self.turn_step_deg <= 180.0:
            raise ValueError(f"turn_step_deg must be in (0, 180] degrees, got {self.turn_step_deg}")

    @property
    def turn_step_rad(self) -> float:
        """Turn angle in radians."""
        return math.radians(self.turn_step_deg)


# Rotation taking camera axes (x right, y down, z forward) to world axes for an agent with yaw 0
# (looking along world -z): x -> +x, y -> -y, z -> -z.
_CAM_TO_AGENT = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))


def yaw_rotation(yaw: Tensor) -> Tensor:
    """Rotation matrices about world +y.

    Args:
        yaw: (...) angles in radians; positive turns counter-clockwise seen from above.

    Returns:
        (..., 3, 3) rotation matrices.
    """
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    rows = [
        torch.stack([c, zero, s], dim=-1),
        torch.stack([zero, one, zero], dim=-1),
        torch.stack([-s, zero, c], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def pose_from_position_yaw(
    position: Tensor, yaw: Tensor, sensor_height: float = DEFAULT_SENSOR_HEIGHT_M
) -> Tensor:
    """Camera poses of agents standing at ``position`` with heading ``yaw``.

    Args:
        position: (..., 3) agent floor positions in world metres (y is the floor height).
        yaw: (...) headings in radians (0 looks along world -z, positive turns left).
        sensor_height: camera height above ``position``, metres.

    Returns:
        (..., 4, 4) ``cam_to_world`` matrices, dtype of ``position``.
    """
    yaw = yaw.to(position.dtype)
    cam_to_agent = torch.tensor(_CAM_TO_AGENT, dtype=position.dtype, device=position.device)
    pose = torch.zeros(*position.shape[:-1], 4, 4, dtype=position.dtype, device=position.device)
    pose[..., :3, :3] = yaw_rotation(yaw) @ cam_to_agent
    pose[..., :3, 3] = position
    pose[..., 1, 3] += sensor_height
    pose[..., 3, 3] = 1.0
    return pose


def position_yaw_from_pose(
    cam_to_world: Tensor, sensor_height: float = DEFAULT_SENSOR_HEIGHT_M
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pose_from_position_yaw` for level cameras.

    Args:
        cam_to_world: (..., 4, 4) camera poses.
        sensor_height: camera height above the agent's floor position, metres.

    Returns:
        ``(position, yaw)``: (..., 3) floor positions and (...) headings in (-pi, pi].
    """
    position = cam_to_world[..., :3, 3].clone()
    position[..., 1] -= sensor_height
    forward = cam_to_world[..., :3, 2]  # camera +z in world coordinates
    yaw = torch.atan2(-forward[..., 0], -forward[..., 2])
    return position, yaw


def invert_rigid(transform: Tensor) -> Tensor:
    """Inverse of rigid transforms, using ``R^T`` rather than a general matrix inverse.

    Args:
        transform: (..., 4, 4) rigid transforms.

    Returns:
        (..., 4, 4) inverses.
    """
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:4])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def relative_pose(pose_from: Tensor, pose_to: Tensor) -> Tensor:
    """Pose of ``pose_to`` expressed in the camera frame of ``pose_from``.

    Args:
        pose_from: (..., 4, 4) ``cam_to_world`` of the reference camera.
        pose_to: (..., 4, 4) ``cam_to_world`` of the other camera.

    Returns:
        (..., 4, 4) ``inv(pose_from) @ pose_to``, so ``pose_from @ result == pose_to``.
    """
    return invert_rigid(pose_from) @ pose_to


def check_rigid(transform: Tensor, name: str = "pose", atol: float = 1e-3) -> None:
    """Raise if any matrix is not a rigid transform (rotation + translation, last row 0 0 0 1).

    Args:
        transform: (..., 4, 4) matrices.
        name: what the matrices are, for the error message.
        atol: tolerance on ``R^T R = I``, ``det R = 1`` and the last row; the default admits
            float16 storage of poses (about 1e-3 relative precision).

    Raises:
        ValueError: naming the first offending matrix and what is wrong with it.
    """
    if transform.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {tuple(transform.shape)}")
    flat = transform.reshape(-1, 4, 4).double()
    if not torch.isfinite(flat).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    rotation = flat[:, :3, :3]
    identity = torch.eye(3, dtype=flat.dtype, device=flat.device)
    orthogonality = (rotation.transpose(-1, -2) @ rotation - identity).abs().amax(dim=(-1, -2))
    determinant = torch.linalg.det(rotation)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=flat.dtype, device=flat.device)
    last_row = (flat[:, 3] - bottom).abs().amax(dim=-1)
    bad = (orthogonality > atol) | ((determinant - 1).abs() > atol) | (last_row > atol)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"{name}[{index}] is not a rigid transform: |R^T R - I| = "
            f"{float(orthogonality[index]):.2e}, det R = {float(determinant[index]):.4f}, "
            f"last row = {flat[index, 3].tolist()} (expected [0, 0, 0, 1]; tolerance {atol})"
        )


def _translation_rotation(translation: Tensor, rotation: Tensor) -> Tensor:
    """Assemble (..., 4, 4) transforms from (..., 3) translations and (..., 3, 3) rotations."""
    transform = torch.zeros(
        *translation.shape[:-1], 4, 4, dtype=translation.dtype, device=translation.device
    )
    transform[..., :3, :3] = rotation
    transform[..., :3, 3] = translation
    transform[..., 3, 3] = 1.0
    return transform


def _camera_yaw_rotation(dyaw: Tensor) -> Tensor:
    """Rotation in the camera frame of an agent turning left by ``dyaw`` about world up (-y)."""
    # Turning left is a rotation about world +y, which is camera -y: R_cam = C^T R_y(dyaw) C with
    # C = diag(1, -1, -1), i.e. R_y(-dyaw) in camera coordinates.
    return yaw_rotation(-dyaw)


def waypoint_to_relative_pose(waypoint: Tensor) -> Tensor:
    """Relative camera pose of a local-frame waypoint.

    The agent first moves to the waypoint's position, then turns by its heading change.

    Args:
        waypoint: (..., 3) ``(dx, dz, dyaw)``: metres right, metres forward, radians left.

    Returns:
        (..., 4, 4) pose of the new camera in the frame of the old one.
    """
    dx, dz, dyaw = waypoint.unbind(-1)
    translation = torch.stack([dx, torch.zeros_like(dx), dz], dim=-1)  # camera x right, z forward
    return _translation_rotation(translation, _camera_yaw_rotation(dyaw))


def action_to_waypoint(actions: Tensor, spec: ActionSpec | None = None) -> Tensor:
    """Local waypoints ``(dx, dz, dyaw)`` of discrete actions (free space, no collisions).

    Args:
        actions: (...) integer action ids in ``[0, NUM_ACTIONS)``.
        spec: step sizes; the default :class:`ActionSpec` if ``None``.

    Returns:
        (..., 3) float32 waypoints.

    Raises:
        ValueError: if an action id is outside ``[0, NUM_ACTIONS)``.
    """
    spec = spec or ActionSpec()
    actions = torch.as_tensor(actions)
    if actions.is_floating_point() or actions.is_complex():
        raise ValueError(f"actions must be integer ids, got dtype {actions.dtype}")
    if actions.numel() and (actions.min() < 0 or actions.max() >= NUM_ACTIONS):
        bad = actions[(actions < 0) | (actions >= NUM_ACTIONS)][0]
        raise ValueError(
            f"unknown action {int(bad)}: allowed are "
            + ", ".join(f"{a.value} = {a.name.lower()}" for a in Action)
        )
    table = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.0, spec.forward_step_m, 0.0],
            [0.0, 0.0, spec.turn_step_rad],
            [0.0, 0.0, -spec.turn_step_rad],
        ],
        device=actions.device,
    )
    return table[actions.long()]


def action_to_relative_pose(actions: Tensor, spec: ActionSpec | None = None) -> Tensor:
    """Relative camera poses of discrete actions, as if nothing were in the way.

    Args:
        actions: (...) integer action ids (see :class:`Action`).
        spec: step sizes; the default :class:`ActionSpec` if ``None``.

    Returns:
        (..., 4, 4) float32 poses of the next camera in the frame of the current one.
    """
    return waypoint_to_relative_pose(action_to_waypoint(actions, spec))


def intrinsics_from_hfov(hfov_deg: float, width: int, height: int) -> Tensor:
    """Pinhole intrinsics with square pixels and the principal point at the image centre.

    Args:
        hfov_deg: horizontal field of view in degrees, in (0, 180).
        width: image width in pixels, >= 1.
        height: image height in pixels, >= 1.

    Returns:
        (3, 3) float32 ``K``.

    Raises:
        ValueError: for a field of view or a size out of range.
    """
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {hfov_deg}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1 pixels, got {width}x{height}")
    focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return torch.tensor(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
    )


def pixel_centers(
    height: int, width: int, device: torch.device | str | None = None, dtype=torch.float32
) -> Tensor:
    """Image coordinates of pixel centres.

    Returns:
        (H, W, 2) ``(u, v)`` with ``u = column + 0.5`` and ``v = row + 0.5``.
    """
    v = torch.arange(height, device=device, dtype=dtype) + 0.5
    u = torch.arange(width, device=device, dtype=dtype) + 0.5
    grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([grid_u, grid_v], dim=-1)


def unproject_depth(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-frame 3D points of every pixel centre.

    Args:
        depth: (..., H, W) metric z-depth in metres (0 marks no hit; those points have z = 0).
        intrinsics: (..., 3, 3) ``K``, broadcastable against ``depth``'s leading dimensions.

    Returns:
        (..., H, W, 3) points ``(x, y, z)`` in the OpenCV camera frame, ``z == depth``.
    """
    height, width = depth.shape[-2:]
    uv = pixel_centers(height, width, device=depth.device, dtype=depth.dtype)  # (H, W, 2)
    k = intrinsics.to(depth.dtype)[..., None, None, :, :]  # (..., 1, 1, 3, 3)
    fx, fy = k[..., 0, 0], k[..., 1, 1]
    cx, cy = k[..., 0, 2], k[..., 1, 2]
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply rigid transforms to points.

    Args:
        transform: (..., 4, 4), broadcastable against the points' leading dimensions once the
            points' own middle dimensions are flattened; pass (B, 4, 4) with (B, N, 3) points.
        points: (..., N, 3).

    Returns:
        (..., N, 3) transformed points.
    """
    rotation = transform[..., :3, :3]
    translation = transform[..., None, :3, 3]
    return points @ rotation.transpose(-1, -2) + translation


def depth_to_world_points(depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> Tensor:
    """World-frame 3D points of every pixel.

    Args:
        depth: (B, H, W) metric z-depth in metres.
        intrinsics: (B, 3, 3) or (3, 3) ``K``.
        cam_to_world: (B, 4, 4) camera poses.

    Returns:
        (B, H, W, 3) world points (pixels with depth 0 land on the camera centre).
    """
    batch, height, width = depth.shape
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.expand(batch, 3, 3)
    camera_points = unproject_depth(depth, intrinsics).reshape(batch, height * width, 3)
    world = transform_points(cam_to_world.to(depth.dtype), camera_points)  # (B, H*W, 3)
    return world.reshape(batch, height, width, 3)


def project_points(
    points_world: Tensor, intrinsics: Tensor, cam_to_world: Tensor
) -> tuple[Tensor, Tensor]:
    """Project world points into cameras.

    Args:
        points_world: (B, N, 3) world points.
        intrinsics: (B, 3, 3) or (3, 3) ``K``.
        cam_to_world: (B, 4, 4) camera poses.

    Returns:
        ``(uv, z)``: (B, N, 2) image coordinates in pixels (pixel centres at +0.5) and (B, N)
        camera z-depth; points with ``z <= 0`` are behind the camera and their ``uv`` is
        meaningless.
    """
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.expand(points_world.shape[0], 3, 3)
    camera = transform_points(invert_rigid(cam_to_world.to(points_world.dtype)), points_world)
    z = camera[..., 2]
    safe_z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    k = intrinsics.to(points_world.dtype)
    u = k[:, None, 0, 0] * camera[..., 0] / safe_z + k[:, None, 0, 2]
    v = k[:, None, 1, 1] * camera[..., 1] / safe_z + k[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z


def plucker_rays(intrinsics: Tensor, cam_to_ref: Tensor, height: int, width: int) -> Tensor:
    """Plücker ray images of cameras, the world model's encoding of relative poses (paper eq. 1).

    Each pixel's ray through its centre is ``(o x d, d)`` with ``o`` the camera centre and ``d``
    the unit ray direction, both expressed in the reference frame of ``cam_to_ref``.

    Args:
        intrinsics: (B, 3, 3) or (3, 3) ``K`` for images of ``height`` x ``width`` pixels.
        cam_to_ref: (B, 4, 4) camera poses relative to the reference camera.
        height: image rows.
        width: image columns.

    Returns:
        (B, 6, H, W) channels ``(moment_xyz, direction_xyz)``.
    """
    batch = cam_to_ref.shape[0]
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.expand(batch, 3, 3)
    ones = torch.ones(batch, height, width, dtype=cam_to_ref.dtype, device=cam_to_ref.device)
    directions_cam = unproject_depth(ones, intrinsics).reshape(batch, height * width, 3)
    directions = directions_cam @ cam_to_ref[:, :3, :3].transpose(-1, -2)  # (B, HW, 3)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = cam_to_ref[:, None, :3, 3].expand_as(directions)
    moments = torch.cross(origins, directions, dim=-1)
    rays = torch.cat([moments, directions], dim=-1)  # (B, HW, 6)
    return rays.transpose(1, 2).reshape(batch, 6, height, width)
