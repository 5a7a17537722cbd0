"""Rendered memory: ground-truth reprojection, a per-point loop z-buffer, keep and eviction."""

import math
import warnings

import numpy as np
import pytest
import torch

from worldsim.memory import RenderedMemory, RenderedMemoryConfig, build_memory

SIZE = 64  # pixels per side of the simulator frames


# Ground-truth frames -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator():
    from envs.backends import make_simulator
    from envs.embedded.render import egl_available
    from envs.simulator import SimulatorConfig

    if not egl_available():
        pytest.skip("no headless OpenGL context can be created through EGL")
    sim = make_simulator(SimulatorConfig(width=SIZE, height=SIZE))
    sim.load_scene("house-train-0000")
    return sim


def observe(sim, position, yaw):
    """(rgb (3, H, W) in [0, 1], depth (1, H, W) metres, pose (4, 4)) rendered at a camera."""
    pose = sim.camera_pose(position, yaw)
    rgb, depth = sim.render(pose)
    return (
        torch.as_tensor(rgb).permute(2, 0, 1).float() / 255,
        torch.as_tensor(depth).permute(2, 0, 1),
        torch.as_tensor(pose),
    )


def stack(frames):
    """(B=1, T, ...) tensors of rgb, depth, intrinsics-free pose from observe() tuples."""
    return [torch.stack(parts)[None] for parts in zip(*frames, strict=True)]


def filled(sim, frames, **config):
    rgb, depth, pose = stack(frames)
    k = torch.as_tensor(sim.intrinsics).expand(1, len(frames), 3, 3)
    memory = build_memory("rendered", **config)
    memory.reset(1)
    memory.update(rgb, depth, k, pose)
    return memory


def render_one(sim, memory, pose):
    k = torch.as_tensor(sim.intrinsics)[None, None]
    out = memory.render(pose[None, None], k, (SIZE, SIZE))
    return out.rgb[0, 0], out.depth[0, 0, 0], out.mask[0, 0, 0]


def psnr(a, b, mask):
    return float(-10 * torch.log10(((a - b) ** 2)[:, mask].mean()))


def start(sim):
    return sim.sample_navigable_point(np.random.default_rng(3)), 0.4


def test_render_at_a_seen_pose_reproduces_the_frame(simulator):
    position, yaw = start(simulator)
    yaws = [yaw + math.radians(d) for d in (-20, 0, 20, 40)]
    frames = [observe(simulator, position, y) for y in yaws]
    memory = filled(simulator, frames)  # default settings
    rgb, depth, mask = render_one(simulator, memory, frames[1][2])
    assert float(mask.float().mean()) >= 0.9
    # 30 dB: the frame's own samples lie on their pixel rays and win the second z-buffer pass;
    # the loss is pixels whose voxel holds another view's sample (voxels larger than a pixel).
    assert psnr(rgb, frames[1][0], mask) >= 30.0
    depth_error = (depth - frames[1][1][0])[mask].abs()
    assert float(depth_error.median()) < 1e-3  # exact lifted depths, up to float round-off


def test_render_at_unseen_poses_agrees_with_ground_truth(simulator):
    position, yaw = start(simulator)
    frames = [observe(simulator, position, yaw + math.radians(d)) for d in (-10, 10)]
    memory = filled(simulator, frames)
    simulator.reset_agent(position, yaw - math.radians(10))
    simulator.step(2)  # turn_left by 10 degrees: a heading between the two stored views
    turned = observe(simulator, simulator.position, simulator.yaw)
    simulator.reset_agent(position, yaw)
    assert not simulator.step(1)  # move_forward 0.25 m, unobstructed
    forward = observe(simulator, simulator.position, simulator.yaw)
    for target in (turned, forward):
        rgb, depth, mask = render_one(simulator, memory, target[2])
        assert float(mask.float().mean()) >= 0.8
        # 22 dB: the simulator point-samples textures at 64x64, so a new pixel grid samples
        # other texels (aliasing, worse as surfaces come closer); measured 24.0 (forward) and
        # 25.8 (turn) here, while the wrong-pose control below gives 9.7.
        assert psnr(rgb, target[0], mask) >= 22.0
        error = (depth - target[1][0])[mask].abs()
        assert float(error.median()) < 0.02  # about one voxel-to-surface offset, metres
        # Control: the same map rendered at a camera 30 degrees off does much worse.
        wrong = observe(simulator, position, yaw + math.radians(40))
        assert psnr(render_one(simulator, memory, wrong[2])[0], target[0], mask) < 15.0


