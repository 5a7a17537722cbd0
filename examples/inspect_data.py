"""Print a trajectory dataset's statistics and draw a contact sheet (and a video) of random clips.

Inspect a collected dataset (see ``examples/collect_data.py``)::

    .venv/bin/python examples/inspect_data.py --data-dir data/train-64

Each row of the sheet is one clip: a few of its memory frames, its context frames and the
future frames to predict (colour above, depth below), next to a top-down view of the whole
trajectory with the memory (grey), context (blue) and future (orange) camera positions. Add
``--revisit-only`` to draw only clips whose future revisits earlier views, ``--video`` to also
write an MP4, and ``--verify`` to re-hash every stored episode. Writes ``contact_sheet.png`` (and
``contact_sheet.mp4``) to ``--output-dir`` (``outputs/inspect_data``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from worldsim import cli
from worldsim.data import (
    ClipConfig,
    ClipDataset,
    TrajectoryStore,
    dataset_statistics,
    memory_frame_indices,
)

SHOWN_MEMORY_FRAMES = 4
"""Memory frames drawn per clip (evenly chosen among the clip's memory)."""


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    data_dir: Path
    """Dataset folder."""
    output_dir: Path = Path("outputs/inspect_data")
    """Folder of the contact sheet (contact_sheet.png) and the video (contact_sheet.mp4)."""
    clips: int = 6
    """Random clips to draw."""
    n_context: int = 4
    """Context frames per clip."""
    n_future: int = 8
    """Future frames per clip."""
    max_memory_frames: int = 32
    """Memory frames per clip (a few of them are drawn)."""
    revisit_only: bool = False
    """Draw only revisit clips."""
    video: bool = False
    """Also write an MP4 of the clips."""
    verify: bool = False
    """Re-hash every episode (reads the whole dataset)."""
    allow_incomplete: bool = False
    """Inspect a dataset whose collection has not finished."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seed of the clip choice."""


def depth_to_rgb(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """(..., H, W) metres -> (..., H, W, 3) uint8 with a perceptual colour map (0 = black)."""
    colours = plt.get_cmap("viridis")(np.clip(depth / max_depth, 0.0, 1.0))[..., :3]
    colours[depth <= 0] = 0.0
    return (colours * 255).astype(np.uint8)


def clip_strip(item: dict, max_depth: float) -> np.ndarray:
    """(2H, N * (W + 2), 3) uint8: colour above depth for memory, context and future frames."""
    shown = np.linspace(0, len(item["memory_mask"]) - 1, SHOWN_MEMORY_FRAMES).round().astype(int)
    memory = item["memory_rgb"][np.unique(shown)] if len(item["memory_mask"]) else None
    memory_depth = item["memory_depth"][np.unique(shown)] if memory is not None else None
    rgb = item["rgb"] if memory is None else torch.cat([memory, item["rgb"]])
    depth = item["depth"] if memory is None else torch.cat([memory_depth, item["depth"]])
    colour = (rgb.numpy() * 255).round().astype(np.uint8)
    colour = rearrange(colour, "n c h w -> n h w c")
    shaded = depth_to_rgb(depth[:, 0].numpy(), max_depth)
    frames = np.concatenate([colour, shaded], axis=1)  # (N, 2H, W, 3)
    frames = np.pad(frames, ((0, 0), (0, 0), (0, 2), (0, 0)), constant_values=255)
    return rearrange(frames, "n h w c -> h (n w) c")


def main(args: Args) -> None:
    store = TrajectoryStore(args.data_dir, allow_incomplete=args.allow_incomplete)
    print("settings:", json.dumps(store.settings, indent=1, sort_keys=True))
    stats = dataset_statistics(store)
    print(json.dumps(stats, indent=1))
    if args.verify:
        for path in tqdm(store.shards, desc="verifying", unit="shard"):
            store.reader(path).verify()
        print(f"verified {len(store.shards)} shards: every content hash matches")

    config = ClipConfig(
        n_context=args.n_context,
        n_future=args.n_future,
        max_memory_frames=args.max_memory_frames,
        revisit_only=args.revisit_only,
    )
    dataset = ClipDataset(store, config)
    print(
        f"clips: {len(dataset)} ({dataset.is_revisit.mean():.3f} revisit clips; "
        f"{dataset.num_short_episodes} episodes too short for one clip)"
    )
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(dataset), min(args.clips, len(dataset)), replace=False))
    max_depth = float(store.settings.get("simulator", {}).get("max_depth", 10.0))

    figure, axes = plt.subplots(
        len(chosen), 2, figsize=(16, 2.2 * len(chosen)), width_ratios=[6, 1], squeeze=False
    )
    video_frames = []
    for row, index in enumerate(tqdm(chosen, desc="drawing", unit="clip")):
        item = dataset[int(index)]
        info, start = dataset.clip_location(int(index))
        axes[row, 0].imshow(clip_strip(item, max_depth))
        axes[row, 0].set_title(
            f"{info.scene_id} episode {info.episode} ({info.metadata.get('policy', '?')}), "
            f"frames {start}..{start + config.clip_length - 1}, memory | context | future"
            + (", revisit" if dataset.is_revisit[int(index)] else ""),
            fontsize=8,
        )
        axes[row, 0].axis("off")
        poses = store.read_frames(store.episodes.index(info), slice(None), ("cam_to_world",))[
            "cam_to_world"
        ]
        x, z = poses[:, 0, 3], poses[:, 2, 3]
        memory = memory_frame_indices(start, config.max_memory_frames)
        context = np.arange(start, start + config.n_context)
        future = np.arange(start + config.n_context, start + config.clip_length)
        axes[row, 1].plot(x, z, color="0.8", linewidth=0.8)
        axes[row, 1].scatter(x[memory], z[memory], s=4, color="0.4")
        axes[row, 1].scatter(x[context], z[context], s=6, color="tab:blue")
        axes[row, 1].scatter(x[future], z[future], s=6, color="tab:orange")
        axes[row, 1].set_aspect("equal")
        axes[row, 1].invert_yaxis()  # world -z is "up" on the page for a y-up world
        axes[row, 1].tick_params(labelsize=6)
        if args.video:
            colour = (rearrange(item["rgb"].numpy(), "t c h w -> t h w c") * 255).astype(np.uint8)
            shaded = depth_to_rgb(item["depth"][:, 0].numpy(), max_depth)
            video_frames.extend(np.concatenate([colour, shaded], axis=2))
    figure.tight_layout()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    sheet = args.output_dir / "contact_sheet.png"
    figure.savefig(sheet, dpi=120)
    print(f"contact sheet: {sheet}")
    if args.video and video_frames:
        path = sheet.with_suffix(".mp4")
        frames = np.stack(video_frames)
        scale = max(1, 256 // frames.shape[1])  # upscale small frames so players show them
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        iio.imwrite(path, frames, fps=4, macro_block_size=1)
        print(f"video: {path}")


if __name__ == "__main__":
    cli.run(main, Args)
