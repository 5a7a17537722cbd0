"""Imagine a walk that leaves a room and comes back: ground truth | with memory | without memory.

    .venv/bin/python examples/imagine.py                        # the embedded checkpoint
    .venv/bin/python examples/imagine.py --checkpoint tiny-untrained --scene house-train-0000 \
        --out-steps 2 --output-dir outputs/imagine_smoke                       # smoke test

The ground-truth simulator's shortest-path follower walks from a start pose towards a goal in
another part of the house (at most ``--out-steps`` steps), turns around, walks back to the start
and turns to face the way it first looked. The same actions are then played in two learned
simulators, ``PersistentWorld-v0`` with the model's memory and with ``memory="none"``, both
started from the ground-truth start view. On the way back the memory holds what was seen on the
way out; the model without memory can only guess.

Writes to ``--output-dir``:

- ``imagine.mp4``: ground truth | with memory | without memory, with per-frame PSNR (higher is
  better) and LPIPS (lower is better) against the ground truth plotted below, a cursor on the
  current step and the return leg shaded;
- ``metrics.png``: the same curves (:func:`worldsim.evaluation.report.plot_metric_curves`);
- ``metrics.json`` / ``metrics.md``: mean PSNR / LPIPS over all steps and over the return leg.

``--checkpoint`` takes a folder written by ``WorldModel.save_pretrained`` (default: the embedded
checkpoint). ``tiny-untrained`` builds an untrained tiny model (32x32 frames, 90°
turns so that the walk is short) with a cheap colour-feature memory: a smoke test of the
pipeline whose pictures are noise and whose two learned columns coincide (the memory blocks of
an untrained model are zero-gated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from tqdm import tqdm

import envs  # noqa: F401  (registers IndoorNav-v0 and PersistentWorld-v0)
from envs.simulator import wrap_angle
from worldsim import cli
from worldsim.evaluation.report import plot_metric_curves, write_report
from worldsim.memory import build_memory
from worldsim.metrics.video import lpips, psnr
from worldsim.models.world_model import WorldModel
from worldsim.simulator.checkpoints import TINY_UNTRAINED, TINY_UNTRAINED_MEMORY

COLUMNS = ("ground truth", "with memory", "without memory")


@dataclass(frozen=True)
class Args:
    """Example settings."""

    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained (smoke test), or
    None: the embedded default checkpoint."""
    memory: str | None = None
    """Memory name for worldsim.memory.build_memory; default: the checkpoint's."""
    memory_encoder: str | None = None
    """Image encoder of that memory (vgg16, dinov2, pooled_color); default: the memory's."""
    scene: str = "house-val-0000"
    """Ground-truth scene id (a held-out house by default) or .glb path."""
    out_steps: int = 40
    """Most steps of the way out (and of the way back)."""
    min_goal_distance: float = 3.0
    """Geodesic distance from the start to the far point, metres."""
    sampling_steps: int | None = None
    """DDIM steps per generated frame; default: the model's."""
    device: str = "cpu"
    """Torch device of the world model."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seeds the start, the far point, the untrained model and the sampling noise."""
    output_dir: Path = Path("outputs/imagine")
    """Where the video, the plot and the report go."""
    scale: int = 4
    """Each frame is shown this many times larger (nearest neighbour)."""
    fps: int = 8
    """Frames per second of the video."""


def load_model(args: Args) -> tuple[WorldModel | str, str | dict | None]:
    """The checkpoint to give the envs, and the memory setting."""
    memory: str | dict | None = None
    if args.memory is not None:
        memory = {"name": args.memory}
        if args.memory_encoder is not None:
            memory["encoder"] = args.memory_encoder
    if args.checkpoint != TINY_UNTRAINED:
        return args.checkpoint, memory
    memory = memory or TINY_UNTRAINED_MEMORY
    width = build_memory(**memory).token_dim
    model = WorldModel.from_config_name("tiny", memory_token_dim=width, turn_step_deg=90.0)
    return model.eval(), memory


def out_and_back(truth: gym.Env, args: Args) -> tuple[list[int], list[dict], dict]:
    """Oracle actions out to a far point, turn around, back, face the start; true frames."""
    observation, info = truth.reset(seed=args.seed, options={"scene": args.scene})
    sim = truth.unwrapped.sim
    start, start_yaw, goal = info["position"], info["yaw"], info["goal"]
    turn = math.radians(sim.config.turn_step_deg)
    actions, frames = [], [observation]

    def act(action: int) -> None:
        sim.step(action)
        actions.append(action)
        frames.append(sim.observe())

    for _ in range(args.out_steps):
        action = sim.oracle_action(goal)
        if action == 0:
            break
        act(action)
    out_length = len(actions)
    for _ in range(round(math.pi / turn)):
        act(2)
    for _ in range(args.out_steps):
        action = sim.oracle_action(start)
        if action == 0:
            break
        act(action)
    turns = round(wrap_angle(start_yaw - sim.yaw) / turn)
    for _ in range(abs(turns)):
        act(2 if turns > 0 else 3)
    options = {"scene": args.scene, "start": (*start, start_yaw), "goal": goal}
    return actions, frames, {"options": options, "out_length": out_length}


