"""HDF5 shards: one file per scene and episode range, written atomically, read lazily.

A shard holds one group per episode:

=================  =====================  ==========================================================
dataset            shape, dtype           meaning
=================  =====================  ==========================================================
``rgb``            (T, H, W, 3) uint8     colour frames
``depth``          (T, H, W, 1) float16   metric z-depth, metres, 0 = no hit (float32 on request)
                   or float32
``cam_to_world``   (T, 4, 4) float32      camera poses (OpenCV camera axes, y-up world, metres)
``intrinsics``     (T, 3, 3) float32      ``K`` in pixels
``actions``        (T,) int64             ``actions[t]`` is taken after frame ``t`` and leads to
                                          frame ``t + 1``; the last entry is ``0`` (stop) if the
                                          policy ended the episode, :data:`NO_ACTION` if it was cut
``collided``       (T,) bool              whether ``actions[t]`` was blocked by an obstacle
=================  =====================  ==========================================================

Frame 0 is the observation right after the agent was placed. Episode attributes hold the scene
id, the episode index, the number of frames, a SHA-256 content hash and JSON metadata (policy,
seed, start pose, ...).

Why HDF5: a single self-describing file per shard with chunked, compressed arrays gives random
access to any frame range of any episode without reading the rest; h5py is a mature, widely
packaged library, the files open in any HDF5 tool, and a shard is one file that can be written
atomically (temporary name, fsync, rename). zarr would spread a shard over many small files,
which makes atomic writes and copying between machines harder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    pass
from worldsim.data.format import (
    _ARRAYS,
    COMPRESSIONS,
    DEPTH_DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    DataFormatError,
    Episode,
    check_choice,
    commit_file,
    parse_shard_name,
    shard_name,
    temporary_path,
)


# ================================================================================== shards
def write_shard(
    path: str | Path,
    episodes: Sequence[Episode],
    *,
    depth_dtype: str = "float16",
    compression: str = "lzf",
    frames_per_chunk: int = 4,
) -> int:
    """Write the episodes of one scene to a shard, atomically.

    Args:
        path: the shard's path; its name must be :func:`shard_name` of the episodes' scene and
            their contiguous episode range.
        episodes: the episodes, in episode order, all of one scene and resolution.
        depth_dtype: ``"float16"`` (half the bytes, about 4 mm resolution at 10 m) or
            ``"float32"``.
        compression: HDF5 filter of the frame arrays: ``"lzf"`` (fast), ``"gzip"`` (smaller,
            slower) or ``"none"``.
        frames_per_chunk: frames per HDF5 chunk, >= 1; a clip read touches
            ``ceil(frames / frames_per_chunk)`` chunks.

    Returns:
        The shard's size in bytes.

    Raises:
        ValueError: if the name does not match the episodes, or for invalid settings.
    """
    path = Path(path)
    check_choice("depth_dtype", depth_dtype, DEPTH_DTYPES)
    check_choice("compression", compression, COMPRESSIONS)
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    if not episodes:
        raise ValueError(f"shard {path} needs at least one episode")
    scene_id = episodes[0].scene_id
    indices = [int(e.episode) for e in episodes]
    start, stop = indices[0], indices[-1] + 1
    if indices != list(range(start, stop)) or any(e.scene_id != scene_id for e in episodes):
        raise ValueError(
            f"shard {path.name} needs consecutive episodes of one scene, got "
            f"{[(e.scene_id, e.episode) for e in episodes][:6]}"
        )
    if path.name != shard_name(scene_id, start, stop):
        raise ValueError(
            f"shard path {path} does not match its episodes: expected name "
            f"{shard_name(scene_id, start, stop)!r}"
        )
    filters = {} if compression == "none" else {"compression": compression}
    temporary = temporary_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(temporary, "w") as file:
            file.attrs.update(
                {
                    "format": FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "scene_id": scene_id,
                    "episode_start": start,
                    "episode_stop": stop,
                }
            )
            for episode in episodes:
                _write_episode(
                    file, episode.with_depth_dtype(depth_dtype), filters, frames_per_chunk
                )
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.stat().st_size


def _write_episode(
    file: h5py.File, episode: Episode, filters: dict[str, str], frames_per_chunk: int
) -> None:
    group = file.create_group(f"episodes/{episode.episode:06d}")
    group.attrs.update(
        {
            "scene_id": episode.scene_id,
            "episode": int(episode.episode),
            "num_frames": episode.num_frames,
            "content_hash": episode.content_hash(),
            "metadata": json.dumps(dict(episode.metadata), sort_keys=True),
        }
    )
    for name in ("rgb", "depth"):
        array = getattr(episode, name)
        chunks = (min(frames_per_chunk, len(array)), *array.shape[1:])
        group.create_dataset(name, data=array, chunks=chunks, **filters)
    for name in ("cam_to_world", "intrinsics", "actions", "collided"):
        group.create_dataset(name, data=getattr(episode, name))


def _take_frames(dataset: h5py.Dataset, frames: np.ndarray) -> np.ndarray:
    """``dataset[frames]`` for sorted indices, reading each needed chunk once with a slice.

    h5py's own point selection is slow for scattered frames; slices of whole chunks are not.
    Unchunked (small) arrays are read whole.
    """
    if dataset.chunks is None:
        return dataset[()][frames]
    chunk = dataset.chunks[0]
    out = np.empty((len(frames), *dataset.shape[1:]), dtype=dataset.dtype)
    for block in np.unique(frames // chunk):
        low = int(block) * chunk
        block_frames = dataset[low : low + chunk]
        chosen = (frames >= low) & (frames < low + chunk)
        out[chosen] = block_frames[frames[chosen] - low]
    return out


@dataclass(frozen=True)
class EpisodeInfo:
    """Where an episode is stored and what it is, without its frames.

    Attributes:
        shard: path of the shard file.
        scene_id: scene of the episode.
        episode: index of the episode within its scene.
        num_frames: number of frames T.
        height: image rows H.
        width: image columns W.
        content_hash: SHA-256 of the episode's content (see :meth:`Episode.content_hash`).
        metadata: the episode's JSON metadata.
    """

    shard: Path
    scene_id: str
    episode: int
    num_frames: int
    height: int
    width: int
    content_hash: str
    metadata: Mapping[str, Any]


class ShardReader:
    """Read access to one shard, checked on opening.

    Args:
        path: the shard's path.

    Raises:
        DataFormatError: for a missing, truncated, foreign or other-version file, or one whose
            content does not match its name; the message names the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataFormatError(f"shard {self.path} is missing")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise DataFormatError(
                f"shard {self.path} cannot be opened as HDF5 (truncated or not a shard: {error}); "
                "delete it and rerun the collector to write it again"
            ) from error
        try:
            self.episodes = self._check()
        except Exception:
            self._file.close()
            raise

    def _check(self) -> list[EpisodeInfo]:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise DataFormatError(
                f"shard {self.path} is not a {FORMAT_NAME} shard (no matching 'format' attribute)"
            )
        if attrs.get("format_version") != FORMAT_VERSION:
            raise DataFormatError(
                f"shard {self.path} has format version {attrs.get('format_version')!r}; this "
                f"library reads version {FORMAT_VERSION} only"
            )
        scene_id, start, stop = parse_shard_name(self.path.name)
        stored = (attrs.get("scene_id"), attrs.get("episode_start"), attrs.get("episode_stop"))
        if stored != (scene_id, start, stop):
            raise DataFormatError(
                f"shard {self.path} holds scene/episodes {stored}, but its name says "
                f"{(scene_id, start, stop)}"
            )
        episodes = []
        for index in range(start, stop):
            key = f"episodes/{index:06d}"
            if key not in self._file:
                raise DataFormatError(f"shard {self.path} lacks episode {index} ({key})")
            group = self._file[key]
            missing = [name for name in _ARRAYS if name not in group]
            if missing:
                raise DataFormatError(f"shard {self.path}, episode {index}: no arrays {missing}")
            num_frames = int(group.attrs["num_frames"])
            lengths = {name: group[name].shape[0] for name in _ARRAYS}
            if set(lengths.values()) != {num_frames}:
                raise DataFormatError(
                    f"shard {self.path}, episode {index}: array lengths {lengths} disagree with "
                    f"num_frames = {num_frames}"
                )
            episodes.append(
                EpisodeInfo(
                    shard=self.path,
                    scene_id=scene_id,
                    episode=index,
                    num_frames=num_frames,
                    height=int(group["rgb"].shape[1]),
                    width=int(group["rgb"].shape[2]),
                    content_hash=str(group.attrs["content_hash"]),
                    metadata=json.loads(group.attrs["metadata"]),
                )
            )
        return episodes

    def read_frames(
        self, episode: int, frames: slice | np.ndarray, names: Sequence[str] = _ARRAYS
    ) -> dict[str, np.ndarray]:
        """Arrays of some frames of an episode, as stored.

        Args:
            episode: episode index within the scene.
            frames: a slice, or (F,) strictly increasing frame indices.
            names: which arrays of :class:`Episode` to read (default: all).

        Returns:
            The arrays named (``rgb``, ``depth``, ...) restricted to ``frames``.

        Raises:
            DataFormatError: if the stored data cannot be read (a damaged file).
        """
        group = self._group(episode)
        unknown = sorted(set(names) - set(_ARRAYS))
        if unknown:
            raise ValueError(f"unknown arrays {unknown}: allowed are {list(_ARRAYS)}")
        if isinstance(frames, np.ndarray) and len(frames) == 0:
            return {name: group[name][:0] for name in names}
        try:
            if isinstance(frames, slice):
                return {name: group[name][frames] for name in names}
            return {name: _take_frames(group[name], np.asarray(frames)) for name in names}
        except OSError as error:
            raise DataFormatError(
                f"shard {self.path}, episode {episode}: stored data is unreadable ({error}); "
                "delete the shard and rerun the collector"
            ) from error

    def read_episode(self, episode: int) -> Episode:
        """A whole episode, with its metadata."""
        group = self._group(episode)
        arrays = self.read_frames(episode, slice(None))
        return Episode(
            scene_id=str(group.attrs["scene_id"]),
            episode=int(group.attrs["episode"]),
            metadata=json.loads(group.attrs["metadata"]),
            **arrays,
        )

    def verify(self) -> None:
        """Re-hash every episode and compare with the stored hashes.

        Raises:
            DataFormatError: naming the first episode whose content changed.
        """
        for info in self.episodes:
            actual = self.read_episode(info.episode).content_hash()
            if actual != info.content_hash:
                raise DataFormatError(
                    f"shard {self.path}, episode {info.episode}: content hash {actual[:12]} does "
                    f"not match the stored {info.content_hash[:12]} (damaged data)"
                )

    def _group(self, episode: int) -> h5py.Group:
        key = f"episodes/{episode:06d}"
        if key not in self._file:
            available = [info.episode for info in self.episodes]
            raise KeyError(f"shard {self.path} has no episode {episode}; it has {available}")
        return self._file[key]

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
