import math

import numpy as np
import pytest
import torch
from evo.core import metrics as evo_metrics
from evo.core.trajectory import PosePath3D
from scipy.spatial.transform import Rotation

from planners.metrics import (
    SimConfig,
    absolute_trajectory_error,
    final_pose_error,
    nwm_errors,
    path_length,
    poses_from_positions_yaws,
    relative_pose_error,
    rotation_angle,
    sim_score,
    spl,
    success,
    umeyama_alignment,
    wilson_interval,
)
from worldsim.geometry import position_yaw_from_pose

STATS = ("rmse", "mean", "median", "std", "min", "max")
TRANSLATION = evo_metrics.PoseRelation.translation_part
ROTATION = evo_metrics.PoseRelation.rotation_angle_rad


def random_trajectory(rng: np.random.Generator, length: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (length, 1, 1))
    poses[:, :3, :3] = Rotation.random(length, random_state=int(rng.integers(2**31))).as_matrix()
    poses[:, :3, 3] = rng.normal(scale=2.0, size=(length, 3))
    return poses


def evo_aligned(estimate: np.ndarray, reference: np.ndarray, align: str) -> tuple:
    ref, est = PosePath3D(poses_se3=list(reference)), PosePath3D(poses_se3=list(estimate))
    if align == "origin":
        est.align_origin(ref)
    elif align in ("se3", "sim3"):
        est.align(ref, correct_scale=align == "sim3")
    return ref, est


def assert_stats_equal(ours, metric) -> None:
    expected = metric.get_all_statistics()
    for key in STATS:
        assert getattr(ours, key) == pytest.approx(expected[key], abs=1e-6)  # the bound
    np.testing.assert_allclose(ours.errors, metric.error, atol=1e-6)


@pytest.mark.parametrize("align", ["none", "origin", "se3", "sim3"])
def test_ate_equals_evo_on_random_trajectories(rng, align):
    for _ in range(3):
        reference, estimate = random_trajectory(rng, 25), random_trajectory(rng, 25)
        ours = absolute_trajectory_error(estimate, reference, align)
        for relation, stats in ((TRANSLATION, ours.translation), (ROTATION, ours.rotation)):
            metric = evo_metrics.APE(relation)
            metric.process_data(evo_aligned(estimate, reference, align))
            assert_stats_equal(stats, metric)
        assert ours.translation.unit == "m" and ours.rotation.unit == "rad"


@pytest.mark.parametrize("align", ["none", "se3", "sim3"])
@pytest.mark.parametrize(("delta", "all_pairs"), [(1, False), (4, False), (3, True)])
def test_rpe_equals_evo_on_random_trajectories(rng, align, delta, all_pairs):
    reference, estimate = random_trajectory(rng, 30), random_trajectory(rng, 30)
    ours = relative_pose_error(estimate, reference, delta, align, all_pairs)
    for relation, stats in ((TRANSLATION, ours.translation), (ROTATION, ours.rotation)):
        metric = evo_metrics.RPE(relation, delta, evo_metrics.Unit.frames, all_pairs=all_pairs)
        metric.process_data(evo_aligned(estimate, reference, align))
        assert_stats_equal(stats, metric)


def test_nwm_mode_equals_evo_on_planar_positions(rng):
    spacing = 0.25
    reference, estimate = random_trajectory(rng, 16), random_trajectory(rng, 16)
    ours = nwm_errors(estimate, reference, waypoint_spacing_m=spacing)

    def nwm_path(poses):  # as NWM: xy positions in waypoint units, identity rotations
        planar = np.tile(np.eye(4), (len(poses), 1, 1))
        planar[:, :2, 3] = poses[:, [0, 2], 3] / spacing
        return PosePath3D(poses_se3=list(planar))

    pair = (nwm_path(reference), nwm_path(estimate))
    ape, rpe = (
        evo_metrics.APE(TRANSLATION),
        evo_metrics.RPE(TRANSLATION, 1, evo_metrics.Unit.frames),
    )
    ape.process_data(pair)
    rpe.process_data(pair)
    assert ours.ate == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.rmse), abs=1e-6)
    rpe_rmse = rpe.get_statistic(evo_metrics.StatisticsType.rmse)
    assert ours.rpe_translation == pytest.approx(rpe_rmse, abs=1e-6)


def test_umeyama_recovers_a_known_similarity(rng):
    points = rng.normal(size=(10, 3))
    rotation = Rotation.from_rotvec([0.3, -1.2, 0.5]).as_matrix()
    translation, scale = np.array([1.0, -2.0, 0.5]), 1.7
    moved = scale * points @ rotation.T + translation
    r, t, s = umeyama_alignment(points, moved, with_scale=True)
    np.testing.assert_allclose(r.numpy(), rotation, atol=1e-10)  # exact data, float64
    np.testing.assert_allclose(t.numpy(), translation, atol=1e-10)
    assert s == pytest.approx(scale, abs=1e-10)
    line = np.outer(np.arange(5.0), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="degenerate"):
        umeyama_alignment(line, line + 1.0)


def test_rotation_angle_matches_scipy_near_zero_and_pi():
    rotvecs = np.array([[1e-9, 0, 0], [0, 0.3, 0.1], [0, 0, math.pi - 1e-7], [2.0, 1.0, -0.5]])
    matrices = torch.from_numpy(Rotation.from_rotvec(rotvecs).as_matrix())
    np.testing.assert_allclose(
        rotation_angle(matrices).numpy(), np.linalg.norm(rotvecs, axis=1), atol=1e-9
    )  # atan2 form is well conditioned at both ends


