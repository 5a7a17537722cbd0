"""Clip memory coverage by visibility, the overlap memory, the clip sampler and its cache."""

import math

import numpy as np
import pytest
import torch

from worldsim.data import (
    NO_ACTION,
    SHARD_DIR,
    ClipConfig,
    ClipDataset,
    ClipDraw,
    ClipSampler,
    CoverageConfig,
    Episode,
    clip_coverage,
    collate_clips,
    complete_plan,
    shard_name,
    subsample_depth,
    write_manifest,
    write_plan,
    write_shard,
)
from worldsim.data.synthetic import render_box_room
from worldsim.data.visibility import DepthConsistency, memory_only_coverage
from worldsim.geometry import depth_to_world_points, intrinsics_from_hfov, project_points

SIZE = 12  # pixels per side: small enough for a per-pixel Python reference
WALL_Z = 4.0  # the wall is the plane z = 4 m, facing the cameras
BOX = (np.array([-1.0, 0.0, 1.5]), np.array([1.0, 2.0, 1.9]))  # an occluding box, min / max corner


def camera(x, z, yaw):
    """cam_to_world of an OpenCV camera at (x, 1, z) looking along +z turned by ``yaw`` about y."""
    # Camera x right = world -x, y down = world -y, z forward = world +z at yaw 0 (det +1).
    base = np.diag([-1.0, -1.0, 1.0])
    c, s = math.cos(yaw), math.sin(yaw)
    turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    pose = np.eye(4)
    pose[:3, :3] = turn @ base
    pose[:3, 3] = [x, 1.0, z]
    return pose.astype(np.float32)


def render_wall_and_box(pose, k, size):
    """(size, size) z-depth of the wall and the box seen by one camera, by ray casting."""
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    directions = rays @ pose[:3, :3].T.astype(np.float64)  # world, camera z = 1: t is z-depth
    origin = pose[:3, 3].astype(np.float64)
    best = (WALL_Z - origin[2]) / directions[..., 2]
    best = np.where(best > 0, best, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = (BOX[0] - origin) / directions
        high = (BOX[1] - origin) / directions
    near = np.nanmax(np.minimum(low, high), axis=-1)
    far = np.nanmin(np.maximum(low, high), axis=-1)
    hit = (near <= far) & (near > 0)
    depth = np.where(hit & (near < best), near, best)
    return np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)  # 0 = nothing hit


def wall_episode(poses, size=SIZE, scene="scene-a", episode=0):
    """An Episode of the wall-and-box scene seen from ``poses``."""
    k = intrinsics_from_hfov(90.0, size, size).numpy()
    depth = np.stack([render_wall_and_box(pose, k, size) for pose in poses])[..., None]
    frames = len(poses)
    return Episode(
        scene_id=scene,
        episode=episode,
        rgb=np.zeros((frames, size, size, 3), dtype=np.uint8),
        depth=depth,
        cam_to_world=np.stack(poses),
        intrinsics=np.repeat(k[None], frames, 0),
        actions=np.append(np.full(frames - 1, 1, dtype=np.int64), NO_ACTION),
        collided=np.zeros(frames, dtype=bool),
        metadata={"policy": "synthetic"},
    )


WALL_POSES = [
    camera(-1.5, 0.0, 0.3),  # 0: the left of the wall, and the box's left side
    camera(1.5, 0.0, -0.3),  # 1: the right of the wall
    camera(0.0, -0.5, 0.0),  # 2: straight on: the box hides the wall's middle
    camera(1.2, 0.8, -0.5),  # 3: from the right: part of the wall behind the box
    camera(-1.0, 0.5, 0.4),  # 4: from the left
]


def write_store(root, episodes, plan="run"):
    """A complete data set folder with one shard per episode, depth stored as float32."""
    write_manifest(root, {"seed": 0})
    names = [shard_name(e.scene_id, e.episode, 1) for e in episodes]
    write_plan(root, plan, names)
    for name, episode in zip(names, episodes, strict=True):
        write_shard(root / SHARD_DIR / name, [episode], depth_dtype="float32")
    complete_plan(root, plan, {})


