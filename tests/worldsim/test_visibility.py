"""Visibility by depth consistency: self-visibility, an analytic wall overlap, a box occluder."""

import pytest
import torch

from worldsim.data.visibility import DepthConsistency, memory_only_coverage, seen_by

SIZE = 16
FOCAL = SIZE / 2  # 90 degree field of view
K = torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1.0]])
WALL_Z = 2.0  # a wall facing the cameras at world z = 2 m


def camera(x):
    """Pose of a camera at (x, 0, 0) looking along world +z (OpenCV axes = world axes)."""
    pose = torch.eye(4)
    pose[0, 3] = x
    return pose


def ray_cast(x, box=None):
    """Depth (1, H, W) seen by camera(x): the wall, or an axis-aligned box in front of it.

    Rays through pixel centres have camera z = 1, so the ray parameter is the z-depth.
    """
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    dx, dy = (u - K[0, 2]) / FOCAL, (v - K[1, 2]) / FOCAL
    depth = torch.full((SIZE, SIZE), WALL_Z)
    if box is not None:
        (x0, y0, z0), (x1, y1, _) = box  # the front face at z0 is all a ray meets first
        hit_x, hit_y = x + dx * z0, dy * z0  # on the box's front face
        inside = (hit_x >= x0) & (hit_x <= x1) & (hit_y >= y0) & (hit_y <= y1)
        depth = torch.where(inside, torch.tensor(z0), depth)
    return depth[None]


def frames(xs, box=None):
    """(B=1, T) depth, intrinsics and poses of cameras at ``xs``."""
    depth = torch.stack([ray_cast(x, box) for x in xs])[None]
    return depth, K.expand(1, len(xs), 3, 3), torch.stack([camera(x) for x in xs])[None]


def empty():
    return torch.zeros(1, 0, 1, SIZE, SIZE), torch.zeros(1, 0, 3, 3), torch.zeros(1, 0, 4, 4)


def test_a_frame_sees_all_of_itself():
    target = frames([0.0, 0.3])
    fraction, mask = memory_only_coverage(*target, *target, *empty(), return_masks=True)
    assert torch.all(fraction == 1.0) and mask.all()
    # ... and with itself as context nothing is left for the memory.
    fraction, _ = memory_only_coverage(*target, *target, *target)
    assert torch.all(fraction == 0.0)


def test_two_cameras_at_a_wall_give_the_analytic_overlap():
    # A camera shifted by dx sees target column c at u' = c + 0.5 - FOCAL * dx / WALL_Z; it is
    # inside iff 0 <= u' < 16. Memory at dx = 0.55 (shift 2.2 px) sees c >= 2; context at
    # dx = -1.3 (shift -5.2 px) sees c <= 10; memory-only: c in 11..15, 5 of 16 columns.
    target, memory, context = frames([0.0]), frames([0.55]), frames([-1.3])
    seen = seen_by(*target, *memory)
    assert float(seen.float().mean()) == 14 / 16
    fraction, mask = memory_only_coverage(*target, *memory, *context, return_masks=True)
    assert float(fraction) == 5 / 16
    assert torch.all(mask[0, 0, 0, :, 11:]) and not mask[0, 0, 0, :, :11].any()
    # Padding frames see nothing.
    fraction, _ = memory_only_coverage(
        *target, *memory, *context, memory_valid=torch.tensor([[False]])
    )
    assert float(fraction) == 0.0


def test_points_behind_a_box_are_not_seen():
    # The memory camera at x = 1 has a box in front of it, hiding part of the wall that the
    # target camera at x = 0 sees; the box itself is outside the target's view.
    box = ((0.75, -0.5, 0.5), (1.25, 0.5, 0.75))  # x, y, z ranges, metres
    target = frames([0.0])  # the box is outside this camera's view (x > z at z = 0.5)
    memory = frames([1.0], box)
    seen = seen_by(*target, *memory)[0, 0, 0]
    # Reference by geometry: the wall point of each target pixel is hidden when the segment
    # from the memory camera to it passes through the box's front face.
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    wall_x, wall_y = (u - K[0, 2]) / FOCAL * WALL_Z, (v - K[1, 2]) / FOCAL * WALL_Z
    at_face = 0.5 / WALL_Z  # fraction of the way from the memory camera to the wall at z0
    face_x, face_y = 1.0 + (wall_x - 1.0) * at_face, wall_y * at_face
    hidden = (face_x >= 0.75) & (face_x <= 1.25) & (face_y >= -0.5) & (face_y <= 0.5)
    in_view = ((wall_x - 1.0).abs() < WALL_Z) & (wall_y.abs() < WALL_Z)
    assert hidden.sum() >= 16  # the case is not empty
    assert not (seen & hidden).any()  # occluded points are never counted as seen
    # A frustum test would count them: they project inside the memory frame.
    assert (in_view & hidden).sum() == hidden.sum()
    # Target pixel centres land on memory pixel centres (a 4-pixel shift), so the nearest-pixel
    # depth lookup decides exactly as the geometry does, silhouette included.
    assert torch.equal(seen, in_view & ~hidden)
    assert 0 < float(seen.float().mean()) < 1


def test_inputs_are_checked():
    target = frames([0.0])
    memory = frames([0.5])
    with pytest.raises(ValueError, match=r"frame_depth has batch size 2, but the targets have 1"):
        seen_by(*target, *[torch.cat([p, p]) for p in memory])
    with pytest.raises(ValueError, match=r"frame_intrinsics\[0\] has its principal point"):
        seen_by(*target, memory[0], memory[1] * 2, memory[2])
    with pytest.raises(ValueError, match=r"rel_tol must be in \[0, 1\], got 2"):
        DepthConsistency(rel_tol=2)
    bad = target[2].clone()
    bad[..., 0, 1] = 0.5
    with pytest.raises(ValueError, match=r"target_cam_to_world\[0\] is not a rigid transform"):
        seen_by(target[0], target[1], bad, *memory)
