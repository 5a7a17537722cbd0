"""The trajectory format, the view-overlap rule and the clip dataset, on synthetic trajectories."""

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from worldsim.data import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    NO_ACTION,
    SHARD_DIR,
    ClipConfig,
    ClipDataset,
    DataFormatError,
    Episode,
    RevisitConfig,
    ShardReader,
    TrajectoryStore,
    collate_clips,
    complete_plan,
    dataset_statistics,
    frustum_overlap,
    frustum_samples,
    memory_frame_indices,
    read_manifest,
    revisit_sources,
    shard_name,
    temporary_path,
    write_manifest,
    write_plan,
    write_shard,
)
from worldsim.geometry import (
    Action,
    action_to_relative_pose,
    intrinsics_from_hfov,
    pose_from_position_yaw,
)

SIZE = 8  # pixels per image side: enough to tell frames apart, cheap to write


def make_episode(scene_id, episode, actions, rng, *, stopped=False):
    """A synthetic episode: free-space poses from the actions, random images and depths."""
    actions = np.asarray(actions, dtype=np.int64)
    frames = len(actions) + 1
    start = pose_from_position_yaw(torch.tensor([1.0, 0.0, 2.0]), torch.tensor(0.3))
    poses = [start]
    for relative in action_to_relative_pose(torch.as_tensor(actions)):
        poses.append(poses[-1] @ relative)
    last = 0 if stopped else NO_ACTION
    return Episode(
        scene_id=scene_id,
        episode=episode,
        rgb=rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8),
        depth=rng.uniform(0.0, 9.0, (frames, SIZE, SIZE, 1)).astype(np.float32),
        cam_to_world=torch.stack(poses).numpy().astype(np.float32),
        intrinsics=np.repeat(intrinsics_from_hfov(90.0, SIZE, SIZE).numpy()[None], frames, 0),
        actions=np.append(actions, last),
        collided=rng.random(frames) < 0.1,
        metadata={"policy": "synthetic", "seed": 7, "revisit_frames": 1},
    )


def random_actions(rng, count):
    return rng.choice([Action.MOVE_FORWARD, Action.TURN_LEFT, Action.TURN_RIGHT], count)


def make_dataset(root, rng, scenes=("scene-a", "scene-b"), episodes=2, steps=30):
    """A complete dataset folder: a manifest, one plan, one shard per scene."""
    write_manifest(root, {"seed": 7, "policies": {"synthetic": 1.0}})
    names = [shard_name(scene, 0, episodes) for scene in scenes]
    write_plan(root, "scenes-00000-00002", names)
    written = {}
    for scene, name in zip(scenes, names, strict=True):
        batch = [make_episode(scene, e, random_actions(rng, steps), rng) for e in range(episodes)]
        write_shard(root / SHARD_DIR / name, batch)
        for episode in batch:
            written[(scene, episode.episode)] = episode.with_depth_dtype("float16")
    complete_plan(root, "scenes-00000-00002", {"episodes": len(written)})
    return written


# ------------------------------------------------------------------------------------ format
def test_shard_round_trip_keeps_every_array_and_the_hash(tmp_path, rng):
    episodes = [make_episode("scene-a", e, random_actions(rng, 12), rng) for e in (3, 4)]
    path = tmp_path / shard_name("scene-a", 3, 5)
    size = write_shard(path, episodes, depth_dtype="float16", compression="gzip")
    assert size == path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    with ShardReader(path) as reader:
        assert [info.episode for info in reader.episodes] == [3, 4]
        for original in episodes:
            loaded = reader.read_episode(original.episode)
            stored = original.with_depth_dtype("float16")
            for name in ("rgb", "depth", "cam_to_world", "intrinsics", "actions", "collided"):
                np.testing.assert_array_equal(getattr(loaded, name), getattr(stored, name))
            assert loaded.depth.dtype == np.float16
            assert loaded.metadata == original.metadata
            assert loaded.content_hash() == stored.content_hash()
            assert reader.episodes[original.episode - 3].content_hash == stored.content_hash()
        reader.verify()
        frames = reader.read_frames(4, np.array([0, 5, 11]))
        np.testing.assert_array_equal(frames["rgb"], episodes[1].rgb[[0, 5, 11]])