def brute_force_coverage(episode, start, n_context, n_future, consistency):
    """Memory-only coverage of one clip, pixel by pixel (the rule of worldsim.data.visibility)."""
    depth = episode.depth[..., 0].astype(np.float64)
    poses = episode.cam_to_world.astype(np.float64)
    k = episode.intrinsics[0].astype(np.float64)
    height, width = depth.shape[1:]

    def sees(frame, point):
        camera_point = np.linalg.inv(poses[frame]) @ np.append(point, 1.0)
        z = camera_point[2]
        if z <= 0:
            return False
        u = k[0, 0] * camera_point[0] / z + k[0, 2]
        v = k[1, 1] * camera_point[1] / z + k[1, 2]
        if not (0 <= u < width and 0 <= v < height):
            return False
        measured = depth[frame, math.floor(v), math.floor(u)]
        ok = 0 < measured <= consistency.max_depth
        return ok and abs(z - measured) < consistency.rel_tol * measured + consistency.abs_tol

    only = valid = 0
    context = range(start, start + n_context)
    for t in range(start + n_context, start + n_context + n_future):
        for row in range(height):
            for col in range(width):
                d = depth[t, row, col]
                if not 0 < d <= consistency.max_depth:
                    continue
                valid += 1
                ray = np.array([(col + 0.5 - k[0, 2]) / k[0, 0], (row + 0.5 - k[1, 2]) / k[1, 1]])
                point = (poses[t] @ np.array([ray[0] * d, ray[1] * d, d, 1.0]))[:3]
                by_memory = any(sees(s, point) for s in range(start))
                by_context = any(sees(s, point) for s in context)
                only += by_memory and not by_context
    return only / max(valid, 1)


# ------------------------------------------------------------------------------------ coverage
def test_subsampled_depth_keeps_the_rays_of_its_pixels():
    pose = torch.from_numpy(camera(0.3, 0.2, 0.4))[None]
    big = intrinsics_from_hfov(90.0, 32, 32)[None]
    _, depth = render_box_room(pose, big, 32, 32)
    sampled, k = subsample_depth(depth[:, 0], big, 8)
    _, direct = render_box_room(pose, k, 8, 8)
    assert sampled.shape == (1, 8, 8)
    # The same rays cast twice in float32: equal up to rounding of the ray directions.
    torch.testing.assert_close(sampled, direct[:, 0], rtol=1e-5, atol=1e-6)


def test_coverage_matches_a_per_pixel_reference_with_occlusion():
    episode = wall_episode(WALL_POSES)
    consistency = DepthConsistency()
    # Every earlier frame a candidate, full resolution: the measure is exact, not a lower bound.
    config = CoverageConfig(resolution=SIZE, prefilter_resolution=4, candidates=len(WALL_POSES))
    starts = np.array([0, 1, 2, 3])
    coverage, picks = clip_coverage(
        episode.depth, episode.cam_to_world, episode.intrinsics, starts, 1, 1, config
    )
    expected = [brute_force_coverage(episode, a, 1, 1, consistency) for a in starts]
    # Same rule in float32 vs float64: a pixel within 1e-6 m of a tolerance could flip, none does.
    np.testing.assert_allclose(coverage, expected, rtol=0, atol=1e-12)
    assert coverage[0] == 0.0  # nothing before frame 0
    assert coverage[2] > 0.05 and coverage[3] > 0.05  # the memory explains part of the future
    for start, row in zip(starts, picks, strict=True):
        assert set(row[row >= 0]) <= set(range(start))


def test_a_box_hides_the_wall_behind_it_from_the_memory():
    """The memory frame sees the wall except behind the box; a frustum test would count it."""
    memory = camera(0.0, -0.5, 0.0)  # the box stands between it and the wall's middle
    context = camera(0.0, -0.5, math.pi)  # facing away: sees nothing of the future
    future = camera(1.5, 2.2, 0.0)  # past the box, facing the wall right of the middle
    episode = wall_episode([memory, context, future])
    coverage, picks = clip_coverage(
        episode.depth,
        episode.cam_to_world,
        episode.intrinsics,
        np.array([1]),
        1,
        1,
        CoverageConfig(resolution=SIZE, candidates=3),
    )
    assert coverage[0] == brute_force_coverage(episode, 1, 1, 1, DepthConsistency())
    assert picks[0, 0] == 0
    # The share of the future's pixels inside the memory camera's frustum, occlusion ignored.
    k = episode.intrinsics[0]
    points = torch.from_numpy(episode.depth[2, ..., 0])
    world = depth_to_world_points(
        points[None], torch.from_numpy(k)[None], torch.from_numpy(future)[None]
    )
    uv, z = project_points(
        world.reshape(1, -1, 3), torch.from_numpy(k)[None], torch.from_numpy(memory)[None]
    )
    inside = (z > 0) & (uv >= 0).all(-1) & (uv < SIZE).all(-1)
    frustum_share = float(inside.float().mean())
    assert 0 < coverage[0] < frustum_share - 0.1