def imagine(env: gym.Env, options: dict, actions: list[int], seed: int, name: str) -> list[dict]:
    """Play ``actions`` in a learned simulator from the ground-truth start."""
    observations = [env.reset(seed=seed, options=options)[0]]
    for action in tqdm(actions, desc=name):
        observations.append(env.step(action)[0])
    return observations


def to_tensor(frames: list[dict]) -> torch.Tensor:
    """(T, 3, H, W) float RGB in [0, 1] of observations."""
    rgb = np.stack([frame["rgb"] for frame in frames])
    return rearrange(torch.from_numpy(rgb).float() / 255.0, "t h w c -> t c h w")


def metric_strip(
    curves: dict[str, dict[str, np.ndarray]], width: int, return_from: int
) -> tuple[np.ndarray, np.ndarray]:
    """The metric curves drawn once, and the pixel column of every step for the cursor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, 1.5 * len(curves) + 0.4), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(len(curves), 1, sharex=True)
    for axis, (metric, series) in zip(axes, curves.items(), strict=True):
        for label, values in series.items():
            axis.plot(np.arange(len(values)), values, marker="o", markersize=2, label=label)
        axis.axvspan(return_from - 0.5, len(values) - 0.5, color="grey", alpha=0.15)
        axis.set_ylabel(metric, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    steps = len(next(iter(next(iter(curves.values())).values())))
    axes[-1].set_xlim(-0.5, steps - 0.5)  # step 0 (the shared start view) has no score
    axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("step (shaded: the way back)", fontsize=8)
    figure.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    columns = axes[-1].transData.transform(np.stack([np.arange(steps), np.zeros(steps)], 1))[:, 0]
    return image, np.round(columns).astype(int)


def compose(frames: list[np.ndarray], strip: np.ndarray, cursor: int, scale: int) -> np.ndarray:
    """One video frame: the labelled columns above the metric strip with a cursor."""
    panels = [np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8)) for frame in frames]
    top = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(top)
    for index, label in enumerate(COLUMNS):
        draw.text((index * panels[0].shape[1] + 3, 2), label, fill=(255, 255, 0))
    strip = strip.copy()
    strip[:, max(cursor - 1, 0) : cursor + 1] = (220, 30, 30)
    if strip.shape[1] != top.width:
        strip = np.asarray(Image.fromarray(strip).resize((top.width, strip.shape[0])))
    image = np.concatenate([np.asarray(top), strip], axis=0)
    return np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)))  # even size


def main(args: Args) -> dict:
    torch.manual_seed(args.seed)
    checkpoint, memory = load_model(args)
    settings = dict(checkpoint=checkpoint, device=args.device, scene=args.scene)
    settings["num_sampling_steps"] = args.sampling_steps
    with_memory = gym.make("PersistentWorld-v0", memory=memory, **settings)
    without_memory = gym.make("PersistentWorld-v0", memory="none", **settings)
    model = with_memory.unwrapped.model
    config = model.config
    truth = gym.make(
        "IndoorNav-v0",
        scene=args.scene,
        width=config.width,
        height=config.height,
        hfov_deg=config.hfov_deg,
        max_depth=config.max_depth_m,
        forward_step_m=config.forward_step_m,
        turn_step_deg=config.turn_step_deg,
        min_goal_distance=args.min_goal_distance,
    )
    actions, true_frames, walk = out_and_back(truth, args)
    imagined = {
        "with memory": imagine(with_memory, walk["options"], actions, args.seed, "with memory"),
        "without memory": imagine(
            without_memory, walk["options"], actions, args.seed, "without memory"
        ),
    }

    target = to_tensor(true_frames[1:])  # the start view is the ground truth for all
    curves: dict[str, dict[str, np.ndarray]] = {"PSNR (dB)": {}, "LPIPS": {}}
    rows = []
    back = slice(walk["out_length"], None)
    for label, frames in imagined.items():
        prediction = to_tensor(frames[1:])
        scores = {"PSNR (dB)": psnr(prediction, target), "LPIPS": lpips(prediction, target)}
        row = {"method": label}
        for metric, result in scores.items():
            per_step = np.concatenate([[np.nan], result.per_item])  # step 0 is the start view
            curves[metric][label] = per_step
            row[f"{metric} all"] = float(np.mean(result.per_item))
            row[f"{metric} way back"] = float(np.mean(result.per_item[back]))
        rows.append(row)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot_metric_curves(
        {metric: {k: v[1:] for k, v in series.items()} for metric, series in curves.items()},
        args.output_dir / "metrics.png",
        title=f"{args.scene}: imagined vs true frames",
    )
    write_report(rows, args.output_dir, "metrics")

    width = 3 * config.width * args.scale
    strip, columns = metric_strip(curves, width, walk["out_length"] + 1)
    video = args.output_dir / "imagine.mp4"
    with imageio.get_writer(video, fps=args.fps, macro_block_size=1) as writer:
        for step in range(len(true_frames)):
            frames = [true_frames[step]["rgb"]]
            frames += [imagined[label][step]["rgb"] for label in COLUMNS[1:]]
            writer.append_data(compose(frames, strip, int(columns[step]), args.scale))
    for row in rows:
        print(
            ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else str(v) for k, v in row.items())
        )
    print(f"video: {video}")
    return {
        "steps": len(actions),
        "out_length": walk["out_length"],
        "rows": rows,
        "video": video,
    }


if __name__ == "__main__":
    cli.run(main, Args)
