"""Geometry conventions against hand-computed cases and slow per-element references."""

import math

import pytest
import torch

from worldsim import geometry as g

# float32 round-off on unit-scale quantities stays far below this.
ATOL = 1e-5


def test_yaw_zero_camera_looks_along_world_minus_z_with_y_down_mapped_to_world_down():
    pose = g.pose_from_position_yaw(torch.tensor([1.0, 0.0, 2.0]), torch.tensor(0.0))
    expected = torch.tensor(
        [[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 1.25], [0.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, 1.0]]
    )
    torch.testing.assert_close(pose, expected, atol=ATOL, rtol=0)


def test_yaw_ninety_degrees_looks_along_world_minus_x():
    pose = g.pose_from_position_yaw(torch.zeros(3), torch.tensor(math.pi / 2))
    forward = pose[:3, 2]
    right = pose[:3, 0]
    torch.testing.assert_close(forward, torch.tensor([-1.0, 0.0, 0.0]), atol=ATOL, rtol=0)
    # Facing -x with y up, the right hand points to -z.
    torch.testing.assert_close(right, torch.tensor([0.0, 0.0, -1.0]), atol=ATOL, rtol=0)


def test_position_yaw_round_trip():
    gen = torch.Generator().manual_seed(1)
    position = torch.rand(16, 3, generator=gen) * 10
    yaw = (torch.rand(16, generator=gen) * 2 - 1) * math.pi * 0.999
    got_position, got_yaw = g.position_yaw_from_pose(g.pose_from_position_yaw(position, yaw))
    torch.testing.assert_close(got_position, position, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_yaw, yaw, atol=ATOL, rtol=0)


def test_move_forward_from_yaw_thirty_degrees():
    spec = g.ActionSpec(forward_step_m=0.5)
    yaw = math.radians(30)
    pose = g.pose_from_position_yaw(torch.tensor([0.0, 0.0, 0.0]), torch.tensor(yaw))
    moved = pose @ g.action_to_relative_pose(torch.tensor(g.Action.MOVE_FORWARD), spec)
    position, new_yaw = g.position_yaw_from_pose(moved)
    # Forward at heading psi is (-sin psi, 0, -cos psi).
    expected = torch.tensor([-0.5 * math.sin(yaw), 0.0, -0.5 * math.cos(yaw)])
    torch.testing.assert_close(position, expected, atol=ATOL, rtol=0)
    assert new_yaw.item() == pytest.approx(yaw, abs=ATOL)


@pytest.mark.parametrize(("action", "sign"), [(g.Action.TURN_LEFT, 1), (g.Action.TURN_RIGHT, -1)])
def test_turns_change_yaw_by_the_step_and_keep_position(action, sign):
    spec = g.ActionSpec(turn_step_deg=30.0)
    pose = g.pose_from_position_yaw(torch.tensor([2.0, 0.0, -1.0]), torch.tensor(0.2))
    turned = pose @ g.action_to_relative_pose(torch.tensor(int(action)), spec)
    position, yaw = g.position_yaw_from_pose(turned)
    torch.testing.assert_close(position, torch.tensor([2.0, 0.0, -1.0]), atol=ATOL, rtol=0)
    assert yaw.item() == pytest.approx(0.2 + sign * math.radians(30), abs=ATOL)


def test_stop_is_identity_and_actions_batch():
    poses = g.action_to_relative_pose(torch.tensor([[0, 1], [2, 3]]))
    assert poses.shape == (2, 2, 4, 4)
    torch.testing.assert_close(poses[0, 0], torch.eye(4), atol=0, rtol=0)


