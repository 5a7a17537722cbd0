"""A torch ``Dataset`` of clips: context frames, actions, the future chunk and memory frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset, WeightedRandomSampler

if TYPE_CHECKING:
    from worldsim.data.latents import LatentCache
from worldsim.data.revisits import RevisitConfig, revisit_sources
from worldsim.data.shards import EpisodeInfo
from worldsim.data.store import TrajectoryStore


# ================================================================================== clips
@dataclass(frozen=True)
class ClipConfig:
    """Which clips a :class:`ClipDataset` cuts from the trajectories.

    A clip starting at frame ``start`` has ``T = n_context + n_future`` consecutive frames
    ``start .. start + T - 1`` and the ``T - 1`` actions between them. Its memory is up to
    ``max_memory_frames`` of the frames ``0 .. start - 1`` before it, spread evenly over that
    range (both ends included; all of them when there are fewer).

    Attributes:
        n_context: frames the model sees, >= 1.
        n_future: frames to predict, >= 1.
        clip_stride: spacing of clip starts within an episode, frames, >= 1.
        max_memory_frames: most earlier frames per clip, >= 0.
        min_memory_frames: clips with fewer earlier frames are left out, in [0, start].
        revisit_only: keep only *revisit* clips, whose future frames revisit (see
            :class:`RevisitConfig`) a frame before the clip.
        revisit: the revisit rule.
    """

    n_context: int = 4
    n_future: int = 8
    clip_stride: int = 1
    max_memory_frames: int = 32
    min_memory_frames: int = 0
    revisit_only: bool = False
    revisit: RevisitConfig = field(default_factory=RevisitConfig)

    def __post_init__(self) -> None:
        for name in ("n_context", "n_future", "clip_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_memory_frames < 0:
            raise ValueError(f"max_memory_frames must be >= 0, got {self.max_memory_frames}")
        if not 0 <= self.min_memory_frames <= max(self.max_memory_frames, 0) or (
            self.min_memory_frames > 0 and self.max_memory_frames == 0
        ):
            raise ValueError(
                f"min_memory_frames must be in [0, max_memory_frames={self.max_memory_frames}], "
                f"got {self.min_memory_frames}"
            )

    @property
    def clip_length(self) -> int:
        """Frames per clip, ``n_context + n_future``."""
        return self.n_context + self.n_future


def episode_keys(store: TrajectoryStore) -> list[str]:
    """``scene_id/episode/num_frames`` of every episode of a store, in store order."""
    return [f"{info.scene_id}/{info.episode}/{info.num_frames}" for info in store.episodes]


def memory_frame_indices(start: int, max_frames: int) -> np.ndarray:
    """Indices of the memory frames of a clip starting at ``start``.

    Returns:
        (S,) int64 strictly increasing indices in ``[0, start)``, ``S = min(start, max_frames)``,
        evenly spread with both ends included.
    """
    count = min(start, max_frames)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count == 1:
        return np.array([start - 1], dtype=np.int64)
    # floor(x + 0.5) is monotone with unit steps, so a spacing >= 1 keeps indices distinct.
    return np.floor(np.linspace(0, start - 1, count) + 0.5).astype(np.int64)


def frames_to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Stored frame arrays to the channels-first float tensors models consume.

    This is the one place where numpy (H, W, C) frames become torch (C, H, W) tensors.

    Args:
        arrays: ``rgb`` (F, H, W, 3) uint8, ``depth`` (F, H, W, 1) float, ``cam_to_world``
            (F, 4, 4), ``intrinsics`` (F, 3, 3).

    Returns:
        ``rgb`` (F, 3, H, W) float32 in [0, 1], ``depth`` (F, 1, H, W) float32 metres,
        ``cam_to_world`` (F, 4, 4) float32, ``intrinsics`` (F, 3, 3) float32.
    """
    rgb = torch.from_numpy(np.ascontiguousarray(arrays["rgb"])).float() / 255.0
    depth = torch.from_numpy(np.ascontiguousarray(arrays["depth"])).float()
    return {
        "rgb": rearrange(rgb, "f h w c -> f c h w").contiguous(),
        "depth": rearrange(depth, "f h w c -> f c h w").contiguous(),
        "cam_to_world": torch.from_numpy(np.asarray(arrays["cam_to_world"], np.float32)),
        "intrinsics": torch.from_numpy(np.asarray(arrays["intrinsics"], np.float32)),
    }