# Per-point reference -------------------------------------------------------------------------


def reference_splat(memory, pose, k, size, scale):
    """Obvious z-buffer of one target: loop over points and pixels, same rules and float ops.

    Returns {pixel (i, j): storage index of the winning point}.
    """
    config = memory.config
    rows, xyz, _, _, _, point_size = memory.points()
    row = int(rows[0]) if rows.numel() else 0
    height, width = size
    covers = {}  # pixel -> list of (z, offset, storage index)
    for m in range(rows.numel()):
        if int(rows[m]) != row:
            continue
        camera = pose[:3, :3].double().T @ (xyz[m].double() - pose[:3, 3].double())
        assert torch.equal(camera.float().double(), camera)  # exact: dyadic inputs
        x, y, z = camera.float()
        if not z >= config.near_plane:
            continue
        u = k[0, 0] * x / z + k[0, 2]
        v = k[1, 1] * y / z + k[1, 2]
        extent = scale * point_size[m] / z
        ru = (k[0, 0] * extent).clamp(0.5, config.max_splat_radius)
        rv = (k[1, 1] * extent).clamp(0.5, config.max_splat_radius)
        # Pixel centres within [u - r, u + r], with the float32 bounds the rule is written in.
        left, right = float(torch.ceil(u - ru - 0.5)), float(torch.floor(u + ru - 0.5))
        top, bottom = float(torch.ceil(v - rv - 0.5)), float(torch.floor(v + rv - 0.5))
        for i in range(height):
            for j in range(width):
                if left <= j <= right and top <= i <= bottom:
                    du = (torch.tensor(float(j)) + 0.5 - u) / ru
                    dv = (torch.tensor(float(i)) + 0.5 - v) / rv
                    offset = float(du.square() + dv.square())
                    covers.setdefault((i, j), []).append((float(z), offset, m))
    winners = {}
    for pixel, candidates in covers.items():
        front = torch.tensor(min(c[0] for c in candidates))
        limit = float(front * (1 + config.surface_band) + config.voxel_size)
        band = [c for c in candidates if c[0] <= limit]
        winners[pixel] = min(band, key=lambda c: (c[1], c[2]))  # nearest centre, then index
    return winners


def reference_render(memory, poses, intrinsics, size):
    """Per-target reference: the first splat, then the fill splat where it left holes."""
    config = memory.config
    batch, frames = poses.shape[:2]
    out_rgb = torch.zeros(batch, frames, 3, *size)
    out_depth = torch.zeros(batch, frames, 1, *size)
    out_mask = torch.zeros(batch, frames, 1, *size, dtype=torch.bool)
    for b in range(batch):
        row = memory.select(torch.tensor([b]))
        _, _, rgb, _, _, _ = row.points()
        for t in range(frames):
            args = (row, poses[b, t], intrinsics[b, t], size)
            winners = reference_splat(*args, config.splat_scale)
            for pixel, winner in reference_splat(*args, config.fill_scale).items():
                winners.setdefault(pixel, winner)
            for (i, j), (z, _, m) in winners.items():
                out_rgb[b, t, :, i, j] = rgb[m]
                out_depth[b, t, 0, i, j] = z
                out_mask[b, t, 0, i, j] = True
    return out_rgb, out_depth, out_mask


def dyadic_frames(generator, batch, frames, size):
    """Random RGB-D with depths and poses on a binary grid, so float32 projection is exact."""
    depth = torch.randint(4, 13, (batch, frames, 1, size, size), generator=generator) / 4.0
    rgb = torch.rand(batch, frames, 3, size, size, generator=generator)
    pose = torch.eye(4).repeat(batch, frames, 1, 1)
    pose[..., :3, 3] = torch.randint(-4, 5, (batch, frames, 3), generator=generator) / 8.0
    k = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1.0]])
    return rgb, depth, k.expand(batch, frames, 3, 3), pose


