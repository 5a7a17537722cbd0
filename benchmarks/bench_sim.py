"""Ground-truth simulator speed: env steps/s with RGB-D at several sizes, scene generation/load.

    python benchmarks/bench_sim.py
    python benchmarks/bench_sim.py --sizes 64 128 256 --steps 1000

For each size it reports env steps/s (random actions, RGB-D rendered every step) and the ratio of
one full ``env.step`` to a bare ``render`` of the same pose, both measured in this run: the ratio
is the overhead of collision, geodesic reward and bookkeeping on top of rendering.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers IndoorNav-v0)
from worldsim import cli


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    sizes: tuple[int, ...] = (64, 128, 256)
    """Square image sizes, pixels."""
    steps: int = 1000
    """Timed env steps per size (after a warm-up)."""
    scene: str = "house-train-0000"
    seed: int = 0


def time_scene_generation(scene: str) -> tuple[float, float, float]:
    """Seconds to generate a house, to export it as .glb, and to load the .glb back."""
    from envs.embedded.scenes import export_glb, generate_house, load_scene

    started = time.perf_counter()
    house = generate_house(scene)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "house.glb"
        export_glb(house, path)
        exported = time.perf_counter()
        load_scene(path)
        loaded = time.perf_counter()
    return generated - started, exported - generated, loaded - exported


def bench_size(size: int, args: Args) -> dict[str, float]:
    env = gym.make("IndoorNav-v0", scene=args.scene, width=size, height=size)
    started = time.perf_counter()
    env.reset(seed=args.seed)
    first_reset = time.perf_counter() - started
    sim = env.unwrapped.sim
    rng = np.random.default_rng(args.seed)
    actions = rng.integers(1, 4, size=args.steps + 50)
    for action in actions[:50]:  # warm-up
        env.step(int(action))

    started = time.perf_counter()
    for action in actions[50:]:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    step_seconds = (time.perf_counter() - started) / args.steps

    pose = sim.pose
    started = time.perf_counter()
    for _ in range(args.steps):
        sim.render(pose)
    render_seconds = (time.perf_counter() - started) / args.steps
    env.close()
    return {
        "size": size,
        "steps_per_s": 1.0 / step_seconds,
        "renders_per_s": 1.0 / render_seconds,
        "step_over_render": step_seconds / render_seconds,
        "first_reset_s": first_reset,
    }


def main(args: Args) -> list[dict[str, float]]:
    generate_s, export_s, load_s = time_scene_generation(args.scene)
    print(
        f"scene {args.scene}: generate {generate_s:.3f} s, export .glb {export_s:.3f} s, "
        f"load .glb {load_s:.3f} s"
    )
    rows = [bench_size(size, args) for size in args.sizes]
    print("| size | env steps/s (RGB-D) | bare renders/s | step / render | first reset (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']}² | {row['steps_per_s']:.0f} | {row['renders_per_s']:.0f} | "
            f"{row['step_over_render']:.2f} | {row['first_reset_s']:.2f} |"
        )
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
