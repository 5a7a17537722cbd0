"""Collect trajectories from the ground-truth simulator into a dataset (:mod:`worldsim.data`).

Work is cut into shards: the episodes ``[a, b)`` of one scene. A run covers a range of scenes of
one split; it writes the dataset's manifest (or checks that it matches), a plan listing its
shards, then each missing shard atomically, and finally marks its plan complete. Rerunning the
same command skips the shards already on disk, so an interrupted run resumes without losing or
duplicating episodes.

Each episode is a deterministic function of ``(seed, scene id, episode index)`` and the
settings: its ``np.random.Generator`` comes from ``np.random.SeedSequence`` of those numbers
(nothing else is random), so shards do not depend on which worker or machine wrote them.

Scaling: ``workers`` processes (spawned, each with its own simulator and GL context) share one
machine's shards. Several machines split the scenes: machine ``k`` of ``n`` runs the same
command with ``scene_start = k * c`` and ``scene_count = c``, writing to a shared folder or to
folders whose ``shards/`` and ``plans/`` are copied together afterwards (their manifests are
identical).
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.backends import make_simulator
from envs.embedded.scenes import SPLITS, scene_ids
from envs.exploration import POLICY_NAMES, ExplorationConfig, PolicyMix, make_policy
from envs.simulator import GroundTruthSimulator, SimulatorConfig
from worldsim.data import (
    COMPRESSIONS,
    DEPTH_DTYPES,
    NO_ACTION,
    SHARD_DIR,
    TEMP_SUFFIX,
    Episode,
    RevisitConfig,
    ShardReader,
    check_choice,
    complete_plan,
    revisit_sources,
    shard_name,
    write_manifest,
    write_plan,
    write_shard,
)
from worldsim.geometry import Action


@dataclass(frozen=True)
class CollectionConfig:
    """What to collect, and how to split the work.

    Attributes:
        output_dir: dataset folder (created if missing).
        split: scene split, one of :data:`envs.embedded.scenes.SPLITS`.
        scene_start: index of the first scene of the split this run covers, >= 0.
        scene_count: number of consecutive scenes this run covers, >= 1.
        episodes_per_scene: episodes recorded in every scene, >= 1.
        episodes_per_shard: episodes per shard file, >= 1 (the unit of resuming).
        max_steps: most frames per episode (the first is the start observation), in [2, 10000].
        policy_mix: policy name -> weight (see :class:`envs.exploration.PolicyMix`).
        seed: base seed of every episode, >= 0.
        workers: processes on this machine, >= 0; 0 = one per CPU core, 1 = in this process.
        backend: simulator backend, ``"embedded"`` or ``"habitat"``.
        depth_dtype: storage dtype of depth, ``"float16"`` or ``"float32"``.
        compression: HDF5 filter of frames, ``"lzf"``, ``"gzip"`` or ``"none"``.
        frames_per_chunk: frames per HDF5 chunk, >= 1.
        simulator: sensor, action and agent settings.
        exploration: settings of the exploration policies.
        revisit: the revisit rule of the summary's revisit fraction.
    """

    output_dir: Path
    split: str = "train"
    scene_start: int = 0
    scene_count: int = 20
    episodes_per_scene: int = 10
    episodes_per_shard: int = 10
    max_steps: int = 500
    policy_mix: dict[str, float] = field(
        default_factory=lambda: {"waypoint": 1.0, "out_and_back": 1.0, "look_around": 1.0}
    )
    seed: int = 0
    workers: int = 0
    backend: str = "embedded"
    depth_dtype: str = "float16"
    compression: str = "lzf"
    frames_per_chunk: int = 4
    simulator: SimulatorConfig = field(default_factory=lambda: SimulatorConfig(width=64, height=64))
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    revisit: RevisitConfig = field(default_factory=RevisitConfig)

    def __post_init__(self) -> None:
        check_choice("split", self.split, SPLITS)
        check_choice("backend", self.backend, ("embedded", "habitat"))
        check_choice("depth_dtype", self.depth_dtype, DEPTH_DTYPES)
        check_choice("compression", self.compression, COMPRESSIONS)
        for name, low in (
            ("scene_start", 0),
            ("scene_count", 1),
            ("episodes_per_scene", 1),
            ("episodes_per_shard", 1),
            ("seed", 0),
            ("workers", 0),
            ("frames_per_chunk", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 2 <= self.max_steps <= 10_000:
            raise ValueError(f"max_steps must be in [2, 10000] frames, got {self.max_steps}")
        if self.episodes_per_scene > 999_999:
            raise ValueError(f"episodes_per_scene must be <= 999999, got {self.episodes_per_scene}")
        PolicyMix(self.policy_mix)  # validates names and weights

    @property
    def num_workers(self) -> int:
        """Worker processes actually used (``workers``, or the CPU count for 0)."""
        return self.workers or os.cpu_count() or 1

    @property
    def plan_name(self) -> str:
        """Name of this run's plan: the split and the scene range."""
        stop = self.scene_start + self.scene_count
        return f"{self.split}-scenes-{self.scene_start:05d}-{stop:05d}"

    def settings(self) -> dict[str, Any]:
        """Settings that determine the content of the shards (stored in the manifest)."""
        simulator = asdict(self.simulator)
        simulator.pop("scene_cache_size")  # speed only
        return {
            "split": self.split,
            "episodes_per_scene": self.episodes_per_scene,
            "episodes_per_shard": self.episodes_per_shard,
            "max_steps": self.max_steps,
            "policy_mix": PolicyMix(self.policy_mix).probabilities,
            "seed": self.seed,
            "backend": self.backend,
            "depth_dtype": self.depth_dtype,
            "compression": self.compression,
            "frames_per_chunk": self.frames_per_chunk,
            "simulator": simulator,
            "exploration": asdict(self.exploration),
            "revisit": asdict(self.revisit),
        }


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: episodes ``[episode_start, episode_stop)`` of a scene."""

    scene_id: str
    episode_start: int
    episode_stop: int

    @property
    def name(self) -> str:
        """The shard's file name."""
        return shard_name(self.scene_id, self.episode_start, self.episode_stop)