def test_vectorised_render_equals_a_per_point_loop(generator):
    config = RenderedMemoryConfig(voxel_size=0.25, max_splat_radius=2.5, near_plane=0.5)
    memory = RenderedMemory(config)
    memory.reset(2)
    memory.update(*dyadic_frames(generator, 2, 2, 8))
    # Targets: exact rotations (identity, a quarter turn about y) and dyadic translations.
    poses = torch.eye(4).repeat(2, 2, 1, 1)
    poses[:, 1, :3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    poses[..., :3, 3] = torch.tensor([[0.25, -0.125, -0.5], [-0.5, 0.0, 1.0]])
    k = torch.tensor([[4.0, 0, 4], [0, 4, 4], [0, 0, 1]]).expand(2, 2, 3, 3)
    out = memory.render(poses, k, (8, 8))
    rgb, depth, mask = reference_render(memory, poses, k, (8, 8))
    assert out.mask.sum() > 40 and not out.mask.all()  # a case with gaps, overlaps and ties
    assert torch.equal(out.mask, mask)
    assert torch.equal(out.rgb, rgb)
    assert torch.equal(out.depth, depth)
    again = memory.render(poses, k, (8, 8))
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))


def test_culled_render_equals_a_per_point_loop(generator):
    # Cells of 16 voxels are 0.25 m here, and the views are narrow (53 degrees) and face three
    # ways around a map that surrounds them, so most (cell, view) pairs are culled.
    config = RenderedMemoryConfig(voxel_size=1 / 64, max_splat_radius=1.5, near_plane=0.5)
    memory = RenderedMemory(config)
    memory.reset(1)
    rgb, depth, k, pose = dyadic_frames(generator, 1, 3, 8)
    quarter = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    pose[0, 1, :3, :3], pose[0, 2, :3, :3] = quarter, quarter @ quarter
    memory.update(rgb, depth, k, pose)
    targets = torch.eye(4).repeat(1, 3, 1, 1)
    targets[0, 1, :3, :3], targets[0, 2, :3, :3] = quarter.T, quarter @ quarter
    targets[0, :, :3, 3] = torch.tensor([[0.25, 0.0, -0.5], [0.0, 0.125, 0.25], [-0.25, 0, 0]])
    narrow = torch.tensor([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]).expand(1, 3, 3, 3)
    out = memory.render(targets, narrow, (8, 8))
    rgb_ref, depth_ref, mask_ref = reference_render(memory, targets, narrow, (8, 8))
    assert out.mask.sum() > 60
    assert torch.equal(out.mask, mask_ref)
    assert torch.equal(out.rgb, rgb_ref)
    assert torch.equal(out.depth, depth_ref)
    world_to_cam = torch.linalg.inv(targets[0])
    image, _, _ = memory._pairs(world_to_cam, narrow[0], torch.zeros(3, dtype=torch.long), (8, 8))
    assert image.numel() < 0.6 * 3 * int(memory.num_points())  # the cull did act


# Keep rule, eviction, rows -------------------------------------------------------------------


def flat_frame(colour, depth=2.0, size=4, x=0.0):
    """One frame (B=1, T=1) of a fronto-parallel wall in a single colour."""
    rgb = torch.full((1, 1, 3, size, size), colour)
    depth = torch.full((1, 1, 1, size, size), depth)
    k = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1.0]])
    pose = torch.eye(4)
    pose[0, 3] = x
    return rgb, depth, k.expand(1, 1, 3, 3), pose.expand(1, 1, 4, 4)


def test_observed_points_outrank_generated_ones():
    memory = RenderedMemory(RenderedMemoryConfig(voxel_size=0.5))
    memory.reset(1)
    memory.update(*flat_frame(0.1), source="generated")
    assert not memory.points()[3].any()
    memory.update(*flat_frame(0.5), source="observed")  # replaces: observed beats generated
    memory.update(*flat_frame(0.9), source="generated")  # ignored in those voxels
    _, _, rgb, observed, last_seen, _ = memory.points()
    assert observed.all() and torch.all(rgb == 0.5)
    assert torch.all(last_seen == 2)  # but the generated frame still counts as a sighting
    memory.update(*flat_frame(0.3), source=torch.tensor([[True]]))  # newer observed replaces
    assert torch.all(memory.points()[2] == 0.3)
    # One update holding both: the observed frame wins although the generated one is newer.
    both = [torch.cat([a, b], dim=1) for a, b in zip(flat_frame(0.2), flat_frame(0.7), strict=True)]
    fresh = RenderedMemory(RenderedMemoryConfig(voxel_size=0.5))
    fresh.reset(1)
    fresh.update(*both, source=torch.tensor([[True, False]]))
    assert torch.all(fresh.points()[2] == 0.2)


