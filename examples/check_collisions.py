"""How well the map's walls (``worldsim.simulator.collision``) predict the truth's collisions.

In each house, an earlier walk of ``--tour-steps`` frames goes into a rendered memory. Then, from
random starts, random action sequences (``--forward-share`` of them ``move_forward``, the rest
turns) are executed in the ground truth (which slides along walls and stops at them) and moved
through the map's walls by :class:`~worldsim.simulator.collision.MapCollider`, and, as the control,
in free space. Per house and overall: the share of steps whose "blocked or not" the map gets right,
the steps each blocks, and the mean distance of the end position from the truth's, with the map and
in free space. Writes ``check_collisions.md`` / ``.json``.

Run (about a minute on a CPU)::

    python examples/check_collisions.py

Tiny setting (as the tests)::

    python examples/check_collisions.py --output-dir /tmp/collisions --num-scenes 1 \
        --starts 3 --tour-steps 300 --size 32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.embedded.scenes import scene_ids
from envs.oracle import OracleRollout
from envs.simulator import SimulatorConfig
from worldsim import cli
from worldsim.evaluation.report import write_report
from worldsim.geometry import ActionSpec, action_to_relative_pose
from worldsim.memory import RenderedMemory
from worldsim.simulator.chunks import chain_poses, insert_frames
from worldsim.simulator.collision import MapCollider, MapCollisionConfig


@dataclass(frozen=True)
class Args:
    """Settings of the collision check."""

    output_dir: Path = Path("outputs/check_collisions")
    """Output folder."""
    split: str = "test"
    """Scene split of the houses."""
    num_scenes: int = 4
    """Houses checked."""
    scene_start: int = 0
    """Index of the first house in the split (houses scene_start .. scene_start + num_scenes - 1;
    e.g. 10 for house-test-0010..): results on the first houses alone are not held out."""
    tour_steps: int = 300
    """Frames of the earlier walk whose observed points give the map's walls."""
    starts: int = 10
    """Random starts per house."""
    steps: int = 12
    """Actions per start."""
    forward_share: float = 0.6
    """Share of move_forward among the random actions (the rest turn left or right)."""
    size: int = 64
    """Frame height and width of the walk, pixels."""
    turn_step_deg: float = 10.0
    """Turn step, degrees."""
    seed: int = 0
    """Seed of the walks, starts and actions."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def _ends(reference: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(2,) floor position ``(x, z)`` after chaining relative ``steps`` from ``reference``."""
    return (reference @ chain_poses(steps[None])[0, -1])[[0, 2], 3]


def main(args: Args) -> list[dict[str, float | str]]:
    """Run the check; returns the table's rows (one per house, then all)."""
    scenes = scene_ids(args.split, args.num_scenes, args.scene_start)  # refuses bad ranges first
    if not 0.0 <= args.forward_share <= 1.0:
        raise ValueError(f"--forward-share must be in [0, 1], got {args.forward_share}")
    if args.starts < 1 or args.steps < 1:
        raise ValueError(f"--starts and --steps must be >= 1, got {args.starts}, {args.steps}")
    config = SimulatorConfig(width=args.size, height=args.size, turn_step_deg=args.turn_step_deg)
    oracle = OracleRollout(config=config)
    body = MapCollisionConfig(
        agent_radius=config.agent_radius,
        agent_height=config.agent_height,
        sensor_height=config.sensor_height,
    )
    spec = ActionSpec(forward_step_m=config.forward_step_m, turn_step_deg=args.turn_step_deg)
    turn = (1.0 - args.forward_share) / 2
    rows, totals = [], {"steps": 0, "agree": 0, "truth": 0, "map": 0, "map_m": 0.0, "free_m": 0.0}
    for index, scene in enumerate(tqdm(scenes, desc="houses")):
        rng = np.random.default_rng([args.seed, index])
        walk = oracle.tour(scene, args.tour_steps, rng)
        memory = RenderedMemory()
        memory.reset(1)
        insert_frames(memory, walk.rgb, walk.depth, walk.intrinsics, walk.cam_to_world)
        counts = dict.fromkeys(totals, 0)
        oracle.sim.load_scene(scene)  # the walk restores the simulator's earlier state
        for _ in range(args.starts):
            position = oracle.sim.sample_navigable_point(rng)
            start = oracle.start(scene, position, float(rng.uniform(-math.pi, math.pi)))
            shares = [args.forward_share, turn, turn]
            actions = torch.from_numpy(rng.choice([1, 2, 3], size=(1, args.steps), p=shares))
            truth = oracle.rollout(start, actions)
            reference = start.cam_to_world[0, -1].double()
            floor = float(reference[1, 3]) - body.sensor_height
            collider = MapCollider.from_memory(memory, 0, floor, body)
            free = action_to_relative_pose(actions[0], spec).double()
            mapped, collided = collider.constrain(reference, free)
            goal = truth.cam_to_world[0, -1, [0, 2], 3].double()
            counts["steps"] += args.steps
            counts["agree"] += int((collided == truth.collided[0]).sum())
            counts["truth"] += int(truth.collided[0].sum())
            counts["map"] += int(collided.sum())
            counts["map_m"] += float((_ends(reference, mapped) - goal).norm())
            counts["free_m"] += float((_ends(reference, free) - goal).norm())
        rows.append(_row(scene, counts, args.starts))
        totals = {key: totals[key] + counts[key] for key in totals}
    rows.append(_row("all", totals, args.starts * args.num_scenes))
    write_report(rows, args.output_dir, "check_collisions")
    print((args.output_dir / "check_collisions.md").read_text())
    return rows


def _row(scene: str, counts: dict[str, float], starts: int) -> dict[str, float | str]:
    return {
        "scene": scene,
        "steps": counts["steps"],
        "agreement": counts["agree"] / counts["steps"],
        "blocked_truth": counts["truth"],
        "blocked_map": counts["map"],
        "end_error_map_m": counts["map_m"] / starts,
        "end_error_free_m": counts["free_m"] / starts,
    }


if __name__ == "__main__":
    cli.run(main, Args)