class ClipDataset(Dataset):
    """Clips of recorded trajectories for training and evaluating the world model.

    Item ``i`` is a dict (no batch dimension; :func:`collate_clips` adds it):

    - ``rgb`` (T, 3, H, W) float32 in [0, 1], ``T = n_context + n_future`` consecutive frames
    - ``depth`` (T, 1, H, W) float32 metres, 0 = no hit
    - ``cam_to_world`` (T, 4, 4) float32, ``intrinsics`` (T, 3, 3) float32
    - ``actions`` (T - 1,) int64, ``actions[t]`` leads from frame ``t`` to ``t + 1``
    - ``memory_rgb`` (S, 3, H, W), ``memory_depth`` (S, 1, H, W), ``memory_cam_to_world``
      (S, 4, 4), ``memory_intrinsics`` (S, 3, 3): earlier frames (see :class:`ClipConfig`),
      ``S <= max_memory_frames`` varies between items; ``memory_mask`` (S,) bool, all True
    - ``scene_id`` str, ``episode`` int64 scalar, ``start`` int64 scalar (first clip frame)
    - ``latents`` (T, C, h, w) float32, only with a latent cache: the clip's frames as the
      model's VAE encodes them (see :mod:`worldsim.data.latents`)

    Args:
        root: dataset folder (see the module docstring), or an open :class:`TrajectoryStore`.
        config: clip settings.
        allow_incomplete: read a dataset whose collection has not finished (with a warning).
        latents: a :class:`~worldsim.data.latents.LatentCache` of this data set, or None.

    Raises:
        DataFormatError: a bad dataset (see :class:`TrajectoryStore`).
        ValueError: if no trajectory is long enough for one clip, or ``revisit_only`` leaves
            no clip; the message names the dataset and the numbers.
    """

    def __init__(
        self,
        root: str | Path | TrajectoryStore,
        config: ClipConfig | None = None,
        *,
        allow_incomplete: bool = False,
        latents: LatentCache | None = None,
    ) -> None:
        self.config = config or ClipConfig()
        self.store = (
            root
            if isinstance(root, TrajectoryStore)
            else TrajectoryStore(root, allow_incomplete=allow_incomplete)
        )
        if latents is not None and latents.episodes != episode_keys(self.store):
            raise ValueError(
                f"the latent cache holds {len(latents.episodes)} episodes of another data set "
                f"than {self.store.root} ({len(self.store.episodes)} episodes): build the cache "
                "from this data set"
            )
        self.latents = latents
        length = self.config.clip_length
        longest = max((info.num_frames for info in self.store.episodes), default=0)
        first_start = self.config.min_memory_frames
        if first_start + length > longest:
            raise ValueError(
                f"clips of {length} frames (n_context + n_future) after at least "
                f"{first_start} memory frames need trajectories of {first_start + length} "
                f"frames, but the longest in {self.store.root} has {longest}; use shorter clips "
                "or collect longer episodes"
            )
        episode_ids, starts = [], []
        self.num_short_episodes = 0
        """Episodes too short for a single clip (they contribute nothing)."""
        for index, info in enumerate(self.store.episodes):
            clip_starts = np.arange(
                first_start, info.num_frames - length + 1, self.config.clip_stride
            )
            if len(clip_starts) == 0:
                self.num_short_episodes += 1
                continue
            episode_ids.append(np.full(len(clip_starts), index, dtype=np.int64))
            starts.append(clip_starts)
        self._episodes = np.concatenate(episode_ids)
        self._starts = np.concatenate(starts).astype(np.int64)
        self._is_revisit: np.ndarray | None = None
        if self.config.revisit_only:
            revisit = self.is_revisit
            if not revisit.any():
                raise ValueError(
                    f"no revisit clips in {self.store.root} for {self.config.revisit} "
                    f"({len(self._starts)} clips in all); collect with revisiting policies or "
                    "relax the revisit rule"
                )
            self._episodes, self._starts = self._episodes[revisit], self._starts[revisit]
            self._is_revisit = revisit[revisit]

    @property
    def is_revisit(self) -> np.ndarray:
        """(N,) bool: whether each clip is a revisit clip (computed from poses on first use)."""
        if self._is_revisit is None:
            flags = np.zeros(len(self._starts), dtype=bool)
            for index in np.unique(self._episodes):
                chosen = self._episodes == index
                flags[chosen] = self._revisit_clips(int(index), self._starts[chosen])
            self._is_revisit = flags
        return self._is_revisit

    def _revisit_clips(self, index: int, starts: np.ndarray) -> np.ndarray:
        """(C,) bool: whether each clip's future frames revisit a frame before the clip."""
        info = self.store.episodes[index]
        poses = self.store.read_frames(index, slice(None), ("cam_to_world", "intrinsics"))
        sources = revisit_sources(
            poses["cam_to_world"], poses["intrinsics"], info.height, info.width, self.config.revisit
        )
        # A clip revisits if some future frame's earliest source lies before the clip's start.
        earliest = np.where(sources < 0, np.iinfo(np.int64).max, sources)
        first_future = starts + self.config.n_context
        windows = np.stack([earliest[first_future + k] for k in range(self.config.n_future)])
        return windows.min(axis=0) < starts

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        episode_index, start = int(self._episodes[index]), int(self._starts[index])
        info = self.store.episodes[episode_index]
        stop = start + self.config.clip_length
        clip = self.store.read_frames(episode_index, slice(start, stop))
        memory_indices = memory_frame_indices(start, self.config.max_memory_frames)
        memory = self.store.read_frames(episode_index, memory_indices)
        item: dict[str, Any] = frames_to_tensors(clip)
        item["actions"] = torch.from_numpy(clip["actions"][:-1].astype(np.int64))
        for name, tensor in frames_to_tensors(memory).items():
            item[f"memory_{name}"] = tensor
        item["memory_mask"] = torch.ones(len(memory_indices), dtype=torch.bool)
        item["scene_id"] = info.scene_id
        item["episode"] = torch.tensor(info.episode, dtype=torch.int64)
        item["start"] = torch.tensor(start, dtype=torch.int64)
        if self.latents is not None:
            item["latents"] = self.latents.frames(episode_index, start, stop)
        return item

    def clip_location(self, index: int) -> tuple[EpisodeInfo, int]:
        """The episode and the first frame of clip ``index``."""
        return self.store.episodes[int(self._episodes[index])], int(self._starts[index])

    def revisit_sampler(
        self, revisit_probability: float, num_samples: int, generator: torch.Generator
    ) -> WeightedRandomSampler:
        """A sampler that draws revisit clips with probability ``revisit_probability``.

        Args:
            revisit_probability: chance that a drawn clip is a revisit clip, in [0, 1].
            num_samples: clips per epoch, >= 1.
            generator: the random source.

        Raises:
            ValueError: for a probability outside [0, 1], or if the requested kind of clip
                does not exist in the dataset.
        """
        if not 0.0 <= revisit_probability <= 1.0:
            raise ValueError(f"revisit_probability must be in [0, 1], got {revisit_probability}")
        count = int(self.is_revisit.sum())
        if (revisit_probability > 0 and count == 0) or (
            revisit_probability < 1 and count == len(self)
        ):
            raise ValueError(
                f"cannot draw revisit clips with probability {revisit_probability}: "
                f"{count} of {len(self)} clips are revisit clips"
            )
        weights = np.where(
            self.is_revisit,
            revisit_probability / max(count, 1),
            (1.0 - revisit_probability) / max(len(self) - count, 1),
        )
        return WeightedRandomSampler(
            torch.from_numpy(weights), num_samples, replacement=True, generator=generator
        )