def test_generated_points_never_hide_observed_ones_and_fill_only_holes():
    """A nearer generated wall shows only where the farther observed wall leaves holes."""
    observed_wall = flat_frame(0.5, depth=3.0, size=8, x=-2.0)  # covers the left of the view
    generated_wall = flat_frame(0.9, depth=1.0, size=8, x=1.0)  # the right, nearer
    _, _, k, pose = flat_frame(0.0, size=8)

    def render(*walls):
        memory = RenderedMemory(RenderedMemoryConfig(voxel_size=0.25))
        memory.reset(1)
        for wall, source in walls:
            memory.update(*wall, source=source)
        return memory.render(pose, k, (8, 8))

    only_observed = render((observed_wall, "observed")).mask[0, 0, 0]
    only_generated = render((generated_wall, "generated")).mask[0, 0, 0]
    assert (only_observed & only_generated).any()  # the walls overlap in the view
    both = render((observed_wall, "observed"), (generated_wall, "generated"))
    colour = both.rgb[0, 0, 0]
    assert torch.all(colour[only_observed] == 0.5)  # never hidden by the nearer generated wall
    assert torch.all(colour[only_generated & ~only_observed] == 0.9)  # which fills the holes
    # Control: observed too, the nearer wall wins where the two overlap.
    nearer = render((observed_wall, "observed"), (generated_wall, "observed")).rgb[0, 0, 0]
    assert torch.any(nearer[only_observed & only_generated] == 0.9)


def test_eviction_drops_generated_then_least_recently_seen_and_warns_once():
    memory = RenderedMemory(RenderedMemoryConfig(voxel_size=0.25, max_points=6))
    memory.reset(1)
    # Walls of 2 x 2 pixels at 1 m: 4 points 1 m apart, each in its own voxel.
    memory.update(*flat_frame(0.1, depth=1.0, size=2, x=0.0), source="observed")  # t = 0
    with pytest.warns(UserWarning, match=r"row 0 reached 8 points, over max_points = 6: evicted 2"):
        memory.update(*flat_frame(0.2, depth=1.0, size=2, x=4.0), source="generated")  # t = 1
    _, _, _, observed, last_seen, _ = memory.points()
    assert int(observed.sum()) == 4 and int((~observed).sum()) == 2  # generated went first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per memory
        memory.update(*flat_frame(0.3, depth=1.0, size=2, x=-4.0), source="observed")  # t = 2
    _, _, _, observed, last_seen, _ = memory.points()
    # 10 points, 4 evicted: the 2 generated ones, then 2 of the oldest observed (t = 0).
    assert observed.all()
    assert sorted(last_seen.tolist()) == [0, 0, 2, 2, 2, 2]
    memory.update(*flat_frame(0.4, depth=1.0, size=2, x=8.0), source="observed")  # t = 3
    assert sorted(memory.points()[4].tolist()) == [2, 2, 3, 3, 3, 3]


def two_row_memory():
    memory = RenderedMemory(RenderedMemoryConfig(voxel_size=0.25))
    memory.reset(2)
    a, b = flat_frame(0.2, x=0.0), flat_frame(0.8, x=1.0)
    memory.update(*[torch.cat([p, q]) for p, q in zip(a, b, strict=True)])
    return memory


