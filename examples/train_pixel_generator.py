"""Train the pixel-space EDM generator that imagines what the map's render leaves empty.

The recipe (issue 29): collect → index → train → export, each step resumable. Collect training
data from many houses (breadth matters more than minutes) and a validation set from other
houses, then run every stage::

    python examples/collect_data.py --output-dir data/train-64 --scene-count 100 \
        --episodes-per-scene 3 --episodes-per-shard 3 --max-steps 400 --workers 1
    python examples/collect_data.py --output-dir data/val-64 --split val --scene-count 8 \
        --episodes-per-scene 3 --episodes-per-shard 3 --max-steps 400 --workers 1
    OMP_NUM_THREADS=1 python examples/train_pixel_generator.py --data-dir data/train-64 \
        --val-data-dir data/val-64 --index-dir data/index --threads 1 --budget-minutes 60

``--stage index`` renders the maps of ``--index.num-clips`` clips once (``<index-dir>/train``
and ``<index-dir>/val``); ``--stage train`` trains on them, writes ``curve.jsonl`` (step, seconds,
loss; every ``--eval-every`` steps the hole PSNR of the model against the harmonic and nearest
fills and the last frame on validation samples), a checkpoint every ``--checkpoint-minutes`` and,
at the end (``--max-steps`` or ``--budget-minutes``), the EMA model in ``<output-dir>/model``
(with the validation sampler's ``sampler.json``; ``--stage export`` writes it from the newest
checkpoint of a run still training); ``--stage evaluate`` scores that model on more
validation samples with LPIPS, with the map and without (``evaluation.json``,
``samples.png``: truth | render | harmonic fill | model, rows of validation samples). Rerunning
a command resumes it. A tiny run (what the tests use) needs a tiny data set::

    python examples/train_pixel_generator.py --config tiny --data-dir /tmp/tiny \
        --val-data-dir /tmp/tiny --index.num-clips 4 --index.clips-per-part 2 --val-clips 2 \
        --max-steps 3 --batch-size 2 --eval-samples 4 --final-eval-samples 4 --output-dir /tmp/p
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from worldsim import cli
from worldsim.data.pixel_index import IndexConfig, PixelIndex, build_index, conditions_of
from worldsim.models.pixel_denoiser import EDMSamplerConfig, PixelDenoiser, count_parameters
from worldsim.training.pixels import PixelTrainConfig, PixelTrainer, evaluate, spread_samples


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    stage: Literal["all", "index", "train", "export", "evaluate", "attach"] = "all"
    """Which stage to run; all runs index, train and evaluate in turn (train exports at its
    end); export writes model/ from the newest checkpoint (e.g. of a run still training);
    attach puts model/ into the world-model checkpoint --attach-to (its pixel_generator/)."""
    attach_to: Path | None = None
    """World-model checkpoint folder that --stage attach gives the trained generator (e.g.
    worldsim/checkpoints/world_model_small: PersistentWorld-v0 then generates with it)."""
    config: Literal["tiny", "small"] = "small"
    """Model configuration of a fresh model (a resumed run keeps its checkpoint's)."""
    residual: bool = True
    """Diffuse the difference from the classical prefill (the model's residual setting)."""
    prefill: Literal["harmonic", "nearest"] = "harmonic"
    """Classical fill of the render's holes that the model reads (and starts from)."""
    data_dir: Path = Path("data/train-64")
    """Training data set (examples/collect_data.py at the model's frame size)."""
    val_data_dir: Path = Path("data/val-64")
    """Validation data set, from other houses than the training data."""
    index_dir: Path | None = None
    """Where the rendered samples go (train/ and val/); None: <output-dir>/index."""
    output_dir: Path = Path("outputs/train_pixel_generator")
    """Checkpoints, curve.jsonl, the exported model/ and the evaluation."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Which training clips are rendered (the validation index takes --val-clips clips with
    the same settings and seed + 1)."""
    val_clips: int = 400
    """Validation clips rendered (n_future samples each)."""
    train: Annotated[PixelTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=PixelTrainConfig
    )
    """Training settings (flags without prefix: --budget-minutes, --batch-size, --seed, ...)."""
    sampler: EDMSamplerConfig = field(default_factory=EDMSamplerConfig)
    """Sampler of the validation samples (saved beside the model as sampler.json)."""
    final_eval_samples: int = 512
    """Validation samples of the evaluate stage."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    quiet: bool = False
    """Hide progress bars."""


def index_dirs(args: Args) -> tuple[Path, Path]:
    root = args.index_dir if args.index_dir is not None else args.output_dir / "index"
    return root / "train", root / "val"


def build_indices(args: Args, model: PixelDenoiser) -> None:
    train_dir, val_dir = index_dirs(args)
    index = replace(args.index, n_context=model.config.n_context)
    validation = replace(index, num_clips=args.val_clips, seed=index.seed + 1)
    depth = model.config.max_depth_m
    build_index(args.val_data_dir, val_dir, validation, depth, progress=not args.quiet)
    build_index(args.data_dir, train_dir, index, depth, progress=not args.quiet)


def fresh_model(args: Args) -> PixelDenoiser:
    """The model of --config, initialised from --seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.train.seed)
        return PixelDenoiser.from_config_name(
            args.config, residual=args.residual, prefill=args.prefill
        )


