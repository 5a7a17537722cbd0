r"""Cost of each way of reading the memory: rendered vs cross-attended feature map vs none.

    python benchmarks/bench_memory_kinds.py --threads 1        # about 5 minutes on one core
    python benchmarks/bench_memory_kinds.py --threads 1 --kinds none rendered --steps 2 \
        --batch-sizes 1 --memory-frames 10 --map-sizes 10 --repeats 1 --sampling-steps 2

One freshly initialised model of the ``--config`` per memory kind (speed does not depend on
training; the backbone sizes are the same, only the memory branch differs):

- ``none``: no memory branch (``memory_token_dim=0``), run without a memory;
- ``rendered``: ``memory_render=True``, reading :class:`~worldsim.memory.RenderedMemory` as a
  pixel-aligned render of every future camera;
- ``vgg16`` / ``pooled_color``: memory blocks cross-attending to the map tokens of the 3D feature
  map (:class:`~worldsim.memory.FeatureMap3D`) with that image encoder.

It times, all in the same run,

1. ``PersistentWorld-v0`` steps (after one warm-up step) that walk and turn through
   ``--scene`` (forward / left / forward / right), so the map grows with every step; each step
   generates one chunk, reads the memory and writes the new frame into it;
2. one :func:`~worldsim.simulator.chunks.rollout` chunk of B rows (memory read, ``--sampling-steps``
   denoising steps, decoding, the generated frames written back) from the last frames of a
   ground-truth trajectory whose ``--memory-frames`` frames fill the memory;

and prints seconds and the ratio to ``none``. Then, for maps of ``--map-sizes`` ground-truth
frames, the milliseconds of one memory update (one more frame, into a copy of the map) and of
one read for a chunk's cameras: ``RenderedMemory.render`` (also per target frame) and, for the
feature maps, ``tokens``. The ground-truth frames are the out-and-back oracle trajectory of
``examples/build_memory.py`` (its ``collect``) at the model's frame size.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from worldsim import cli
from worldsim.memory import Memory, RenderedMemory, build_memory
from worldsim.models.world_model import WorldModel
from worldsim.simulator.chunks import insert_frames, rollout
from worldsim.simulator.sampler import SamplerConfig

KINDS = ("none", "rendered", "vgg16", "pooled_color")
"""Memory kinds: no memory, the rendered memory, the feature map with one of two encoders."""


def load_script(path: Path) -> ModuleType:
    """A sibling script as a module, to reuse its helpers (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]
persistent_world = load_script(ROOT / "benchmarks" / "bench_persistent_world.py")
build_memory_example = load_script(ROOT / "examples" / "build_memory.py")