def test_float32_depth_is_stored_exactly(tmp_path, rng):
    episode = make_episode("scene-a", 0, random_actions(rng, 5), rng)
    path = tmp_path / shard_name("scene-a", 0, 1)
    write_shard(path, [episode], depth_dtype="float32", compression="none")
    with ShardReader(path) as reader:
        np.testing.assert_array_equal(reader.read_episode(0).depth, episode.depth)


def test_content_hash_changes_with_any_pixel(rng):
    episode = make_episode("scene-a", 0, random_actions(rng, 5), rng)
    rgb = episode.rgb.copy()
    rgb[3, 2, 1, 0] ^= 1
    fields = {name: getattr(episode, name) for name in episode.__dataclass_fields__}
    assert Episode(**{**fields, "rgb": rgb}).content_hash() != episode.content_hash()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actions": np.array([1, 7, -1])}, "actions"),
        ({"actions": np.array([1, 1, 2])}, "last action"),
        ({"depth": np.full((3, SIZE, SIZE, 1), np.nan, np.float32)}, "NaN"),
        ({"rgb": np.zeros((3, SIZE, SIZE, 3), np.float32)}, "rgb must be uint8"),
        ({"cam_to_world": np.zeros((2, 4, 4), np.float32)}, "cam_to_world"),
        ({"scene_id": "../evil"}, "scene id"),
    ],
)
def test_episode_rejects_bad_arrays(rng, change, message):
    episode = make_episode("scene-a", 0, [1, 1], rng)
    fields = {name: getattr(episode, name) for name in episode.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        Episode(**{**fields, **change})


def test_shard_name_must_match_its_episodes(tmp_path, rng):
    episode = make_episode("scene-a", 2, [1], rng)
    with pytest.raises(ValueError, match="does not match"):
        write_shard(tmp_path / shard_name("scene-a", 0, 1), [episode])


def test_truncated_shard_is_reported_by_name(tmp_path, rng):
    written = make_dataset(tmp_path, rng)
    assert written
    path = sorted((tmp_path / SHARD_DIR).glob("*.h5"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=str(path)):
        TrajectoryStore(tmp_path)


def test_foreign_files_are_reported_by_name(tmp_path, rng):
    make_dataset(tmp_path, rng)
    path = sorted((tmp_path / SHARD_DIR).glob("*.h5"))[0]
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataFormatError, match="cannot be opened as HDF5"):
        ShardReader(path)
    with h5py.File(path, "w") as file:
        file.attrs["format"] = "someone-else"
    with pytest.raises(DataFormatError, match=f"{path}.*not a persistent-world"):
        TrajectoryStore(tmp_path)


def test_unlisted_shard_is_an_error(tmp_path, rng):
    make_dataset(tmp_path, rng)
    source = sorted((tmp_path / SHARD_DIR).glob("*.h5"))[0]
    stray = tmp_path / SHARD_DIR / shard_name("scene-z", 0, 2)
    shutil.copy(source, stray)
    with pytest.raises(DataFormatError, match=f"{stray}.*not listed in any plan"):
        TrajectoryStore(tmp_path)


def test_leftover_temporary_files_are_reported_not_read(tmp_path, rng):
    written = make_dataset(tmp_path, rng)
    leftover = temporary_path(tmp_path / SHARD_DIR / shard_name("scene-a", 0, 2))
    leftover.write_bytes(b"half a shard")
    with pytest.warns(UserWarning, match=f"1 temporary files .*{leftover.name}"):
        store = TrajectoryStore(tmp_path)
    assert len(store.episodes) == len(written)


def test_missing_shard_of_a_complete_plan_is_an_error(tmp_path, rng):
    make_dataset(tmp_path, rng)
    path = sorted((tmp_path / SHARD_DIR).glob("*.h5"))[1]
    path.unlink()
    with pytest.raises(DataFormatError, match=f"{path} is missing"):
        TrajectoryStore(tmp_path)


def test_incomplete_dataset_needs_consent(tmp_path, rng):
    write_manifest(tmp_path, {"seed": 1})
    names = [shard_name("scene-a", 0, 1), shard_name("scene-a", 1, 2)]
    write_plan(tmp_path, "run", names)
    write_shard(tmp_path / SHARD_DIR / names[0], [make_episode("scene-a", 0, [1, 2], rng)])
    with pytest.raises(DataFormatError, match=r"incomplete.*1 shards not collected"):
        TrajectoryStore(tmp_path)
    with pytest.warns(UserWarning, match="incomplete"):
        store = TrajectoryStore(tmp_path, allow_incomplete=True)
    assert [(i.scene_id, i.episode, i.num_frames) for i in store.episodes] == [("scene-a", 0, 3)]
    with pytest.raises(DataFormatError, match="cannot be complete"):
        complete_plan(tmp_path, "run", {})


def test_manifest_of_another_version_or_settings_is_refused(tmp_path):
    write_manifest(tmp_path, {"seed": 1, "size": 64})
    write_manifest(tmp_path, {"seed": 1, "size": 64})  # same settings: accepted
    with pytest.raises(DataFormatError, match="size: folder has 64, this run has 32"):
        write_manifest(tmp_path, {"seed": 1, "size": 32})
    path = tmp_path / MANIFEST_NAME
    content = json.loads(path.read_text())
    path.write_text(json.dumps({**content, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(DataFormatError, match=f"{path}.*format version {FORMAT_VERSION + 1}"):
        read_manifest(tmp_path)
    path.write_text("{ truncated")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        read_manifest(tmp_path)
    path.unlink()
    with pytest.raises(DataFormatError, match=r"manifest .* is missing"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------------------------ overlap
def reference_overlap(points, cam_to_world, intrinsics, height, width, near, far):
    """Per-point loop: into the camera frame with a general inverse, then the frustum test."""
    world_to_cam = np.linalg.inv(cam_to_world)
    inside = 0
    for point in points:
        x, y, z = (world_to_cam @ np.append(point, 1.0))[:3]
        if not near - 1e-9 <= z <= far + 1e-9:
            continue
        u = intrinsics[0, 0] * x / z + intrinsics[0, 2]
        v = intrinsics[1, 1] * y / z + intrinsics[1, 2]
        inside += 0 <= u <= width and 0 <= v <= height
    return inside / len(points)


def yaw_pose(x, z, yaw):
    return pose_from_position_yaw(torch.tensor([x, 0.0, z]), torch.tensor(yaw)).double()


def test_frustum_overlap_hand_cases():
    config = RevisitConfig(grid=6, depth_samples=3, near=0.5, far=3.0)
    k = intrinsics_from_hfov(90.0, 64, 64)[None].double()
    a = yaw_pose(0.0, 0.0, 0.0)[None]
    points = frustum_samples(a, k, 64, 64, config)
    assert points.shape == (1, 6 * 6 * 3, 3)
    same = frustum_overlap(points, a, k, 64, 64, config)
    behind = frustum_overlap(points, yaw_pose(0.0, 0.0, math.pi)[None], k, 64, 64, config)
    beside = frustum_overlap(points, yaw_pose(0.0, 0.0, math.pi / 2)[None], k, 64, 64, config)
    # B 1 m behind A (yaw 0 looks along -z): A's planes at z = 0.5, 1.75, 3 sit at 1.5, 2.75, 4
    # in B; the first two lie inside B's 90 deg view, the last beyond far: 72 of 108 points.
    back = frustum_overlap(points, yaw_pose(0.0, 1.0, 0.0)[None], k, 64, 64, config)
    # B 1 m ahead: planes at -0.5 (out), 0.75 (rays with |tan| <= 0.75 / 1.75: 2 x 2 of the
    # grid's tan values +-1/6, +-1/2, +-5/6) and 2 (|tan| <= 2 / 3: 4 x 4): 20 of 108 points.
    ahead = frustum_overlap(points, yaw_pose(0.0, -1.0, 0.0)[None], k, 64, 64, config)
    assert same.tolist() == [1.0]
    assert behind.tolist() == [0.0]
    assert beside.tolist() == [0.0]
    assert back.tolist() == [72 / 108]
    assert ahead.tolist() == [20 / 108]


def test_frustum_overlap_matches_a_per_point_reference(rng):
    config = RevisitConfig(grid=4, depth_samples=3, near=0.5, far=4.0)
    poses = torch.stack(
        [yaw_pose(*rng.uniform(-1.5, 1.5, 2), rng.uniform(-math.pi, math.pi)) for _ in range(12)]
    )
    k = intrinsics_from_hfov(75.0, 40, 30)[None].double().expand(12, 3, 3)
    points = frustum_samples(poses, k, 30, 40, config)
    other = poses.roll(1, dims=0)
    fast = frustum_overlap(points, other, k, 30, 40, config).numpy()
    slow = [
        reference_overlap(p, o, kk, 30, 40, config.near, config.far)
        for p, o, kk in zip(points.numpy(), other.numpy(), k.numpy(), strict=True)
    ]
    np.testing.assert_allclose(fast, slow, atol=1e-12)  # same arithmetic up to rounding
    assert 0 < np.count_nonzero(fast) < 12  # the case mixes overlapping and disjoint pairs


def test_revisit_sources_match_a_brute_force_loop(rng):
    config = RevisitConfig(min_gap=5, threshold=0.25, grid=4, depth_samples=2)
    episode = make_episode("scene-a", 0, random_actions(rng, 59), rng)
    sources = revisit_sources(episode.cam_to_world, episode.intrinsics, SIZE, SIZE, config)
    poses = torch.from_numpy(episode.cam_to_world).double()
    k = torch.from_numpy(episode.intrinsics).double()
    points = frustum_samples(poses, k, SIZE, SIZE, config).numpy()
    expected = []
    for t in range(60):
        found = -1
        for s in range(t - config.min_gap + 1):
            shared = reference_overlap(
                points[t], poses[s].numpy(), k[s].numpy(), SIZE, SIZE, config.near, config.far
            )
            if shared >= config.threshold:
                found = s
                break
        expected.append(found)
    assert sources.tolist() == expected
    assert (sources >= 0).any()  # a random walk of 60 steps comes back to a view


def test_turning_in_place_revisits_after_a_full_turn():
    config = RevisitConfig(min_gap=20, threshold=0.3)
    actions = [Action.TURN_LEFT] * 40  # 400 degrees at 10 degrees per turn
    episode = make_episode("scene-a", 0, actions, np.random.default_rng(0))
    sources = revisit_sources(episode.cam_to_world, episode.intrinsics, SIZE, SIZE, config)
    # Frame 36 looks exactly like frame 0; frames before the turn closes see nothing old.
    assert sources[36] == 0
    assert (sources[:27] == -1).all()


# ------------------------------------------------------------------------------------ clips
def test_memory_frame_indices_hand_cases():
    assert memory_frame_indices(0, 8).tolist() == []
    assert memory_frame_indices(1, 8).tolist() == [0]
    assert memory_frame_indices(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert memory_frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert memory_frame_indices(10, 1).tolist() == [9]
    for start in range(1, 60):
        for count in range(1, 12):
            indices = memory_frame_indices(start, count)
            assert len(indices) == min(start, count)
            assert (np.diff(indices) > 0).all() and indices[-1] == start - 1


def test_clip_items_match_the_stored_episodes(tmp_path, rng):
    written = make_dataset(tmp_path, rng, steps=20)
    config = ClipConfig(
        n_context=2, n_future=3, clip_stride=4, max_memory_frames=3, memory_selection="even"
    )
    dataset = ClipDataset(tmp_path, config)
    assert len(dataset) == 4 * 5  # 4 episodes x starts 0, 4, 8, 12, 16 of 21 frames
    for index in range(len(dataset)):
        item = dataset[index]
        info, start = dataset.clip_location(index)
        episode = written[(info.scene_id, info.episode)]
        frames = list(range(start, start + 5))
        memory = memory_frame_indices(start, 3).tolist()
        assert item["scene_id"] == info.scene_id
        assert int(item["episode"]) == info.episode and int(item["start"]) == start
        assert item["rgb"].shape == (5, 3, SIZE, SIZE) and item["rgb"].dtype == torch.float32
        for t, frame in enumerate(frames):
            for c in range(3):
                expected = torch.from_numpy(episode.rgb[frame, :, :, c]).float() / 255
                assert torch.equal(item["rgb"][t, c], expected)
            assert torch.equal(
                item["depth"][t, 0], torch.from_numpy(episode.depth[frame, ..., 0]).float()
            )
        assert torch.equal(item["cam_to_world"], torch.from_numpy(episode.cam_to_world[frames]))
        assert torch.equal(item["intrinsics"], torch.from_numpy(episode.intrinsics[frames]))
        assert item["actions"].tolist() == episode.actions[start : start + 4].tolist()
        assert item["actions"].dtype == torch.int64
        assert item["memory_rgb"].shape == (len(memory), 3, SIZE, SIZE)
        for s, frame in enumerate(memory):
            expected = torch.from_numpy(episode.rgb[frame]).permute(2, 0, 1).float() / 255
            assert torch.equal(item["memory_rgb"][s], expected)
            assert torch.equal(
                item["memory_cam_to_world"][s], torch.from_numpy(episode.cam_to_world[frame])
            )
        assert item["memory_mask"].tolist() == [True] * len(memory)


def test_actions_lead_from_each_frame_to_the_next(tmp_path, rng):
    make_dataset(tmp_path, rng, steps=20)
    item = ClipDataset(tmp_path, ClipConfig(n_context=3, n_future=5))[7]
    predicted = item["cam_to_world"][:-1] @ action_to_relative_pose(item["actions"])
    # Synthetic poses were built this way in float32 then stored as float32.
    torch.testing.assert_close(predicted, item["cam_to_world"][1:], atol=1e-5, rtol=0)


def test_collate_pads_memories_and_masks_them(tmp_path, rng):
    make_dataset(tmp_path, rng, steps=20)
    dataset = ClipDataset(tmp_path, ClipConfig(n_context=2, n_future=2, max_memory_frames=4))
    items = [dataset[0], dataset[2], dataset[10]]  # starts 0, 2 and 10: memories of 0, 2, 4
    assert [len(item["memory_mask"]) for item in items] == [0, 2, 4]
    batch = collate_clips(items)
    assert batch["rgb"].shape == (3, 4, 3, SIZE, SIZE)
    assert batch["actions"].shape == (3, 3) and batch["actions"].dtype == torch.int64
    assert batch["memory_rgb"].shape == (3, 4, 3, SIZE, SIZE)
    assert batch["memory_mask"].tolist() == [
        [False] * 4,
        [True, True, False, False],
        [True] * 4,
    ]
    assert torch.equal(batch["memory_rgb"][1, :2], items[1]["memory_rgb"])
    assert (batch["memory_rgb"][1, 2:] == 0).all()
    assert torch.equal(batch["memory_cam_to_world"][0], torch.eye(4).repeat(4, 1, 1))
    assert torch.equal(batch["memory_intrinsics"][0, 3], items[0]["intrinsics"][0])
    assert batch["start"].tolist() == [0, 2, 10] and batch["scene_id"] == ["scene-a"] * 3


def test_dataloader_workers_read_the_same_clips(tmp_path, rng):
    make_dataset(tmp_path, rng, steps=12)
    dataset = ClipDataset(tmp_path, ClipConfig(n_context=2, n_future=2, max_memory_frames=2))
    single = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate_clips)))
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate_clips, num_workers=2)
    multi = next(iter(loader))
    for name in ("rgb", "depth", "memory_rgb", "memory_mask", "actions", "start"):
        assert torch.equal(single[name], multi[name])


def test_clip_longer_than_every_trajectory_is_an_error(tmp_path, rng):
    make_dataset(tmp_path, rng, steps=10)
    with pytest.raises(ValueError, match=f"longest in {tmp_path} has 11"):
        ClipDataset(tmp_path, ClipConfig(n_context=4, n_future=8))


def test_revisit_clips_are_those_that_come_back(tmp_path, rng):
    write_manifest(tmp_path, {"seed": 1})
    forward, turn = [Action.MOVE_FORWARD] * 12, [Action.TURN_LEFT] * 18
    out_and_back = forward + turn + forward + turn  # ends where and how it started
    straight = [Action.MOVE_FORWARD] * 60
    names = [shard_name("scene-a", 0, 1), shard_name("scene-b", 0, 1)]
    write_plan(tmp_path, "run", names)
    write_shard(tmp_path / SHARD_DIR / names[0], [make_episode("scene-a", 0, out_and_back, rng)])
    write_shard(tmp_path / SHARD_DIR / names[1], [make_episode("scene-b", 0, straight, rng)])
    complete_plan(tmp_path, "run", {})
    rule = RevisitConfig(min_gap=20, threshold=0.5)
    dataset = ClipDataset(tmp_path, ClipConfig(n_context=2, n_future=4, revisit=rule))
    scenes = np.array([dataset.clip_location(i)[0].scene_id for i in range(len(dataset))])
    assert not dataset.is_revisit[scenes == "scene-b"].any()
    assert dataset.is_revisit[scenes == "scene-a"][-1]  # the final view is the first one
    only = ClipConfig(n_context=2, n_future=4, revisit=rule, revisit_only=True)
    revisits = ClipDataset(tmp_path, only)
    assert len(revisits) == int(dataset.is_revisit.sum()) > 0
    for index in range(len(revisits)):
        info, start = revisits.clip_location(index)
        assert info.scene_id == "scene-a" and start > 0
    sampler = dataset.revisit_sampler(1.0, 50, torch.Generator().manual_seed(0))
    assert all(dataset.is_revisit[i] for i in sampler)


def test_revisit_only_without_revisits_is_an_error(tmp_path, rng):
    write_manifest(tmp_path, {"seed": 1})
    name = shard_name("scene-a", 0, 1)
    write_plan(tmp_path, "run", [name])
    episode = make_episode("scene-a", 0, [Action.MOVE_FORWARD] * 40, rng)
    write_shard(tmp_path / SHARD_DIR / name, [episode])
    complete_plan(tmp_path, "run", {})
    with pytest.raises(ValueError, match="no revisit clips"):
        ClipDataset(tmp_path, ClipConfig(revisit_only=True))


def test_statistics_count_what_was_written(tmp_path, rng):
    written = make_dataset(tmp_path, rng, steps=9)
    stats = dataset_statistics(TrajectoryStore(tmp_path))
    assert stats["episodes"] == len(written) == 4
    assert stats["frames"] == 40 and stats["scenes"] == 2 and stats["shards"] == 2
    assert stats["policies"]["synthetic"] == {
        "episodes": 4,
        "frames": 40,
        "revisit_fraction": 4 / 40,
    }
    assert stats["bytes"] == sum(p.stat().st_size for p in (tmp_path / SHARD_DIR).iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_context": 0}, "n_context"),
        ({"max_memory_frames": -1}, "max_memory_frames"),
        ({"min_memory_frames": 40}, "min_memory_frames"),
    ],
)
def test_clip_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipConfig(**kwargs)