def test_identical_trajectories_have_zero_error_and_full_sim(rng):
    poses = random_trajectory(rng, 8)
    ate = absolute_trajectory_error(poses, poses)
    assert ate.translation.max == 0.0 and ate.rotation.max < 1e-7  # acos-free, float64
    assert sim_score(poses, poses) == 100.0


def test_sim_formula_and_monotonic_decrease():
    reference = poses_from_positions_yaws(np.zeros((1, 3)), np.zeros(1))
    assert sim_score(
        estimate_position=[0.2, 0.0, 0.0],
        estimate_yaw=0.0,
        reference=reference,
    ) == pytest.approx(100 * math.exp(-0.2), abs=1e-9)
    config = SimConfig(position_scale_m=0.5, heading_scale_rad=0.25)
    value = sim_score(
        estimate_position=[0.3, 0.0, 0.4],
        estimate_yaw=0.1,
        reference_position=[0.0, 0.0, 0.0],
        reference_yaw=0.0,
        config=config,
    )
    assert value == pytest.approx(100 * math.exp(-0.5 / 0.5) * math.exp(-0.1 / 0.25), abs=1e-9)
    distances = [
        sim_score(
            estimate_position=[d, 0.0, 0.0],
            estimate_yaw=0.3,
            reference_position=[0, 0, 0],
            reference_yaw=0.0,
        )
        for d in np.linspace(0, 5, 21)
    ]
    headings = [
        sim_score(
            estimate_position=[0.1, 0.0, 0.0],
            estimate_yaw=h,
            reference_position=[0, 0, 0],
            reference_yaw=0.0,
        )
        for h in np.linspace(0, math.pi, 21)
    ]
    assert all(np.diff(distances) < 0) and all(np.diff(headings) < 0)
    wrapped = sim_score(
        estimate_position=[0, 0, 0], estimate_yaw=2 * math.pi + 0.2,
        reference_position=[0, 0, 0], reference_yaw=0.0,
    )  # fmt: skip
    assert wrapped == pytest.approx(100 * math.exp(-0.2), abs=1e-9)
    with pytest.raises(ValueError, match="position_scale_m"):
        SimConfig(position_scale_m=0.0)


def test_final_pose_error_reads_positions_and_yaws_from_poses():
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, -2.0]])
    estimate = poses_from_positions_yaws(positions, np.array([0.0, 0.5]))
    reference = poses_from_positions_yaws(np.array([[1.0, 0.0, -1.0]]), np.array([-0.2]))
    distance, heading = final_pose_error(estimate, reference)
    assert distance == pytest.approx(1.0, abs=1e-12)
    assert heading == pytest.approx(0.7, abs=1e-12)
    position, yaw = position_yaw_from_pose(estimate)
    np.testing.assert_allclose(position.numpy(), positions, atol=1e-12)
    np.testing.assert_allclose(yaw.numpy(), [0.0, 0.5], atol=1e-12)


def test_success_path_length_and_spl_hand_computed():
    finals = np.array([[0.0, 0.0, 0.19], [0.0, 0.0, 0.21], [3.0, 0.0, 4.0]])
    assert success(finals, np.zeros(3)).tolist() == [True, False, False]
    assert success(finals, np.zeros(3), radius_m=5.0).tolist() == [True, True, True]
    assert path_length([[0, 0, 0], [3, 0, 4], [3, 0, 5]]) == pytest.approx(6.0)
    # Episodes: success with a detour (l=4, p=8), success on the shortest path, a failure.
    value = spl([True, True, False], [4.0, 2.0, 3.0], [8.0, 2.0, 1.0])
    assert value == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="must be > 0"):
        spl([True], [0.0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        spl([True, False], [1.0], [1.0])


def test_bad_trajectories_raise(rng):
    poses = random_trajectory(rng, 6)
    with pytest.raises(ValueError, match="6 poses and reference 5"):
        absolute_trajectory_error(poses, poses[:5])
    scaled = poses.copy()
    scaled[2, :3, :3] *= 1.5
    with pytest.raises(ValueError, match=r"estimate\[2\] is not a rigid transform"):
        relative_pose_error(scaled, poses)
    broken = poses.copy()
    broken[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        absolute_trajectory_error(poses, broken)
    with pytest.raises(ValueError, match="no pose pairs"):
        relative_pose_error(poses, poses, delta=6)
    with pytest.raises(ValueError, match="unknown alignment"):
        absolute_trajectory_error(poses, poses, align="sim2")
    with pytest.raises(ValueError, match=r"\(T, 4, 4\)"):
        absolute_trajectory_error(poses[:, :3, :3], poses[:, :3, :3])
    with pytest.raises(ValueError, match="yaws must have shape"):
        poses_from_positions_yaws(np.zeros((4, 3)), np.zeros(3))


def test_wilson_interval_hand_computed():
    # 0 of n: (0, z^2 / (n + z^2)); 10 of 20: 0.5 -+ 1.96 sqrt(0.25/20 + z^2/1600) / (1 + z^2/20)
    z2 = 1.959964**2
    assert wilson_interval(0, 20) == pytest.approx((0.0, z2 / (20 + z2)), abs=1e-12)
    low, high = wilson_interval(10, 20)
    half = 1.959964 * math.sqrt(0.25 / 20 + z2 / 1600) / (1 + z2 / 20)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.2993, 0.7007)  # the textbook values
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] < 1.0
    # the interval narrows with more trials at the same rate
    assert np.ptp(wilson_interval(30, 60)) < np.ptp(wilson_interval(10, 20))
    with pytest.raises(ValueError, match="need 0 <= successes <= trials"):
        wilson_interval(3, 2)