def plan_shards(config: CollectionConfig) -> list[ShardTask]:
    """The shards of a run, scene by scene, in episode order."""
    tasks = []
    for scene_id in scene_ids(config.split, config.scene_count, config.scene_start):
        for start in range(0, config.episodes_per_scene, config.episodes_per_shard):
            stop = min(start + config.episodes_per_shard, config.episodes_per_scene)
            tasks.append(ShardTask(scene_id, start, stop))
    return tasks


def episode_rng(seed: int, scene_id: str, episode: int) -> np.random.Generator:
    """The random source of one episode, from ``(seed, scene id, episode index)`` only."""
    scene_key = int.from_bytes(hashlib.sha256(scene_id.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, scene_key, episode]))


def record_episode(
    sim: GroundTruthSimulator, scene_id: str, episode: int, config: CollectionConfig
) -> Episode:
    """Run one exploration episode in the simulator and record it.

    The policy (drawn from ``config.policy_mix``), the start position (uniform on the navigable
    floor) and the start heading (uniform) all come from :func:`episode_rng`.

    Args:
        sim: a simulator built with ``config.simulator``.
        scene_id: scene to load.
        episode: episode index within the scene.
        config: collection settings.

    Returns:
        The episode; metadata holds ``policy``, ``seed``, ``start_position``, ``start_yaw``,
        ``collisions`` and ``revisit_frames`` (frames that revisit, see :class:`RevisitConfig`).
    """
    rng = episode_rng(config.seed, scene_id, episode)
    policy_name = PolicyMix(config.policy_mix).choose(rng)
    policy = make_policy(policy_name, config.exploration)
    sim.load_scene(scene_id)
    start_position = sim.sample_navigable_point(rng)
    start_yaw = float(rng.uniform(-math.pi, math.pi))
    sim.reset_agent(start_position, start_yaw)
    observations = [sim.observe()]
    actions: list[int] = []
    collided: list[bool] = []
    last_action = int(Action.STOP)  # a policy that returns has finished its episode
    for action in policy.actions(sim, rng):
        if action == Action.STOP:
            break
        if len(observations) == config.max_steps:
            last_action = NO_ACTION
            break
        collided.append(sim.step(action))
        actions.append(int(action))
        observations.append(sim.observe())
    frames = len(observations)
    intrinsics = np.repeat(np.asarray(sim.intrinsics, np.float32)[None], frames, axis=0)
    poses = np.stack([o["pose"] for o in observations]).astype(np.float32)
    height, width = config.simulator.height, config.simulator.width
    sources = revisit_sources(poses, intrinsics, height, width, config.revisit)
    return Episode(
        scene_id=scene_id,
        episode=episode,
        rgb=np.stack([o["rgb"] for o in observations]),
        depth=np.stack([o["depth"] for o in observations]).astype(np.float32),
        cam_to_world=poses,
        intrinsics=intrinsics,
        actions=np.array([*actions, last_action], dtype=np.int64),
        collided=np.array([*collided, False], dtype=bool),
        metadata={
            "policy": policy_name,
            "seed": config.seed,
            "start_position": [float(v) for v in start_position],
            "start_yaw": start_yaw,
            "collisions": int(sum(collided)),
            "revisit_frames": int((sources >= 0).sum()),
        },
    )


