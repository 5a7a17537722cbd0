"""The rendered samples the pixel denoiser trains on: the index step of its recipe.

Rendering a map for every training step would cost more than the network's step on a CPU,
so the renders are made once. Clips of a :class:`~worldsim.data.ClipDataset` are drawn by its
:meth:`~worldsim.data.ClipDataset.clip_sampler` (memory-dependent clips, clips whose
earlier frames are dropped, the rest); for each, a :class:`~worldsim.memory.RenderedMemory`
holds the clip's memory frames and its context frames (as
:func:`worldsim.training.losses.render_for_batch` builds it) and is rendered at every future frame's
recorded camera. A sample is one future frame: the clip's context, the recorded frame (the
target), the render at its camera (RGB-D, where it shows observed points within the
sensor's range, and the age of those points) and the camera relative to the last context
camera. Samples are written in parts of ``clips_per_part`` clips (uint8 colour, float16
depth, ``.npy`` files read memory-mapped), each part atomically (a folder renamed into
place), so a killed build resumes at the first missing part.

A sample is read back as float tensors by :class:`PixelIndex` and turned into the model's
conditioning by :func:`conditions_of`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data import ClipConfig, ClipDataset, collate_clips
from worldsim.geometry import relative_pose
from worldsim.memory import RenderedMemory
from worldsim.models.pixel_denoiser import PixelConditions, PixelDenoiser
from worldsim.simulator.chunks import insert_clip_memory, insert_frames, render_age

INDEX_FORMAT = "persistent-world-pixel-index-1"
"""Format tag of an index's ``index.json``."""

_ARRAYS = (
    "context_rgb",
    "context_depth",
    "target_rgb",
    "target_depth",
    "render_rgb",
    "render_depth",
    "render_known",
    "render_age",
    "cam_to_ref",
    "intrinsics",
    "memory_dropped",
)