def test_waypoint_moves_right_and_forward_in_the_camera_frame():
    relative = g.waypoint_to_relative_pose(torch.tensor([0.3, 1.0, 0.0]))
    torch.testing.assert_close(relative[:3, 3], torch.tensor([0.3, 0.0, 1.0]), atol=ATOL, rtol=0)
    pose = g.pose_from_position_yaw(torch.zeros(3), torch.tensor(0.0))
    position, _ = g.position_yaw_from_pose(pose @ relative)
    # At yaw 0 the agent faces -z, so its right is +x.
    torch.testing.assert_close(position, torch.tensor([0.3, 0.0, -1.0]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bad", [-1, 4, 17])
def test_unknown_action_names_the_value_and_the_allowed_ids(bad):
    with pytest.raises(ValueError, match=rf"unknown action {bad}.*0 = stop.*3 = turn_right"):
        g.action_to_relative_pose(torch.tensor([1, bad]))


def test_float_actions_are_rejected():
    with pytest.raises(ValueError, match="integer"):
        g.action_to_waypoint(torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("field", "value"), [("forward_step_m", 0.0), ("forward_step_m", 9.0), ("turn_step_deg", -5.0)]
)
def test_action_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        g.ActionSpec(**{field: value})


def test_intrinsics_from_hfov_ninety_degrees():
    k = g.intrinsics_from_hfov(90.0, 128, 96)
    # tan(45 deg) = 1, so fx = W / 2.
    expected = torch.tensor([[64.0, 0.0, 64.0], [0.0, 64.0, 48.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(k, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("hfov", "width", "height", "message"),
    [(0.0, 64, 64, "hfov_deg"), (180.0, 64, 64, "hfov_deg"), (90, 0, 64, "image size")],
)
def test_intrinsics_reject_out_of_range(hfov, width, height, message):
    with pytest.raises(ValueError, match=message):
        g.intrinsics_from_hfov(hfov, width, height)


def test_unproject_matches_a_per_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(5, 7, generator=gen) * 5
    k = g.intrinsics_from_hfov(70.0, 7, 5)
    points = g.unproject_depth(depth, k)
    for i in range(5):
        for j in range(7):
            z = depth[i, j]
            expected = torch.stack(
                [(j + 0.5 - k[0, 2]) / k[0, 0] * z, (i + 0.5 - k[1, 2]) / k[1, 1] * z, z]
            )
            torch.testing.assert_close(points[i, j], expected, atol=ATOL, rtol=0)


def test_depth_to_world_then_project_returns_pixel_centres_and_depth():
    gen = torch.Generator().manual_seed(3)
    depth = torch.rand(2, 6, 8, generator=gen) * 4 + 0.5
    k = g.intrinsics_from_hfov(90.0, 8, 6)
    poses = g.pose_from_position_yaw(torch.rand(2, 3, generator=gen), torch.tensor([0.4, -2.0]))
    world = g.depth_to_world_points(depth, k, poses)
    uv, z = g.project_points(world.reshape(2, -1, 3), k, poses)
    centres = g.pixel_centers(6, 8).reshape(1, -1, 2).expand(2, -1, -1)
    # Depths up to 4.5 m through a float32 round trip: a few ulps of 4.5.
    torch.testing.assert_close(uv, centres, atol=1e-4, rtol=0)
    torch.testing.assert_close(z, depth.reshape(2, -1), atol=1e-5, rtol=0)


def test_point_straight_ahead_lands_on_the_image_centre():
    pose = g.pose_from_position_yaw(torch.tensor([0.0, 0.0, 0.0]), torch.tensor(math.pi / 2))
    # Facing -x from (0, 1.25, 0): a point 3 m ahead at camera height.
    uv, z = g.project_points(
        torch.tensor([[[-3.0, 1.25, 0.0]]]), g.intrinsics_from_hfov(90, 64, 64), pose[None]
    )
    torch.testing.assert_close(uv[0, 0], torch.tensor([32.0, 32.0]), atol=ATOL, rtol=0)
    assert z.item() == pytest.approx(3.0, abs=ATOL)


def test_a_point_above_the_camera_projects_to_a_smaller_row():
    pose = g.pose_from_position_yaw(torch.zeros(3), torch.tensor(0.0))
    uv, _ = g.project_points(
        torch.tensor([[[0.0, 2.25, -1.0]]]), g.intrinsics_from_hfov(90, 64, 64), pose[None]
    )
    # 1 m up at 1 m distance with fy = 32 is 32 px above the centre: v = 0.
    torch.testing.assert_close(uv[0, 0], torch.tensor([32.0, 0.0]), atol=ATOL, rtol=0)


def test_invert_and_relative_pose():
    gen = torch.Generator().manual_seed(2)
    poses = g.pose_from_position_yaw(torch.rand(4, 3, generator=gen), torch.rand(4, generator=gen))
    torch.testing.assert_close(g.invert_rigid(poses), torch.linalg.inv(poses), atol=ATOL, rtol=0)
    relative = g.relative_pose(poses[:2], poses[2:])
    torch.testing.assert_close(poses[:2] @ relative, poses[2:], atol=ATOL, rtol=0)


def test_check_rigid_rejects_scaled_and_nan_poses():
    pose = g.pose_from_position_yaw(torch.zeros(3), torch.tensor(0.3))
    g.check_rigid(pose)
    with pytest.raises(ValueError, match=r"pose\[1\] is not a rigid transform"):
        g.check_rigid(torch.stack([pose, pose * 1.1]))
    with pytest.raises(ValueError, match="NaN"):
        g.check_rigid(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\)"):
        g.check_rigid(torch.eye(3))


def test_plucker_rays_of_identity_camera():
    k = g.intrinsics_from_hfov(90.0, 4, 4)
    rays = g.plucker_rays(k, torch.eye(4)[None], 4, 4)
    assert rays.shape == (1, 6, 4, 4)
    # Camera at the origin: zero moment everywhere; centre-ish pixel direction ~ +z.
    torch.testing.assert_close(rays[0, :3], torch.zeros(3, 4, 4), atol=ATOL, rtol=0)
    direction = rays[0, 3:, 1, 1]
    expected = torch.tensor([-0.25, -0.25, 1.0])  # pixel centre (1.5, 1.5) with c = 2, f = 2
    torch.testing.assert_close(direction, expected / expected.norm(), atol=ATOL, rtol=0)


def test_plucker_moment_is_origin_cross_direction():
    k = g.intrinsics_from_hfov(90.0, 3, 2)
    translated = torch.eye(4)
    translated[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    rays = g.plucker_rays(k, translated[None], 2, 3)
    moment, direction = rays[0, :3], rays[0, 3:]
    origin = torch.tensor([1.0, 2.0, 3.0])[:, None, None].expand(3, 2, 3)
    torch.testing.assert_close(moment, torch.cross(origin, direction, dim=0), atol=ATOL, rtol=0)
    # Every moment is orthogonal to its direction, as for any Plücker line.
    torch.testing.assert_close((moment * direction).sum(0), torch.zeros(2, 3), atol=ATOL, rtol=0)