@dataclass(frozen=True)
class ShardStats:
    """Counts of one shard (collected now or found on disk).

    Attributes:
        name: shard file name.
        episodes: number of episodes.
        frames: number of frames.
        bytes: file size.
        policies: policy name -> ``(episodes, frames, revisit_frames)``.
        collected: whether this run wrote it (False: found complete on disk).
    """

    name: str
    episodes: int
    frames: int
    bytes: int
    policies: dict[str, tuple[int, int, int]]
    collected: bool


def _shard_stats(path: Path, collected: bool) -> ShardStats:
    with ShardReader(path) as reader:
        policies: dict[str, tuple[int, int, int]] = {}
        for info in reader.episodes:
            e, f, r = policies.get(info.metadata["policy"], (0, 0, 0))
            revisits = int(info.metadata["revisit_frames"])
            policies[info.metadata["policy"]] = (e + 1, f + info.num_frames, r + revisits)
        return ShardStats(
            name=path.name,
            episodes=len(reader.episodes),
            frames=sum(info.num_frames for info in reader.episodes),
            bytes=path.stat().st_size,
            policies=policies,
            collected=collected,
        )


def collect_shard(
    sim: GroundTruthSimulator, task: ShardTask, config: CollectionConfig
) -> ShardStats:
    """Record the episodes of one shard and write it atomically.

    Returns:
        The shard's counts.
    """
    episodes = [
        record_episode(sim, task.scene_id, index, config)
        for index in range(task.episode_start, task.episode_stop)
    ]
    path = config.output_dir / SHARD_DIR / task.name
    write_shard(
        path,
        episodes,
        depth_dtype=config.depth_dtype,
        compression=config.compression,
        frames_per_chunk=config.frames_per_chunk,
    )
    return _shard_stats(path, collected=True)


# Per worker process: the simulator and settings it was started with (set by _start_worker).
_worker_state: dict[str, Any] = {}


def _start_worker(config: CollectionConfig, parent: int) -> None:
    # One core per worker: torch's thread pool would only contend with the other workers.
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker_state["config"] = config
    _worker_state["sim"] = make_simulator(config.simulator, config.backend)


