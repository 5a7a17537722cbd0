"""The collector: determinism, resume after a kill, summaries, and replay against the simulator."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envs.collection import (
    CollectionConfig,
    collect,
    episode_rng,
    plan_shards,
    record_episode,
)
from envs.embedded.simulator import Simulator
from envs.simulator import SimulatorConfig
from worldsim.data import (
    NO_ACTION,
    SHARD_DIR,
    ClipConfig,
    ClipDataset,
    DataFormatError,
    TrajectoryStore,
    memory_frame_indices,
    temporary_path,
)
from worldsim.geometry import Action

REPO = Path(__file__).resolve().parents[2]
TINY = SimulatorConfig(width=32, height=32)
TINY_ARGS = [
    "--scene-count", "2", "--episodes-per-scene", "3", "--episodes-per-shard", "1",
    "--max-steps", "20", "--width", "32", "--height", "32", "--workers", "1", "--quiet",
]  # fmt: skip


def tiny_config(output, **changes):
    config = CollectionConfig(
        output_dir=output,
        scene_count=2,
        episodes_per_scene=3,
        episodes_per_shard=1,
        max_steps=20,
        workers=1,
        simulator=TINY,
    )
    return dataclasses.replace(config, **changes)


def stored_hashes(root):
    """(scene, episode) -> hash recomputed from the arrays read back (not the stored attribute)."""
    store = TrajectoryStore(root)
    hashes = {}
    for index, info in enumerate(store.episodes):
        recomputed = store.read_episode(index).content_hash()
        assert recomputed == info.content_hash
        hashes[(info.scene_id, info.episode)] = recomputed
    return hashes


@pytest.fixture(scope="module")
def sim():
    return Simulator(TINY)


def test_episode_rng_depends_on_seed_scene_and_episode_only():
    draw = lambda *key: episode_rng(*key).integers(0, 2**62, 4).tolist()  # noqa: E731
    assert draw(0, "house-train-0000", 3) == draw(0, "house-train-0000", 3)
    others = [draw(1, "house-train-0000", 3), draw(0, "house-train-0001", 3)]
    assert draw(0, "house-train-0000", 3) not in [*others, draw(0, "house-train-0000", 4)]


def test_plan_cuts_scenes_into_episode_ranges(tmp_path):
    config = tiny_config(tmp_path, scene_start=4, scene_count=2, episodes_per_scene=5)
    config = dataclasses.replace(config, episodes_per_shard=2)
    assert [(t.scene_id, t.episode_start, t.episode_stop) for t in plan_shards(config)] == [
        ("house-train-0004", 0, 2),
        ("house-train-0004", 2, 4),
        ("house-train-0004", 4, 5),
        ("house-train-0005", 0, 2),
        ("house-train-0005", 2, 4),
        ("house-train-0005", 4, 5),
    ]
    assert config.plan_name == "train-scenes-00004-00006"


def test_record_episode_is_deterministic_and_well_formed(tmp_path, sim):
    config = tiny_config(tmp_path, max_steps=30)
    first = record_episode(sim, "house-train-0001", 2, config)
    sim.load_scene("house-train-0000")  # other state in between must not matter
    again = record_episode(sim, "house-train-0001", 2, config)
    other = record_episode(sim, "house-train-0001", 3, config)
    assert first.content_hash() == again.content_hash() != other.content_hash()
    assert 2 <= first.num_frames <= 30
    assert first.actions[-1] in (0, NO_ACTION)
    assert set(first.actions[:-1].tolist()) <= {1, 2, 3}
    assert first.metadata["policy"] in ("waypoint", "out_and_back", "look_around")


def test_out_and_back_episodes_end_with_stop(tmp_path, sim):
    config = tiny_config(tmp_path, max_steps=2000, policy_mix={"out_and_back": 1.0})
    episode = record_episode(sim, "house-train-0000", 0, config)
    assert episode.actions[-1] == Action.STOP and episode.num_frames < 2000
    assert episode.metadata["revisit_frames"] > 0  # it ends looking where it started


def test_replayed_actions_reproduce_the_clips(tmp_path):
    config = tiny_config(tmp_path, scene_count=1, episodes_per_scene=2, max_steps=40)
    collect(config, progress=False)
    dataset = ClipDataset(
        tmp_path, ClipConfig(n_context=3, n_future=5, max_memory_frames=4, memory_selection="even")
    )
    replay = Simulator(TINY)
    checked = set()
    for index in range(0, len(dataset), 7):
        info, start = dataset.clip_location(index)
        item = dataset[index]
        replay.load_scene(info.scene_id)
        replay.reset_agent(np.array(info.metadata["start_position"]), info.metadata["start_yaw"])
        recorded = dataset.store.read_episode(dataset.store.episodes.index(info))
        frames = [replay.observe()]
        for action in recorded.actions[: start + 7]:
            replay.step(int(action))
            frames.append(replay.observe())
        clip = frames[start : start + 8]
        rgb = np.stack([f["rgb"] for f in clip]).transpose(0, 3, 1, 2) / 255.0
        depth = np.stack([f["depth"] for f in clip]).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(item["rgb"].numpy(), rgb.astype(np.float32))
        # Depth is stored as float16: 11 significant bits, relative error <= 2**-11.
        np.testing.assert_allclose(item["depth"].numpy(), depth, rtol=2**-11, atol=0)
        np.testing.assert_array_equal(
            item["cam_to_world"].numpy(), np.stack([f["pose"] for f in clip])
        )
        np.testing.assert_array_equal(item["intrinsics"][0].numpy(), replay.intrinsics)
        assert item["actions"].tolist() == recorded.actions[start : start + 7].tolist()
        memory = memory_frame_indices(start, 4)
        assert len(item["memory_mask"]) == len(memory)
        for slot, frame in enumerate(memory):
            expected = frames[frame]["rgb"].transpose(2, 0, 1) / 255.0
            np.testing.assert_array_equal(
                item["memory_rgb"][slot].numpy(), expected.astype(np.float32)
            )
            np.testing.assert_array_equal(
                item["memory_cam_to_world"][slot].numpy(), frames[frame]["pose"]
            )
        checked.add(info.episode)
    assert checked == {0, 1}


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    collect(tiny_config(reference), progress=False)
    expected = stored_hashes(reference)
    assert len(expected) == 6

    output = tmp_path / "killed"
    command = [
        sys.executable,
        str(REPO / "examples" / "collect_data.py"),
        "--output-dir",
        str(output),
    ]
    process = subprocess.Popen([*command, *TINY_ARGS], cwd=REPO)
    shard_dir = output / SHARD_DIR
    deadline = time.monotonic() + 120
    while not list(shard_dir.glob("*.h5")) and time.monotonic() < deadline:
        assert process.poll() is None, "the collector ended before it wrote a shard"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = list(shard_dir.glob("*.h5"))
    assert 1 <= len(written) < 6, "the kill came too late to interrupt the run"
    with pytest.raises(DataFormatError, match="incomplete"):
        TrajectoryStore(output)

    subprocess.run([*command, *TINY_ARGS], cwd=REPO, check=True, timeout=300)
    assert stored_hashes(output) == expected
    assert not list(shard_dir.glob(".*")), "temporary files were left behind"


def test_stale_temporary_shards_are_removed_on_resume(tmp_path):
    config = tiny_config(tmp_path, scene_count=1, episodes_per_scene=1)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(finished.stdout)
    name = plan_shards(config)[0].name
    stale = temporary_path(tmp_path / SHARD_DIR / name)
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}.", f"-{dead_pid}."))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a shard")
    summary = collect(config, progress=False)
    assert not stale.exists() and summary.episodes == 1


def test_rerun_with_other_settings_is_refused(tmp_path):
    collect(tiny_config(tmp_path, scene_count=1, episodes_per_scene=1), progress=False)
    other = tiny_config(tmp_path, scene_count=1, episodes_per_scene=1, max_steps=25)
    with pytest.raises(DataFormatError, match="max_steps: folder has 20, this run has 25"):
        collect(other, progress=False)


def test_summary_counts_frames_and_revisits_per_policy(tmp_path):
    config = tiny_config(
        tmp_path,
        scene_count=1,
        episodes_per_scene=4,
        episodes_per_shard=2,
        max_steps=80,
        policy_mix={"out_and_back": 1.0, "look_around": 1.0},
    )
    summary = collect(config, progress=False)
    store = TrajectoryStore(tmp_path)
    assert summary.episodes == len(store.episodes) == 4
    assert summary.frames == store.num_frames and summary.bytes == store.num_bytes
    assert sum(p["episodes"] for p in summary.policies.values()) == 4
    for name, entry in summary.policies.items():
        frames = [i.num_frames for i in store.episodes if i.metadata["policy"] == name]
        revisits = [
            i.metadata["revisit_frames"] for i in store.episodes if i.metadata["policy"] == name
        ]
        assert entry["frames"] == sum(frames)
        assert entry["revisit_fraction"] == pytest.approx(sum(revisits) / sum(frames), abs=1e-12)
        assert entry["revisit_fraction"] > 0, name  # both policies come back to earlier views
    resumed = collect(config, progress=False)
    assert resumed.resumed_shards == 2 and resumed.collected_frames == 0
    assert resumed.frames == summary.frames


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"split": "holdout"}, "split"),
        ({"max_steps": 1}, "max_steps"),
        ({"episodes_per_shard": 0}, "episodes_per_shard"),
        ({"policy_mix": {"waypoint": 0.0}}, "weight > 0"),
        ({"compression": "zstd"}, "compression"),
    ],
)
def test_collection_config_is_validated(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **changes)