def test_select_copies_rows_independently():
    memory = two_row_memory()
    k = torch.tensor([[2.0, 0, 2], [0, 2, 2], [0, 0, 1]]).expand(2, 1, 3, 3)
    poses = torch.eye(4).expand(2, 1, 4, 4)
    before = memory.render(poses, k, (4, 4))
    picked = memory.select(torch.tensor([1, 1, 0]))
    assert picked.num_points().tolist() == memory.num_points()[[1, 1, 0]].tolist()
    view = picked.render(poses[[1, 1, 0]], k[[1, 1, 0]], (4, 4))
    for field, original in zip(view, before, strict=True):
        assert torch.equal(field, original[[1, 1, 0]])
    # Writing into one copy touches neither the other copies nor the source.
    rgb, depth, k1, pose = (torch.cat([part] * 3) for part in flat_frame(0.5, depth=0.75))
    picked.update(rgb, depth, k1, pose, valid=torch.tensor([[True], [False], [False]]))
    after = picked.render(poses[[1, 1, 0]], k[[1, 1, 0]], (4, 4))
    assert not torch.equal(after.rgb[0], view.rgb[0])
    assert torch.equal(after.rgb[1:], view.rgb[1:])
    unchanged = memory.render(poses, k, (4, 4))
    assert all(torch.equal(a, b) for a, b in zip(unchanged, before, strict=True))
    # Copies share storage until written (copy on write): writing the source after a select
    # leaves the copy as it was, and the copy's points are its rows' points.
    copy = memory.select(torch.tensor([0, 0]))
    memory.update(rgb[:2], depth[:2], k1[:2], pose[:2])
    assert not torch.equal(memory.render(poses, k, (4, 4)).rgb, before.rgb)
    kept = copy.render(poses[[0, 0]], k[[0, 0]], (4, 4))
    assert all(torch.equal(a, b[[0, 0]]) for a, b in zip(kept, before, strict=True))
    assert copy.points().rows.tolist() == [0] * 16 + [1] * 16


# Interface and bad input ---------------------------------------------------------------------


def test_interface_says_it_gives_a_render_not_tokens_and_renders_empty():
    memory = build_memory("rendered", voxel_size=0.1, token_dim=8)
    memory.reset(2)
    assert memory.gives_render and not memory.gives_tokens
    token_memory = build_memory("feature_map", encoder="pooled_color")
    assert token_memory.gives_tokens and not token_memory.gives_render
    poses = torch.eye(4).expand(2, 3, 4, 4)
    k = torch.tensor([[8.0, 0, 8], [0, 8, 8], [0, 0, 1]]).expand(2, 3, 3, 3)
    with pytest.raises(TypeError, match="RenderedMemory gives no tokens: read it with render"):
        memory.tokens(poses, k, (16, 16))
    token_memory.reset(2)
    with pytest.raises(TypeError, match="FeatureMap3D gives no render: read it with tokens"):
        token_memory.render(poses, k, (16, 16))
    out = memory.render(poses, k, (16, 16))
    assert out.rgb.shape == (2, 3, 3, 16, 16) and out.last_seen.shape == (2, 3, 1, 16, 16)
    assert not out.mask.any() and torch.all(out.last_seen == -1)


def test_invalid_depth_is_masked_never_splatted():
    rgb, depth, k, pose = flat_frame(0.5, size=4)
    depth = depth.clone()
    depth[..., 0, :] = torch.tensor([0.0, float("nan"), -1.0, 11.0])  # 11 m > max_depth = 10
    memory = RenderedMemory(RenderedMemoryConfig(voxel_size=0.01))
    memory.reset(1)
    memory.update(rgb, depth, k, pose)
    assert memory.num_points().tolist() == [12]  # the 12 valid pixels, one voxel each
    assert torch.isfinite(memory.points()[1]).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("voxel_size", 0.0, r"voxel_size must be in \[0.001, 10\] metres, got 0.0"),
        ("max_points", 0, r"max_points must be in \[1, 2\^31\), got 0"),
        ("max_splat_radius", 0.1, r"max_splat_radius must be in \[0.5, 64\] pixels, got 0.1"),
        ("near_plane", 20.0, r"near_plane must be in \(0, max_depth = 10.0\) metres, got 20.0"),
        ("surface_band", -0.1, r"surface_band must be in \[0, 1\], got -0.1"),
    ],
)
def test_config_errors_name_field_value_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        RenderedMemoryConfig(**{field: value})


