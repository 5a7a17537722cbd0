"""Build every memory along a ground-truth trajectory and draw what each one keeps.

    .venv/bin/python examples/build_memory.py                      # VGG16 features, 64x64 frames
    .venv/bin/python examples/build_memory.py --steps 12 --size 32 --encoder pooled_color  # tiny

The agent walks from a start pose to a goal in ``IndoorNav-v0`` with the simulator's oracle
actions and then back to the start, so the last frames revisit the first place. Every frame but
the last eighth is added to each memory of :mod:`worldsim.memory`; the last frame is the target
view (a revisit the memories have to recall from the way out):

- ``feature_map_topdown.png``: the 3D feature map from above, voxels coloured by a 3-component
  PCA of their features (higher voxels drawn over lower ones; ceiling left out), with the path;
- ``bev_topdown.png``: the bird's-eye map, coloured the same way;
- ``retrieval.png``: the target view, the frames the frame bank retrieved for it and the image
  memory's snapshots, each with its step;
- ``summary.json``: token counts and update times per memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldsim import cli
from worldsim.memory import MEMORIES, build_memory
from worldsim.models.encoders import EncoderConfig, build_encoder


@dataclass(frozen=True)
class Args:
    """Example settings."""

    output_dir: Path = Path("outputs/build_memory")
    """Where the pictures and the summary go."""
    steps: int = 80
    """Steps of the trajectory (out to the goal, then back)."""
    size: int = 64
    """Frame size, pixels (square)."""
    encoder: str = "vgg16"
    """Image encoder: vgg16 (ImageNet weights), dinov2 (local checkpoint) or pooled_color."""
    voxel_size: float = 0.1
    """Voxel / floor cell edge, metres."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seeds the episode (scene, start and goal)."""
    device: str = "cpu"
    """Torch device of the memories."""


def collect(args: Args) -> dict[str, np.ndarray]:
    """Frames of an out-and-back oracle trajectory in ``IndoorNav-v0``."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers IndoorNav-v0)

    env = gym.make("IndoorNav-v0", width=args.size, height=args.size)
    observation, info = env.reset(seed=args.seed)
    sim = env.unwrapped.sim
    start, goal = info["position"].copy(), info["goal"].copy()
    frames = {"rgb": [], "depth": [], "pose": [], "intrinsics": []}
    for step in tqdm(range(args.steps), desc="trajectory"):
        for key, value in (
            ("rgb", observation["rgb"]),
            ("depth", observation["depth"]),
            ("pose", observation["pose"]),
            ("intrinsics", info["intrinsics"]),
        ):
            frames[key].append(np.asarray(value))
        target = goal if step < args.steps // 2 else start
        action = sim.oracle_action(target)
        if action == 0:  # arrived: turn in place rather than ending the episode
            action = 2
        observation, _, _, _, info = env.step(action)
    env.close()
    return {key: np.stack(value) for key, value in frames.items()}


def to_tensors(frames: dict[str, np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The one conversion from the Gymnasium boundary to (1, T, ...) channels-first tensors."""
    rgb = torch.from_numpy(frames["rgb"]).permute(0, 3, 1, 2).float() / 255.0
    depth = torch.from_numpy(frames["depth"]).permute(0, 3, 1, 2).float()
    pose = torch.from_numpy(frames["pose"]).float()
    k = torch.from_numpy(frames["intrinsics"]).float()
    return [x[None].to(device) for x in (rgb, depth, k, pose)]


def pca_colours(features: torch.Tensor) -> np.ndarray:
    """(M, C) features -> (M, 3) colours in [0, 1] from their first three principal components."""
    centred = features - features.mean(dim=0)
    _, _, v = torch.pca_lowrank(centred, q=min(3, features.shape[1]), center=False)
    projected = centred @ v  # (M, q)
    low, high = projected.amin(dim=0), projected.amax(dim=0)
    colours = ((projected - low) / (high - low).clamp_min(1e-8)).numpy()
    return np.pad(colours, ((0, 0), (0, 3 - colours.shape[1])))


