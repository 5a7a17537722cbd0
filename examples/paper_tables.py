r"""The paper's evaluation and planning tables in one command: Table 1, Table 2, Fig. 6a and 6b.

Runs the example scripts' ``main`` with each table's settings, each run into its own subfolder
of ``--output-dir``, and gathers their results:

- **Table 1**, video quality (``evaluate_world_model.py``, into ``table1/``): PSNR, SSIM, LPIPS
  and depth L1 of every memory variant on multi-chunk rollouts of a held-out data set
  (``--data-dir``, written by ``collect_data.py --split test``), over all frames and over the
  frames at least half of whose pixels only the memory saw. Skipped, with a note in the
  tables, without ``--data-dir``.
- **Table 2**, trajectory ranking (``rank_nomad.py``, into ``table2/<ranker>/``): ATE, RPE and
  SIM of the policy alone and of its N samples ranked by the world model without memory, with
  its memory, and by the ground truth (the upper bound).
- **Fig. 6a**, CEM against iterations (``plan_cem.py``, into ``fig6a/<simulator>/``): success
  and SIM of CEM imagining in the world model and in the ground truth.
- **Fig. 6b**, hindsight adaptation (``adapt_policy.py``, into ``fig6b/rounds-<k>/``): success
  (with its 95 % Wilson interval) and SIM in the ground truth before adaptation and after each
  hindsight round, over all the houses; the policy explores in the learned simulator or, with
  ``--fig6b.simulator ground_truth``, in the ground truth (the upper bound). The policy after
  round k comes from a run of k rounds: with the same seed its rounds are the first k of the
  longest run, so R rounds cost R (R + 1) / 2 rounds of adaptation.

Tables 2 and 6a draw ``--episodes`` episodes from ``--num-scenes`` houses of ``--split``; Fig. 6b
adapts in each of ``--fig6b.num-scenes`` houses from ``--scene-start`` on and evaluates
``--episodes`` fixed episodes in each. The ground truth runs at the world
model's frame size and turn step, so every row of a table sees the same episodes (and, in
Table 2, the same policy samples). Every run starts from torch's generator seeded with
``--seed``.

Writes ``tables.md`` (each table with the commands that reproduce it, their seconds and the
machine), ``tables.json`` (the same rows, settings and machine) and ``fig6a.png`` /
``fig6b.png``. Both tables files are rewritten after every table: an interrupted run keeps the
tables it finished.

Run (the embedded world model and policy; many hours on a CPU)::

    python examples/collect_data.py --output-dir data/test-64 --split test \
        --scene-count 4 --episodes-per-scene 4
    python examples/paper_tables.py --data-dir data/test-64

Smoke size (what the test runs): ``--quick`` sets 1 episode per table and tiny horizons,
sample counts and rounds, 1 denoising step, and the untrained tiny world model and policy
unless ``--checkpoint`` / ``--policy`` / ``--sampling-steps`` / ``--episodes`` name others (its
Table 1 needs a 32x32 data set, as the tests collect)::

    python examples/paper_tables.py --quick --output-dir /tmp/tables
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from envs.embedded.scenes import scene_ids
from planners.cem import CEMConfig
from planners.hindsight import HindsightConfig
from planners.mpc import MPCConfig
from planners.nomad import UNTRAINED
from worldsim import cli
from worldsim.data import TrajectoryStore, commit_file, temporary_path
from worldsim.evaluation.report import markdown_table, plot_metric_curves
from worldsim.models.world_model import MEMORY_FILE
from worldsim.simulator.checkpoints import (
    TINY_UNTRAINED,
    TINY_UNTRAINED_MEMORY,
    load_learned_simulator,
)

EPISODES = 20
"""Episodes per table at the full setting."""
TABLE1_FRAMES = ("all", ">= 50 %")
"""Frame subsets of Table 1: every generated frame, and those >= 50 % memory-only."""
TABLE1_METRICS = ("psnr", "ssim", "lpips", "depth_l1")
"""Metrics of Table 1 (evaluation.json names)."""


def _check_positive(owner: str, **values: int | tuple[int, ...]) -> None:
    """Raise a ValueError naming ``owner.name`` when a count (or one of a tuple's) is < 1."""
    for name, value in values.items():
        counts = value if isinstance(value, tuple) else (value,)
        if not counts or min(counts) < 1:
            raise ValueError(f"{owner}.{name} must be >= 1 (each of them), got {value}")


@dataclass(frozen=True)
class VideoQuality:
    """Settings of Table 1 (examples/evaluate_world_model.py)."""

    chunks: int = 4
    """Chunks per rollout (future frames = chunks x the model's n_future)."""
    max_windows: int = 64
    """Most windows evaluated."""
    memory_frames: int = 32
    """Memory frames per window, those that see most of the future (0: every earlier frame)."""
    min_coverage: float = 0.05
    """Least mean memory-only share of a window's future frames, in [0, 1]."""
    batch_size: int = 8
    """Windows per model call."""

    def __post_init__(self) -> None:
        _check_positive(
            "table1", chunks=self.chunks, max_windows=self.max_windows, batch_size=self.batch_size
        )
        if self.memory_frames < 0:
            raise ValueError(f"table1.memory_frames must be >= 0, got {self.memory_frames}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"table1.min_coverage must lie in [0, 1], got {self.min_coverage}")


@dataclass(frozen=True)
class Ranking:
    """Settings of Table 2 (examples/rank_nomad.py)."""

    num_samples: tuple[int, ...] = (8, 16)
    """Candidates N ranked per decision."""

    def __post_init__(self) -> None:
        _check_positive("table2", num_samples=self.num_samples)


@dataclass(frozen=True)
class CEMSweep:
    """Settings of Fig. 6a (examples/plan_cem.py); plan_cem's own defaults take days on a CPU."""

    iterations: tuple[int, ...] = (1, 2, 3)
    """CEM iteration counts compared."""
    planning: MPCConfig = field(
        default_factory=lambda: MPCConfig(
            cem=CEMConfig(num_samples=12, horizon=8), execute_steps=4, max_steps=24, cost="lpips"
        )
    )
    """CEM and its receding-horizon loop (planners.mpc.MPCConfig), as the main job plans, with
    the paper's LPIPS-only cost (--fig6a.planning.cost map adds the map's cost-to-go)."""

    def __post_init__(self) -> None:
        _check_positive("fig6a", iterations=self.iterations)


@dataclass(frozen=True)
class Adaptation:
    """Settings of Fig. 6b (examples/adapt_policy.py)."""

    hindsight: HindsightConfig = field(default_factory=HindsightConfig)
    """Rounds, imagined rollouts and fine-tuning steps; every round count up to rounds is run."""
    eval_steps: int = 40
    """Most actions per evaluation episode in the ground truth."""
    few_images: int = 6
    """Images of a spin in place that initialise the world model's memory."""
    simulator: Literal["learned", "ground_truth"] = "learned"
    """What the policy explores in: the learned world model, or the ground truth (upper
    bound)."""
    num_scenes: int = 1
    """Houses adapted in, from --scene-start on (each a fresh copy of the policy)."""
    stop_distance: float | None = None
    """Evaluation episodes stop when the policy's distance head predicts at most this many
    frames to the goal or its waypoints propose to stay; None: they run out their steps."""

    def __post_init__(self) -> None:
        _check_positive(
            "fig6b",
            eval_steps=self.eval_steps,
            few_images=self.few_images,
            num_scenes=self.num_scenes,
        )


QUICK_TABLES = {
    "table1": VideoQuality(
        chunks=2, max_windows=2, memory_frames=4, min_coverage=0.0, batch_size=2
    ),
    "table2": Ranking(num_samples=(2, 4)),
    "fig6a": CEMSweep(
        iterations=(1, 2),
        planning=MPCConfig(
            cem=CEMConfig(num_samples=4, horizon=3), execute_steps=3, max_steps=3, cost="lpips"
        ),
    ),
    "fig6b": Adaptation(
        hindsight=HindsightConfig(
            rounds=2,
            rollouts=1,
            rollout_steps=6,
            training=dataclasses.replace(
                HindsightConfig().training, max_goal_distance=2, min_action_distance=1, steps=2
            ),
        ),
        eval_steps=4,
        few_images=2,
    ),
}
"""The table settings of ``--quick``."""


@dataclass(frozen=True)
class Args:
    """Settings of the paper tables."""

    output_dir: Path = Path("outputs/paper_tables")
    """Output folder; each run writes into a subfolder."""
    data_dir: Path | None = None
    """Held-out data set of Table 1 (collect_data.py --split test, at the model's frame size);
    None skips Table 1."""
    checkpoint: str | None = None
    """World-model folder (WorldModel.save_pretrained), tiny-untrained, or None: the embedded
    checkpoint (with --quick: tiny-untrained)."""
    policy: str | None = None
    """Policy folder (NoMaDPolicy.save_pretrained), untrained (an untrained --preset policy),
    or None: the embedded policy (with --quick: an untrained tiny one)."""
    preset: Literal["tiny", "small", "upstream"] = "small"
    """Size of an untrained policy."""
    sampling_steps: int | None = None
    """DDIM steps per generated chunk (None: the checkpoint's sampler_config.json; with --quick:
    1)."""
    split: str = "test"
    """Scene split of the planning episodes (test: houses unseen in training)."""
    num_scenes: int = 5
    """Houses the episodes of Table 2 and Fig. 6a cycle through."""
    scene_start: int = 0
    """Index of the first of those houses in the split (e.g. 10: house-test-0010..); Fig. 6b
    adapts in this house."""
    episodes: int | None = None
    """Episodes per table (None: 20; with --quick: 1)."""
    tour_steps: int = 300
    """Frames of an earlier walk through each house that the world model's episode maps start
    from in Table 2 and Fig. 6a (0: none; with --quick: at most 10)."""
    table1: VideoQuality = field(default_factory=VideoQuality)
    """Table 1: video quality of the memory variants."""
    table2: Ranking = field(default_factory=Ranking)
    """Table 2: ranking the policy's samples."""
    fig6a: CEMSweep = field(default_factory=CEMSweep)
    """Fig. 6a: CEM against iterations."""
    fig6b: Adaptation = field(default_factory=Adaptation)
    """Fig. 6b: hindsight adaptation."""
    tables: tuple[Literal["table1", "table2", "fig6a", "fig6b"], ...] = (
        "table1",
        "table2",
        "fig6a",
        "fig6b",
    )
    """Which tables to make (each run can take a part; give each its own --output-dir)."""
    quick: bool = False
    """Smoke size: every table's settings become tiny (leave the --table*/--fig* flags out)."""
    seed: int = 0
    """Seed of every run."""
    device: str = "cpu"
    """Torch device of the models; Table 1 runs on the CPU with cpu, else on the first GPU."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""

    def __post_init__(self) -> None:
        _check_positive("args", num_scenes=self.num_scenes)
        scene_ids(self.split, self.num_scenes, self.scene_start)  # refuses houses out of range
        if self.episodes is not None:
            _check_positive("args", episodes=self.episodes)
        if self.tour_steps < 0:
            raise ValueError(
                f"--tour-steps must be >= 0 (0: no earlier walk), got {self.tour_steps}"
            )
        if not self.tables or len(set(self.tables)) != len(self.tables):
            raise ValueError(f"--tables needs distinct table names, got {list(self.tables)}")


def resolve(args: Args) -> Args:
    """The settings a run uses: ``--quick`` and the defaults that depend on it filled in."""
    if not args.quick:
        return dataclasses.replace(args, episodes=args.episodes or EPISODES)
    changed = [name for name, quick in QUICK_TABLES.items() if getattr(args, name) != type(quick)()]
    if changed:
        raise ValueError(
            "--quick sets the settings of every table, but "
            f"{', '.join(f'--{name}.*' for name in changed)} were given too: drop --quick or "
            "those flags"
        )
    untrained = args.policy is None
    return dataclasses.replace(
        args,
        checkpoint=args.checkpoint or TINY_UNTRAINED,
        policy=UNTRAINED if untrained else args.policy,
        preset="tiny" if untrained else args.preset,
        sampling_steps=args.sampling_steps or 1,
        episodes=args.episodes or 1,
        tour_steps=min(args.tour_steps, 10),
        **QUICK_TABLES,
    )


@dataclass
class Table:
    """One table's rows, the commands that made them and their seconds."""

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def flags(
    settings: Any, defaults: Any = None, prefix: str = "", omit_prefixes: bool = False
) -> list[str]:
    """Command-line words of the fields of a dataclass that differ from their defaults.

    Args:
        settings: a script's ``Args`` (or a dataclass nested in it).
        defaults: the default instance of a nested dataclass; ``None`` reads the field defaults.
        prefix: the dotted flag prefix of a nested dataclass, e.g. ``"hindsight."``.
        omit_prefixes: the dataclass sits under a field marked ``tyro.conf.OmitArgPrefixes``,
            which tyro applies to everything nested in it.
    """
    words: list[str] = []
    hints = typing.get_type_hints(type(settings), include_extras=True)
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if defaults is not None:
            default = getattr(defaults, item.name)
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = item.default
        name = prefix + item.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            # A nested config marked OmitArgPrefixes takes its fields' flags without a prefix.
            marked = tyro.conf.OmitArgPrefixes in getattr(hints[item.name], "__metadata__", ())
            omit = omit_prefixes or marked
            words += flags(value, default, prefix if omit else f"{name}.", omit)
        elif value != default:
            if isinstance(value, bool):
                words.append(f"--{name}" if value else f"--no-{name}")
            else:
                values = value if isinstance(value, tuple) else (value,)
                words += [f"--{name}", *(str(v) for v in values)]
    return words


def run_script(name: str, table: Table, what: str, **settings: Any) -> Any:
    """Run ``examples/<name>.py``'s ``main`` with ``settings``; record its command and seconds.

    Args:
        name: the example script, e.g. ``"rank_nomad"``.
        table: the table the run belongs to (its commands and seconds grow).
        what: what the run measures, for the progress line.
        **settings: fields of the script's ``Args``. Torch's global generator is seeded with
            its ``seed`` first, so that a script that draws from it (an untrained model's
            initialisation) does not depend on the runs before it.

    Returns:
        What the script's ``main`` returns.
    """
    module = cli.load_example(name)
    script_args = module.Args(**settings)
    command = shlex.join(["python", f"examples/{name}.py", *flags(script_args)])
    print(f"[{table.title}] {what}: {command}", flush=True)
    torch.manual_seed(script_args.seed)
    started = time.perf_counter()
    result = module.main(script_args)
    seconds = time.perf_counter() - started
    print(f"[{table.title}] {what}: {seconds:.1f} s", flush=True)
    table.commands.append(command)
    table.seconds += seconds
    return result


def evaluation_checkpoint(checkpoint: str | None, folder: Path, seed: int) -> Path | None:
    """The folder evaluate_world_model.py reads: the untrained tiny model is saved first."""
    if checkpoint != TINY_UNTRAINED:
        return None if checkpoint is None else Path(checkpoint)
    torch.manual_seed(seed)  # its initialisation
    model = load_learned_simulator(TINY_UNTRAINED).model
    model.save_pretrained(folder)
    (folder / MEMORY_FILE).write_text(json.dumps(TINY_UNTRAINED_MEMORY) + "\n")
    return folder


def video_quality(args: Args) -> Table:
    """Table 1: PSNR, SSIM, LPIPS and depth L1 per memory variant (evaluate_world_model.py)."""
    table = Table("Table 1: video quality of the memory variants")
    if args.data_dir is None:
        table.notes.append(
            "Skipped: no --data-dir. Make a held-out data set at the model's frame size with "
            "`python examples/collect_data.py --output-dir data/test-64 --split test "
            "--scene-count 4 --episodes-per-scene 4` and pass `--data-dir data/test-64`."
        )
        return table
    store = TrajectoryStore(args.data_dir)
    folder = args.output_dir / "table1"
    settings = args.table1
    run_script(
        "evaluate_world_model",
        table,
        "multi-chunk rollouts of every memory variant",
        data_dir=args.data_dir,
        checkpoint=evaluation_checkpoint(args.checkpoint, folder / TINY_UNTRAINED, args.seed),
        output_dir=folder,
        chunks=settings.chunks,
        max_windows=settings.max_windows,
        memory_frames=settings.memory_frames,
        min_coverage=settings.min_coverage,
        batch_size=settings.batch_size,
        sampling_steps=args.sampling_steps,
        max_clips=0,  # the single-chunk validation is the model card's, not Table 1's
        device="cpu" if args.device == "cpu" else "auto",
        threads=args.threads,
        seed=args.seed,
    )
    report = json.loads((folder / "evaluation.json").read_text())["rows"]
    for frames in TABLE1_FRAMES:
        for row in report:
            if row["frames"] != frames:
                continue
            metrics = {name: row.get(name) or {} for name in TABLE1_METRICS}
            table.rows.append(
                {
                    "variant": row["variant"],
                    "frames": frames,
                    "frames_n": row["frames_n"],
                    **{name: metric.get("value") for name, metric in metrics.items()},
                }
            )
    split = store.settings.get("split")
    table.notes.append(
        f"Data set {args.data_dir}: {len(store.episodes)} episodes of the {split!r} split."
    )
    if split != args.split:
        table.notes.append(
            f"The data set's split is {split!r}, the planning tables' {args.split!r}."
        )
    return table


def ranking(args: Args, size: int, turn_step_deg: float) -> Table:
    """Table 2: ATE, RPE and SIM of the policy alone and ranked (rank_nomad.py)."""
    table = Table("Table 2: ranking the policy's samples")
    common = dict(
        policy=args.policy,
        preset=args.preset,
        split=args.split,
        num_scenes=args.num_scenes,
        scene_start=args.scene_start,
        episodes=args.episodes,
        num_samples=args.table2.num_samples,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    learned = dict(
        checkpoint=args.checkpoint, sampling_steps=args.sampling_steps, tour_steps=args.tour_steps
    )
    rankers = {
        "the world model without memory": ("world-model-no-memory", "world-model", "none"),
        "the world model with memory": ("world-model", "world-model", None),
        "the ground truth (upper bound)": ("oracle", "oracle", None),
    }
    alone = []
    for label, (folder, planner, memory) in rankers.items():
        simulator = (
            dict(learned, memory=memory)
            if planner == "world-model"
            else dict(size=size, turn_step_deg=turn_step_deg)
        )
        rows = run_script(
            "rank_nomad",
            table,
            f"ranked by {label}",
            output_dir=args.output_dir / "table2" / folder,
            planner=planner,
            **simulator,
            **common,
        )
        keys = ("episodes", "ate_m", "rpe_m", "sim")
        alone.append({key: rows[0][key] for key in keys})
        for count, row in zip(args.table2.num_samples, rows[1:], strict=True):
            table.rows.append(
                {"method": f"ranked by {label}", "N": count, **{k: row[k] for k in keys}}
            )
    table.rows.insert(0, {"method": "policy alone", "N": 1, **alone[0]})
    if any(row != alone[0] for row in alone):
        table.notes.append(f"The policy-alone rows of the runs differ: {alone}.")
    return table


def cem_sweep(args: Args, size: int, turn_step_deg: float) -> Table:
    """Fig. 6a: success and SIM of CEM against its iterations (plan_cem.py)."""
    table = Table("Fig. 6a: CEM against iterations")
    settings = args.fig6a
    common = dict(
        split=args.split,
        num_scenes=args.num_scenes,
        scene_start=args.scene_start,
        episodes=args.episodes,
        iterations=settings.iterations,
        planning=dataclasses.replace(settings.planning, record_imagined=True),
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    simulators = {
        "world model": (
            "world-model",
            dict(
                checkpoint=args.checkpoint,
                sampling_steps=args.sampling_steps,
                tour_steps=args.tour_steps,
            ),
        ),
        "ground truth": ("oracle", dict(size=size, turn_step_deg=turn_step_deg)),
    }
    for label, (planner, simulator) in simulators.items():
        rows = run_script(
            "plan_cem",
            table,
            f"CEM imagining in the {label}",
            output_dir=args.output_dir / "fig6a" / planner,
            planner=planner,
            **simulator,
            **common,
        )
        keys = ("cem_iterations", "episodes", "success", "false_stops", "sim", "spl", "mean_steps")
        table.rows += [{"imagined in": label, **{k: row[k] for k in keys}} for row in rows]
    curves = {
        title: {
            label: [row[metric] for row in table.rows if row["imagined in"] == label]
            for label in simulators
        }
        for title, metric in (("success", "success"), ("SIM", "sim"))
    }
    plot_metric_curves(
        curves,
        args.output_dir / "fig6a.png",
        title="Fig. 6a: CEM against iterations",
        xlabel="CEM iterations",
        x=settings.iterations,
    )
    return table


def adaptation(args: Args) -> Table:
    """Fig. 6b: success and SIM before and after each hindsight round (adapt_policy.py)."""
    settings = args.fig6b
    table = Table(f"Fig. 6b: hindsight adaptation, imagined in the {settings.simulator}")
    befores = []
    keys = ("episodes", "success", "success_low", "success_high", "reached", "sim")
    for rounds in range(1, settings.hindsight.rounds + 1):
        rows = run_script(
            "adapt_policy",
            table,
            f"policy after {rounds} hindsight rounds",
            checkpoint=args.checkpoint,
            simulator=settings.simulator,
            output_dir=args.output_dir / "fig6b" / f"rounds-{rounds}",
            policy=args.policy,
            preset=args.preset,
            split=args.split,
            scene_start=args.scene_start,
            num_scenes=settings.num_scenes,
            few_images=settings.few_images,
            episodes=args.episodes,
            eval_steps=settings.eval_steps,
            stop_distance=settings.stop_distance,
            hindsight=dataclasses.replace(settings.hindsight, rounds=rounds),
            sampling_steps=args.sampling_steps,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
        before, after = (row for row in rows if row["scene"] == "all")
        befores.append({k: before[k] for k in keys})
        houses = [row["scene"] for row in rows if row["scene"] != "all"][::2]
        scenes = f"{houses[0]}..{houses[-1]}" if len(houses) > 1 else houses[0]
        if rounds == 1:
            table.rows.append({"hindsight_rounds": 0, "scenes": scenes, **befores[0]})
        heldout = [row["heldout_loss"] for row in rows if row["scene"] != "all"][1::2]
        table.rows.append(
            {
                "hindsight_rounds": rounds,
                "scenes": scenes,
                **{k: after[k] for k in keys},
                "heldout_loss": float(np.mean(heldout)),
            }
        )
    if any(before != befores[0] for before in befores):
        table.notes.append(f"The before-adaptation rows of the runs differ: {befores}.")
    plot_metric_curves(
        {
            "success": {
                label: [row[key] for row in table.rows]
                for label, key in (
                    ("success", "success"),
                    ("95 % low", "success_low"),
                    ("95 % high", "success_high"),
                )
            },
            "SIM": [row["sim"] for row in table.rows],
        },
        args.output_dir / "fig6b.png",
        title="Fig. 6b: success (95 % Wilson interval) and SIM in the ground truth",
        xlabel="hindsight rounds",
        x=[row["hindsight_rounds"] for row in table.rows],
    )
    return table


def processor() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows of it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """The machine the tables were measured on: platform, CPU, cores, torch and device."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    accelerator = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    return {
        "platform": platform.platform(),
        "processor": processor(),
        "cpu_cores": cores,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": accelerator,
    }


def write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename (no half-written tables)."""
    temporary = temporary_path(path)
    temporary.write_text(text)
    commit_file(temporary, path)


def write_tables(args: Args, tables: dict[str, Table], host: dict[str, Any]) -> dict[str, Any]:
    """Write tables.md and tables.json for the tables so far; return the JSON content."""
    where = (
        f"{host['processor']} ({host['cpu_cores']} cores), torch {host['torch']} "
        f"({host['torch_threads']} CPU threads), device {host['device']}"
    )
    setting = "smoke size (--quick)" if args.quick else "full"
    lines = [
        "# Paper tables",
        "",
        f"Setting: {setting}. Machine: {where}; {host['platform']}, Python {host['python']}.",
        "",
    ]
    for table in tables.values():
        lines += [f"## {table.title}", ""]
        if table.rows:
            lines += [markdown_table(table.rows)]
        lines += [f"{note}\n" for note in table.notes]
        if table.commands:
            lines += [f"Measured in {table.seconds:.0f} s on {where}, by:", ""]
            lines += [f"- `{command}`" for command in table.commands] + [""]
    write_text(args.output_dir / "tables.md", "\n".join(lines))
    content = {
        "quick": args.quick,
        "machine": host,
        "settings": json.loads(json.dumps(dataclasses.asdict(args), default=str)),
        "tables": {name: dataclasses.asdict(table) for name, table in tables.items()},
    }
    write_text(args.output_dir / "tables.json", json.dumps(content, indent=2) + "\n")
    return content


def main(args: Args) -> dict[str, Any]:
    """Run the tables of ``args.tables``; returns the content of tables.json."""
    args = resolve(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    # The ground truth runs at the world model's frame size and turn step: same episodes.
    model = load_learned_simulator(args.checkpoint).model
    size, turn_step_deg = model.config.height, model.action_spec.turn_step_deg
    del model
    host = machine(args.device)
    steps = {
        "table1": lambda: video_quality(args),
        "table2": lambda: ranking(args, size, turn_step_deg),
        "fig6a": lambda: cem_sweep(args, size, turn_step_deg),
        "fig6b": lambda: adaptation(args),
    }
    tables: dict[str, Table] = {}
    started = time.perf_counter()
    for name in args.tables:
        tables[name] = steps[name]()
        content = write_tables(args, tables, host)
        print(f"[{tables[name].title}] done; {time.perf_counter() - started:.0f} s so far")
    print((args.output_dir / "tables.md").read_text())
    return content


if __name__ == "__main__":
    cli.run(main, Args)
