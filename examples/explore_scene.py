"""Tour a procedural house with the shortest-path oracle and record what the agent sees.

Writes ``tour.mp4`` (RGB | depth side by side), ``top_down.png`` (the navigable floor with the
path and the goals) and ``first_frame.png`` to ``--output-dir``::

    python examples/explore_scene.py
    python examples/explore_scene.py --scene house-val-0002 --num-goals 6 --width 256 --height 256
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

from envs.embedded.simulator import Simulator
from envs.simulator import SimulatorConfig
from worldsim import cli
from worldsim.evaluation.report import plot_trajectories
from worldsim.geometry import Action


@dataclass(frozen=True)
class Args:
    """Scene tour settings."""

    scene: str = "house-train-0000"
    """Scene id (house-{train,val,test}-NNNN) or path to a .glb."""
    num_goals: int = 4
    """How many random goals the oracle visits in turn."""
    min_goal_distance: float = 3.0
    """Smallest geodesic distance of each goal from where the agent stands, metres."""
    max_steps_per_goal: int = 400
    """Give up on a goal after this many actions."""
    width: int = 256
    height: int = 256
    seed: int = 0
    output_dir: Path = Path("outputs/explore_scene")
    fps: int = 15


def depth_to_rgb(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """Colour metric depth (H, W, 1) with a perceptual colormap; no-hit pixels are black."""
    from matplotlib import colormaps

    normalised = np.clip(depth[..., 0] / max_depth, 0.0, 1.0)
    rgb = (colormaps["turbo"](normalised)[..., :3] * 255).astype(np.uint8)
    rgb[depth[..., 0] <= 0] = 0
    return rgb


def main(args: Args) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sim = Simulator(SimulatorConfig(width=args.width, height=args.height))
    sim.load_scene(args.scene)
    sim.reset_agent(sim.sample_navigable_point(rng), float(rng.uniform(-np.pi, np.pi)))
    load_seconds = time.perf_counter() - started

    frames, positions, goals, reached = [], [sim.position], [], 0
    observation = sim.observe()
    imageio.imwrite(args.output_dir / "first_frame.png", observation["rgb"])
    progress = tqdm(total=args.num_goals, desc="goals", unit="goal")
    for _ in range(args.num_goals):
        goal = sim.sample_navigable_point(rng)
        for _ in range(100):  # prefer goals a few metres away
            if sim.geodesic_distance(sim.position, goal) >= args.min_goal_distance:
                break
            goal = sim.sample_navigable_point(rng)
        goals.append(goal)
        for _ in range(args.max_steps_per_goal):
            action = sim.oracle_action(goal)
            if action == Action.STOP:
                reached += 1
                break
            sim.step(action)
            observation = sim.observe()
            frames.append(
                np.concatenate(
                    [observation["rgb"], depth_to_rgb(observation["depth"], sim.config.max_depth)],
                    axis=1,
                )
            )
            positions.append(sim.position)
        progress.update()
    progress.close()

    imageio.mimwrite(args.output_dir / "tour.mp4", frames, fps=args.fps, macro_block_size=1)
    x_min, x_max, z_max, z_min = sim.navigation.extent
    plot_trajectories(
        {"oracle tour": np.asarray(positions)},
        args.output_dir / "top_down.png",
        occupancy=sim.navigation.navigable,
        extent=(x_min, x_max, z_min, z_max),
        goal=np.asarray(goals),
        title=f"{sim.scene_id}: oracle tour (white: navigable floor)",
    )
    summary = {
        "goals_reached": reached,
        "goals": args.num_goals,
        "steps": len(frames),
        "scene_load_s": round(load_seconds, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }
    print(", ".join(f"{key}: {value}" for key, value in summary.items()))
    print(f"wrote {args.output_dir / 'tour.mp4'}, {args.output_dir / 'top_down.png'}")
    return summary


if __name__ == "__main__":
    cli.run(main, Args)