# ------------------------------------------------------------------------------------ memory
def test_overlap_memory_sees_more_of_the_future_than_a_shuffled_one(tmp_path):
    # A camera sweeping across the wall and coming back: the future revisits early frames.
    poses = [camera(x, -0.2, 0.0) for x in np.linspace(-2.0, 2.0, 9)]
    poses += [camera(x, -0.2, 0.6) for x in np.linspace(2.0, -2.0, 9)]
    poses += [camera(x, -0.2, -0.6) for x in np.linspace(-2.0, 0.0, 6)]
    write_store(tmp_path, [wall_episode(poses)])
    config = ClipConfig(
        n_context=1, n_future=2, max_memory_frames=2, coverage=CoverageConfig(resolution=SIZE)
    )
    overlap = ClipDataset(tmp_path, config)
    generator = np.random.default_rng(0)
    chosen, shuffled = [], []
    for index in np.flatnonzero(overlap.is_memory_dependent):
        item = overlap[int(index)]
        start = int(item["start"])
        if start <= 2:
            continue
        random_frames = np.sort(generator.choice(start, 2, replace=False))
        frames = overlap.store.read_frames(0, random_frames)
        random_depth = torch.from_numpy(frames["depth"]).permute(0, 3, 1, 2)
        for memory_depth, memory_pose, result in (
            (item["memory_depth"], item["memory_cam_to_world"], chosen),
            (random_depth, torch.from_numpy(frames["cam_to_world"]), shuffled),
        ):
            fraction, _ = memory_only_coverage(
                item["depth"][None, 1:],
                item["intrinsics"][None, 1:],
                item["cam_to_world"][None, 1:],
                memory_depth[None],
                item["intrinsics"][None, :2].expand(1, 2, 3, 3),
                memory_pose[None],
                item["depth"][None, :1],
                item["intrinsics"][None, :1],
                item["cam_to_world"][None, :1],
            )
            result.append(float(fraction.mean()))
    assert len(chosen) >= 5
    chosen, shuffled = np.array(chosen), np.array(shuffled)
    # The greedy cover is not optimal per clip, but it never loses by much and wins on average.
    assert chosen.mean() > shuffled.mean() + 0.05
    assert (chosen >= shuffled - 0.05).mean() >= 0.9


# ------------------------------------------------------------------------------------ sampler
def test_sampler_draws_the_configured_shares():
    dependent = np.arange(1000) % 10 < 3  # 30 % of the clips are memory-dependent
    draws = list(ClipSampler(dependent, 0.5, 0.15, 20000, torch.Generator().manual_seed(0)))
    empty = np.array([draw.empty_memory for draw in draws])
    kept = np.array([dependent[draw.index] for draw in draws])[~empty]
    # 5 binomial standard deviations: a false alarm about once in 2 million runs.
    for share, expected, count in ((empty.mean(), 0.15, len(draws)), (None, 0.5, len(draws))):
        observed = share if share is not None else kept.sum() / len(draws)
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / count)
    # Emptied clips are drawn from all clips: their dependent share is the data set's (30 %).
    dependent_empty = np.array([dependent[d.index] for d in draws if d.empty_memory])
    assert abs(dependent_empty.mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / len(dependent_empty))


def test_sampler_is_deterministic_under_a_seed():
    dependent = np.arange(50) % 4 == 0
    first = list(ClipSampler(dependent, 0.5, 0.2, 100, torch.Generator().manual_seed(3)))
    again = list(ClipSampler(dependent, 0.5, 0.2, 100, torch.Generator().manual_seed(3)))
    other = list(ClipSampler(dependent, 0.5, 0.2, 100, torch.Generator().manual_seed(4)))
    assert first == again and first != other


def test_sampler_without_dependent_clips_is_an_error():
    with pytest.raises(ValueError, match="0 of 10 clips are memory-dependent"):
        ClipSampler(np.zeros(10, dtype=bool), 0.5, 0.15, 10, torch.Generator())