@dataclass(frozen=True)
class IndexConfig:
    """Which clips an index renders, and how.

    Attributes:
        n_context: context frames per clip, >= 1 (the model's ``n_context``).
        n_future: future frames per clip, each one sample, >= 1.
        max_memory_frames: most earlier frames in a clip's map (those that see most of its
            future, :class:`~worldsim.data.ClipConfig`), >= 0.
        num_clips: clips drawn, >= 1.
        clips_per_part: clips per part file (the unit of resuming), >= 1.
        render_batch: clips rendered together, >= 1 (speed only).
        memory_dependent_fraction: share of drawn clips whose future the memory sees and the
            context does not, in [0, 1].
        empty_memory_fraction: share of drawn clips whose earlier frames are dropped (the map
            holds the context only), in [0, 1], at most ``1 - memory_dependent_fraction``.
        seed: seeds the draw of clips, >= 0.
    """

    n_context: int = 2
    n_future: int = 4
    max_memory_frames: int = 16
    num_clips: int = 8000
    clips_per_part: int = 200
    render_batch: int = 8
    memory_dependent_fraction: float = 0.5
    empty_memory_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, low in (
            ("n_context", 1),
            ("n_future", 1),
            ("max_memory_frames", 0),
            ("num_clips", 1),
            ("clips_per_part", 1),
            ("render_batch", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{owner}.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("memory_dependent_fraction", "empty_memory_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{owner}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.memory_dependent_fraction + self.empty_memory_fraction > 1.0:
            raise ValueError(
                f"{owner}: memory_dependent_fraction + empty_memory_fraction must be <= 1, got "
                f"{self.memory_dependent_fraction} + {self.empty_memory_fraction}"
            )

    def clip_config(self) -> ClipConfig:
        """The :class:`~worldsim.data.ClipConfig` of the clips drawn."""
        return ClipConfig(
            n_context=self.n_context,
            n_future=self.n_future,
            max_memory_frames=self.max_memory_frames,
            memory_dependent_fraction=self.memory_dependent_fraction,
            empty_memory_fraction=self.empty_memory_fraction,
        )


def _to_uint8(rgb: Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def render_clips(batch: dict[str, Any], n_context: int, max_depth_m: float) -> dict[str, Tensor]:
    """The samples of a batch of clips: context, targets and the map rendered at their cameras.

    Args:
        batch: clips collated by :func:`worldsim.data.collate_clips` (T = n_context + F).
        n_context: context frames per clip.
        max_depth_m: the sensor's range; drawn points beyond it do not count as known.

    Returns:
        ``context_rgb`` (B, n_context, 3, H, W), ``context_depth`` (B, n_context, 1, H, W),
        ``target_rgb`` (B, F, 3, H, W), ``target_depth`` (B, F, 1, H, W), ``render_rgb`` (B, F,
        3, H, W), ``render_depth`` (B, F, 1, H, W), ``render_known`` (B, F, 1, H, W) bool (drawn,
        observed, within range), ``render_age`` (B, F, 1, H, W) frames since the drawn point
        was last seen, ``cam_to_ref`` (B, F, 4, 4) and ``intrinsics`` (B, F, 3, 3).
    """
    memory = RenderedMemory()
    insert_clip_memory(memory, batch, "cpu")
    context = slice(0, n_context)
    insert_frames(
        memory,
        batch["rgb"][:, context],
        batch["depth"][:, context],
        batch["intrinsics"][:, context],
        batch["cam_to_world"][:, context],
    )
    poses = batch["cam_to_world"]
    future = poses[:, n_context:]  # (B, F, 4, 4)
    size = tuple(batch["rgb"].shape[-2:])
    render = memory.render(future, batch["intrinsics"][:, n_context:], size)
    known = render.mask & render.observed & (render.depth <= max_depth_m)
    age = render_age(memory, render)  # (B, F, 1, H, W)
    return {
        "context_rgb": batch["rgb"][:, context],
        "context_depth": batch["depth"][:, context],
        "target_rgb": batch["rgb"][:, n_context:],
        "target_depth": batch["depth"][:, n_context:],
        "render_rgb": render.rgb * known,
        "render_depth": render.depth * known,
        "render_known": known,
        "render_age": torch.where(known, age, torch.zeros_like(age)),
        "cam_to_ref": relative_pose(poses[:, n_context - 1 : n_context], future).float(),
        "intrinsics": batch["intrinsics"][:, n_context:],
    }


def _stored(name: str, tensor: Tensor) -> np.ndarray:
    """A sample array in its stored dtype (colour uint8, depth and age float16)."""
    if name.endswith("_rgb"):
        return _to_uint8(tensor)
    if name.endswith("_depth") or name == "render_age":
        return tensor.clamp(max=60000).to(torch.float16).numpy()
    return tensor.numpy()


def build_index(
    data_dir: str | Path,
    index_dir: str | Path,
    config: IndexConfig,
    max_depth_m: float,
    progress: bool = True,
) -> Path:
    """Render the samples of ``config.num_clips`` clips into ``index_dir`` (module docstring).

    Args:
        data_dir: a dataset folder written by ``examples/collect_data.py``.
        index_dir: the index folder (created; a finished part is kept and skipped).
        config: which clips and how.
        max_depth_m: the sensor's range (the model's ``max_depth_m``).
        progress: show a progress bar.

    Returns:
        ``index_dir``.

    Raises:
        ValueError: if ``index_dir`` holds an index of other settings or another data set.
    """
    index_dir = Path(index_dir)
    dataset = ClipDataset(data_dir, config.clip_config())
    settings = {
        "format": INDEX_FORMAT,
        "data_dir": str(Path(data_dir).resolve()),
        "episodes": len(dataset.store.episodes),
        "clips_in_data": len(dataset),
        "config": asdict(config),
        "max_depth_m": max_depth_m,
    }
    manifest = index_dir / "index.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if {k: saved.get(k) for k in settings} != settings:
            raise ValueError(
                f"{str(index_dir)!r} holds an index of other settings or data; use another "
                f"folder (saved {saved.get('config')}, this run {settings['config']})"
            )
    else:
        index_dir.mkdir(parents=True, exist_ok=True)
        temporary = manifest.with_name(manifest.name + ".tmp")
        temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, manifest)
    generator = torch.Generator().manual_seed(config.seed)
    draws = list(dataset.clip_sampler(config.num_clips, generator))
    parts = range(0, config.num_clips, config.clips_per_part)
    bar = tqdm(total=config.num_clips, desc="index", unit="clip", disable=not progress)
    for number, first in enumerate(parts):
        folder = index_dir / f"part-{number:05d}"
        chosen = draws[first : first + config.clips_per_part]
        if (folder / "done").is_file():
            bar.update(len(chosen))
            continue
        arrays: dict[str, list[np.ndarray]] = {name: [] for name in (*_ARRAYS, "clip")}
        for start in range(0, len(chosen), config.render_batch):
            group = chosen[start : start + config.render_batch]
            batch = collate_clips([dataset[draw] for draw in group])
            samples = render_clips(batch, config.n_context, max_depth_m)
            for name, tensor in samples.items():
                arrays[name].append(_stored(name, tensor))
            arrays["memory_dropped"].append(np.array([draw.empty_memory for draw in group]))
            arrays["clip"].append(np.array([draw.index for draw in group], dtype=np.int64))
            bar.update(len(group))
        temporary = folder.with_name(folder.name + ".tmp")
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        for name, parts_of_name in arrays.items():
            np.save(temporary / f"{name}.npy", np.concatenate(parts_of_name))
        (temporary / "done").write_text("")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    bar.close()
    return index_dir


class PixelIndex:
    """The samples of an index folder (:func:`build_index`), memory-mapped.

    Sample ``i`` is future frame ``i % F`` of clip ``i // F`` (F the index's ``n_future``).

    Args:
        index_dir: the folder.

    Raises:
        FileNotFoundError: if it holds no finished part.
    """

    def __init__(self, index_dir: str | Path) -> None:
        self.root = Path(index_dir)
        manifest = self.root / "index.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no pixel index at {str(self.root)!r}: run build_index first")
        self.settings = json.loads(manifest.read_text())
        parts = sorted(p for p in self.root.glob("part-*") if (p / "done").is_file())
        if not parts:
            raise FileNotFoundError(f"the pixel index {str(self.root)!r} has no finished part")
        self.parts = [
            {name: np.load(part / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            for part in parts
        ]
        counts = np.array([len(part["memory_dropped"]) for part in self.parts])
        self._part_start = np.concatenate([[0], np.cumsum(counts)])
        self.num_clips = int(counts.sum())
        self.n_future = int(self.settings["config"]["n_future"])
        self._hole_shares: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_clips * self.n_future

    def memory_dropped(self) -> np.ndarray:
        """(N,) bool: whether each sample's clip had its earlier frames dropped.

        Such a clip's map holds its context frames only: a chunk without memory.
        """
        dropped = np.concatenate([np.asarray(part["memory_dropped"]) for part in self.parts])
        return np.repeat(dropped, self.n_future)

    def hole_shares(self) -> np.ndarray:
        """(N,) float32: each sample's share of pixels its render leaves empty (read once)."""
        if self._hole_shares is None:
            shares = []
            for part in self.parts:
                known = part["render_known"]  # (C, F, 1, H, W); sample i = clip * F + frame
                flat = known.reshape(known.shape[0] * known.shape[1], -1)  # (C * F, H * W)
                shares.append(1.0 - flat.mean(axis=1, dtype=np.float32))
            self._hole_shares = np.concatenate(shares).astype(np.float32)
        return self._hole_shares

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, Tensor]:
        """Samples as float tensors: RGB in [0, 1], depth in metres.

        Returns:
            ``context_rgb`` (B, n_context, 3, H, W), ``context_depth`` (B, n_context, 1, H, W),
            ``target_rgb`` (B, 3, H, W), ``target_depth`` (B, 1, H, W), ``render_rgb`` (B, 3,
            H, W), ``render_depth`` (B, 1, H, W), ``render_known`` (B, 1, H, W) bool,
            ``render_age`` (B, 1, H, W), ``cam_to_ref`` (B, 4, 4), ``intrinsics`` (B, 3, 3),
            ``memory_dropped`` (B,) bool.
        """
        rows: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
        for index in np.asarray(indices, dtype=np.int64):
            clip, frame = divmod(int(index), self.n_future)
            number = int(np.searchsorted(self._part_start, clip, side="right")) - 1
            part, row = self.parts[number], clip - int(self._part_start[number])
            for name in _ARRAYS:
                array = part[name][row]
                per_frame = name not in ("context_rgb", "context_depth", "memory_dropped")
                rows[name].append(np.asarray(array[frame] if per_frame else array))
        out = {name: torch.from_numpy(np.stack(values)) for name, values in rows.items()}
        for name in ("context_rgb", "target_rgb", "render_rgb"):
            out[name] = out[name].float() / 255.0
        for name in ("context_depth", "target_depth", "render_depth", "render_age"):
            out[name] = out[name].float()
        return out


def conditions_of(
    model: PixelDenoiser, samples: dict[str, Tensor], drop_render: Tensor | None = None
) -> PixelConditions:
    """The model's conditioning of index samples, optionally with some renders dropped.

    Args:
        model: the denoiser.
        samples: from :meth:`PixelIndex.batch`.
        drop_render: (B,) bool, rows whose render is replaced by an empty one; None = none.
    """
    known = samples["render_known"]
    if drop_render is not None:
        known = known & ~drop_render[:, None, None, None]
    return model.conditions(
        samples["context_rgb"],
        samples["context_depth"],
        samples["render_rgb"] * known,
        samples["render_depth"] * known,
        known,
        samples["render_age"],
        samples["intrinsics"],
        samples["cam_to_ref"],
    )
