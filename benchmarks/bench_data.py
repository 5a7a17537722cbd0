"""Trajectory data: collection speed per core, storage size, and clip read throughput.

    .venv/bin/python benchmarks/bench_data.py

Collection is timed in this process (one worker = one core) and compared with the bare
simulator stepping and rendering the same number of frames (the baseline), so the ratio is the
cost of the policies, revisit bookkeeping and shard writing. Reading is timed for each storage
setting and compared with cutting the same clips from arrays already in memory (the baseline),
so the ratio is the cost of HDF5 access and decompression. CPU times are reported beside wall
times because a shared machine inflates the latter.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from envs.backends import make_simulator
from envs.collection import CollectionConfig, collect
from envs.simulator import SimulatorConfig
from worldsim import cli
from worldsim.data import ClipConfig, ClipDataset, frames_to_tensors, memory_frame_indices


@dataclass(frozen=True)
class Args:
    """Benchmark sizes."""

    resolution: int = 64
    """Frame width and height, pixels."""
    episodes: int = 4
    """Episodes collected per storage setting (one scene)."""
    max_steps: int = 300
    """Frames per episode at most."""
    clips: int = 300
    """Clips read per measurement."""
    threads: int = 1
    """CPU threads of torch (1: as one collection worker; 0: the idle cores)."""
    seed: int = 0
    """Seed of the clip order."""


@dataclass
class Timer:
    """Wall and CPU seconds of a block."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def bare_simulator(config: SimulatorConfig, frames: int, rng: np.random.Generator) -> Timer:
    """Step and render ``frames`` random actions in one scene (the collection baseline)."""
    sim = make_simulator(config)
    sim.load_scene("house-train-0000")
    sim.reset_agent(sim.sample_navigable_point(rng), 0.0)
    actions = rng.integers(1, 4, frames)
    with Timer() as timer:
        for action in actions:
            sim.step(int(action))
            sim.observe()
    return timer


def read_clips(dataset: ClipDataset, order: np.ndarray) -> Timer:
    with Timer() as timer:
        for index in order:
            dataset[int(index)]
    return timer


def read_clips_in_memory(dataset: ClipDataset, order: np.ndarray) -> Timer:
    """The same clips cut from whole episodes loaded beforehand (the reading baseline)."""
    episodes = [dataset.store.read_episode(i) for i in range(len(dataset.store.episodes))]
    config = dataset.config
    with Timer() as timer:
        for index in order:
            info, start = dataset.clip_location(int(index))
            episode = episodes[dataset.store.episodes.index(info)]
            arrays = {
                name: getattr(episode, name)[start : start + config.clip_length]
                for name in ("rgb", "depth", "cam_to_world", "intrinsics")
            }
            memory = memory_frame_indices(start, config.max_memory_frames)
            frames_to_tensors(arrays)
            frames_to_tensors(
                {
                    n: getattr(episode, n)[memory]
                    for n in ("rgb", "depth", "cam_to_world", "intrinsics")
                }
            )
    return timer


def main(args: Args) -> None:
    rng = np.random.default_rng(args.seed)
    simulator = SimulatorConfig(width=args.resolution, height=args.resolution)
    settings = [("lzf", "float16"), ("none", "float16"), ("gzip", "float16"), ("lzf", "float32")]
    clip_config = ClipConfig(n_context=4, n_future=8, max_memory_frames=32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = CollectionConfig(
            output_dir=Path(folder),
            scene_count=1,
            episodes_per_scene=args.episodes,
            episodes_per_shard=args.episodes,
            max_steps=args.max_steps,
            workers=1,
            simulator=simulator,
        )
        for compression, depth_dtype in tqdm(settings, desc="storage settings"):
            config = dataclasses.replace(
                base,
                output_dir=Path(folder) / f"{compression}-{depth_dtype}",
                compression=compression,
                depth_dtype=depth_dtype,
            )
            with Timer() as collecting:
                summary = collect(config, progress=False)
            dataset = ClipDataset(config.output_dir, clip_config)
            order = rng.permutation(len(dataset))[: args.clips]
            read_clips(dataset, order[:10])  # open files, warm caches
            rows.append(
                (
                    compression,
                    depth_dtype,
                    summary,
                    collecting,
                    read_clips(dataset, order),
                    read_clips_in_memory(dataset, order),
                    len(order),
                )
            )
        frames = rows[0][2].frames
        baseline = bare_simulator(simulator, frames, rng)

    print(f"\n{args.resolution}x{args.resolution}, {frames} frames per setting, one core")
    print(
        f"bare simulator: {frames / baseline.wall:.0f} frames/s wall, "
        f"{frames / baseline.cpu:.0f} frames/s CPU"
    )
    print(
        "storage        collect f/s (CPU)  vs bare sim   MB/1000 frames   "
        "clips/s (CPU)  vs in-memory"
    )
    for compression, depth_dtype, summary, collecting, reading, memory, count in rows:
        print(
            f"{compression:>4}/{depth_dtype:<8} {summary.frames / collecting.wall:8.0f} "
            f"({summary.frames / collecting.cpu:5.0f})   "
            f"{(summary.frames / collecting.cpu) / (frames / baseline.cpu):9.2f}x   "
            f"{summary.bytes / 1e6 / summary.frames * 1000:12.2f}   "
            f"{count / reading.wall:8.0f} ({count / reading.cpu:5.0f})   "
            f"{memory.cpu / reading.cpu:8.2f}x"
        )


if __name__ == "__main__":
    cli.run(main, Args)
