"""Evaluate world models on multi-chunk rollouts where memory matters, in unseen houses.

Make a held-out set once (unseen test scenes, at the model's frame size), then evaluate the
shipped checkpoint (or ``--checkpoint``, optionally against ``--compare-checkpoint``) on it::

    .venv/bin/python examples/collect_data.py --output-dir data/test-64 --split test \
        --scene-count 4 --episodes-per-scene 4
    .venv/bin/python examples/evaluate_world_model.py --data-dir data/test-64

The tiny setting the tests use: a 32x32 dataset, a tiny model, ``--chunks 2 --max-windows 3
--memory-frames 4 --sampling-steps 1 --max-clips 2``.

Houses: every house of the dataset by default; ``--scene-start 20 --num-scenes 4`` evaluates
house-<split>-0020 .. 0023 of it (the index in the split, as ``plan_cem.py``), ``--scenes
house-test-0021 house-test-0023`` names them.

Windows (:mod:`worldsim.evaluation.revisits`): from each recorded episode, starts whose next
``--chunks`` x ``n_future`` frames hold the most pixels that the earlier observed frames see and
the ``n_context`` context frames do not (memory-only pixels, by depth consistency), up to
``--max-windows``. Every window is rolled out chunk by chunk along its recorded camera motion by
each variant, from the same noise:

- per checkpoint: its memory (``memory.json``) filled with the window's earlier observed frames
  (``--memory-frames`` of them, the ones that see most of the future; 0 = all); ``none`` (no
  memory); ``context only`` (a memory of the context frames alone: with ``none``, the clean
  control pair, so that what memory adds is measured against the context's own render);
  ``shuffled`` (another episode's memory, moved so its last context camera is this one's: the
  control);
- no learning: ``reprojection``, the memory and context frames rendered as points at each future
  camera, the pixels the render leaves empty (its holes) filled from the last context frame;
  ``reprojection: context only``, the context frames alone rendered so; ``harmonic fill`` and
  ``nearest fill``, the same render with its holes filled classically from the render
  (:mod:`worldsim.memory.fills`; the last context frame where the render draws nothing);
  ``last frame``, every future frame is the last context frame.

Writes to ``--output-dir``:

- ``evaluation.json`` / ``evaluation.md``: per variant and per bin of memory-only share (0-10 %,
  10-50 %, >= 50 %), on exploration frames (the render covers < 20 %), per chunk and overall:
  PSNR (mean per frame and pooled), SSIM, LPIPS, depth L1 (metres), PSNR on the memory-only
  pixels, and on frames with >= 1 % holes (one mask, the reprojection's, for every variant) the
  holes' PSNR (mean and pooled), LPIPS map averaged over them and depth L1
  (:func:`worldsim.evaluation.revisits.score_windows`);
- ``evaluation.png``: for a few windows, rows of truth (with its memory-only pixels below) and
  each variant, frames across the rollout, labelled with each frame's memory-only share;
- ``validation.json`` / ``validation.md`` / ``validation.png`` (unless ``--max-clips 0``): the
  single-chunk validation of ``--checkpoint`` with and without memory
  (:mod:`worldsim.evaluation.clips`), the table ``examples/export_checkpoint.py --validation`` puts
  on the model card.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw

from envs.embedded.scenes import parse_scene_id
from worldsim import cli
from worldsim.data import ClipConfig, ClipDataset, TrajectoryStore
from worldsim.evaluation.clips import (
    EvaluationConfig,
    Predictions,
    evaluation_rows,
    predict_clips,
    with_last_frame_baseline,
    with_reprojection_baseline,
)
from worldsim.evaluation.report import write_report
from worldsim.evaluation.revisits import (
    NOTES,
    Variant,
    WindowPredictions,
    context_memory,
    episode_memory,
    fill_variants,
    last_frame_variant,
    no_memory,
    predict_windows,
    reprojection_variant,
    score_windows,
)
from worldsim.evaluation.windows import (
    WindowConfig,
    dataset_scenes,
    find_windows,
    load_windows,
)
from worldsim.models.world_model import MEMORY_FILE, WorldModel
from worldsim.simulator.checkpoints import load_world_model, resolve_memory
from worldsim.simulator.sampler import SamplerConfig, load_sampler_config

REPORT_NAME = "evaluation"
"""Stem of the multi-chunk report files."""
VALIDATION_NAME = "validation"
"""Stem of the single-chunk validation report files."""
LABEL_WIDTH = 110
"""Pixels left of each picture row for its label."""


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    data_dir: Path
    """Held-out dataset folder (examples/collect_data.py --split test or val)."""
    checkpoint: Path | None = None
    """Model folder (WorldModel.save_pretrained); the embedded default if None."""
    compare_checkpoint: Path | None = None
    """A second model folder, evaluated on the same windows and noise (e.g. a render model)."""
    output_dir: Path = Path("outputs/evaluate_world_model")
    """Where the reports and pictures go."""
    chunks: int = 4
    """Chunks per rollout (future frames = chunks x n_future)."""
    max_windows: int = 64
    """Most windows evaluated."""
    memory_frames: int = 0
    """Memory frames per window, those that see most of the future (0: every earlier frame)."""
    min_coverage: float = 0.05
    """Least mean memory-only share of a window's future frames."""
    scene_start: int = 0
    """Index in the split of the first house evaluated (houses scene_start .. scene_start +
    num_scenes - 1 of the dataset, e.g. 20 for house-test-0020..)."""
    num_scenes: int = 0
    """Houses evaluated from scene_start (0: every house of the dataset from there)."""
    scenes: tuple[str, ...] = ()
    """Evaluate these houses of the dataset only (ids, e.g. house-test-0021), instead of
    --scene-start / --num-scenes."""
    batch_size: int = 8
    """Windows (clips) per model call."""
    sampling_steps: int | None = None
    """DDIM steps per chunk; None: the checkpoint's sampler_config.json."""
    picture_windows: int = 4
    """Windows shown in evaluation.png."""
    max_clips: int = 64
    """Single-chunk validation clips per subset (validation.json); 0 skips it."""
    validation_memory_frames: int = 8
    """Earlier frames per validation clip that build its memory (as in training)."""
    device: Literal["auto", "cpu"] = "auto"
    """auto uses a GPU where there is one."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seeds the sampling noise (window i uses seed + i)."""


