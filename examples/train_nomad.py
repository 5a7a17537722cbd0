"""Train the NoMaD-style policy on recorded trajectories (paper §3.3 / NoMaD's objective).

Reads a trajectory data set (:mod:`worldsim.data`, made by ``envs.collection``), cuts clips of
``context_size + 1`` context frames and the following frames (goals up to ``max_goal_distance``
frames ahead, ``len_traj_pred`` waypoints), and trains with NoMaD's loss (diffusion on
normalised waypoint deltas + temporal distance, goal masking). Saves the policy with
``save_pretrained`` and writes the loss curve (``loss.png``) and a table (``train_nomad.md``).

Run::

    python examples/train_nomad.py --data-dir data/train-64

Tiny setting (as the tests; collects a one-scene data set first if ``--data-dir`` is empty)::

    python examples/train_nomad.py --data-dir /tmp/nomad-data --output-dir /tmp/nomad \
        --preset tiny --steps 2 --batch-size 2 --collect-scenes 1
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from planners.nomad import POLICY_PRESETS, NoMaDPolicy, make_scheduler
from planners.nomad.training import NoMaDTrainingConfig, train_policy
from worldsim import cli
from worldsim.data import MANIFEST_NAME, ClipConfig, ClipDataset, collate_clips
from worldsim.evaluation.report import plot_metric_curves, write_report


@dataclass(frozen=True)
class Args:
    """Settings of policy training."""

    data_dir: Path = Path("data/train-64")
    """Trajectory data set folder."""
    output_dir: Path = Path("outputs/train_nomad")
    """Output folder of the trained policy."""
    preset: Literal["tiny", "small", "upstream"] = "small"
    """Policy size."""
    training: NoMaDTrainingConfig = field(
        default_factory=lambda: NoMaDTrainingConfig(steps=2000, batch_size=32)
    )
    """Training settings."""
    steps: int | None = None
    """Shortcut for training.steps."""
    batch_size: int | None = None
    """Shortcut for training.batch_size."""
    collect_scenes: int = 0
    """If > 0 and data holds no data set, first collect this many training scenes into it."""
    seed: int = 0
    """Seed of initialisation, data order and noise."""
    device: str = "cpu"
    """Training device."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    workers: int = 0
    """Data-loader worker processes."""


def collect_small_dataset(root: Path, scenes: int, size: int, seed: int) -> None:
    """Collect a small training data set with the exploration policies."""
    from envs.collection import CollectionConfig, collect
    from envs.simulator import SimulatorConfig

    collect(
        CollectionConfig(
            output_dir=root,
            scene_count=scenes,
            episodes_per_scene=2,
            episodes_per_shard=2,
            max_steps=60,
            seed=seed,
            workers=1,
            simulator=SimulatorConfig(width=size, height=size),
        )
    )


def tail_mean(values: list[float], fraction: float = 0.1) -> float:
    """Mean of the finite values among the last ``fraction`` of ``values`` (NaN if none)."""
    tail = values[-max(1, int(len(values) * fraction)) :]
    finite = [v for v in tail if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def main(args: Args) -> list[dict[str, float]]:
    """Train and save the policy; returns the loss history."""
    training = args.training
    if args.steps is not None:
        training = replace(training, steps=args.steps)
    if args.batch_size is not None:
        training = replace(training, batch_size=args.batch_size)
    torch.manual_seed(args.seed)  # parameter initialisation (the only global draw)
    policy = NoMaDPolicy(**POLICY_PRESETS[args.preset]).to(args.device)
    if args.collect_scenes > 0 and not (args.data_dir / MANIFEST_NAME).exists():
        size = policy.config.image_size[0]
        collect_small_dataset(args.data_dir, args.collect_scenes, size, args.seed)
    context = policy.config.context_size + 1
    future = max(training.max_goal_distance, policy.config.len_traj_pred)
    dataset = ClipDataset(
        args.data_dir, ClipConfig(n_context=context, n_future=future, max_memory_frames=0)
    )
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        dataset,
        batch_size=training.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= training.batch_size,
        collate_fn=collate_clips,
        generator=generator,
        num_workers=args.workers,
    )
    history = train_policy(policy, make_scheduler(policy), loader, training, generator)
    policy.save_pretrained(args.output_dir)
    curves = {name: [h[name] for h in history] for name in ("loss", "diffusion", "distance")}
    plot_metric_curves(curves, args.output_dir / "loss.png", title="NoMaD training", xlabel="step")
    write_report(
        {
            "preset": args.preset,
            "clips": len(dataset),
            "steps": training.steps,
            "parameters": sum(p.numel() for p in policy.parameters()),
            "final_loss": tail_mean(curves["loss"]),
            "final_diffusion": tail_mean(curves["diffusion"]),
            "final_distance": tail_mean(curves["distance"]),
        },
        args.output_dir,
        "train_nomad",
    )
    print((args.output_dir / "train_nomad.md").read_text())
    return history


if __name__ == "__main__":
    cli.run(main, Args)