_MEMORY_KEYS = ("memory_rgb", "memory_depth", "memory_cam_to_world", "memory_intrinsics")


def collate_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch clips from :class:`ClipDataset`, padding memories to the longest one.

    Padded memory slots have ``memory_mask == False``, zero images, identity poses and the
    clip's first intrinsics (so geometry on them stays finite).

    Args:
        items: clips with equal ``T``, ``H`` and ``W``.

    Returns:
        The batch described in :class:`ClipDataset` with a leading ``B``; memory arrays are
        (B, S, ...) with ``S`` the largest memory in the batch; ``scene_id`` is a list of str,
        ``episode`` and ``start`` are (B,) int64.
    """
    if not items:
        raise ValueError("cannot collate an empty list of clips")
    batch: dict[str, Any] = {
        name: torch.stack([item[name] for item in items])
        for name in ("rgb", "depth", "cam_to_world", "intrinsics", "actions", "episode", "start")
    }
    batch["scene_id"] = [item["scene_id"] for item in items]
    with_latents = ["latents" in item for item in items]
    if any(with_latents):
        if not all(with_latents):
            raise ValueError("some clips carry latents and some do not: use one latent cache")
        batch["latents"] = torch.stack([item["latents"] for item in items])
    slots = max(len(item["memory_mask"]) for item in items)
    size, height, width = len(items), *items[0]["rgb"].shape[-2:]
    memory = {
        "memory_rgb": torch.zeros(size, slots, 3, height, width),
        "memory_depth": torch.zeros(size, slots, 1, height, width),
        "memory_cam_to_world": torch.eye(4).repeat(size, slots, 1, 1),
        "memory_intrinsics": torch.stack([item["intrinsics"][0] for item in items])[:, None]
        .repeat(1, slots, 1, 1)
        .clone(),
        "memory_mask": torch.zeros(size, slots, dtype=torch.bool),
    }
    for b, item in enumerate(items):
        count = len(item["memory_mask"])
        for name in (*_MEMORY_KEYS, "memory_mask"):
            memory[name][b, :count] = item[name]
    batch.update(memory)
    return batch
