"""A torch ``Dataset`` of clips: context frames, actions, the future chunk and memory frames.

Clips are drawn so that the memory is needed. Each clip's *memory coverage*, the share of its
future pixels that earlier frames see and its context does not (:func:`clip_coverage`, by depth
consistency on a 16x16 subsample of the pixels), is measured once per data set and clip setting
and cached beside the data (``ROOT/coverage/clips-<settings>.npz``, rebuilt when the episodes
change). Memories hold the earlier frames that see most of those pixels
(:func:`overlap_memory_indices`), and :meth:`ClipDataset.clip_sampler` draws memory-dependent
clips and clips with an emptied memory in the shares :class:`ClipConfig` asks for.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from worldsim.data.latents import LatentCache
from worldsim.data.format import commit_file, temporary_path
from worldsim.data.revisits import CoverageConfig, RevisitConfig, clip_coverage, revisit_sources
from worldsim.data.shards import EpisodeInfo
from worldsim.data.store import TrajectoryStore

MEMORY_SELECTIONS = ("overlap", "even")
"""Values of :attr:`ClipConfig.memory_selection`."""

COVERAGE_FORMAT = "persistent-world-clip-coverage-1"
"""Format tag of a cached coverage file."""

COVERAGE_DIR = "coverage"
"""Folder of cached clip coverage inside a data set folder."""


# ================================================================================== clips
@dataclass(frozen=True)
class ClipConfig:
    """Which clips a :class:`ClipDataset` cuts from the trajectories.

    A clip starting at frame ``start`` has ``T = n_context + n_future`` consecutive frames
    ``start .. start + T - 1`` and the ``T - 1`` actions between them. Its memory is up to
    ``max_memory_frames`` of the frames ``0 .. start - 1`` before it (all of them when there are
    fewer): with ``memory_selection="overlap"`` those that see most of the clip's memory-only
    pixels (:func:`overlap_memory_indices`), with ``"even"`` spread evenly over that range (both
    ends included, :func:`memory_frame_indices`).

    A clip is *memory-dependent* when its memory coverage (see the module docstring) is at least
    ``memory_dependent_threshold``. :meth:`ClipDataset.clip_sampler` draws, in expectation, a
    share ``empty_memory_fraction`` of clips (any clip, uniformly) with their memory emptied, a
    share ``memory_dependent_fraction`` of memory-dependent clips with their memory, and the
    rest from the other clips with their memory.

    Attributes:
        n_context: frames the model sees, >= 1.
        n_future: frames to predict, >= 1.
        clip_stride: spacing of clip starts within an episode, frames, >= 1.
        max_memory_frames: most earlier frames per clip, >= 0.
        min_memory_frames: clips with fewer earlier frames are left out, in [0, start].
        revisit_only: keep only *revisit* clips, whose future frames revisit (see
            :class:`RevisitConfig`) a frame before the clip.
        revisit: the revisit rule.
        memory_selection: ``"overlap"`` or ``"even"`` (see above).
        memory_dependent_threshold: memory coverage from which a clip is memory-dependent,
            in (0, 1].
        memory_dependent_fraction: share of drawn clips that are memory-dependent (and keep
            their memory), in [0, 1].
        empty_memory_fraction: share of drawn clips whose memory is emptied, in [0, 1],
            with ``memory_dependent_fraction + empty_memory_fraction <= 1``.
        coverage: how the memory coverage is measured.
    """

    n_context: int = 4
    n_future: int = 8
    clip_stride: int = 1
    max_memory_frames: int = 32
    min_memory_frames: int = 0
    revisit_only: bool = False
    revisit: RevisitConfig = field(default_factory=RevisitConfig)
    memory_selection: str = "overlap"
    memory_dependent_threshold: float = 0.1
    memory_dependent_fraction: float = 0.5
    empty_memory_fraction: float = 0.15
    coverage: CoverageConfig = field(default_factory=CoverageConfig)

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
        if self.memory_selection not in MEMORY_SELECTIONS:
            raise ValueError(
                f"memory_selection must be one of {MEMORY_SELECTIONS}, "
                f"got {self.memory_selection!r}"
            )
        if not 0.0 < self.memory_dependent_threshold <= 1.0:
            raise ValueError(
                "memory_dependent_threshold must be in (0, 1], "
                f"got {self.memory_dependent_threshold}"
            )
        for name in ("memory_dependent_fraction", "empty_memory_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.memory_dependent_fraction + self.empty_memory_fraction > 1.0:
            raise ValueError(
                "memory_dependent_fraction + empty_memory_fraction must be <= 1, got "
                f"{self.memory_dependent_fraction} + {self.empty_memory_fraction}"
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


def overlap_memory_indices(start: int, ranked: np.ndarray, max_frames: int) -> np.ndarray:
    """Memory frames of a clip by overlap: its best-ranked earlier frames, topped up evenly.

    Args:
        start: the clip's first frame; memory frames lie in ``[0, start)``.
        ranked: (K,) earlier frames, best first, -1 padded (a row of :func:`clip_coverage`'s
            ``picks``: a greedy cover of the clip's memory-only pixels).
        max_frames: most memory frames.

    Returns:
        (S,) int64 strictly increasing indices, ``S = min(start, max_frames)``: the first
        ranked frames, then, for the slots left, frames evenly spread (as
        :func:`memory_frame_indices`) over the earlier frames not already chosen.
    """
    count = min(start, max_frames)
    ranked = np.asarray(ranked, dtype=np.int64)
    chosen = ranked[(ranked >= 0) & (ranked < start)][:count]
    rest = np.setdiff1d(np.arange(start), chosen)
    spread = rest[memory_frame_indices(len(rest), count - len(chosen))]
    return np.sort(np.concatenate([chosen, spread]))


class ClipDraw(NamedTuple):
    """One clip drawn by :class:`ClipSampler`; ``dataset[draw]`` reads it.

    Attributes:
        index: the clip's index in the :class:`ClipDataset`.
        empty_memory: whether its memory is emptied.
    """

    index: int
    empty_memory: bool


class ClipSampler(Sampler[ClipDraw]):
    """Draws clips in three kinds, with replacement, seeded by ``generator``.

    Each draw is, independently: with probability ``empty_memory_fraction`` a clip drawn
    uniformly from all clips, its memory emptied; with probability ``memory_dependent_fraction``
    a memory-dependent clip, uniformly among them; otherwise one of the other clips, uniformly.

    Args:
        dependent: (N,) bool, which clips are memory-dependent.
        memory_dependent_fraction: in [0, 1].
        empty_memory_fraction: in [0, 1], at most ``1 - memory_dependent_fraction``.
        num_samples: draws per iteration, >= 1.
        generator: the random source; each iteration continues its stream.

    Raises:
        ValueError: for bad fractions, or a kind with a positive share and no clip.
    """

    def __init__(
        self,
        dependent: np.ndarray,
        memory_dependent_fraction: float,
        empty_memory_fraction: float,
        num_samples: int,
        generator: torch.Generator,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        other_fraction = 1.0 - memory_dependent_fraction - empty_memory_fraction
        if min(memory_dependent_fraction, empty_memory_fraction) < 0 or other_fraction < -1e-12:
            raise ValueError(
                "need fractions >= 0 with memory_dependent_fraction + empty_memory_fraction <= 1, "
                f"got {memory_dependent_fraction} and {empty_memory_fraction}"
            )
        dependent = np.asarray(dependent, dtype=bool)
        self.pools = (
            np.arange(len(dependent)),
            np.flatnonzero(dependent),
            np.flatnonzero(~dependent),
        )
        self.weights = torch.tensor(
            [empty_memory_fraction, memory_dependent_fraction, max(other_fraction, 0.0)],
            dtype=torch.float64,
        )
        for name, pool, weight in zip(
            ("any", "memory-dependent", "other"), self.pools, self.weights, strict=True
        ):
            if weight > 0 and len(pool) == 0:
                raise ValueError(
                    f"cannot draw {name} clips with probability {float(weight):.3g}: "
                    f"{len(dependent[dependent])} of {len(dependent)} clips are memory-dependent; "
                    "change memory_dependent_fraction or memory_dependent_threshold"
                )
        self.num_samples = num_samples
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[ClipDraw]:
        kinds = torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=self.generator
        ).numpy()
        uniform = torch.rand(self.num_samples, generator=self.generator, dtype=torch.float64)
        uniform = uniform.numpy()
        for kind, u in zip(kinds, uniform, strict=True):
            pool = self.pools[kind]
            index = pool[min(int(u * len(pool)), len(pool) - 1)]
            yield ClipDraw(int(index), bool(kind == 0))


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
      ``S <= max_memory_frames`` varies between items; ``memory_mask`` (S,) bool, all True.
      A memory emptied by the sampler (``dataset[ClipDraw(i, True)]``) has ``S = 0``, so a
      batch's ``memory_mask`` row is all False.
    - ``memory_coverage`` float32 scalar in [0, 1]: the clip's memory coverage (module
      docstring; a property of the clip, whichever memory it carries), for binning
    - ``memory_dropped`` bool scalar: whether its memory was emptied
    - ``scene_id`` str, ``episode`` int64 scalar, ``start`` int64 scalar (first clip frame)
    - ``latents`` (T, C, h, w) float32, only with a latent cache: the clip's frames as the
      model's VAE encodes them (see :mod:`worldsim.data.latents`)

    Args:
        root: dataset folder (see the module docstring), or an open :class:`TrajectoryStore`.
        config: clip settings.
        allow_incomplete: read a dataset whose collection has not finished (with a warning).
        latents: a :class:`~worldsim.data.latents.LatentCache` of this data set, or None.
        coverage_cache: file of the cached memory coverage; None =
            ``ROOT/coverage/clips-<digest of the clip settings>.npz``. It is measured on first
            use (about 3.5 ms per frame on one CPU core: 4 min for 73k 64x64 frames; a progress
            bar shows in a terminal) and rebuilt when the data set's episodes change. Touch
            :attr:`memory_coverage` before starting ``DataLoader`` workers so they do not each
            measure it.
        coverage_workers: processes that measure the coverage, episode by episode, >= 1
            (1 = in this process; the result does not depend on it).

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
        coverage_cache: str | Path | None = None,
        coverage_workers: int = 1,
    ) -> None:
        if coverage_workers < 1:
            raise ValueError(f"coverage_workers must be >= 1, got {coverage_workers}")
        self.coverage_workers = coverage_workers
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
        self.coverage_cache = (
            Path(coverage_cache)
            if coverage_cache is not None
            else self.store.root / COVERAGE_DIR / f"clips-{self._settings_digest()[:16]}.npz"
        )
        self._coverage: tuple[np.ndarray, np.ndarray] | None = None

    def _settings_digest(self) -> str:
        """SHA-256 of the settings the cached coverage depends on (names its file)."""
        config = self.config
        settings = {
            "format": COVERAGE_FORMAT,
            "n_context": config.n_context,
            "n_future": config.n_future,
            "clip_stride": config.clip_stride,
            "min_memory_frames": config.min_memory_frames,
            "revisit_only": config.revisit_only,
            "revisit": asdict(config.revisit) if config.revisit_only else None,
            "coverage": repr(config.coverage),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def _data_fingerprint(self) -> str:
        """SHA-256 of the settings, every episode's content hash and the clip list."""
        digest = hashlib.sha256(self._settings_digest().encode())
        for info in self.store.episodes:
            digest.update(f"{info.scene_id}/{info.episode}/{info.content_hash}\n".encode())
        digest.update(self._episodes.tobytes())
        digest.update(self._starts.tobytes())
        return digest.hexdigest()

    @property
    def memory_coverage(self) -> np.ndarray:
        """(N,) float32 in [0, 1]: each clip's memory coverage (cached; see the class)."""
        return self._coverage_index()[0]

    @property
    def memory_ranking(self) -> np.ndarray:
        """(N, K) int64: each clip's earlier frames by greedy cover, -1 padded."""
        return self._coverage_index()[1]

    @property
    def is_memory_dependent(self) -> np.ndarray:
        """(N,) bool: memory coverage >= ``config.memory_dependent_threshold``."""
        return self.memory_coverage >= self.config.memory_dependent_threshold

    def _coverage_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._coverage is None:
            fingerprint = self._data_fingerprint()
            self._coverage = self._read_coverage(fingerprint)
            if self._coverage is None:
                self._coverage = self._measure_coverage()
                self._write_coverage(fingerprint)
        return self._coverage

    def _read_coverage(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached index if its file exists and belongs to these clips, else None."""
        if not self.coverage_cache.is_file():
            return None
        try:
            with np.load(self.coverage_cache, allow_pickle=False) as stored:
                if str(stored["format"]) != COVERAGE_FORMAT:
                    return None
                if str(stored["fingerprint"]) != fingerprint:
                    return None  # the data or the clips changed: stale
                coverage, ranking = stored["coverage"], stored["ranking"]
        except (OSError, ValueError, KeyError) as error:
            warnings.warn(
                f"re-measuring clip coverage: {self.coverage_cache} is unreadable ({error})",
                stacklevel=3,
            )
            return None
        if coverage.shape != (len(self),) or ranking.shape[0] != len(self):
            return None
        return coverage.astype(np.float32), ranking.astype(np.int64)

    def _write_coverage(self, fingerprint: str) -> None:
        """Save the index atomically; warn (and keep it in memory) if the folder is read-only."""
        coverage, ranking = self._coverage_index()
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(COVERAGE_FORMAT),
            fingerprint=np.array(fingerprint),
            coverage=coverage,
            ranking=ranking.astype(np.int32),
        )
        path = self.coverage_cache
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = temporary_path(path)
            temporary.write_bytes(buffer.getvalue())
            commit_file(temporary, path)
        except OSError as error:
            warnings.warn(f"clip coverage not cached at {path} ({error})", stacklevel=3)

    def _measure_coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """Measure every clip's coverage and memory ranking, episode by episode."""
        config = self.config
        coverage = np.zeros(len(self), dtype=np.float32)
        ranking = np.full((len(self), config.coverage.candidates), -1, dtype=np.int64)
        episodes = [int(index) for index in np.unique(self._episodes)]
        chosen = {index: np.flatnonzero(self._episodes == index) for index in episodes}
        jobs = [(self.store, index, self._starts[chosen[index]], config) for index in episodes]
        total = sum(self.store.episodes[index].num_frames for index in episodes)
        parallel = self.coverage_workers > 1
        pool = (
            ProcessPoolExecutor(self.coverage_workers, initializer=_one_thread)
            if parallel
            else nullcontext()
        )
        bar = tqdm(total=total, desc="clip coverage", unit="frame", disable=None)
        with pool, bar:
            mapping = pool.map if parallel else map
            results = mapping(_episode_coverage, jobs)
            for index, (clip_coverage_, picks) in zip(episodes, results, strict=True):
                coverage[chosen[index]], ranking[chosen[index]] = clip_coverage_, picks
                bar.update(self.store.episodes[index].num_frames)
        return coverage, ranking

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

    def memory_indices(self, index: int) -> np.ndarray:
        """(S,) int64 increasing frames of clip ``index``'s memory (see :class:`ClipConfig`)."""
        start, limit = int(self._starts[index]), self.config.max_memory_frames
        if self.config.memory_selection == "even":
            return memory_frame_indices(start, limit)
        return overlap_memory_indices(start, self.memory_ranking[index], limit)

    def __getitem__(self, index: int | ClipDraw | tuple[int, bool]) -> dict[str, Any]:
        index, empty_memory = (
            (int(index[0]), bool(index[1])) if isinstance(index, tuple) else (index, False)
        )
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        episode_index, start = int(self._episodes[index]), int(self._starts[index])
        info = self.store.episodes[episode_index]
        stop = start + self.config.clip_length
        clip = self.store.read_frames(episode_index, slice(start, stop))
        memory_indices = np.zeros(0, dtype=np.int64) if empty_memory else self.memory_indices(index)
        memory = self.store.read_frames(episode_index, memory_indices)
        item: dict[str, Any] = frames_to_tensors(clip)
        item["actions"] = torch.from_numpy(clip["actions"][:-1].astype(np.int64))
        for name, tensor in frames_to_tensors(memory).items():
            item[f"memory_{name}"] = tensor
        item["memory_mask"] = torch.ones(len(memory_indices), dtype=torch.bool)
        item["memory_coverage"] = torch.tensor(float(self.memory_coverage[index]))
        item["memory_dropped"] = torch.tensor(empty_memory)
        item["scene_id"] = info.scene_id
        item["episode"] = torch.tensor(info.episode, dtype=torch.int64)
        item["start"] = torch.tensor(start, dtype=torch.int64)
        if self.latents is not None:
            item["latents"] = self.latents.frames(episode_index, start, stop)
        return item

    def clip_location(self, index: int) -> tuple[EpisodeInfo, int]:
        """The episode and the first frame of clip ``index``."""
        return self.store.episodes[int(self._episodes[index])], int(self._starts[index])

    def clip_sampler(self, num_samples: int, generator: torch.Generator) -> ClipSampler:
        """A sampler with the shares of memory-dependent and emptied-memory clips of the config.

        Use it as ``DataLoader(dataset, sampler=dataset.clip_sampler(n, generator), ...)``; it
        yields :class:`ClipDraw` keys (see :class:`ClipSampler`).

        Args:
            num_samples: clips per epoch, >= 1.
            generator: the random source.

        Raises:
            ValueError: if a kind of clip with a positive share does not exist in the dataset.
        """
        return ClipSampler(
            self.is_memory_dependent,
            self.config.memory_dependent_fraction,
            self.config.empty_memory_fraction,
            num_samples,
            generator,
        )

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
        ``episode`` and ``start`` are (B,) int64, ``memory_coverage`` (B,) float32 and
        ``memory_dropped`` (B,) bool.
    """
    if not items:
        raise ValueError("cannot collate an empty list of clips")
    names = ("rgb", "depth", "cam_to_world", "intrinsics", "actions", "episode", "start")
    names += tuple(
        name
        for name in ("memory_coverage", "memory_dropped")
        if all(name in item for item in items)
    )
    batch: dict[str, Any] = {name: torch.stack([item[name] for item in items]) for name in names}
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


def _one_thread() -> None:
    """Worker initializer: one torch thread per coverage process (they run side by side)."""
    torch.set_num_threads(1)


def _episode_coverage(
    job: tuple[TrajectoryStore, int, np.ndarray, ClipConfig],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clip_coverage` of the clips ``starts`` of one episode of ``store``."""
    store, index, starts, config = job
    arrays = store.read_frames(index, slice(None), ("depth", "cam_to_world", "intrinsics"))
    return clip_coverage(
        arrays["depth"],
        arrays["cam_to_world"],
        arrays["intrinsics"],
        starts,
        config.n_context,
        config.n_future,
        config.coverage,
    )
