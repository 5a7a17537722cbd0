"""Revisit windows of recorded episodes: where a rollout of several chunks needs its memory.

A single generated chunk (4 frames at 10 deg turns) cannot reach 50 % pixels that earlier frames
see and the context does not; turning around, coming back through a doorway or the return leg of
an out-and-back can. This module evaluates rollouts of several chunks where that happens.

Windows
    A window of a recorded episode is a start ``t``: the *context* is frames
    ``t - n_context + 1 .. t``, the *future* the next ``length`` frames, the *memory* the observed
    frames before the context (all of them, or the ``memory_frames`` that see most of the
    future's memory-only pixels). A future pixel is *memory-only* when some memory frame sees it
    and no context frame does (:func:`worldsim.data.visibility.memory_only_coverage`: visibility by
    depth consistency, not a frustum test). :func:`choose_windows` ranks every candidate start by
    the mean memory-only share of its future frames, measured on a coarse pixel grid
    (:func:`pairwise_seen`), and keeps the best ones that do not overlap.

They are scored by :mod:`worldsim.evaluation.revisits`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data.visibility import DepthConsistency, memory_only_coverage, seen_by
from worldsim.geometry import invert_rigid
from worldsim.memory.base import valid_depth_mask

if TYPE_CHECKING:
    from worldsim.data import TrajectoryStore


@dataclass(frozen=True)
class WindowConfig:
    """Which windows of an episode are evaluated.

    Attributes:
        n_context: observed frames the rollout starts from, >= 1 (the models' ``n_context``).
        length: future frames generated, >= 1 (a multiple of the models' ``n_future``).
        memory_frames: most memory frames per window, the ones that see most of the future's
            memory-only pixels; 0 = every observed frame before the context.
        max_windows: most windows kept, >= 1.
        max_per_episode: most windows kept from one episode, >= 1 (spreads the windows over
            episodes and scenes).
        min_coverage: least mean memory-only share of a window's future frames, in [0, 1].
        stride: candidate starts are every ``stride`` frames, >= 1.
        grid: pixels per image side on which candidates are ranked, >= 1 (coverage for scoring
            is computed at full resolution).
    """

    n_context: int = 2
    length: int = 16
    memory_frames: int = 0
    max_windows: int = 64
    max_per_episode: int = 4
    min_coverage: float = 0.05
    stride: int = 2
    grid: int = 16

    def __post_init__(self) -> None:
        for name in ("n_context", "length", "max_windows", "max_per_episode", "stride", "grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"WindowConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_frames < 0:
            raise ValueError(
                f"WindowConfig.memory_frames must be >= 0 (0 = all), got {self.memory_frames}"
            )
        if not 0 <= self.min_coverage <= 1:
            raise ValueError(
                f"WindowConfig.min_coverage must be in [0, 1], got {self.min_coverage}"
            )


@dataclass(frozen=True)
class Window:
    """One evaluated window of an episode.

    Attributes:
        episode: index into ``TrajectoryStore.episodes``.
        scene_id: the episode's scene.
        start: index of the last context frame.
        memory: indices of the memory frames, increasing, all before the context.
        coverage: mean memory-only share of the future frames on the ranking grid, in [0, 1].
    """

    episode: int
    scene_id: str
    start: int
    memory: tuple[int, ...]
    coverage: float


def pairwise_seen(
    depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor, grid: int
) -> tuple[Tensor, Tensor]:
    """Which pixels of each frame of an episode each other frame sees, on a coarse pixel grid.

    Args:
        depth: (T, 1, H, W) metric z-depth, metres.
        intrinsics: (T, 3, 3) ``K``, pixels.
        cam_to_world: (T, 4, 4) rigid poses.
        grid: sampled pixels per side (every ``H // grid``-th row, from the middle of each
            block); ``grid >= H`` samples every pixel.

    Returns:
        ``(seen, valid)``: (T_source, T_target, P) bool, whether source frame ``s`` sees sample
        ``p`` of target frame ``t`` (:func:`worldsim.data.visibility.seen_by`), and (T, P) bool, the
        samples with a valid depth.
    """
    frames, _, height, width = depth.shape
    step_y, step_x = max(height // grid, 1), max(width // grid, 1)
    off_y, off_x = step_y // 2, step_x // 2
    small = depth[:, :, off_y::step_y, off_x::step_x]  # (T, 1, h, w)
    # A sample at original pixel centre c + 0.5 = s * (j + 0.5) + (o + 0.5 - s / 2).
    k = intrinsics.clone().float()
    k[:, 0, 0] /= step_x
    k[:, 1, 1] /= step_y
    k[:, 0, 2] = (k[:, 0, 2] - off_x - 0.5 + step_x / 2) / step_x
    k[:, 1, 2] = (k[:, 1, 2] - off_y - 0.5 + step_y / 2) / step_y
    seen = torch.stack(
        [
            seen_by(
                small[None],
                k[None],
                cam_to_world[None],
                depth[None, s : s + 1],
                intrinsics[None, s : s + 1],
                cam_to_world[None, s : s + 1],
            )[0].flatten(1)  # (T, P)
            for s in range(frames)
        ]
    )  # (T_source, T_target, P)
    valid = valid_depth_mask(small[:, 0], DepthConsistency().max_depth).flatten(1)  # (T, P)
    return seen, valid


def rank_starts(
    seen: Tensor, valid: Tensor, config: WindowConfig
) -> list[tuple[int, tuple[int, ...], float]]:
    """Every candidate start of one episode with its memory frames and mean memory-only share.

    Args:
        seen: (T, T, P) bool from :func:`pairwise_seen`.
        valid: (T, P) bool samples with a valid depth.
        config: context, length, memory size and stride.

    Returns:
        ``(start, memory frames, coverage)`` for starts ``t = n_context, n_context + stride,
        ...`` with ``t + length < T`` (so at least one memory frame precedes the context).
    """
    frames = seen.shape[0]
    n_context, length = config.n_context, config.length
    counts = valid.sum(-1).clamp(min=1).float()  # (T,)
    out = []
    for start in range(n_context, frames - length, config.stride):
        future = slice(start + 1, start + 1 + length)
        by_context = seen[start - n_context + 1 : start + 1, future].any(0)  # (L, P)
        candidates = seen[: start - n_context + 1, future] & ~by_context  # (S, L, P)
        memory = list(range(start - n_context + 1))
        if 0 < config.memory_frames < len(memory):
            gain = candidates.flatten(1).sum(-1)  # (S,) memory-only samples each one sees
            order = torch.argsort(-gain, stable=True)[: config.memory_frames]
            memory = sorted(int(s) for s in order)
        share = candidates[memory].any(0).sum(-1) / counts[future]  # (L,)
        out.append((start, tuple(memory), float(share.mean())))
    return out


def choose_windows(
    ranked: dict[int, list[tuple[int, tuple[int, ...], float]]],
    scenes: dict[int, str],
    config: WindowConfig,
) -> list[Window]:
    """The best non-overlapping windows over all episodes.

    Candidates with coverage >= ``min_coverage`` are taken best first (ties: smaller episode,
    then earlier start); one is skipped when its future overlaps that of a window already taken
    from the same episode (starts closer than ``length``) or its episode has
    ``max_per_episode`` windows already.

    Args:
        ranked: ``{episode: rank_starts(...)}``.
        scenes: ``{episode: scene_id}``.
        config: ``min_coverage``, ``max_windows``, ``max_per_episode`` and ``length``.

    Returns:
        Up to ``max_windows`` windows sorted by episode and start.
    """
    pool = [
        (-coverage, episode, start, memory)
        for episode, rows in ranked.items()
        for start, memory, coverage in rows
        if coverage >= config.min_coverage
    ]
    taken: list[Window] = []
    for negative, episode, start, memory in sorted(pool):
        if len(taken) == config.max_windows:
            break
        same = [w for w in taken if w.episode == episode]
        if len(same) == config.max_per_episode or any(
            abs(w.start - start) < config.length for w in same
        ):
            continue
        taken.append(Window(episode, scenes[episode], start, memory, -negative))
    return sorted(taken, key=lambda w: (w.episode, w.start))


def dataset_scenes(store: TrajectoryStore) -> list[str]:
    """The houses a dataset's episodes were recorded in, sorted."""
    return sorted({episode.scene_id for episode in store.episodes})


def find_windows(
    store: TrajectoryStore,
    config: WindowConfig,
    progress: bool = False,
    scenes: Collection[str] | None = None,
) -> list[Window]:
    """Rank every episode of a dataset (:func:`pairwise_seen`, :func:`rank_starts`) and choose.

    Args:
        store: the recorded episodes (held-out scenes).
        config: window settings.
        progress: show a progress bar over episodes.
        scenes: take windows only from the episodes of these houses; ``None``: every house.

    Returns:
        The chosen windows (:func:`choose_windows`); empty when no window reaches
        ``min_coverage``.

    Raises:
        ValueError: when ``scenes`` is empty or names a house the dataset does not hold (the
            message lists those it holds).
    """
    episodes = range(len(store.episodes))
    if scenes is not None:
        held = dataset_scenes(store)
        missing = sorted(set(scenes) - set(held))
        if not scenes:
            raise ValueError(f"no house chosen; the dataset {str(store.root)!r} holds {held}")
        if missing:
            raise ValueError(
                f"the dataset {str(store.root)!r} holds no episode of the houses {missing}; it "
                f"holds {held}"
            )
        episodes = [i for i in episodes if store.episodes[i].scene_id in set(scenes)]
    ranked, scene_of = {}, {}
    for index in tqdm(episodes, disable=not progress, desc="episodes"):
        arrays = store.read_frames(index, slice(None), ("depth", "intrinsics", "cam_to_world"))
        depth = torch.from_numpy(arrays["depth"].astype(np.float32)).permute(0, 3, 1, 2)
        seen, valid = pairwise_seen(
            depth,
            torch.from_numpy(arrays["intrinsics"]).float(),
            torch.from_numpy(arrays["cam_to_world"]).float(),
            config.grid,
        )
        ranked[index] = rank_starts(seen, valid, config)
        scene_of[index] = store.episodes[index].scene_id
    return choose_windows(ranked, scene_of, config)


@dataclass(frozen=True)
class Frames:
    """Frames of B windows, channels first (padding frames are zeros with ``valid`` False).

    Attributes:
        rgb: (B, T, 3, H, W) float32 in [0, 1].
        depth: (B, T, 1, H, W) float32 metres.
        intrinsics: (B, T, 3, 3) float32 ``K``.
        cam_to_world: (B, T, 4, 4) float32 poses.
        valid: (B, T) bool.
    """

    rgb: Tensor
    depth: Tensor
    intrinsics: Tensor
    cam_to_world: Tensor
    valid: Tensor

    def rows(self, index: Tensor) -> Frames:
        """The frames of rows ``index`` (int64)."""
        return Frames(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class WindowBatch:
    """The recorded frames of B windows and what the memory alone sees of their future.

    Attributes:
        context: (B, n_context, ...) the observed start frames.
        future: (B, length, ...) the recorded future (the ground truth).
        memory: (B, S, ...) each window's memory frames, padded.
        shuffled: (B, S', ...) the memory frames of another window from another episode (another
            scene where there is one), moved rigidly so that that window's last context camera
            lands on this one's: a memory of the wrong place, seen from here.
        coverage: (B, length) float memory-only share of each future frame (full resolution).
        memory_only: (B, length, 1, H, W) bool memory-only pixels.
    """

    context: Frames
    future: Frames
    memory: Frames
    shuffled: Frames
    coverage: Tensor
    memory_only: Tensor


def _stack(parts: list[dict[str, np.ndarray]]) -> Frames:
    """Pad per-window frame arrays (numpy, channels last) to one :class:`Frames`."""
    count = max(max(len(p["rgb"]) for p in parts), 1)
    height, width = parts[0]["rgb"].shape[1:3]
    batch = len(parts)
    out = Frames(
        rgb=torch.zeros(batch, count, 3, height, width),
        depth=torch.zeros(batch, count, 1, height, width),
        intrinsics=torch.eye(3).repeat(batch, count, 1, 1),
        cam_to_world=torch.eye(4).repeat(batch, count, 1, 1),
        valid=torch.zeros(batch, count, dtype=torch.bool),
    )
    for row, part in enumerate(parts):
        n = len(part["rgb"])
        out.rgb[row, :n] = torch.from_numpy(part["rgb"]).permute(0, 3, 1, 2).float() / 255
        out.depth[row, :n] = torch.from_numpy(part["depth"].astype(np.float32)).permute(0, 3, 1, 2)
        out.intrinsics[row, :n] = torch.from_numpy(part["intrinsics"]).float()
        out.cam_to_world[row, :n] = torch.from_numpy(part["cam_to_world"]).float()
        out.valid[row, :n] = True
        out.intrinsics[row, n:] = out.intrinsics[row, 0]  # padding keeps a plausible camera
    return out


def shuffled_partners(windows: Sequence[Window]) -> list[int]:
    """For each window, the next one (cyclically) from another scene, else another episode.

    Raises:
        ValueError: when all windows come from one episode (no other memory to shuffle in).
    """
    partners = []
    for index, window in enumerate(windows):
        order = [(index + k) % len(windows) for k in range(1, len(windows))]
        other_scene = [j for j in order if windows[j].scene_id != window.scene_id]
        other_episode = [j for j in order if windows[j].episode != window.episode]
        if not other_episode:
            raise ValueError(
                "a shuffled memory needs windows from at least two episodes; evaluate more "
                "episodes or lower WindowConfig.min_coverage"
            )
        partners.append((other_scene or other_episode)[0])
    return partners


def load_windows(
    store: TrajectoryStore, windows: Sequence[Window], n_context: int, length: int
) -> WindowBatch:
    """Read the windows' frames and measure their memory-only pixels at full resolution.

    Args:
        store: the dataset the windows were chosen from.
        windows: the windows (from at least two episodes, for the shuffled memory).
        n_context: context frames per window.
        length: future frames per window.

    Returns:
        The :class:`WindowBatch` of all windows, on the CPU.
    """
    context, future, memory = [], [], []
    for window in windows:
        first = window.start - n_context + 1
        read = store.read_frames
        context.append(read(window.episode, slice(first, window.start + 1)))
        future.append(read(window.episode, slice(window.start + 1, window.start + 1 + length)))
        memory.append(read(window.episode, np.asarray(window.memory)))
    context_f, future_f, memory_f = _stack(context), _stack(future), _stack(memory)
    # Move each partner's memory by the rigid motion taking its last context camera to ours.
    partners = torch.tensor(shuffled_partners(windows), dtype=torch.long)
    last = context_f.cam_to_world[:, -1].double()  # (B, 4, 4)
    move = last @ invert_rigid(last[partners])  # (B, 4, 4)
    other = memory_f.rows(partners)
    shuffled = replace(other, cam_to_world=(move[:, None] @ other.cam_to_world.double()).float())
    coverage, mask = memory_only_coverage(
        future_f.depth,
        future_f.intrinsics,
        future_f.cam_to_world,
        memory_f.depth,
        memory_f.intrinsics,
        memory_f.cam_to_world,
        context_f.depth,
        context_f.intrinsics,
        context_f.cam_to_world,
        memory_valid=memory_f.valid,
        return_masks=True,
    )
    return WindowBatch(context_f, future_f, memory_f, shuffled, coverage, mask)


def select(batch: WindowBatch, index: Tensor) -> WindowBatch:
    """The windows ``index`` (int64) of a batch."""
    return WindowBatch(
        batch.context.rows(index),
        batch.future.rows(index),
        batch.memory.rows(index),
        batch.shuffled.rows(index),
        batch.coverage[index],
        batch.memory_only[index],
    )