def test_drawn_items_carry_their_coverage_and_empty_memories(tmp_path):
    write_store(tmp_path, [wall_episode(WALL_POSES * 3)])
    config = ClipConfig(
        n_context=1, n_future=1, max_memory_frames=3, coverage=CoverageConfig(resolution=SIZE)
    )
    dataset = ClipDataset(tmp_path, config)
    draws = list(dataset.clip_sampler(40, torch.Generator().manual_seed(0)))
    assert all(isinstance(draw, ClipDraw) for draw in draws)
    items = [dataset[draw] for draw in draws]
    batch = collate_clips(items)
    assert batch["memory_dropped"].tolist() == [draw.empty_memory for draw in draws]
    assert batch["start"].tolist() == [draw.index for draw in draws]  # clip index = start here
    dropped = batch["memory_dropped"]
    assert dropped.any() and not dropped.all()
    assert not batch["memory_mask"][dropped].any()
    assert batch["memory_coverage"].dtype == torch.float32
    starts = batch["start"].numpy()
    np.testing.assert_array_equal(
        batch["memory_coverage"].numpy(),
        dataset.memory_coverage[starts],  # one episode, stride 1: clip index = start
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_selection": "recent"}, "memory_selection"),
        ({"memory_dependent_threshold": 0.0}, "memory_dependent_threshold"),
        ({"memory_dependent_fraction": 1.5}, "memory_dependent_fraction"),
        ({"empty_memory_fraction": -0.1}, "empty_memory_fraction"),
        ({"memory_dependent_fraction": 0.9, "empty_memory_fraction": 0.2}, "<= 1"),
    ],
)
def test_sampling_fields_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipConfig(**kwargs)


def test_coverage_config_is_validated():
    with pytest.raises(ValueError, match=r"CoverageConfig\.candidates must be >= 1, got 0"):
        CoverageConfig(candidates=0)


def test_coverage_measured_by_worker_processes_equals_one_process(tmp_path):
    # Two episodes, so the two workers each take one.
    write_store(
        tmp_path, [wall_episode(WALL_POSES), wall_episode(WALL_POSES[::-1], scene="scene-b")]
    )
    config = ClipConfig(n_context=1, n_future=1, coverage=CoverageConfig(resolution=SIZE))
    alone = ClipDataset(tmp_path, config, coverage_cache=tmp_path / "alone.npz")
    pooled = ClipDataset(
        tmp_path, config, coverage_cache=tmp_path / "pooled.npz", coverage_workers=2
    )
    assert alone.memory_coverage.max() > 0
    np.testing.assert_array_equal(pooled.memory_coverage, alone.memory_coverage)
    np.testing.assert_array_equal(pooled.memory_ranking, alone.memory_ranking)
    with pytest.raises(ValueError, match="coverage_workers must be >= 1, got 0"):
        ClipDataset(tmp_path, config, coverage_workers=0)


# ------------------------------------------------------------------------------------ cache
def test_cache_is_read_back_and_rebuilt_when_the_data_change(tmp_path):
    write_store(tmp_path, [wall_episode(WALL_POSES)])
    config = ClipConfig(n_context=1, n_future=1, coverage=CoverageConfig(resolution=SIZE))
    measured = ClipDataset(tmp_path, config).memory_coverage.copy()
    path = ClipDataset(tmp_path, config).coverage_cache
    assert path.is_file() and path.parent.parent == tmp_path

    # A planted value proves that a second dataset reads the file instead of measuring.
    with np.load(path) as stored:
        planted = {name: stored[name] for name in stored.files}
    planted["coverage"] = np.full_like(planted["coverage"], 0.25)
    np.savez(path, **planted)
    assert (ClipDataset(tmp_path, config).memory_coverage == 0.25).all()

    # New episodes (another view order): the fingerprint changes, the cache is re-measured.
    for shard in (tmp_path / SHARD_DIR).iterdir():
        shard.unlink()
    changed = wall_episode(WALL_POSES[::-1])
    write_shard(
        tmp_path / SHARD_DIR / shard_name("scene-a", 0, 1), [changed], depth_dtype="float32"
    )
    rebuilt = ClipDataset(tmp_path, config).memory_coverage
    assert not (rebuilt == 0.25).all()
    expected, _ = clip_coverage(
        changed.depth,
        changed.cam_to_world,
        changed.intrinsics,
        np.arange(len(WALL_POSES) - 1),
        1,
        1,
        config.coverage,
    )
    np.testing.assert_array_equal(rebuilt, expected.astype(np.float32))
    assert not np.array_equal(rebuilt, measured)