def test_bad_inputs_raise_with_expected_and_given():
    memory = RenderedMemory()
    rgb, depth, k, pose = flat_frame(0.5, size=8)
    with pytest.raises(RuntimeError, match="call reset"):
        memory.update(rgb, depth, k, pose)
    memory.reset(1)
    skewed = pose.clone()
    skewed[..., 0, 0] = 2.0
    with pytest.raises(ValueError, match=r"cam_to_world\[0\] is not a rigid transform"):
        memory.update(rgb, depth, k, skewed)
    too_big = k * torch.tensor([[2.0, 1, 2], [1, 2, 2], [1, 1, 1]])  # K for 16x16 frames
    with pytest.raises(
        ValueError,
        match=r"principal point at \(cx, cy\) = \(8.00, 8.00\) px, but "
        r"images of 8x8 \(H x W\) need it within \(2, 6\) x \(2, 6\)",
    ):
        memory.update(rgb, depth, too_big, pose)
    with pytest.raises(ValueError, match=r"principal point"):
        memory.render(pose, k, (32, 32))
    bright = rgb.clone()
    bright[..., 0, 0, 0] = 255.0  # uint8 scale
    with pytest.raises(ValueError, match=r"rgb must lie in \[0, 1\], got values in \[0.5, 255\]"):
        memory.update(bright, depth, k, pose)
    with pytest.raises(ValueError, match=r"source must be one of \('observed', 'generated'\)"):
        memory.update(rgb, depth, k, pose, source="imagined")
    with pytest.raises(
        ValueError, match=r"source must have shape \(1, 1\) to match rgb, got \(2,\)"
    ):
        memory.update(rgb, depth, k, pose, source=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"depth must have shape \(1, 1, 1, 8, 8\)"):
        memory.update(rgb, depth[..., :4], k, pose)


def test_splitting_updates_does_not_change_the_map(simulator):
    position, yaw = start(simulator)
    frames = [observe(simulator, position, yaw + math.radians(d)) for d in (0, 15, 30, 45)]
    whole = filled(simulator, frames)
    parts = filled(simulator, frames[:1])
    k = torch.as_tensor(simulator.intrinsics).expand(1, 1, 3, 3)
    for rgb, depth, pose in frames[1:]:
        parts.update(rgb[None, None], depth[None, None], k, pose[None, None])
    assert all(torch.equal(a, b) for a, b in zip(whole.points(), parts.points(), strict=True))


def test_level_of_detail_draws_far_cells_from_fewer_points_and_stays_close(simulator):
    position, yaw = start(simulator)
    yaws = [yaw + math.radians(d) for d in range(-40, 50, 10)]
    frames = [observe(simulator, position, y) for y in yaws]
    exact = filled(simulator, frames)
    coarse = filled(simulator, frames, level_of_detail=1.0)
    tiny = filled(simulator, frames, level_of_detail=1e-3)  # no cell is far enough for a level
    k = torch.as_tensor(simulator.intrinsics)
    pose = frames[4][2].clone()
    pose[:3, 3] -= 2.0 * pose[:3, 2]  # 2 m behind the middle view: most cells are far
    target = (None, None, pose)
    world_to_cam = torch.linalg.inv(target[2])[None]
    pairs = [
        m._pairs(world_to_cam, k[None], torch.zeros(1, dtype=torch.long), (SIZE, SIZE))[0]
        for m in (exact, coarse)
    ]
    assert pairs[1].numel() < 0.5 * pairs[0].numel()  # measured 0.36
    reference = render_one(simulator, exact, target[2])
    assert all(
        torch.equal(a, b)
        for a, b in zip(render_one(simulator, tiny, target[2]), reference, strict=True)
    )
    rgb, depth, mask = render_one(simulator, coarse, target[2])
    assert float(mask.float().mean()) >= float(reference[2].float().mean()) - 0.01
    both = mask & reference[2]
    # Another sample of the same surfaces: close to the exact render (measured 29.1 dB), closer
    # than a new pixel grid is to the ground truth (the test above: 22-26 dB).
    assert psnr(rgb, reference[0], both) >= 28.0
    assert float((depth - reference[1])[both].abs().median()) < 0.02
    # The same map drawn at another level of detail shares its points and renders as if built so.
    view = exact.with_level_of_detail(1.0)
    assert view.xyz is exact.xyz and view.config.level_of_detail == 1.0
    assert all(
        torch.equal(a, b)
        for a, b in zip(render_one(simulator, view, target[2]), (rgb, depth, mask), strict=True)
    )
    assert exact.config.level_of_detail is None  # the map itself is unchanged
