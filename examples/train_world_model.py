"""Train the world model stage by stage: VAE, backbone (eq. 3), memory blocks (eq. 4).

Run every stage of the small configuration on synthetic box-room clips:

    python examples/train_world_model.py --stage all --config small --data-dir synthetic

or one stage, starting from the previous stage's exported model:

    python examples/train_world_model.py --stage memory \
        --init outputs/train_world_model/backbone/model

Each stage writes ``<output-dir>/<stage>/`` with resumable checkpoints (re-running the same
command continues a killed run), ``metrics.jsonl``, sample GIFs (true | generated RGB, true |
generated depth) and the final EMA model in ``model/``. ``--data-dir`` takes a dataset folder
made by ``examples/collect_data.py`` at the model's frame size, or ``synthetic`` (random walks in a
ray-cast box room) for smoke tests.

On several processes (GPUs, or CPU processes talking over gloo) ``--batch-size`` is the global
batch of a step, split evenly across the processes (it must be a multiple of their number), and
the result is that of one process with the same batch size:

    accelerate launch --multi_gpu --num_processes 4 examples/train_world_model.py --batch-size 64

With ``--device cpu`` the same launcher starts CPU processes that talk over gloo (accelerate's
``--cpu`` launcher starts one process only, unless it has mpirun):

    accelerate launch --multi_gpu --num_processes 2 examples/train_world_model.py --device cpu \
        --threads 1
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader

from worldsim import cli
from worldsim.data import ClipConfig, ClipDataset, TrajectoryStore, collate_clips
from worldsim.data.latents import LatentCache
from worldsim.data.synthetic import SyntheticRoomClips
from worldsim.memory import build_memory
from worldsim.models.world_model import MEMORY_FILE, WorldModel
from worldsim.simulator.checkpoints import with_render_memory
from worldsim.training.trainer import STAGES, TrainConfig, Trainer


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    stage: Literal["all", "vae", "backbone", "memory"] = "all"
    """Which stage to run; all runs vae, backbone and memory in turn."""
    config: Literal["tiny", "small"] = "small"
    """Model configuration for a fresh model (ignored with --init)."""
    init: Path | None = None
    """Model folder to start from (a previous stage's model/); a fresh model if None."""
    data_dir: str = "synthetic"
    """Training data: a dataset folder made by examples/collect_data.py, or synthetic
    (random walks in a ray-cast box room, for smoke tests)."""
    revisit_fraction: float = 0.5
    """With a dataset, the backbone stage's share of clips drawn from revisits (future views
    seen long before)."""
    memory_dependent_fraction: float = 0.5
    """With a dataset, the memory stage's share of clips whose future the memory sees and the
    context does not (memory-only coverage at least 0.1, by depth-consistent visibility)."""
    empty_memory_fraction: float = 0.15
    """With a dataset, the memory stage's share of clips whose memory is dropped, so the model
    still imagines unseen space."""
    workers: int = 2
    """DataLoader worker processes reading a dataset (and measuring its clip coverage once)."""
    output_dir: Path = Path("outputs/train_world_model")
    """Where each stage writes its folder."""
    memory: str = "feature_map"
    """Memory for stage 2 (a name of worldsim.memory.build_memory); rendered builds a model
    that reads the memory as a pixel-aligned render (with --init: that model's backbone)."""
    memory_encoder: str = "vgg16"
    """Image encoder of the memory (pooled_color is a cheap one)."""
    batch_size: int = 8
    """Clips per step in all: the global batch, split evenly across processes (accelerate
    launch --num_processes N), so a multiple of N."""
    memory_frames: int = 16
    """Most earlier frames per clip in its memory: those that see most of its future."""
    cache_latents: bool = True
    """With a dataset, encode every frame once before the backbone and memory stages and train
    on the cached latents (<output-dir>/latents.safetensors, re-encoded when the VAE
    changes); needs a VAE that codes frames one by one."""
    device: Literal["auto", "cpu"] = "auto"
    """auto uses a GPU where there is one."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seeds the model initialisation, the data and the training noise."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Settings shared by the stages (stage is set by --stage)."""


def _clips_and_sampler(
    args: Args, model: WorldModel, stage: str
) -> tuple[ClipDataset, torch.utils.data.Sampler]:
    """The dataset's clips and the sampler of the stage's global batches."""
    store = TrajectoryStore(args.data_dir)
    latents = None
    if args.cache_latents and stage != "vae" and model.vae.per_frame:
        latents = LatentCache.load_or_build(args.output_dir / "latents.safetensors", model, store)
    clips = ClipDataset(
        store,
        ClipConfig(
            n_context=model.config.n_context,
            n_future=model.config.n_future,
            # The VAE stage reconstructs the clip's frames only.
            max_memory_frames=args.memory_frames if stage != "vae" else 0,
            memory_dependent_fraction=args.memory_dependent_fraction,
            empty_memory_fraction=args.empty_memory_fraction,
        ),
        latents=latents,
        coverage_workers=max(args.workers, 1),
    )
    first = clips[0]["rgb"]
    if tuple(first.shape[-2:]) != (model.config.height, model.config.width):
        raise ValueError(
            f"dataset {args.data_dir} has {first.shape[-2]}x{first.shape[-1]} frames but the model "
            f"takes {model.config.height}x{model.config.width}; collect at the model's size"
        )
    generator = torch.Generator().manual_seed(args.seed)
    num_samples = args.batch_size * args.train.steps
    if stage == "memory":  # clips that need the memory, and some with none
        sampler = clips.clip_sampler(num_samples, generator)
    else:
        sampler = clips.revisit_sampler(args.revisit_fraction, num_samples, generator)
    return clips, sampler


def training_batches(args: Args, model: WorldModel, stage: str) -> Iterable[dict]:
    """Batches of the chosen data source, with the model's context and chunk lengths."""
    if args.data_dir == "synthetic":
        return SyntheticRoomClips(
            model.config,
            batch_size=args.batch_size,
            memory_frames=args.memory_frames,
            seed=args.seed,
        )
    # The main process measures and writes the caches (latents, clip coverage) first; the
    # others then read them.
    with PartialState().main_process_first():
        clips, sampler = _clips_and_sampler(args, model, stage)
    return DataLoader(
        clips,
        batch_size=args.batch_size,
        sampler=sampler,
        collate_fn=collate_clips,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )


def memory_spec(args: Args) -> dict[str, str]:
    """The build_memory arguments of --memory (a rendered memory encodes no features)."""
    if args.memory == "rendered":
        return {"name": "rendered"}
    return {"name": args.memory, "encoder": args.memory_encoder}


def run_stage(args: Args, stage: str, model: WorldModel) -> WorldModel:
    memory = None
    if stage == "memory":
        memory = build_memory(**memory_spec(args))
    data = training_batches(args, model, stage)
    config = replace(args.train, stage=stage, seed=args.seed)
    trainer = Trainer(
        model, config, args.output_dir / stage, memory=memory, cpu=args.device == "cpu"
    )
    history = trainer.fit(data)
    state = PartialState()
    if state.is_main_process:
        if history:
            print(f"stage {stage}: loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
        else:  # resumed at or past --train.steps: the newest checkpoint's EMA weights are exported
            print(f"stage {stage}: resumed at step {trainer.step}, nothing left to train")
        # The memory the model reads travels with it, so PersistentWorld-v0 rebuilds the same one.
        (args.output_dir / stage / "model" / MEMORY_FILE).write_text(json.dumps(memory_spec(args)))
        print(f"  model: {args.output_dir / stage / 'model'}")
    state.wait_for_everyone()
    return WorldModel.from_pretrained(args.output_dir / stage / "model")


def main(args: Args) -> None:
    # One process, or one of those of `accelerate launch` (which this joins here).
    state = PartialState(cpu=args.device == "cpu")
    if state.num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        # accelerate launch --cpu --num_processes N sets a rendezvous but starts one process.
        print(
            "warning: one process only (accelerate launch --cpu starts several only with mpirun;"
            " use accelerate launch --multi_gpu --num_processes N ... --device cpu)",
            file=sys.stderr,
        )
    if args.batch_size % state.num_processes:
        raise ValueError(
            f"--batch-size {args.batch_size} is the global batch, split evenly across "
            f"{state.num_processes} processes: use a multiple of {state.num_processes}"
        )
    torch.manual_seed(args.seed)
    render = args.memory == "rendered"
    if args.init is not None:
        model = WorldModel.from_pretrained(args.init)
        if render and not model.config.memory_render:
            model = with_render_memory(model)  # the backbone, with a fresh render branch
    elif render:
        model = WorldModel.from_config_name(args.config, memory_token_dim=0, memory_render=True)
    else:
        token_dim = build_memory(**memory_spec(args)).token_dim
        model = WorldModel.from_config_name(args.config, memory_token_dim=token_dim)
    if args.device == "auto" and torch.cuda.is_available():
        model.to(state.device)  # this process's GPU: the latent cache is encoded there too
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        model = run_stage(args, stage, model)


if __name__ == "__main__":
    cli.run(main, Args)