def model_variants(
    model: WorldModel, folder: Path | None, label: str, sampler: SamplerConfig
) -> tuple[list[Variant], str | None]:
    """The checkpoint with its memory, none, the context only and a shuffled one; its memory name.

    A model that composites its memory render into its frames also runs without compositing
    (``generated only``): what the network itself makes of the pixels the render covers.
    """
    memory = resolve_memory(None, model, folder)
    if memory is None:
        return [Variant(f"{label}: none", model, no_memory, sampler)], None
    spec = None if folder is None else folder / MEMORY_FILE
    name = json.loads(spec.read_text())["name"] if spec and spec.is_file() else "memory"
    variants = [
        Variant(f"{label}: {name}", model, episode_memory(memory), sampler),
        Variant(f"{label}: none", model, no_memory, sampler),
        Variant(f"{label}: context only", model, context_memory(memory), sampler),
        Variant(f"{label}: shuffled", model, episode_memory(memory, shuffled=True), sampler),
    ]
    if model.config.memory_render and sampler.render_composite:
        # What the network itself generates where the render covers the frame, for comparison.
        own = dataclasses.replace(sampler, render_composite=False)
        variants.insert(
            1, Variant(f"{label}: {name}, generated only", model, episode_memory(memory), own)
        )
    return variants, name


def chosen_scenes(args: Args, store: TrajectoryStore) -> list[str] | None:
    """The houses whose windows are evaluated (``None``: all), from the house flags.

    Raises:
        ValueError: for --scenes with --scene-start / --num-scenes, negative counts, a dataset
            house that is not numbered when a range is asked for, or a range that selects no
            house (the message lists those the dataset holds).
    """
    if args.scene_start < 0 or args.num_scenes < 0:
        raise ValueError(
            f"--scene-start and --num-scenes must be >= 0, got {args.scene_start} and "
            f"{args.num_scenes}"
        )
    if args.scenes:
        if args.scene_start or args.num_scenes:
            raise ValueError("choose houses with --scenes or with --scene-start / --num-scenes")
        return list(args.scenes)  # find_windows names any the dataset does not hold
    if args.scene_start == 0 and args.num_scenes == 0:
        return None
    held = dataset_scenes(store)
    stop = args.scene_start + args.num_scenes if args.num_scenes else None
    chosen = []
    for scene in held:
        try:
            index = parse_scene_id(scene)[1]
        except ValueError:
            raise ValueError(
                f"house {scene!r} of {str(args.data_dir)!r} has no index in a split; choose "
                "houses by id with --scenes"
            ) from None
        if index >= args.scene_start and (stop is None or index < stop):
            chosen.append(scene)
    if not chosen:
        last = "" if stop is None else f" .. {stop - 1}"
        raise ValueError(
            f"--scene-start {args.scene_start} --num-scenes {args.num_scenes} selects no house "
            f"(indices {args.scene_start}{last}) of {str(args.data_dir)!r}; it holds "
            f"{', '.join(held)}"
        )
    return chosen


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """Prefix a (H, W, 3) uint8 row with a white label column holding ``text``."""
    canvas = Image.new("RGB", (LABEL_WIDTH + image.shape[1], image.shape[0]), "white")
    canvas.paste(Image.fromarray(image), (LABEL_WIDTH, 0))
    ImageDraw.Draw(canvas).text((2, 2), text, fill="black")
    return np.asarray(canvas)