def _exit_with_parent(parent: int) -> None:
    """End this worker when the collector that started it is gone (e.g. killed)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run_worker_task(task: ShardTask) -> ShardStats:
    return collect_shard(_worker_state["sim"], task, _worker_state["config"])


def _remove_stale_temporaries(folder: Path, tasks: list[ShardTask]) -> None:
    """Delete temporary shards this host left when a run was killed (their process is gone)."""
    host = socket.gethostname()
    for task in tasks:
        for path in folder.glob(f".{task.name}.{host}-*{TEMP_SUFFIX}"):
            pid = int(path.name[: -len(TEMP_SUFFIX)].rsplit("-", 1)[1])
            if not _process_alive(pid):
                path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class CollectionSummary:
    """What a run left in its scene range.

    Attributes:
        output: dataset folder.
        shards: shards of the range (all present at the end of a run).
        resumed_shards: shards found complete on disk and skipped.
        episodes: episodes in the range.
        frames: frames in the range.
        bytes: bytes of the range's shards.
        seconds: wall-clock time of this run.
        collected_frames: frames recorded by this run.
        workers: worker processes used.
        revisit_fraction: fraction of frames that revisit an earlier frame of their episode.
        policies: policy name -> ``{"episodes", "frames", "revisit_fraction"}``.
    """

    output: str
    shards: int
    resumed_shards: int
    episodes: int
    frames: int
    bytes: int
    seconds: float
    collected_frames: int
    workers: int
    revisit_fraction: float
    policies: dict[str, dict[str, float]]

    @property
    def frames_per_second_per_worker(self) -> float:
        """Recording speed of this run per worker process, frames per second."""
        return self.collected_frames / max(self.seconds, 1e-9) / self.workers

    def format(self) -> str:
        """A human-readable table of the summary."""
        lines = [
            f"dataset          {self.output}",
            f"shards           {self.shards} ({self.resumed_shards} already on disk)",
            f"episodes         {self.episodes}",
            f"frames           {self.frames}",
            f"size             {self.bytes / 1e6:.1f} MB "
            f"({self.bytes / 1e6 / max(self.frames, 1) * 1000:.2f} MB per 1000 frames)",
            f"revisit fraction {self.revisit_fraction:.3f}",
            f"time             {self.seconds:.1f} s, {self.collected_frames} frames recorded, "
            f"{self.frames_per_second_per_worker:.1f} frames/s per worker x {self.workers}",
            "policy           episodes   frames   revisit fraction",
        ]
        for name, entry in self.policies.items():
            lines.append(
                f"  {name:<14} {entry['episodes']:>8} {entry['frames']:>8}   "
                f"{entry['revisit_fraction']:.3f}"
            )
        return "\n".join(lines)


def summarise(
    config: CollectionConfig, stats: list[ShardStats], seconds: float
) -> CollectionSummary:
    """Sum the shard counts of a run into its summary."""
    totals: dict[str, list[int]] = {name: [0, 0, 0] for name in POLICY_NAMES}
    for shard in stats:
        for name, counts in shard.policies.items():
            totals[name] = [a + b for a, b in zip(totals[name], counts, strict=True)]
    frames = sum(s.frames for s in stats)
    revisit_frames = sum(t[2] for t in totals.values())
    return CollectionSummary(
        output=str(config.output_dir),
        shards=len(stats),
        resumed_shards=sum(not s.collected for s in stats),
        episodes=sum(s.episodes for s in stats),
        frames=frames,
        bytes=sum(s.bytes for s in stats),
        seconds=seconds,
        collected_frames=sum(s.frames for s in stats if s.collected),
        workers=config.num_workers,
        revisit_fraction=revisit_frames / max(frames, 1),
        policies={
            name: {"episodes": e, "frames": f, "revisit_fraction": r / max(f, 1)}
            for name, (e, f, r) in totals.items()
            if e > 0
        },
    )


def collect(config: CollectionConfig, progress: bool = True) -> CollectionSummary:
    """Collect (or resume collecting) a scene range into ``config.output_dir``.

    Args:
        config: what to collect and how.
        progress: show a progress bar of episodes on stderr.

    Returns:
        The summary of the scene range (also stored in its plan).

    Raises:
        DataFormatError: if the folder holds data of other settings, or a shard on disk is
            unreadable (the message names it; delete it and rerun).
    """
    begin = time.perf_counter()
    output = Path(config.output_dir)
    write_manifest(output, config.settings())
    tasks = plan_shards(config)
    write_plan(output, config.plan_name, [task.name for task in tasks])
    shard_dir = output / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(shard_dir, tasks)
    done = [_shard_stats(shard_dir / t.name, False) for t in tasks if (shard_dir / t.name).exists()]
    pending = [task for task in tasks if not (shard_dir / task.name).exists()]
    stats = list(done)
    total = sum(t.episode_stop - t.episode_start for t in pending)
    with tqdm(total=total, unit="episode", desc="collecting", disable=not progress) as bar:
        for shard in _run_tasks(config, pending):
            stats.append(shard)
            bar.update(shard.episodes)
            bar.set_postfix(frames=sum(s.frames for s in stats if s.collected))
    summary = summarise(config, stats, time.perf_counter() - begin)
    complete_plan(output, config.plan_name, asdict(summary))
    return summary


def _run_tasks(config: CollectionConfig, tasks: list[ShardTask]) -> Iterator[ShardStats]:
    if not tasks:
        return
    workers = min(config.num_workers, len(tasks))
    if workers == 1:
        sim = make_simulator(config.simulator, config.backend)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)  # as a worker process; restored for the caller below
            for task in tasks:
                yield collect_shard(sim, task, config)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")  # a GL context must not be forked
    with context.Pool(workers, initializer=_start_worker, initargs=(config, os.getpid())) as pool:
        yield from pool.imap_unordered(_run_worker_task, tasks)
