"""Package a trained world model as the embedded default checkpoint, with its model card.

After training (``examples/train_world_model.py``) and validation
(``examples/evaluate_world_model.py``), write the folder that ``WorldModel.from_pretrained()``
loads with no argument::

    .venv/bin/python examples/export_checkpoint.py --run-dir outputs/train_world_model \
        --data-dir data/train-64 --validation outputs/evaluate_world_model/validation.json \
        --machine "1x NVIDIA H100 80GB, 16 CPU cores" \
        --train-command "python examples/train_world_model.py --data-dir data/train-64 ..." \
        --eval-command "python examples/evaluate_world_model.py --data-dir data/val-64 ..." \
        --overwrite

The folder (``worldsim/checkpoints/world_model_small`` by default) holds:

- ``config.json`` and the weights as safetensors shards of at most ``--max-shard-mb`` MB each,
  stored in float16 where that is safe (a tensor whose float16 copy is within a relative L2
  error of ``--half-tolerance`` and inside float16's range; the others stay float32). They load
  back as float32.
- ``memory.json``: the memory the model was trained with (copied from the run).
- ``README.md``: the model card: configuration, training data, steps and losses per stage,
  machine, validation figures (the Markdown table of the validation report) and the commands
  that reproduce it.

The folder is written beside the target and renamed into place, so an interrupted export never
leaves half a checkpoint. A tiny run for the tests: a ``--run-dir`` holding a tiny model in
``memory/model``, ``--output-dir`` in a temporary folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from worldsim import cli
from worldsim.data import TrajectoryStore, read_manifest
from worldsim.models.world_model import DEFAULT_CHECKPOINT, MEMORY_FILE, WorldModel
from worldsim.simulator.sampler import SamplerConfig, load_sampler_config

STAGES = ("vae", "backbone", "memory")
"""Training stages, in order (folders of the run directory)."""
FLOAT16_MAX = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    run_dir: Path = Path("outputs/train_world_model")
    """The --output-dir of train_world_model.py: one folder per stage."""
    stage: Literal["vae", "backbone", "memory"] = "memory"
    """The stage whose model/ is shipped (the last one trained)."""
    output_dir: Path = DEFAULT_CHECKPOINT
    """Checkpoint folder to write."""
    overwrite: bool = False
    """Replace an existing checkpoint folder."""
    data_dir: Path | None = None
    """Training dataset folder, described in the model card from its manifest."""
    validation: Path | None = None
    """validation.json written by evaluate_world_model.py (its .md is embedded)."""
    evaluation: Path | None = None
    """evaluation.json of evaluate_world_model.py's multi-chunk rollouts (its .md is embedded)."""
    started_from: str = ""
    """What the trained stages started from, e.g. the previous checkpoint and its card."""
    sampling_steps: int | None = None
    """DDIM steps per chunk the shipped model samples with by default (None: as trained);
    measure first that fewer steps lose nothing (evaluate_world_model.py --sampling-steps)."""
    machine: str = "not recorded"
    """What the model was trained on, e.g. 1x NVIDIA H100 80GB."""
    train_command: str = ""
    """The command that trained the model."""
    eval_command: str = ""
    """The command that produced the validation figures."""
    half_precision: bool = True
    """Store tensors in float16 where that is safe."""
    half_tolerance: float = 1e-3
    """Largest relative L2 error of a tensor's float16 copy for it to be stored in float16."""
    max_shard_mb: int = 30
    """Largest safetensors shard, MB (the package limit is 40 MB per file)."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""


def half_where_safe(model: WorldModel, tolerance: float) -> list[str]:
    """Cast to float16, in place, every parameter whose float16 copy is faithful.

    A parameter stays float32 if any value is outside float16's range or if
    ``||x - fp16(x)|| > tolerance * ||x||`` (e.g. tiny values that would underflow).

    Args:
        model: the model (changed in place).
        tolerance: relative L2 error bound, > 0.

    Returns:
        Names of the parameters kept in float32.
    """
    if tolerance <= 0:
        raise ValueError(f"half_tolerance must be > 0, got {tolerance}")
    kept = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            value = parameter.data.float()
            half = value.half()
            in_range = bool(value.abs().max() <= FLOAT16_MAX) if value.numel() else True
            error = (value - half.float()).norm()
            if in_range and error <= tolerance * value.norm():
                parameter.data = half
            else:
                kept.append(name)
    return kept


def stage_summary(run_dir: Path) -> list[dict]:
    """Steps and first / last logged loss of each stage found in ``run_dir``."""
    summary = []
    for stage in STAGES:
        log = run_dir / stage / "metrics.jsonl"
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if records:
            summary.append(
                {
                    "stage": stage,
                    "steps": records[-1].get("step"),
                    "first_loss": records[0].get("loss"),
                    "last_loss": records[-1].get("loss"),
                }
            )
    return summary


def model_card(
    args: Args, model: WorldModel, sampler: SamplerConfig, kept: list[str], files: list[Path]
) -> str:
    """The checkpoint's ``README.md``."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    shards = [f for f in files if f.suffix == ".safetensors"]
    if config.memory_render:
        reads = (
            "that reads a persistent 3D point memory rendered into every camera it generates, "
            "pixel-aligned"
            + (" (covered pixels are kept from the render)" if sampler.render_composite else "")
        )
        memory_line = "memory: the rendered point map (`memory_render`), no memory blocks"
    else:
        reads = "with memory blocks that read a persistent 3D feature memory"
        memory_line = f"memory tokens of width {config.memory_token_dim}"
    lines = [
        "# world_model_small",
        "",
        f"Action-conditioned RGB-D video diffusion world model {reads} (after arXiv "
        "2505.05495). Load it with `WorldModel.from_pretrained()`; the memory it reads is "
        "described in `memory.json`.",
        "",
        "## Model",
        "",
        f"- frames {config.height}x{config.width}, {config.n_context} context + "
        f"{config.n_future} generated per chunk, depth: {config.use_depth}",
        f"- transformer: {config.num_layers} layers, {config.num_attention_heads} heads x "
        f"{config.attention_head_dim}, {memory_line}",
        f"- {parameters / 1e6:.2f} M parameters; sampled with {sampler.num_inference_steps} DDIM "
        "steps by default (`sampler_config.json`)",
        f"- stored in {'float16 where safe' if args.half_precision else 'float32'}"
        + (f" ({len(kept)} tensors kept in float32)" if args.half_precision else "")
        + f"; {len(shards)} safetensors files, largest "
        f"{max(f.stat().st_size for f in shards) / 1e6:.1f} MB",
        "",
        "## Training",
        "",
        f"- machine: {args.machine}",
    ]
    if args.started_from:
        lines.append(f"- started from: {args.started_from}")
    if args.data_dir is not None:
        settings = read_manifest(args.data_dir)
        store = TrajectoryStore(args.data_dir)
        scenes = sorted({info.scene_id for info in store.episodes})
        simulator = settings.get("simulator", {})
        lines.append(
            f"- data: `{args.data_dir.name}`: split {settings.get('split')!r}, "
            f"{len(scenes)} scenes ({scenes[0]} .. {scenes[-1]}), {len(store.episodes)} episodes, "
            f"{store.num_frames} frames of {simulator.get('width')}x{simulator.get('height')}, "
            f"policies {settings.get('policy_mix')}"
        )
    else:
        lines.append("- data: not recorded")
    summary = stage_summary(args.run_dir)
    if summary:
        lines += ["", "| stage | steps | first loss | last loss |", "|---|---|---|---|"]
        for row in summary:
            lines.append(
                f"| {row['stage']} | {row['steps']} | {row['first_loss']:.4g} | "
                f"{row['last_loss']:.4g} |"
            )
    lines += ["", "## Validation", ""]
    if args.validation is not None:
        table = args.validation.with_suffix(".md").read_text().splitlines()
        lines += [line for line in table if not line.startswith("# ")][1:]  # title, blank
        lines.append("")
        lines.append(
            "Held-out scenes; `none` is the same model without map tokens. PSNR / SSIM higher "
            "is better, LPIPS and depth L1 (metres) lower."
        )
    else:
        lines.append("Not validated.")
    if args.evaluation is not None:
        table = args.evaluation.with_suffix(".md").read_text().splitlines()
        lines += ["", "## Multi-chunk rollouts in unseen houses", ""]
        lines += [line for line in table if not line.startswith("# ")][1:]
        lines += [
            "",
            "Rollouts of several chunks along recorded camera paths in test houses, every frame "
            "binned by the share of its pixels that only the memory (earlier observed frames) "
            "sees; `shuffled` gives the model another episode's memory (the control), "
            "`reprojection` renders the memory without learning and fills holes from the last "
            "context frame.",
        ]
    lines += ["", "## Reproduce", ""]
    for title, command in (("train", args.train_command), ("validate", args.eval_command)):
        if command:
            lines += [f"{title}:", "", "```", command, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def export(args: Args) -> Path:
    """Write the checkpoint folder; returns its path."""
    source = args.run_dir / args.stage / "model"
    if not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained model at {str(source)!r}: pass the --output-dir of train_world_model.py "
            "as --run-dir and the stage that wrote model/ as --stage"
        )
    if args.output_dir.exists() and any(args.output_dir.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{str(args.output_dir)!r} exists; pass --overwrite to replace it")
    for report in (args.validation, args.evaluation):
        if report is not None and not report.with_suffix(".md").is_file():
            raise FileNotFoundError(
                f"no report at {str(report.with_suffix('.md'))!r}: run "
                "examples/evaluate_world_model.py first"
            )
    if args.max_shard_mb < 1:
        raise ValueError(f"max_shard_mb must be >= 1, got {args.max_shard_mb}")
    model = WorldModel.from_pretrained(source)
    sampler = load_sampler_config(source).with_steps(args.sampling_steps)
    sampler.check_model(model)
    kept = half_where_safe(model, args.half_tolerance) if args.half_precision else []
    staging = args.output_dir.with_name(args.output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, max_shard_size=f"{args.max_shard_mb}MB")
    if (source / MEMORY_FILE).is_file():
        shutil.copyfile(source / MEMORY_FILE, staging / MEMORY_FILE)
    sampler.save(staging)
    files = sorted(staging.iterdir())
    (staging / "README.md").write_text(model_card(args, model, sampler, kept, files))
    if args.output_dir.exists():
        shutil.rmtree(args.output_dir)
    staging.rename(args.output_dir)
    return args.output_dir


def main(args: Args) -> None:
    folder = export(args)
    for path in sorted(folder.iterdir()):
        print(f"{path.stat().st_size / 1e6:8.2f} MB  {path}")


if __name__ == "__main__":
    cli.run(main, Args)