def picture(predictions: WindowPredictions, count: int) -> np.ndarray:
    """Rows of truth, its memory-only pixels and each variant, frames across, for a few windows."""
    batch = predictions.batch
    order = torch.argsort(-batch.coverage.mean(-1), stable=True)[:count]  # most memory first
    blocks = []
    for index in order.tolist():
        width = batch.future.rgb.shape[-1]
        shares = batch.coverage[index]
        header = Image.new("RGB", (LABEL_WIDTH + width * len(shares), 12), "white")
        draw = ImageDraw.Draw(header)
        window = predictions.windows[index]
        draw.text((2, 0), f"{window.scene_id} t={window.start}", fill="black")
        for t, share in enumerate(shares.tolist()):
            draw.text((LABEL_WIDTH + t * width + 2, 0), f"{share:.0%}", fill="black")
        rows = [np.asarray(header)]
        videos = {
            "truth": batch.future.rgb[index],
            "memory-only": batch.memory_only[index].float().expand(-1, 3, -1, -1),
            **{name: video[index] for name, video in predictions.rgb.items()},
        }
        for name, video in videos.items():
            strip = rearrange(video, "t c h w -> h (t w) c").clamp(0, 1)
            rows.append(_label((strip.numpy() * 255).round().astype(np.uint8), name))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, dtype=np.uint8))
        blocks.append(np.concatenate(rows))
    return np.concatenate(blocks)


def validation_picture(predictions: Predictions, count: int) -> np.ndarray:
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


def validate(args: Args, model: WorldModel, memory_name: str | None, folder: Path) -> None:
    """The single-chunk validation with vs. without memory (validation.json / .md / .png)."""
    memory = resolve_memory(None, model, folder)
    clips = ClipDataset(
        args.data_dir,
        ClipConfig(
            n_context=model.config.n_context,
            n_future=model.config.n_future,
            max_memory_frames=args.validation_memory_frames,
        ),
    )
    config = EvaluationConfig(
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        sampler=load_sampler_config(folder).with_steps(args.sampling_steps),
        # A model that reads a render was trained with its context frames in the map.
        insert_context_frames=model.config.memory_render,
        seed=args.seed,
    )
    predictions = predict_clips(
        model, clips, {memory_name: memory, "none": None}, config, progress=True
    )
    predictions = with_last_frame_baseline(predictions, clips)
    predictions = with_reprojection_baseline(predictions, clips)
    write_report(evaluation_rows(predictions), args.output_dir, VALIDATION_NAME)
    imageio.imwrite(
        args.output_dir / f"{VALIDATION_NAME}.png",
        validation_picture(predictions, args.picture_windows),
    )


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu"
    model, folder = load_world_model(args.checkpoint, device)
    sampler = load_sampler_config(folder).with_steps(args.sampling_steps)
    variants, memory_name = model_variants(model, folder, folder.name, sampler)
    if args.compare_checkpoint is not None:
        other, other_folder = load_world_model(args.compare_checkpoint, device)
        for field in ("n_context", "n_future"):
            if getattr(other.config, field) != getattr(model.config, field):
                raise ValueError(
                    f"the two checkpoints differ in {field} ({getattr(model.config, field)} vs "
                    f"{getattr(other.config, field)}): compare models that roll out alike"
                )
        label = other_folder.name if other_folder.name != folder.name else "compare"
        other_sampler = load_sampler_config(other_folder).with_steps(args.sampling_steps)
        variants += model_variants(other, other_folder, label, other_sampler)[0]
    variants += [
        reprojection_variant(),
        reprojection_variant("reprojection: context only", context_only=True),
        *fill_variants(),
        last_frame_variant(),
    ]

    store = TrajectoryStore(args.data_dir)
    scenes = chosen_scenes(args, store)
    config = WindowConfig(
        n_context=model.config.n_context,
        length=args.chunks * model.config.n_future,
        memory_frames=args.memory_frames,
        max_windows=args.max_windows,
        min_coverage=args.min_coverage,
    )
    windows = find_windows(store, config, progress=True, scenes=scenes)
    if not windows:
        houses = "" if scenes is None else f" (houses {', '.join(scenes)})"
        raise ValueError(
            f"no window of {config.length} future frames in {str(args.data_dir)!r}{houses} "
            f"reaches a memory-only share of {config.min_coverage}: collect longer episodes that "
            "revisit (out_and_back, look_around) or lower --min-coverage"
        )
    batch = load_windows(store, windows, config.n_context, config.length)
    predictions = predict_windows(
        windows,
        batch,
        variants,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=True,
    )
    rows = score_windows(predictions, model.config.n_future)
    json_path, md_path = write_report(rows, args.output_dir, REPORT_NAME, notes=NOTES)
    png_path = args.output_dir / f"{REPORT_NAME}.png"
    imageio.imwrite(png_path, picture(predictions, args.picture_windows))
    if args.max_clips > 0 and memory_name is not None:
        validate(args, model, memory_name, folder)
    print(md_path.read_text())
    print(
        f"{len(windows)} windows from {len({w.episode for w in windows})} episodes of "
        f"{len({w.scene_id for w in windows})} houses; "
        f"{time.perf_counter() - started:.0f} s; wrote {json_path}, {md_path} and {png_path}"
    )


if __name__ == "__main__":
    cli.run(main, Args)