@dataclass(frozen=True)
class Args:
    """Benchmark settings."""

    config: str = "small"
    """World-model configuration (one model per memory kind)."""
    kinds: tuple[str, ...] = KINDS
    """Memory kinds to time: none, rendered, vgg16, pooled_color (the first is the baseline)."""
    steps: int = 20
    """Timed PersistentWorld-v0 steps per kind, after one warm-up step."""
    batch_sizes: tuple[int, ...] = (1, 8)
    """Rows B of the timed rollout chunk."""
    memory_frames: int = 100
    """Ground-truth frames in the memory before the rollout chunk."""
    map_sizes: tuple[int, ...] = (10, 100, 300)
    """Ground-truth frames in the maps whose update and read are timed."""
    repeats: int = 3
    """Timed repetitions of a rollout chunk, update or read (median reported), after a warm-up."""
    sampling_steps: int = 10
    """DDIM steps per chunk."""
    scene: str = "house-train-0000"
    """Ground-truth scene of the PersistentWorld-v0 start view."""
    device: str = "cpu"
    """Torch device of the models and the memories."""
    threads: int = 0
    """CPU threads of torch (0: the cores other work leaves idle)."""
    seed: int = 0
    """Seed of the weights, the trajectory and the noise."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"--kinds must be some of {list(KINDS)}, got {list(self.kinds)}")
        if self.kinds[0] != "none":
            raise ValueError(f"--kinds must start with none (the baseline), got {self.kinds[0]}")


def memory_spec(kind: str) -> dict:
    """``build_memory`` arguments of a kind (``{"name": "none"}``: no memory)."""
    if kind in ("vgg16", "pooled_color"):
        return {"name": "feature_map", "encoder": kind}
    return {"name": kind}


def make_model(config: str, kind: str, seed: int) -> WorldModel:
    """A freshly initialised model whose memory branch reads ``kind``."""
    spec = memory_spec(kind)
    overrides = {"memory_token_dim": 0}  # none and rendered: no memory blocks
    if kind == "rendered":
        overrides["memory_render"] = True
    elif spec["name"] == "feature_map":
        overrides["memory_token_dim"] = build_memory(**spec).token_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldModel.from_config_name(config, **overrides).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    prepare: Callable[[], object], function: Callable[[object], object], repeats: int, device
) -> float:
    """Median seconds of ``function(prepare())`` over ``repeats``, after one warm-up.

    ``prepare`` (untimed) hands each call a fresh copy of what it changes, e.g. a memory.
    """
    function(prepare())  # warm-up
    times = []
    for _ in range(repeats):
        state = prepare()
        synchronize(device)
        start = time.perf_counter()
        function(state)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def filled_memory(kind: str, frames: list[torch.Tensor], rows: int, device) -> Memory | None:
    """A memory of ``rows`` identical rows holding all ``frames`` (None for ``none``)."""
    if kind == "none":
        return None
    memory = build_memory(**memory_spec(kind))
    memory.reset(rows, device)
    rgb, depth, k, pose = (x.expand(rows, *x.shape[1:]) for x in frames)
    insert_frames(memory, rgb, depth, k, pose)
    return memory


def time_chunk(
    model: WorldModel, kind: str, frames: list[torch.Tensor], rows: int, args: Args
) -> float:
    """Seconds of one rollout chunk of ``rows`` rows from a memory holding ``frames``."""
    device = torch.device(args.device)
    memory = filled_memory(kind, frames, rows, device)
    n_context, n_future = model.config.n_context, model.config.n_future
    rgb, depth = (x[:, -n_context:].expand(rows, -1, -1, -1, -1) for x in frames[:2])
    k = frames[2][:, -1].expand(rows, 3, 3)
    pose = frames[3][:, -n_context:].expand(rows, n_context, 4, 4)
    cycle = persistent_world.ACTIONS
    actions = torch.tensor([cycle[i % len(cycle)] for i in range(n_future)]).expand(rows, -1)
    generator = torch.Generator(device).manual_seed(args.seed)

    def copy() -> Memory | None:
        return None if memory is None else memory.select(torch.arange(rows, device=device))

    def chunk(state: Memory | None) -> None:
        rollout(
            model,
            rgb,
            depth,
            pose,
            actions,
            sampler=SamplerConfig(num_inference_steps=args.sampling_steps),
            intrinsics=k,
            memory=state,
            insert_start_frames=False,  # the start frames are the memory's last frames
            generator=generator,
        )

    return median_seconds(copy, chunk, args.repeats, device)


def map_size(memory: Memory) -> int:
    """Points of a rendered memory's row 0, or occupied voxels of a feature map's row 0."""
    if isinstance(memory, RenderedMemory):
        return int(memory.counts[0])
    return int(memory.num_cells()[0])


def time_map(kind: str, frames: list[torch.Tensor], count: int, n_future: int, args: Args) -> dict:
    """Milliseconds of one update and one read of ``n_future`` cameras, map of ``count`` frames."""
    device = torch.device(args.device)
    memory = filled_memory(kind, [x[:, :count] for x in frames], 1, device)
    new = [x[:, count : count + 1] for x in frames]  # the next frame of the trajectory
    targets = [x[:, count : count + n_future] for x in frames[2:]]  # (1, F, 3, 3), (1, F, 4, 4)
    size = tuple(frames[0].shape[-2:])

    def copy() -> Memory:
        return memory.select(torch.arange(1, device=device))

    update = median_seconds(copy, lambda m: m.update(*new), args.repeats, device)
    if memory.gives_render:
        read = median_seconds(
            lambda: memory, lambda m: m.render(targets[1], targets[0], size), args.repeats, device
        )
    else:
        read = median_seconds(
            lambda: memory, lambda m: m.tokens(targets[1], targets[0], size), args.repeats, device
        )
    return {
        "kind": kind,
        "frames": count,
        "size": map_size(memory),
        "update_ms": 1e3 * update,
        "read_ms": 1e3 * read,
        "read_ms_per_target": 1e3 * read / n_future,
    }


def ground_truth(args: Args, frames: int, size: int) -> list[torch.Tensor]:
    """(1, T, ...) rgb, depth, intrinsics, cam_to_world of an oracle out-and-back trajectory."""
    settings = build_memory_example.Args(steps=frames, size=size, seed=args.seed)
    return build_memory_example.to_tensors(
        build_memory_example.collect(settings), torch.device(args.device)
    )


def main(args: Args) -> dict[str, list[dict]]:
    torch.manual_seed(args.seed)  # the script's single seeding; sampling uses explicit generators
    device = torch.device(args.device)
    config = WorldModel.from_config_name(args.config).config
    longest = max(args.memory_frames, max(args.map_sizes) + config.n_future)
    frames = ground_truth(args, longest, config.height)
    start = [x[:, : args.memory_frames] for x in frames]

    rows = []
    for kind in args.kinds:
        model = make_model(args.config, kind, args.seed).to(device)
        row = {"kind": kind}
        steps_per_s = persistent_world.time_single(model, memory_spec(kind), args)
        row["step_s"] = 1 / steps_per_s
        for batch in args.batch_sizes:
            row[f"chunk_b{batch}_s"] = time_chunk(model, kind, start, batch, args)
        rows.append(row)
        print(f"{kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "kind"))

    base = rows[0]
    columns = ["step_s"] + [f"chunk_b{b}_s" for b in args.batch_sizes]
    print(
        f"\n{args.config} model, device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.sampling_steps} DDIM steps per chunk; env: {args.steps} steps after a warm-up "
        f"in {args.scene}; rollout chunk: median of {args.repeats}, memory of "
        f"{args.memory_frames} ground-truth frames"
    )
    titles = ["env step"] + [f"rollout chunk B={b}" for b in args.batch_sizes]
    print("| memory | " + " | ".join(f"{t} s | / none" for t in titles) + " |")
    print("|---|" + "---|---|" * len(titles))
    for row in rows:
        cells = [f"{row[c]:.3f} | {row[c] / base[c]:.2f}x" for c in columns]
        print(f"| {row['kind']} | " + " | ".join(cells) + " |")

    maps = [
        time_map(kind, frames, count, config.n_future, args)
        for kind in args.kinds
        if kind != "none"
        for count in args.map_sizes
    ]
    print(
        f"\nmemory update (one more {config.height}x{config.width} frame) and read for one chunk "
        f"of {config.n_future} cameras (render / tokens), median of {args.repeats}"
    )
    print("| memory | frames | points / voxels | update ms / frame | read ms | read ms / target |")
    print("|---|---|---|---|---|---|")
    for row in maps:
        print(
            f"| {row['kind']} | {row['frames']} | {row['size']} | {row['update_ms']:.1f} | "
            f"{row['read_ms']:.1f} | {row['read_ms_per_target']:.1f} |"
        )
    return {"steps": rows, "maps": maps}


if __name__ == "__main__":
    cli.run(main, Args)
