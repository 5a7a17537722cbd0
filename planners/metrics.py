"""Trajectory metrics: ATE, RPE (as the ``evo`` package), an NWM-compatible mode, SIM, success, SPL.

Trajectories are camera poses, (T, 4, 4) ``cam_to_world`` matrices in the world frame of
:mod:`worldsim.geometry` (y up, metres); :func:`poses_from_positions_yaws` builds them from agent
floor positions and headings. Torch tensors and numpy arrays are both accepted; everything is
computed in float64 on the CPU and returned as Python floats / numpy arrays.

Definitions (``P_i`` estimated pose, ``Q_i`` reference pose, ``angle(R)`` the rotation angle of
``R`` in radians, i.e. the norm of its axis-angle vector):

* **ATE** (absolute trajectory error, evo's APE): ``E_i = Q_i^-1 P_i``; translation error
  ``|t(E_i)| = |p_i - q_i|`` in metres, rotation error ``angle(E_i)`` in radians, after an optional
  alignment of the estimate to the reference: ``"none"``, ``"origin"`` (first poses coincide),
  ``"se3"`` (Umeyama rotation + translation) or ``"sim3"`` (Umeyama with scale).
* **RPE** (relative pose error, evo's RPE): for index pairs ``(i, j = i + delta)``,
  ``E_ij = (Q_i^-1 Q_j)^-1 (P_i^-1 P_j)``; translation ``|t(E_ij)|`` in metres, rotation
  ``angle(E_ij)`` in radians. Pairs are consecutive (``0-d, d-2d, ...``) as evo's default, or all
  pairs ``(i, i + d)`` with ``all_pairs=True``.
* **NWM mode** (as Navigation World Models' planning evaluation): floor-plane positions only (world
  x and z, no rotations), divided by the waypoint spacing, no alignment; ATE = RMSE of position
  errors, RPE = RMSE of consecutive displacement errors.
* **SIM** (final-pose similarity, 0-100, 100 = identical)::

      SIM = 100 * exp(-d / sigma_p) * exp(-|dpsi| / sigma_psi)

  with ``d`` the floor-plane (x-z) distance between the final positions in metres, ``dpsi`` the
  heading difference wrapped to (-pi, pi] in radians, ``sigma_p = 1 m`` and ``sigma_psi = 1 rad``
  by default (:class:`SimConfig`). A 0.2 m error alone gives 81.9; a 10-degree error alone 84.0.
* **Success**: final floor-plane distance to the goal <= 0.2 m (by default).
* **SPL** (Anderson et al. 2018): ``mean_i S_i * l_i / max(p_i, l_i)`` with ``S_i`` success,
  ``l_i`` the shortest-path length from start to goal and ``p_i`` the length of the path taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from worldsim.geometry import (
    DEFAULT_SENSOR_HEIGHT_M,
    ActionSpec,
    check_rigid,
    invert_rigid,
    pose_from_position_yaw,
    position_yaw_from_pose,
)
from worldsim.metrics.task import SUCCESS_RADIUS_M
from worldsim.metrics.task import spl as spl  # re-exported: the planners' metrics in one place
from worldsim.metrics.task import success as success

Alignment = Literal["none", "origin", "se3", "sim3"]
ALIGNMENTS = ("none", "origin", "se3", "sim3")
"""Alignment modes of :func:`absolute_trajectory_error` and :func:`relative_pose_error`."""
DEFAULT_SUCCESS_RADIUS_M = SUCCESS_RADIUS_M
"""Success radius around the goal, metres (:data:`worldsim.metrics.task.SUCCESS_RADIUS_M`)."""
DEFAULT_WAYPOINT_SPACING_M = ActionSpec().forward_step_m
"""Waypoint spacing of the NWM-compatible mode: one forward step, metres."""

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True)
class SimConfig:
    """Length scales of the SIM score.

    Attributes:
        position_scale_m: ``sigma_p``, metres, in (0, 100]; SIM falls by ``1/e`` per
            ``sigma_p`` of final position error.
        heading_scale_rad: ``sigma_psi``, radians, in (0, 2 pi]; SIM falls by ``1/e`` per
            ``sigma_psi`` of final heading error.
    """

    position_scale_m: float = 1.0
    heading_scale_rad: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.position_scale_m <= 100.0:
            raise ValueError(
                f"position_scale_m must be in (0, 100] metres, got {self.position_scale_m}"
            )
        if not 0.0 < self.heading_scale_rad <= 2.0 * math.pi:
            raise ValueError(
                f"heading_scale_rad must be in (0, 2 pi] radians, got {self.heading_scale_rad}"
            )


@dataclass(frozen=True)
class ErrorStats:
    """Summary statistics of per-pose (or per-pair) errors, as evo reports them.

    Attributes:
        rmse: root mean square error.
        mean: mean error.
        median: median error.
        std: population standard deviation.
        min: smallest error.
        max: largest error.
        errors: (N,) float64 per-pose or per-pair errors.
        unit: unit of all the values (``"m"``, ``"rad"`` or ``"waypoints"``).
    """

    rmse: float
    mean: float
    median: float
    std: float
    min: float
    max: float
    errors: np.ndarray
    unit: str

    @classmethod
    def from_errors(cls, errors: np.ndarray, unit: str) -> ErrorStats:
        """Statistics of a non-empty (N,) error vector."""
        errors = np.asarray(errors, dtype=np.float64)
        return cls(
            rmse=float(np.sqrt(np.mean(errors**2))),
            mean=float(np.mean(errors)),
            median=float(np.median(errors)),
            std=float(np.std(errors)),
            min=float(np.min(errors)),
            max=float(np.max(errors)),
            errors=errors,
            unit=unit,
        )

    def as_dict(self) -> dict[str, float]:
        """The statistics without the per-pose errors."""
        return {k: getattr(self, k) for k in ("rmse", "mean", "median", "std", "min", "max")}


@dataclass(frozen=True)
class PoseErrors:
    """Translation and rotation errors of one trajectory against a reference.

    Attributes:
        translation: translation errors, metres.
        rotation: rotation errors, radians.
        alignment: the alignment applied before comparing (see :data:`ALIGNMENTS`).
        scale: scale of the Sim(3) alignment (1.0 for the others).
    """

    translation: ErrorStats
    rotation: ErrorStats
    alignment: str
    scale: float = 1.0

    def summary(self, prefix: str) -> dict[str, float]:
        """Flat ``{f"{prefix}_trans_rmse_m": ..., f"{prefix}_rot_rmse_rad": ...}`` for tables."""
        return {
            f"{prefix}_trans_rmse_m": self.translation.rmse,
            f"{prefix}_trans_mean_m": self.translation.mean,
            f"{prefix}_rot_rmse_rad": self.rotation.rmse,
            f"{prefix}_rot_mean_rad": self.rotation.mean,
        }


@dataclass(frozen=True)
class NWMErrors:
    """Trajectory errors in the NWM-compatible mode (floor plane, waypoint units, no alignment).

    Attributes:
        ate: RMSE of position errors, in waypoint spacings.
        rpe_translation: RMSE of consecutive displacement errors, in waypoint spacings.
        waypoint_spacing_m: the spacing used, metres.
    """

    ate: float
    rpe_translation: float
    waypoint_spacing_m: float


def as_poses(poses: ArrayLike, name: str = "poses") -> Tensor:
    """Validate a trajectory of camera poses and return it as a float64 CPU tensor.

    Args:
        poses: (T, 4, 4) ``cam_to_world`` matrices, torch or numpy, T >= 1.
        name: what they are, for error messages.

    Returns:
        (T, 4, 4) float64 tensor on the CPU.

    Raises:
        ValueError: for a wrong shape, an empty trajectory, NaN, or a non-rigid matrix.
    """
    poses = torch.as_tensor(np.asarray(poses) if not isinstance(poses, Tensor) else poses)
    if poses.dim() != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(
            f"{name} must be a (T, 4, 4) array of cam_to_world poses, got {tuple(poses.shape)}; "
            "build poses from (T, 3) positions and (T,) yaws with poses_from_positions_yaws"
        )
    if poses.shape[0] == 0:
        raise ValueError(f"{name} is empty: a trajectory needs at least one pose")
    poses = poses.detach().to("cpu", torch.float64)
    check_rigid(poses, name)
    return poses


def poses_from_positions_yaws(
    positions: ArrayLike, yaws: ArrayLike, sensor_height: float = DEFAULT_SENSOR_HEIGHT_M
) -> Tensor:
    """Camera poses of agents at floor positions with headings (see :mod:`worldsim.geometry`).

    Args:
        positions: (T, 3) floor positions in world metres.
        yaws: (T,) headings in radians (0 looks along world -z, positive turns left).
        sensor_height: camera height above the floor position, metres.

    Returns:
        (T, 4, 4) float64 ``cam_to_world`` poses.

    Raises:
        ValueError: for mismatched lengths, wrong shapes or NaN.
    """
    positions = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    yaws = torch.as_tensor(np.asarray(yaws), dtype=torch.float64)
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (T, 3), got {tuple(positions.shape)}")
    if yaws.shape != positions.shape[:1]:
        raise ValueError(
            f"yaws must have shape ({positions.shape[0]},) to match the positions, "
            f"got {tuple(yaws.shape)}"
        )
    if not (torch.isfinite(positions).all() and torch.isfinite(yaws).all()):
        raise ValueError("positions and yaws must be finite (no NaN or infinity)")
    return pose_from_position_yaw(positions, yaws, sensor_height)


def _check_pair(estimate: ArrayLike, reference: ArrayLike) -> tuple[Tensor, Tensor]:
    estimate, reference = as_poses(estimate, "estimate"), as_poses(reference, "reference")
    if estimate.shape[0] != reference.shape[0]:
        raise ValueError(
            f"estimate has {estimate.shape[0]} poses and reference {reference.shape[0]}: "
            "trajectories must be associated pose by pose (same length) before comparing"
        )
    return estimate, reference


def rotation_angle(rotation: Tensor) -> Tensor:
    """Rotation angles of rotation matrices, radians in [0, pi].

    Uses ``atan2(|vee(R - R^T)| / 2, (trace R - 1) / 2)``, accurate near 0 and near pi alike.

    Args:
        rotation: (..., 3, 3) rotation matrices.

    Returns:
        (...) angles in radians.
    """
    skew = rotation - rotation.transpose(-1, -2)
    vee = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1)  # 2 sin(a) n
    cosine = (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    return torch.atan2(vee.norm(dim=-1) / 2.0, cosine)


def umeyama_alignment(
    source: ArrayLike, target: ArrayLike, with_scale: bool = False
) -> tuple[Tensor, Tensor, float]:
    """Least-squares similarity transform taking ``source`` points onto ``target`` (Umeyama 1991).

    Minimises ``sum_i |target_i - (s R source_i + t)|^2`` over rotations ``R``, translations
    ``t`` and (with ``with_scale``) scales ``s``.

    Args:
        source: (N, 3) points.
        target: (N, 3) points, corresponding one to one.
        with_scale: also estimate the scale (Sim(3)); otherwise ``s = 1`` (SE(3)).

    Returns:
        ``(R, t, s)``: (3, 3) float64 rotation, (3,) float64 translation and the scale.

    Raises:
        ValueError: for mismatched shapes, or degenerate point sets (all on one line), whose
            alignment is not unique.
    """
    x = torch.as_tensor(np.asarray(source), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(target), dtype=torch.float64)
    if x.shape != y.shape or x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(
            f"source and target must both be (N, 3), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    variance_x = xc.square().sum() / x.shape[0]
    covariance = yc.T @ xc / x.shape[0]  # (3, 3), Umeyama eq. 38
    u, d, vh = torch.linalg.svd(covariance)
    if int((d > torch.finfo(d.dtype).eps).sum()) < 2:
        raise ValueError(
            "the trajectory's positions are degenerate (all on one line or one point), so an "
            "se3/sim3 alignment is not unique; use align='origin' or align='none'"
        )
    s = torch.ones(3, dtype=torch.float64)
    if torch.linalg.det(u) * torch.linalg.det(vh) < 0:
        s[2] = -1.0  # keep a proper rotation (eq. 43)
    rotation = u @ torch.diag(s) @ vh  # eq. 40
    scale = float((d * s).sum() / variance_x) if with_scale else 1.0  # eq. 42
    translation = mean_y - scale * rotation @ mean_x  # eq. 41
    return rotation, translation, scale


def align_trajectory(
    estimate: ArrayLike, reference: ArrayLike, align: Alignment = "se3"
) -> tuple[Tensor, float]:
    """Align an estimated trajectory to a reference, as evo's ``align`` / ``align_origin``.

    Args:
        estimate: (T, 4, 4) estimated ``cam_to_world`` poses.
        reference: (T, 4, 4) reference poses.
        align: ``"none"``, ``"origin"`` (move the estimate rigidly so its first pose equals the
            reference's), ``"se3"`` or ``"sim3"`` (Umeyama on the positions, without / with
            scale).

    Returns:
        ``(aligned, scale)``: (T, 4, 4) float64 aligned estimate (rotations stay rotations; a
        Sim(3) alignment scales the positions) and the scale (1.0 unless ``"sim3"``).

    Raises:
        ValueError: for an unknown mode, invalid trajectories, or degenerate positions.
    """
    estimate, reference = _check_pair(estimate, reference)
    if align not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {align!r}: allowed are {ALIGNMENTS}")
    if align == "none":
        return estimate, 1.0
    if align == "origin":
        return (reference[0] @ invert_rigid(estimate[0])) @ estimate, 1.0
    rotation, translation, scale = umeyama_alignment(
        estimate[:, :3, 3], reference[:, :3, 3], with_scale=align == "sim3"
    )
    aligned = estimate.clone()
    aligned[:, :3, :3] = rotation @ estimate[:, :3, :3]
    aligned[:, :3, 3] = scale * estimate[:, :3, 3] @ rotation.T + translation
    return aligned, scale


def absolute_trajectory_error(
    estimate: ArrayLike, reference: ArrayLike, align: Alignment = "none"
) -> PoseErrors:
    """ATE: per-pose translation (metres) and rotation (radians) errors, as evo's APE.

    Args:
        estimate: (T, 4, 4) estimated ``cam_to_world`` poses.
        reference: (T, 4, 4) reference poses, associated pose by pose.
        align: alignment applied to the estimate first (see :func:`align_trajectory`).

    Returns:
        :class:`PoseErrors` over the T poses.

    Raises:
        ValueError: for trajectories of different lengths, NaN, non-rigid poses, an unknown
            alignment, or degenerate positions with ``"se3"`` / ``"sim3"``.
    """
    aligned, scale = align_trajectory(estimate, reference, align)
    reference = as_poses(reference, "reference")
    error = invert_rigid(reference) @ aligned  # (T, 4, 4)
    return PoseErrors(
        translation=ErrorStats.from_errors(error[:, :3, 3].norm(dim=-1).numpy(), "m"),
        rotation=ErrorStats.from_errors(rotation_angle(error[:, :3, :3]).numpy(), "rad"),
        alignment=align,
        scale=scale,
    )


def _pair_indices(length: int, delta: int, all_pairs: bool) -> tuple[Tensor, Tensor]:
    if isinstance(delta, bool) or not isinstance(delta, int) or delta < 1:
        raise ValueError(f"delta must be a positive integer number of frames, got {delta!r}")
    if delta >= length:
        raise ValueError(
            f"delta = {delta} frames leaves no pose pairs in a trajectory of {length} poses; "
            f"use delta < {length}"
        )
    if all_pairs:
        first = torch.arange(0, length - delta)
    else:
        first = torch.arange(0, length - delta, delta)
    return first, first + delta


def relative_pose_error(
    estimate: ArrayLike,
    reference: ArrayLike,
    delta: int = 1,
    align: Alignment = "none",
    all_pairs: bool = False,
) -> PoseErrors:
    """RPE: errors of relative motions over ``delta`` frames, as evo's RPE.

    Args:
        estimate: (T, 4, 4) estimated ``cam_to_world`` poses.
        reference: (T, 4, 4) reference poses, associated pose by pose.
        delta: frame offset of the pairs, 1 <= delta < T.
        align: alignment applied to the estimate first (only ``"sim3"`` changes RPE, by scale).
        all_pairs: use every pair ``(i, i + delta)`` instead of consecutive ones
            ``(0, d), (d, 2d), ...``.

    Returns:
        :class:`PoseErrors` over the pairs (translation in metres, rotation in radians).

    Raises:
        ValueError: as :func:`absolute_trajectory_error`, or for a ``delta`` out of range.
    """
    aligned, scale = align_trajectory(estimate, reference, align)
    reference = as_poses(reference, "reference")
    first, second = _pair_indices(reference.shape[0], delta, all_pairs)
    reference_motion = invert_rigid(reference[first]) @ reference[second]  # (N, 4, 4)
    estimate_motion = invert_rigid(aligned[first]) @ aligned[second]
    error = invert_rigid(reference_motion) @ estimate_motion
    return PoseErrors(
        translation=ErrorStats.from_errors(error[:, :3, 3].norm(dim=-1).numpy(), "m"),
        rotation=ErrorStats.from_errors(rotation_angle(error[:, :3, :3]).numpy(), "rad"),
        alignment=align,
        scale=scale,
    )


def _floor_xz(poses: Tensor) -> Tensor:
    return poses[:, :3, 3][:, [0, 2]]  # (T, 2) world x and z (the floor plane; y is up)


def nwm_errors(
    estimate: ArrayLike,
    reference: ArrayLike,
    waypoint_spacing_m: float = DEFAULT_WAYPOINT_SPACING_M,
) -> NWMErrors:
    """ATE and RPE as Navigation World Models reports them (Bar et al. 2025, planning tables).

    Floor-plane positions only (world x and z; NWM's "xy"), in units of the waypoint spacing,
    no alignment and no rotations: ATE is the RMSE of ``|p_i - q_i|`` and RPE the RMSE of
    ``|(p_{i+1} - p_i) - (q_{i+1} - q_i)|``. Both are invariant to the choice of planar frame,
    so NWM's robot-centric frame and the world frame give the same numbers.

    Args:
        estimate: (T, 4, 4) estimated ``cam_to_world`` poses, T >= 2.
        reference: (T, 4, 4) reference poses.
        waypoint_spacing_m: metres per waypoint (NWM's ``metric_waypoint_spacing``), > 0.

    Returns:
        :class:`NWMErrors` in waypoint spacings.

    Raises:
        ValueError: for invalid trajectories, T < 2, or a non-positive spacing.
    """
    if not waypoint_spacing_m > 0.0:
        raise ValueError(f"waypoint_spacing_m must be > 0 metres, got {waypoint_spacing_m}")
    estimate, reference = _check_pair(estimate, reference)
    if reference.shape[0] < 2:
        raise ValueError("the NWM mode needs trajectories of at least 2 poses")
    p, q = _floor_xz(estimate) / waypoint_spacing_m, _floor_xz(reference) / waypoint_spacing_m
    ate = (p - q).norm(dim=-1).square().mean().sqrt()
    rpe = (p.diff(dim=0) - q.diff(dim=0)).norm(dim=-1).square().mean().sqrt()
    return NWMErrors(float(ate), float(rpe), float(waypoint_spacing_m))


def _final_position_yaw(
    poses: ArrayLike | None,
    position: ArrayLike | None,
    yaw: ArrayLike | float | None,
    name: str,
) -> tuple[Tensor, Tensor]:
    if poses is not None:
        if position is not None or yaw is not None:
            raise ValueError(f"give the {name} as poses or as position + yaw, not both")
        final = as_poses(poses, name)[-1]
        # Camera height does not matter here: only x, z and yaw are compared.
        return position_yaw_from_pose(final)
    if position is None or yaw is None:
        raise ValueError(f"give the {name} as (T, 4, 4) poses or as a (3,) position and a yaw")
    position_t = torch.as_tensor(np.asarray(position), dtype=torch.float64)
    yaw_t = torch.as_tensor(np.asarray(yaw), dtype=torch.float64)
    if position_t.shape != (3,) or yaw_t.shape != ():
        raise ValueError(
            f"{name} position must be (3,) and yaw a scalar, got {tuple(position_t.shape)} "
            f"and {tuple(yaw_t.shape)}"
        )
    if not (torch.isfinite(position_t).all() and torch.isfinite(yaw_t)):
        raise ValueError(f"{name} position and yaw must be finite")
    return position_t, yaw_t


def final_pose_error(
    estimate: ArrayLike | None = None,
    reference: ArrayLike | None = None,
    *,
    estimate_position: ArrayLike | None = None,
    estimate_yaw: ArrayLike | float | None = None,
    reference_position: ArrayLike | None = None,
    reference_yaw: ArrayLike | float | None = None,
) -> tuple[float, float]:
    """Floor-plane distance (metres) and absolute heading difference (radians) of final poses.

    Give each side either as a (T, 4, 4) trajectory (its last pose is used) or as a (3,) floor
    position plus a yaw; the trajectories may have different lengths.

    Returns:
        ``(distance_m, heading_rad)`` with the heading difference wrapped to [0, pi].

    Raises:
        ValueError: for missing or doubly given inputs, wrong shapes or NaN.
    """
    p, yaw_p = _final_position_yaw(estimate, estimate_position, estimate_yaw, "estimate")
    q, yaw_q = _final_position_yaw(reference, reference_position, reference_yaw, "reference")
    distance = (p[[0, 2]] - q[[0, 2]]).norm()
    difference = yaw_p - yaw_q
    heading = torch.atan2(torch.sin(difference), torch.cos(difference)).abs()
    return float(distance), float(heading)


def sim_score(
    estimate: ArrayLike | None = None,
    reference: ArrayLike | None = None,
    config: SimConfig | None = None,
    **final_pose: ArrayLike | float,
) -> float:
    """SIM: similarity of the final pose to the reference's, 0-100 (100 = identical).

    ``SIM = 100 * exp(-d / sigma_p) * exp(-|dpsi| / sigma_psi)``, ``d`` the floor-plane (x-z)
    distance between final positions in metres, ``dpsi`` the wrapped heading difference in
    radians, ``sigma_p`` and ``sigma_psi`` from ``config`` (1 m and 1 rad by default). It is
    strictly decreasing in both errors.

    Args:
        estimate: (T, 4, 4) estimated trajectory (its last pose is scored), or ``None`` with
            ``estimate_position`` / ``estimate_yaw`` in ``final_pose``.
        reference: (T', 4, 4) reference trajectory, or ``None`` with ``reference_position`` /
            ``reference_yaw`` in ``final_pose``.
        config: the length scales; :class:`SimConfig` defaults if ``None``.
        **final_pose: keyword inputs of :func:`final_pose_error`.

    Returns:
        SIM in (0, 100].
    """
    config = config or SimConfig()
    distance, heading = final_pose_error(estimate, reference, **final_pose)
    return (
        100.0
        * math.exp(-distance / config.position_scale_m)
        * math.exp(-heading / config.heading_scale_rad)
    )


def path_length(positions: ArrayLike) -> float:
    """Length of a polyline of positions, metres.

    Args:
        positions: (T, 3) world positions (T >= 1).

    Returns:
        Sum of the distances between consecutive positions.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] == 0:
        raise ValueError(f"positions must have shape (T, 3) with T >= 1, got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("positions must be finite (no NaN or infinity)")
    return float(np.linalg.norm(np.diff(positions, axis=0), axis=-1).sum())


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a success rate (95 % for the default ``z``).

    ``(p + z²/2n ± z sqrt(p(1 - p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / trials``;
    unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes.

    Args:
        successes: successful trials, in [0, trials].
        trials: trials, >= 1.
        z: standard-normal quantile of the interval (1.96: 95 %), > 0.

    Returns:
        ``(low, high)`` in [0, 1].

    Raises:
        ValueError: for counts out of range or a non-positive ``z``.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
