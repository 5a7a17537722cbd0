"""Speed of ``PersistentWorld-v0`` generating in pixel space, against the latent path.

    python benchmarks/bench_pixel_world.py --threads 1
    python benchmarks/bench_pixel_world.py --pixel-steps 1 2 --steps 8

Times one env stepped ``--steps`` times (after one warm-up step) at 64x64 with the shipped world
model: once generating with its latent transformer (the baseline) and once per number of Euler
steps with a pixel generator attached (the checkpoint's own when it ships one, else a freshly
initialised ``small`` one: speed does not depend on training). Reports CPU and wall seconds per
env step and the ratio of each pixel setting's CPU time to the latent path's, both measured in
the same run (a shared machine changes wall times, hardly the ratio). Actions cycle through
forward / left / forward / right, so every step generates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import torch

import envs  # noqa: F401  (registers PersistentWorld-v0)
from worldsim import cli
from worldsim.models.pixel_denoiser import EDMSamplerConfig, PixelDenoiser
from worldsim.models.world_model import WorldModel

ACTIONS = (1, 2, 1, 3)
"""The action cycle of the timed steps."""


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    pixel_steps: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Euler steps of the pixel generator to time (each <= 4)."""
    steps: int = 16
    """Timed env steps per setting, after one warm-up step."""
    scene: str = "house-train-0000"
    """Ground-truth scene of the start views."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0


def time_env(model: WorldModel, args: Args) -> tuple[float, float]:
    """``(cpu, wall)`` seconds per step of one ``PersistentWorld-v0`` on ``model``."""
    env = gym.make("PersistentWorld-v0", checkpoint=model, scene=args.scene)
    env.reset(seed=args.seed)
    env.step(ACTIONS[0])  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for step in range(args.steps):
        env.step(ACTIONS[(step + 1) % len(ACTIONS)])
    return (time.process_time() - cpu) / args.steps, (time.perf_counter() - wall) / args.steps


def main(args: Args) -> list[dict]:
    shipped = WorldModel.from_pretrained(None)
    generator = shipped.pixel_generator
    if generator is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            generator = PixelDenoiser.from_config_name("small")
    latent_cpu, latent_wall = time_env(shipped.attach_pixel_generator(None), args)
    rows = [{"path": "latent", "cpu_s": latent_cpu, "wall_s": latent_wall, "ratio": 1.0}]
    for steps in args.pixel_steps:
        sampler = EDMSamplerConfig(num_steps=steps)
        cpu, wall = time_env(shipped.attach_pixel_generator(generator, sampler), args)
        ratio = cpu / latent_cpu
        rows.append({"path": f"pixel, {steps} Euler", "cpu_s": cpu, "wall_s": wall, "ratio": ratio})
    print(f"\n{args.steps} steps per setting, {torch.get_num_threads()} torch thread(s)")
    print("| generation | CPU s per step | wall s per step | CPU time / latent path |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['cpu_s']:.3f} | {row['wall_s']:.3f} | {row['ratio']:.2f}x |")
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
