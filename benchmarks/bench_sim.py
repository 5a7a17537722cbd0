"""Ground-truth simulator speed: env steps/s with RGB-D at several sizes, scene generation/load.

    python benchmarks/bench_sim.py
    python benchmarks/bench_sim.py --sizes 64 128 256 --steps 1000
    python benchmarks/bench_sim.py --sizes 128 --large-min-triangles 500000

For each size it reports env steps/s (random actions, RGB-D rendered every step) and the ratio of
one full ``env.step`` to a bare ``render`` of the same pose, both measured in this run: the ratio
is the overhead of collision, geodesic reward and bookkeeping on top of rendering.

Then an HM3D-scale scene (``large_*``; skipped with ``--large-min-triangles 0``): the house
stacked into two storeys and subdivided to at least 500 k triangles
(:func:`envs.embedded.scenes.storey_house`), its textures encoded as Basis Universal KTX2 and
written as a ``.basis.glb`` like HM3D's. It reports the first load (transcoding the textures and
filling the decoded-texture cache) and a cached load, the navigation-grid build, and env steps/s
at ``large_size`` and the triangles drawn per frame after culling; then the large scene and
the small house stepped in alternating blocks, whose ratio is the figure that does not depend
on how busy the machine is.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers IndoorNav-v0)
from envs.embedded.scenes import CACHE_ENV_VAR
from worldsim import cli

_BLOCK = 50
"""Env steps per turn in :func:`bench_interleaved`."""


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    sizes: tuple[int, ...] = (64, 128, 256)
    """Square image sizes, pixels."""
    steps: int = 1000
    """Timed env steps per size (after a warm-up)."""
    scene: str = "house-train-0000"
    seed: int = 0
    large_scene: str = "house-train-0004"
    """House stacked into the large scene (house-train-0004: 8 rooms, 138 m² per storey)."""
    large_storeys: int = 2
    large_min_triangles: int = 500_000
    """Least triangle count of the large scene; 0 skips it."""
    large_steps: int = 500
    """Timed env steps in the large scene (after a warm-up)."""
    large_size: int = 128
    """Square image size of the large-scene steps, pixels (compared with the small house's)."""


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


def bench_size(size: int, args: Args, scene: str | None = None) -> dict[str, float]:
    env = gym.make("IndoorNav-v0", scene=scene or args.scene, width=size, height=size)
    started = time.perf_counter()
    env.reset(seed=args.seed)
    first_reset = time.perf_counter() - started
    sim = env.unwrapped.sim
    rng = np.random.default_rng(args.seed)
    actions = rng.integers(1, 4, size=args.steps + 50)
    for action in actions[:50]:  # warm-up
        env.step(int(action))

    drawn = 0
    started = time.perf_counter()
    for action in actions[50:]:
        _, _, terminated, truncated, _ = env.step(int(action))
        drawn += sim.renderer.triangles_drawn
        if terminated or truncated:
            env.reset()
    step_seconds = (time.perf_counter() - started) / args.steps

    pose = sim.pose
    started = time.perf_counter()
    for _ in range(args.steps):
        sim.render(pose)
    render_seconds = (time.perf_counter() - started) / args.steps
    renderer = sim.renderer
    env.close()
    return {
        "size": size,
        "steps_per_s": 1.0 / step_seconds,
        "renders_per_s": 1.0 / render_seconds,
        "step_over_render": step_seconds / render_seconds,
        "first_reset_s": first_reset,
        "triangles": renderer.num_triangles,
        "drawn": drawn / args.steps,
    }


def bench_large_scene(args: Args, folder: Path) -> dict[str, float]:
    """Load, navigation-grid and step figures of the HM3D-scale scene (see the module doc)."""
    from envs.embedded.navigation import NavGrid
    from envs.embedded.scenes import (
        encode_basis_textures,
        load_scene,
        scene_mesh,
        storey_house,
    )

    started = time.perf_counter()
    scene = storey_house(args.large_scene, args.large_storeys, args.large_min_triangles)
    path = folder / "large.basis.glb"
    path.write_bytes(encode_basis_textures(scene.export(file_type="glb")))
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    load_scene(path)
    first_load_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_scene(path)
    cached_load_s = time.perf_counter() - started
    mesh = scene_mesh(loaded)
    started = time.perf_counter()
    NavGrid.from_mesh(mesh)
    nav_s = time.perf_counter() - started
    steps = bench_size(args.large_size, replace(args, steps=args.large_steps), str(path))
    pair = bench_interleaved(args, {"large": str(path), "small": args.scene})
    return {
        "triangles": len(mesh.faces),
        "megabytes": path.stat().st_size / 1e6,
        "build_s": build_s,
        "first_load_s": first_load_s,
        "cached_load_s": cached_load_s,
        "nav_s": nav_s,
        **{f"step_{key}": value for key, value in steps.items()},
        **{f"interleaved_{key}": value for key, value in pair.items()},
    }


def bench_interleaved(args: Args, scenes: dict[str, str]) -> dict[str, float]:
    """Env steps/s of several scenes at ``large_size``, stepped in alternating blocks.

    On a shared machine the load changes within seconds; blocks of :data:`_BLOCK` steps taken
    in turn give every scene the same share of it, so their ratio holds whatever the load.
    """
    size = args.large_size
    made = {
        name: gym.make("IndoorNav-v0", scene=scene, width=size, height=size)
        for name, scene in scenes.items()
    }
    actions = np.random.default_rng(args.seed).integers(1, 4, size=args.large_steps + 50)
    for env in made.values():
        env.reset(seed=args.seed)
        for action in actions[:50]:  # warm-up
            env.step(int(action))
    seconds = dict.fromkeys(made, 0.0)
    for start in range(50, len(actions), _BLOCK):
        for name, env in made.items():
            started = time.perf_counter()
            for action in actions[start : start + _BLOCK]:
                _, _, terminated, truncated, _ = env.step(int(action))
                if terminated or truncated:
                    env.reset()
            seconds[name] += time.perf_counter() - started
    for env in made.values():
        env.close()
    return {name: args.large_steps / value for name, value in seconds.items()}


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
    if args.large_min_triangles > 0:
        previous = os.environ.get(CACHE_ENV_VAR)
        with tempfile.TemporaryDirectory() as folder:
            os.environ[CACHE_ENV_VAR] = folder  # an empty decoded-texture cache: a true first load
            try:
                large = bench_large_scene(args, Path(folder))
            finally:
                os.environ.pop(CACHE_ENV_VAR)
                if previous is not None:
                    os.environ[CACHE_ENV_VAR] = previous
        print(
            f"large scene ({args.large_scene} x {args.large_storeys} storeys): "
            f"{large['triangles']:,} triangles, .basis.glb {large['megabytes']:.1f} MB "
            f"(built and encoded in {large['build_s']:.1f} s); load {large['first_load_s']:.2f} s "
            f"first (decoding textures), {large['cached_load_s']:.2f} s cached; "
            f"nav grid {large['nav_s']:.2f} s"
        )
        print(
            f"large scene at {args.large_size}²: {large['step_steps_per_s']:.0f} env steps/s, "
            f"{large['step_renders_per_s']:.0f} bare renders/s; a step drew "
            f"{large['step_drawn']:,.0f} of {large['step_triangles']:,} triangles on average; "
            f"the env's first reset (load, upload, nav grid, first views) took "
            f"{large['step_first_reset_s']:.2f} s"
        )
        print(
            f"interleaved in blocks of {_BLOCK} steps: large {large['interleaved_large']:.0f}, "
            f"{args.scene} {large['interleaved_small']:.0f} env steps/s "
            f"({large['interleaved_large'] / large['interleaved_small']:.2f} x)"
        )
        rows.append(large)
    return rows


if __name__ == "__main__":
    cli.run(main, Args)
