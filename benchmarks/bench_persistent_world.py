"""Speed of the learned simulator: single-env steps/s and batched vector-env steps/s.

    python benchmarks/bench_persistent_world.py
    python benchmarks/bench_persistent_world.py --configs tiny --num-envs 1 8 60 --steps 5

For each world-model configuration (freshly initialised: speed does not depend on training) it
times ``PersistentWorld-v0`` stepped one episode at a time (the baseline, measured once per
configuration) and ``gym.make_vec("PersistentWorld-v0", num_envs=N)`` for each N, which runs
all N rows through one world-model call per step. It prints env steps per second (a vector step
counts N env steps) and the ratio of the vector env's throughput to the single env's, i.e. the
speed-up over stepping N single envs one after the other, all measured in the same run. For N
above ``--split-batch`` it also times the vector env making calls of ``--split-batch`` rows
(``batch_size``), which can beat one call of N rows on a CPU. Actions
cycle through forward / left / forward / right (never ``stop``), so every step generates a frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers PersistentWorld-v0)
from worldsim import cli
from worldsim.memory import build_memory
from worldsim.models.world_model import WorldModel

ACTIONS = (1, 2, 1, 3)
"""The action cycle of the timed steps."""


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    configs: list[str] = field(default_factory=lambda: ["tiny", "small"])
    """World-model configurations to time."""
    num_envs: list[int] = field(default_factory=lambda: [1, 8, 60])
    """Vector-env sizes N."""
    steps: int = 3
    """Timed steps per setting, after one warm-up step."""
    memory_encoder: str = "vgg16"
    """Image encoder of the 3D feature map (pooled_color times the model alone)."""
    split_batch: int = 8
    """Also time vector envs of more rows than this in calls of this many rows."""
    sampling_steps: int | None = None
    """DDIM steps per frame; default: each configuration's own."""
    scene: str = "house-train-0000"
    """Ground-truth scene of the start views."""
    device: str = "cpu"
    """Torch device of the model and the memory."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0


def make_model(config: str, memory: dict, seed: int) -> WorldModel:
    """A freshly initialised model whose memory blocks read ``memory``'s tokens."""
    width = build_memory(**memory).token_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldModel.from_config_name(config, memory_token_dim=width).eval()


def settings(model: WorldModel, memory: dict, args: Args) -> dict:
    return dict(
        checkpoint=model,
        memory=memory,
        device=args.device,
        num_sampling_steps=args.sampling_steps,
        scene=args.scene,
    )


def time_single(model: WorldModel, memory: dict, args: Args) -> float:
    """Env steps per second of one ``PersistentWorld-v0``."""
    env = gym.make("PersistentWorld-v0", **settings(model, memory, args))
    env.reset(seed=args.seed)
    env.step(ACTIONS[0])  # warm-up
    started = time.perf_counter()
    for step in range(args.steps):
        env.step(ACTIONS[(step + 1) % len(ACTIONS)])
    return args.steps / (time.perf_counter() - started)


def time_vector(
    model: WorldModel, memory: dict, num_envs: int, batch_size: int | None, args: Args
) -> float:
    """Env steps per second of a vector env of ``num_envs`` rows (N env steps per step)."""
    env = gym.make_vec(
        "PersistentWorld-v0",
        num_envs=num_envs,
        batch_size=batch_size,
        **settings(model, memory, args),
    )
    env.reset(seed=args.seed)
    env.step(np.full(num_envs, ACTIONS[0]))  # warm-up
    started = time.perf_counter()
    for step in range(args.steps):
        env.step(np.full(num_envs, ACTIONS[(step + 1) % len(ACTIONS)]))
    return num_envs * args.steps / (time.perf_counter() - started)


def main(args: Args) -> list[dict]:
    memory = {"name": "feature_map", "encoder": args.memory_encoder}
    rows = []
    for config in args.configs:
        model = make_model(config, memory, args.seed).to(args.device)
        single = time_single(model, memory, args)
        for num_envs in args.num_envs:
            batch_sizes = [None] + ([args.split_batch] if num_envs > args.split_batch else [])
            for batch_size in batch_sizes:
                vector = time_vector(model, memory, num_envs, batch_size, args)
                rows.append(
                    {
                        "config": config,
                        "num_envs": num_envs,
                        "batch_size": batch_size or num_envs,
                        "single_steps_per_s": single,
                        "vector_steps_per_s": vector,
                        "speedup": vector / single,
                    }
                )
                print(f"{config} N={num_envs} rows/call={batch_size or num_envs}: {vector:.2f}/s")
    print(f"\ndevice {args.device}, memory feature_map/{args.memory_encoder}, {args.steps} steps")
    print(
        "| config | N | rows per model call | single env steps/s | vector env steps/s "
        "| vector / N single envs |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['num_envs']} | {row['batch_size']} | "
            f"{row['single_steps_per_s']:.2f} | {row['vector_steps_per_s']:.2f} | "
            f"{row['speedup']:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