def draw_topdown(
    path: Path, xz: np.ndarray, colours: np.ndarray, trajectory: np.ndarray, title: str, cell: float
) -> None:
    """Scatter cells (x, z) seen from above (-z up the page), with the camera path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6))
    marker = max(1.0, (72 * 6 * cell / max(np.ptp(xz[:, 0]), np.ptp(xz[:, 1]), 1.0)) ** 2)
    axis.scatter(xz[:, 0], -xz[:, 1], c=colours, s=marker, marker="s", linewidths=0)
    axis.plot(trajectory[:, 0], -trajectory[:, 2], color="white", linewidth=2)
    axis.plot(trajectory[:, 0], -trajectory[:, 2], color="black", linewidth=1)
    axis.scatter(trajectory[:1, 0], -trajectory[:1, 2], color="red", zorder=3, label="start")
    axis.set_aspect("equal")
    axis.set_xlabel("world x (m)")
    axis.set_ylabel("world -z (m)")
    axis.set_title(title)
    axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def draw_retrieval(path: Path, rgb: np.ndarray, target: int, rows: dict[str, list[int]]) -> None:
    """The target frame and, per memory, the frames it keeps / retrieved, with their steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max(1, *(len(v) for v in rows.values()))
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(2 * columns, 2.2 * len(rows)), squeeze=False
    )
    for r, (name, steps) in enumerate(rows.items()):
        axes[r, 0].imshow(rgb[target])
        axes[r, 0].set_title(f"target (step {target})", fontsize=8)
        for c in range(1, columns):
            if c - 1 < len(steps):
                axes[r, c].imshow(rgb[steps[c - 1]])
                axes[r, c].set_title(f"{name}: step {steps[c - 1]}", fontsize=8)
        for axis in axes[r]:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_render(path: Path, truth: torch.Tensor, render) -> None:
    """The true last view beside the rendered memory's view of the same camera and its mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    images = (truth, render.rgb[0, 0], render.mask[0, 0].float().expand(3, -1, -1))
    titles = ("true view", "rendered memory", "covered")
    for axis, image, title in zip(axes, images, titles, strict=True):
        axis.imshow(image.permute(1, 2, 0).cpu().numpy())
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    frames = collect(args)
    rgb, depth, k, pose = to_tensors(frames, device)
    encoder = build_encoder(EncoderConfig(name=args.encoder))
    grid = {"voxel_size": args.voxel_size}
    memories = {
        name: build_memory(name)
        if name in ("none", "rendered")  # neither encodes features
        else build_memory(name, encoder=encoder, **(grid if name in ("feature_map", "bev") else {}))
        for name in MEMORIES
    }
    summary = {}
    target = rgb.shape[1] - 1
    remembered = rgb.shape[1] - max(1, rgb.shape[1] // 8)
    target_pose, target_k = pose[:, target:], k[:, target:]
    for name, memory in memories.items():
        memory.reset(1, device)
        start = time.perf_counter()
        for t in tqdm(range(remembered), desc=name, leave=False):
            memory.update(
                rgb[:, t : t + 1], depth[:, t : t + 1], k[:, t : t + 1], pose[:, t : t + 1]
            )
        elapsed = time.perf_counter() - start
        summary[name] = {"update_ms_per_frame": 1000 * elapsed / remembered}
        if memory.gives_tokens:  # the rendered memory's render is summarised below
            _, mask = memory.tokens(target_pose, target_k, (args.size, args.size))
            summary[name].update(token_dim=memory.token_dim, tokens=int(mask.sum()))
    positions = frames["pose"][:, :3, 3]
    for name in ("feature_map", "bev"):
        memory = memories[name]
        _, centres, features = memory.cells()
        centres = centres.cpu()
        if name == "feature_map":
            keep = centres[:, 1] < 2.0  # leave the ceiling out of the top-down view
            order = torch.argsort(centres[keep, 1])  # higher voxels drawn last
            centres, features = centres[keep][order], features.cpu()[keep][order]
            xz = centres[:, [0, 2]].numpy()
        else:
            xz = centres.numpy()
        draw_topdown(
            args.output_dir / f"{name}_topdown.png",
            xz,
            pca_colours(features.cpu()),
            positions,
            f"{name} ({len(xz)} cells, {encoder.name})",
            args.voxel_size,
        )
        summary[name]["cells"] = len(memory.cells()[0])
    bank, images = memories["frame_bank"], memories["image"]
    picks, picked = bank.retrieve(target_pose, target_k, (args.size, args.size))
    bank_time, _ = bank.frame_times()
    bank_steps = [int(bank_time[0, s]) for s in picks[0][picked[0]].tolist()]
    snapshot_time, filled = images.snapshot_times()
    snapshot_steps = sorted(int(t) for t in snapshot_time[0][filled[0]].tolist())
    draw_retrieval(
        args.output_dir / "retrieval.png",
        frames["rgb"],
        target,
        {"frame bank": bank_steps, "image memory": snapshot_steps},
    )
    render = memories["rendered"].render(target_pose, target_k, (args.size, args.size))
    draw_render(args.output_dir / "rendered.png", rgb[0, target], render)
    summary["rendered"]["points"] = int(memories["rendered"].num_points()[0])
    summary["rendered"]["covered"] = float(render.mask.float().mean())
    summary["frame_bank"]["retrieved_steps"] = bank_steps
    summary["image"]["snapshot_steps"] = snapshot_steps
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"pictures in {args.output_dir}")


if __name__ == "__main__":
    cli.run(main, Args)