def write_samples(model: PixelDenoiser, index: PixelIndex, args: Args, path: Path) -> None:
    """A picture: truth | render | harmonic fill | model, one validation sample per row."""
    import imageio.v3 as iio

    from worldsim.memory.fills import harmonic_fill
    from worldsim.models.pixel_denoiser import sample_frames

    chosen = spread_samples(len(index), 8)
    samples = index.batch(chosen)
    conditions = conditions_of(model, samples)
    generators = [torch.Generator().manual_seed(args.train.seed + int(i)) for i in chosen]
    generated = sample_frames(model, conditions, args.sampler, generators)
    filled = harmonic_fill(conditions.render, conditions.known)
    panels = [
        samples["target_rgb"],
        conditions.render[:, :3] * 0.5 + 0.5,
        model.from_pixels(filled)[0],
        model.from_pixels(generated)[0],
    ]
    grid = torch.cat([torch.cat(list(panel), dim=1) for panel in panels], dim=2)  # (3, NH, 4W)
    image = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    iio.imwrite(path, np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))


def attach(args: Args) -> None:
    """Write ``<output-dir>/model`` (and its sampler) into the world model ``--attach-to``."""
    from worldsim.models.pixel_denoiser import load_pixel_sampler
    from worldsim.models.world_model import PIXEL_GENERATOR_FOLDER, WorldModel

    if args.attach_to is None:
        raise ValueError("--stage attach needs --attach-to, a world-model checkpoint folder")
    folder = args.output_dir / "model"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no trained generator at {str(folder)!r}: run --stage train or --stage export first"
        )
    world = WorldModel.from_pretrained(args.attach_to)
    generator = PixelDenoiser.from_pretrained(folder)
    world.attach_pixel_generator(generator, load_pixel_sampler(folder))  # refuses a misfit
    target = args.attach_to / PIXEL_GENERATOR_FOLDER
    world.pixel_generator.save_pretrained(target)
    world.pixel_sampler.save(target)
    print(f"attached {str(folder)!r} to {str(args.attach_to)!r} ({str(target)!r})")


def main(args: Args) -> None:
    stages = ("index", "train", "evaluate") if args.stage == "all" else (args.stage,)
    model = fresh_model(args)
    print(f"pixel denoiser ({args.config}): {count_parameters(model):,} parameters")
    train_dir, val_dir = index_dirs(args)
    if "index" in stages:
        build_indices(args, model)
    if "train" in stages:
        trainer = PixelTrainer(model, args.train, args.output_dir, args.sampler)
        history = trainer.fit(PixelIndex(train_dir), PixelIndex(val_dir), not args.quiet)
        if history:
            print(json.dumps(history[-1]))
    if "export" in stages:
        trainer = PixelTrainer(model, args.train, args.output_dir, args.sampler)
        if not trainer.resume():
            raise FileNotFoundError(f"no checkpoint in {str(trainer.checkpoint_dir)!r} to export")
        print(f"exported step {trainer.step} to {trainer.export()}")
    if "attach" in stages:
        attach(args)
    if "evaluate" in stages:
        from worldsim.metrics.lpips import LPIPS

        folder = args.output_dir / "model"
        trained = PixelDenoiser.from_pretrained(folder).eval()
        validation = PixelIndex(val_dir)
        chosen = spread_samples(len(validation), args.final_eval_samples)
        lpips_model = LPIPS("alex")
        result = {
            name: evaluate(
                trained,
                validation,
                chosen,
                args.sampler,
                seed=args.train.seed,
                lpips_model=lpips_model,
                drop_render=drop,
            )
            for name, drop in (("with_map", False), ("no_map", True))
        }
        result["sampler"] = vars(args.sampler)
        (args.output_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        write_samples(trained, validation, args, args.output_dir / "samples.png")
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.run(main, Args)
