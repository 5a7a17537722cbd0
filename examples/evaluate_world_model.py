"""Validate a world model on held-out scenes: the future chunk with memory vs. without memory.

Make a held-out set once (unseen validation scenes, at the model's frame size), then evaluate a
trained model on it::

    .venv/bin/python examples/collect_data.py --output-dir data/val-64 --split val --scene-count 4 \
        --episodes-per-scene 4
    .venv/bin/python examples/evaluate_world_model.py \
        --checkpoint outputs/train_world_model/memory/model --data-dir data/val-64

Without ``--checkpoint`` the embedded default checkpoint is evaluated. The tiny setting the tests
use: ``--max-clips 2 --batch-size 2 --memory-frames 2`` on a 32x32 dataset and a tiny model.

For each chosen clip (up to ``--max-clips`` revisit clips and up to ``--max-clips`` clips of any
kind) the model generates the clip's future chunk from its context frames along the recorded
camera motion, once with the checkpoint's memory (``memory.json``; the 3D feature map by default)
built from the clip's earlier frames and once with ``"none"`` (the same model without map tokens),
from the same noise (:mod:`worldsim.evaluation`). Writes to ``--output-dir``:

- ``validation.json`` / ``validation.md``: PSNR, SSIM, LPIPS and depth L1 (metres) per subset
  (revisit clips, all clips) and variant: with memory, without, and the ``last frame`` baseline
  (every future frame is the last context frame: what is known before any motion is imagined);
- ``validation.png``: for a few clips (revisits first), rows of recorded | with memory | without
  memory future frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
import torch
from einops import rearrange

from worldsim import cli
from worldsim.checkpoints import resolve_memory
from worldsim.data import ClipConfig, ClipDataset
from worldsim.evaluation import (
    EvaluationConfig,
    Predictions,
    evaluation_rows,
    predict_clips,
    with_last_frame_baseline,
)
from worldsim.report import write_report
from worldsim.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel

REPORT_NAME = "validation"
"""Stem of the report files."""


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    data_dir: Path
    """Held-out dataset folder (examples/collect_data.py --split val or test)."""
    checkpoint: Path | None = None
    """Model folder (WorldModel.save_pretrained); the embedded default if None."""
    output_dir: Path = Path("outputs/evaluate_world_model")
    """Where the report and the picture go."""
    memory_frames: int = 8
    """Earlier frames per clip that build the memory (as in training)."""
    max_clips: int = 64
    """Most clips per subset (revisit clips, all clips)."""
    batch_size: int = 8
    """Clips per model call."""
    sampling_steps: int | None = None
    """DDIM steps per chunk; the model's default if None."""
    insert_context_frames: bool = False
    """Also unproject the context frames into the memory."""
    picture_clips: int = 4
    """Clips shown in validation.png."""
    device: Literal["auto", "cpu"] = "auto"
    """auto uses a GPU where there is one."""
    threads: int = 0
    """CPU threads of torch (0: torch's default)."""
    seed: int = 0
    """Seeds the sampling noise (clip i uses seed + i)."""


def picture(predictions: Predictions, count: int) -> np.ndarray:
    """(rows * H, (1 + variants) * n_future * W, 3) uint8: recorded | each variant, per clip."""
    order = np.argsort(~predictions.is_revisit, kind="stable")[:count]  # revisits first
    columns = [predictions.rgb, *predictions.generated_rgb.values()]
    rows = []
    for index in order:
        # Each block is one clip's future frames side by side; a white bar separates blocks.
        blocks = [rearrange(video[index], "t c h w -> h (t w) c") for video in columns]
        bar = torch.ones(blocks[0].shape[0], 2, 3)
        rows.append(torch.cat([part for block in blocks for part in (block, bar)][:-1], dim=1))
    return (torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu"
    folder = args.checkpoint or DEFAULT_CHECKPOINT
    model = WorldModel.from_pretrained(args.checkpoint).to(device).eval()
    memory = resolve_memory(None, model, Path(folder))
    if memory is None:
        raise ValueError(
            f"the model at {str(folder)!r} has no memory branch: there is nothing to compare "
            "with the no-memory variant"
        )
    clips = ClipDataset(
        args.data_dir,
        ClipConfig(
            n_context=model.config.n_context,
            n_future=model.config.n_future,
            max_memory_frames=args.memory_frames,
        ),
    )
    config = EvaluationConfig(
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        num_inference_steps=args.sampling_steps,
        insert_context_frames=args.insert_context_frames,
        seed=args.seed,
    )
    spec_file = Path(folder) / MEMORY_FILE
    memory_name = json.loads(spec_file.read_text())["name"] if spec_file.is_file() else "memory"
    predictions = predict_clips(
        model, clips, {memory_name: memory, "none": None}, config, progress=True
    )
    predictions = with_last_frame_baseline(predictions, clips)
    rows = evaluation_rows(predictions)
    json_path, md_path = write_report(rows, args.output_dir, REPORT_NAME)
    imageio.imwrite(
        args.output_dir / f"{REPORT_NAME}.png", picture(predictions, args.picture_clips)
    )
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path} and {args.output_dir / f'{REPORT_NAME}.png'}")


if __name__ == "__main__":
    cli.run(main, Args)
