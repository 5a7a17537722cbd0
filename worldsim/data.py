"""Trajectory data: the on-disk format, view overlap (revisits), and a torch ``Dataset`` of clips.

A *dataset* is a folder::

    ROOT/manifest.json              settings that determine the content (simulator, policies, seed),
                                    format name and version
    ROOT/plans/<name>.json          the shards one collection run (a scene range) is to write, and
                                    whether it finished
    ROOT/shards/<scene>__e<a>-<b>.h5   HDF5 shard: episodes ``a .. b-1`` of one scene

Each shard is written to a temporary file in the same folder, flushed to disk and renamed into
place, so a file with a shard's name is always complete. A shard holds one group per episode:

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

Revisits are judged from camera poses alone (:func:`frustum_overlap`): a frame *revisits* an
earlier one when enough of its view frustum (truncated to a working range) lies inside the
earlier camera's frustum. The collector's summary and the clip dataset's revisit sampling both
use :func:`revisit_sources`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset, WeightedRandomSampler

from worldsim.geometry import NUM_ACTIONS, invert_rigid, transform_points, unproject_depth

if TYPE_CHECKING:
    from worldsim.latents import LatentCache

FORMAT_NAME = "persistent-world-trajectories"
"""Value of the ``format`` attribute of every shard, manifest and plan."""
FORMAT_VERSION = 1
"""Version of the on-disk format; readers refuse any other."""
MANIFEST_NAME = "manifest.json"
"""File name of a dataset's manifest, inside its root folder."""
SHARD_DIR = "shards"
"""Sub-folder of a dataset root that holds the shards."""
PLAN_DIR = "plans"
"""Sub-folder of a dataset root that holds the collection plans."""
SHARD_SUFFIX = ".h5"
"""File name suffix of shards."""
TEMP_SUFFIX = ".tmp"
"""File name suffix of shards (or JSON files) being written."""
NO_ACTION = -1
"""Action recorded after the last frame of an episode that was cut at its length limit."""
DEPTH_DTYPES = ("float16", "float32")
"""Allowed storage dtypes of depth."""
COMPRESSIONS = ("lzf", "gzip", "none")
"""Allowed HDF5 compression filters of frame arrays."""

_SCENE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHARD_NAME_PATTERN = re.compile(r"^(?P<scene>.+)__e(?P<start>\d{6})-(?P<stop>\d{6})\.h5$")
_ARRAYS = ("rgb", "depth", "cam_to_world", "intrinsics", "actions", "collided")


class DataFormatError(ValueError):
    """A dataset file is missing, truncated, foreign or of another format version."""


# ================================================================================== episodes
@dataclass(frozen=True, eq=False)
class Episode:
    """One recorded trajectory.

    Attributes:
        scene_id: scene the episode was recorded in (letters, digits, ``.``, ``_``, ``-``).
        episode: index of the episode within its scene, >= 0.
        rgb: (T, H, W, 3) uint8 colour frames.
        depth: (T, H, W, 1) float16 or float32 metric z-depth in metres, finite, >= 0.
        cam_to_world: (T, 4, 4) float32 camera poses.
        intrinsics: (T, 3, 3) float32 ``K`` in pixels.
        actions: (T,) int64; ``actions[t]`` is taken after frame ``t``. Entries ``0 .. T-2``
            are action ids; the last is ``0`` (the policy stopped) or :data:`NO_ACTION`.
        collided: (T,) bool, whether ``actions[t]`` was blocked by an obstacle.
        metadata: JSON-serialisable facts about the episode (policy, seed, start pose, ...).
    """

    scene_id: str
    episode: int
    rgb: np.ndarray
    depth: np.ndarray
    cam_to_world: np.ndarray
    intrinsics: np.ndarray
    actions: np.ndarray
    collided: np.ndarray
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_scene_id(self.scene_id)
        if not isinstance(self.episode, (int, np.integer)) or self.episode < 0:
            raise ValueError(f"episode must be an integer >= 0, got {self.episode!r}")
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(
                f"rgb must be uint8 (T, H, W, 3), got {self.rgb.dtype} {self.rgb.shape}"
            )
        frames, height, width = self.rgb.shape[:3]
        if frames < 1:
            raise ValueError("an episode needs at least one frame, got T = 0")
        expected = {
            "depth": ((frames, height, width, 1), DEPTH_DTYPES),
            "cam_to_world": ((frames, 4, 4), ("float32",)),
            "intrinsics": ((frames, 3, 3), ("float32",)),
            "actions": ((frames,), ("int64",)),
            "collided": ((frames,), ("bool",)),
        }
        for name, (shape, dtypes) in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype.name not in dtypes:
                raise ValueError(
                    f"{name} must be {' or '.join(dtypes)} {shape} for T = {frames} frames of "
                    f"{height}x{width}, got {array.dtype} {array.shape}"
                )
        for name in ("depth", "cam_to_world", "intrinsics"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} of episode {self.episode} contains NaN or inf")
        if (self.depth < 0).any():
            raise ValueError(f"depth of episode {self.episode} has negative values (0 = no hit)")
        moves = self.actions[:-1]
        if ((moves < 0) | (moves >= NUM_ACTIONS)).any():
            raise ValueError(
                f"actions[:-1] must be ids in [0, {NUM_ACTIONS}), got {np.unique(moves).tolist()}"
            )
        if self.actions[-1] not in (0, NO_ACTION):
            raise ValueError(
                f"the last action must be 0 (stop) or {NO_ACTION} (cut at the length limit), "
                f"got {int(self.actions[-1])}"
            )
        json.dumps(dict(self.metadata))  # raises TypeError for non-JSON metadata

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.rgb.shape[0])

    def with_depth_dtype(self, dtype: str) -> Episode:
        """This episode with depth stored as ``dtype`` (``"float16"`` or ``"float32"``)."""
        check_choice("depth_dtype", dtype, DEPTH_DTYPES)
        if self.depth.dtype.name == dtype:
            return self
        depth = self.depth.astype(dtype)
        if not np.isfinite(depth).all():
            raise ValueError(f"depth of episode {self.episode} overflows {dtype}")
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return Episode(**{**fields, "depth": depth})

    def content_hash(self) -> str:
        """SHA-256 hex digest of the scene id, episode index, metadata and every array."""
        digest = hashlib.sha256()
        header = json.dumps(
            {"scene_id": self.scene_id, "episode": int(self.episode), "metadata": self.metadata},
            sort_keys=True,
        )
        digest.update(header.encode())
        for name in _ARRAYS:
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def check_scene_id(scene_id: str) -> None:
    """Raise if ``scene_id`` cannot be part of a shard's file name."""
    if not isinstance(scene_id, str) or not _SCENE_ID_PATTERN.match(scene_id):
        raise ValueError(
            f"scene id {scene_id!r} must start with a letter or digit and contain only letters, "
            "digits, '.', '_' and '-'"
        )


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise naming ``name``, ``value`` and the allowed values if ``value`` is not allowed."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


# ================================================================================== atomic files
def temporary_path(path: Path) -> Path:
    """A temporary file name beside ``path``, unique to this host and process."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}{TEMP_SUFFIX}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temporary: Path, path: Path) -> None:
    """Flush ``temporary`` to disk and rename it to ``path`` atomically (same folder)."""
    _fsync_path(temporary)
    os.replace(temporary, path)
    _fsync_path(path.parent)


def write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` as indented JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    commit_file(temporary, path)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataFormatError(f"{what} {path} is missing")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{what} {path} is not valid JSON ({error})") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise DataFormatError(
            f"{what} {path} is not a {FORMAT_NAME} file (its 'format' is "
            f"{content.get('format') if isinstance(content, dict) else None!r})"
        )
    if content.get("format_version") != FORMAT_VERSION:
        raise DataFormatError(
            f"{what} {path} has format version {content.get('format_version')!r}; this "
            f"library reads version {FORMAT_VERSION} only (recollect, or use a matching release)"
        )
    return content


# ================================================================================== manifest
def write_manifest(root: str | Path, settings: Mapping[str, Any]) -> None:
    """Create ``ROOT/manifest.json``, or check that an existing one has the same settings.

    Args:
        root: dataset folder (created if missing).
        settings: JSON-serialisable settings that determine the content of every shard
            (simulator, policies, seed, ...), but not how the work is split (scene ranges,
            workers), so that several runs can fill one folder.

    Raises:
        DataFormatError: if the folder holds a manifest of another format, version or settings;
            the message names every differing setting.
    """
    path = Path(root) / MANIFEST_NAME
    settings = json.loads(json.dumps(dict(settings)))  # normalise tuples to lists
    if path.exists():
        existing = read_manifest(root)
        if existing != settings:
            keys = sorted(set(existing) | set(settings))
            diff = [
                f"{key}: folder has {existing.get(key)!r}, this run has {settings.get(key)!r}"
                for key in keys
                if existing.get(key) != settings.get(key)
            ]
            raise DataFormatError(
                f"{path} was written with other settings; use another output folder or the "
                "same settings. Differences: " + "; ".join(diff)
            )
        return
    write_json_atomic(
        path, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "settings": settings}
    )


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The settings stored in ``ROOT/manifest.json``.

    Raises:
        DataFormatError: missing, unreadable or foreign manifest, or another format version.
    """
    content = _read_json(Path(root) / MANIFEST_NAME, "manifest")
    if not isinstance(content.get("settings"), dict):
        raise DataFormatError(f"manifest {Path(root) / MANIFEST_NAME} has no 'settings' object")
    return content["settings"]


# ================================================================================== plans
def shard_name(scene_id: str, episode_start: int, episode_stop: int) -> str:
    """File name of the shard holding episodes ``[episode_start, episode_stop)`` of a scene."""
    check_scene_id(scene_id)
    if not 0 <= episode_start < episode_stop <= 999_999:
        raise ValueError(
            f"episode range must satisfy 0 <= start < stop <= 999999, got "
            f"[{episode_start}, {episode_stop})"
        )
    return f"{scene_id}__e{episode_start:06d}-{episode_stop:06d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int]:
    """``(scene_id, episode_start, episode_stop)`` of a shard file name.

    Raises:
        DataFormatError: for a name that is not a shard name.
    """
    match = _SHARD_NAME_PATTERN.match(name)
    if not match:
        raise DataFormatError(
            f"{name!r} is not a shard name (expected '<scene>__e<start>-<stop>{SHARD_SUFFIX}')"
        )
    return match["scene"], int(match["start"]), int(match["stop"])


def write_plan(root: str | Path, name: str, shards: Sequence[str]) -> Path:
    """Record which shards a collection run is to write (marked incomplete).

    An existing plan of the same name keeps its shard list, which must equal ``shards``.

    Args:
        root: dataset folder.
        name: plan name, e.g. ``"scenes-00000-00020"``; one per scene range.
        shards: shard file names (see :func:`shard_name`).

    Returns:
        The plan's path.

    Raises:
        DataFormatError: if a plan of that name lists other shards.
    """
    path = Path(root) / PLAN_DIR / f"{name}.json"
    for shard in shards:
        parse_shard_name(shard)
    if path.exists():
        existing = _read_json(path, "plan")
        if existing.get("shards") != list(shards):
            raise DataFormatError(
                f"plan {path} lists other shards than this run would write; the scene range "
                "or episode settings changed: use another output folder"
            )
        return path
    write_json_atomic(
        path,
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "shards": list(shards),
            "complete": False,
            "summary": None,
        },
    )
    return path


def complete_plan(root: str | Path, name: str, summary: Mapping[str, Any]) -> None:
    """Mark a plan complete and store the run's summary in it (after checking every shard)."""
    path = Path(root) / PLAN_DIR / f"{name}.json"
    content = _read_json(path, "plan")
    missing = [s for s in content["shards"] if not (Path(root) / SHARD_DIR / s).is_file()]
    if missing:
        raise DataFormatError(f"plan {path} cannot be complete: shards missing: {missing[:5]}")
    write_json_atomic(path, {**content, "complete": True, "summary": dict(summary)})


def read_plans(root: str | Path) -> dict[str, dict[str, Any]]:
    """Every plan of a dataset, by name."""
    folder = Path(root) / PLAN_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return {path.stem: _read_json(path, "plan") for path in paths}


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


# ================================================================================== store
class TrajectoryStore:
    """All episodes of a dataset folder, checked against its manifest and plans.

    Opening reads only attributes. File handles are opened lazily and per process, so a store
    can be used from ``DataLoader`` worker processes.

    Args:
        root: dataset folder.
        allow_incomplete: accept plans whose collection has not finished; their missing shards
            are reported with a warning instead of an error.
        max_open_files: shards kept open at once (least recently used are closed).

    Raises:
        DataFormatError: missing or foreign manifest, a shard a complete plan lists that is
            missing, a shard no plan lists, or an unreadable shard; each message names the file.
    """

    def __init__(
        self, root: str | Path, *, allow_incomplete: bool = False, max_open_files: int = 32
    ) -> None:
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.root = Path(root)
        self.settings = read_manifest(self.root)
        self.max_open_files = max_open_files
        plans = read_plans(self.root)
        if not plans:
            raise DataFormatError(
                f"dataset {self.root} has no collection plans in {self.root / PLAN_DIR}; it is "
                "not a collected dataset (or the folder was copied partially)"
            )
        shard_dir = self.root / SHARD_DIR
        present = (
            {p.name for p in shard_dir.glob(f"*{SHARD_SUFFIX}")} if shard_dir.is_dir() else set()
        )
        listed: set[str] = set()
        missing_complete, missing_incomplete = [], []
        for name, plan in plans.items():
            listed.update(plan["shards"])
            missing = [s for s in plan["shards"] if s not in present]
            if missing:
                (missing_complete if plan["complete"] else missing_incomplete).append(
                    (name, missing)
                )
        if missing_complete:
            name, missing = missing_complete[0]
            raise DataFormatError(
                f"shard {shard_dir / missing[0]} is missing ({len(missing)} missing in complete "
                f"plan {name!r}); restore the files or rerun that scene range to collect them"
            )
        if missing_incomplete:
            message = "; ".join(
                f"plan {name!r}: {len(missing)} shards not collected yet"
                for name, missing in missing_incomplete
            )
            if not allow_incomplete:
                raise DataFormatError(
                    f"dataset {self.root} is incomplete ({message}); rerun the collection command "
                    "to resume, or pass allow_incomplete=True to read what is there"
                )
            warnings.warn(f"reading an incomplete dataset {self.root}: {message}", stacklevel=2)
        foreign = sorted(present - listed)
        if foreign:
            raise DataFormatError(
                f"shard {shard_dir / foreign[0]} is not listed in any plan of {self.root} "
                f"({len(foreign)} such files); move foreign files out of {shard_dir}"
            )
        leftovers = sorted(shard_dir.glob(f".*{TEMP_SUFFIX}")) if shard_dir.is_dir() else []
        if leftovers:
            warnings.warn(
                f"{len(leftovers)} temporary files of an interrupted collection in {shard_dir} "
                f"(e.g. {leftovers[0].name}) are ignored; rerun the collector to resume",
                stacklevel=2,
            )
        self.shards = [shard_dir / name for name in sorted(present & listed)]
        self.episodes: list[EpisodeInfo] = []
        for path in self.shards:
            with ShardReader(path) as reader:
                self.episodes.extend(reader.episodes)
        self._readers: OrderedDict[Path, ShardReader] = OrderedDict()
        self._pid = os.getpid()

    @property
    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return sum(info.num_frames for info in self.episodes)

    @property
    def num_bytes(self) -> int:
        """Total size of the shard files in bytes."""
        return sum(path.stat().st_size for path in self.shards)

    def reader(self, shard: Path) -> ShardReader:
        """An open reader of ``shard``, cached per process."""
        if self._pid != os.getpid():  # forked into a DataLoader worker: handles are not shared
            self._readers = OrderedDict()
            self._pid = os.getpid()
        if shard in self._readers:
            self._readers.move_to_end(shard)
        else:
            self._readers[shard] = ShardReader(shard)
            while len(self._readers) > self.max_open_files:
                self._readers.popitem(last=False)[1].close()
        return self._readers[shard]

    def read_frames(
        self, index: int, frames: slice | np.ndarray, names: Sequence[str] = _ARRAYS
    ) -> dict[str, np.ndarray]:
        """Some frames of ``self.episodes[index]``; see :meth:`ShardReader.read_frames`."""
        info = self.episodes[index]
        return self.reader(info.shard).read_frames(info.episode, frames, names)

    def read_episode(self, index: int) -> Episode:
        """The whole episode ``self.episodes[index]``."""
        info = self.episodes[index]
        return self.reader(info.shard).read_episode(info.episode)

    def verify(self) -> None:
        """Re-hash every episode of every shard (reads everything); raise on the first mismatch."""
        for path in self.shards:
            self.reader(path).verify()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = OrderedDict()  # h5py handles do not cross process boundaries
        return state

    def close(self) -> None:
        """Close every open shard."""
        while self._readers:
            self._readers.popitem()[1].close()


# ================================================================================== view overlap
@dataclass(frozen=True)
class RevisitConfig:
    """When a frame counts as revisiting an earlier one.

    Frame ``t`` revisits frame ``s`` if ``t - s >= min_gap`` and at least ``threshold`` of the
    sample points of ``t``'s view frustum (a grid of ``grid x grid`` pixel rays at
    ``depth_samples`` depths evenly spaced in ``[near, far]``) lie inside ``s``'s frustum
    truncated to the same depth range. Only poses and intrinsics are used, so walls between
    the two cameras are not taken into account; the short default range limits that error.

    Attributes:
        min_gap: frames between the two views, >= 1.
        threshold: fraction of sample points that must be shared, in (0, 1].
        near: nearest sample depth, metres, > 0.
        far: farthest sample depth, metres, > near.
        grid: pixel rays per image side, >= 1.
        depth_samples: sample depths per ray, >= 1.
    """

    min_gap: int = 30
    threshold: float = 0.5
    near: float = 0.5
    far: float = 3.0
    grid: int = 6
    depth_samples: int = 3

    def __post_init__(self) -> None:
        if self.min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 frames, got {self.min_gap}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far metres, got near={self.near}, far={self.far}")
        if self.grid < 1 or self.depth_samples < 1:
            raise ValueError(
                f"grid and depth_samples must be >= 1, got {self.grid} and {self.depth_samples}"
            )


def frustum_samples(
    cam_to_world: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """World points that sample each camera's view frustum.

    Args:
        cam_to_world: (T, 4, 4) camera poses.
        intrinsics: (T, 3, 3) ``K`` of images of ``height`` x ``width`` pixels.
        height: image rows.
        width: image columns.
        config: the grid and depth range.

    Returns:
        (T, P, 3) world points, ``P = depth_samples * grid * grid``, float64.
    """
    frames, grid = cam_to_world.shape[0], config.grid
    # Scaling K maps the pixel centres of a grid x grid image onto the grid cells' centres.
    scale = torch.tensor([grid / width, grid / height, 1.0], dtype=torch.float64)
    k_grid = scale[:, None] * intrinsics.double()  # (T, 3, 3)
    depths = torch.linspace(config.near, config.far, config.depth_samples, dtype=torch.float64)
    planes = depths[None, :, None, None].expand(frames, -1, grid, grid)  # (T, D, g, g)
    points = unproject_depth(planes, k_grid[:, None])  # (T, D, g, g, 3)
    points = rearrange(points, "t d h w c -> t (d h w) c")
    return transform_points(cam_to_world.double(), points)  # (T, P, 3)


def frustum_overlap(
    points: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    config: RevisitConfig,
) -> Tensor:
    """Fraction of each point set that lies inside a camera's truncated view frustum.

    Args:
        points: (N, P, 3) world points (e.g. rows of :func:`frustum_samples`).
        cam_to_world: (N, 4, 4) poses of the cameras to test against.
        intrinsics: (N, 3, 3) their ``K``.
        height: image rows.
        width: image columns.
        config: the depth range ``[near, far]``.

    Returns:
        (N,) fractions in [0, 1], float64.
    """
    world_to_cam = invert_rigid(cam_to_world.double())
    camera = transform_points(world_to_cam, points.double())  # (N, P, 3)
    return _inside_fraction(camera, intrinsics.double(), height, width, config)


def _inside_fraction(
    camera: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """(N,) fraction of camera points (N, P, 3) inside the truncated frustums of K (N, 3, 3)."""
    x, y, z = camera.unbind(-1)
    k = intrinsics[:, None]  # (N, 1, 3, 3)
    # u = fx x / z + cx in [0, W] without dividing: for z > 0, 0 <= fx x + cx z <= W z.
    u_z = k[..., 0, 0] * x + k[..., 0, 2] * z
    v_z = k[..., 1, 1] * y + k[..., 1, 2] * z
    inside = (
        (z >= config.near * (1 - 1e-9))  # slack: samples on the near/far planes count as inside
        & (z <= config.far * (1 + 1e-9))
        & (u_z >= 0)
        & (u_z <= width * z)
        & (v_z >= 0)
        & (v_z <= height * z)
    )
    return inside.double().mean(dim=-1)


def _frustum_radius(intrinsics: Tensor, height: int, width: int, far: float) -> Tensor:
    """(T,) distance from the camera centre to the farthest corner of its truncated frustum."""
    fx, fy = intrinsics[:, 0, 0].double(), intrinsics[:, 1, 1].double()
    cx, cy = intrinsics[:, 0, 2].double(), intrinsics[:, 1, 2].double()
    half_x = torch.maximum(cx, width - cx) / fx
    half_y = torch.maximum(cy, height - cy) / fy
    return far * torch.sqrt(1.0 + half_x**2 + half_y**2)


def revisit_sources(
    cam_to_world: np.ndarray | Tensor,
    intrinsics: np.ndarray | Tensor,
    height: int,
    width: int,
    config: RevisitConfig | None = None,
    batch_pairs: int = 2048,
) -> np.ndarray:
    """For each frame, the earliest earlier frame it revisits (see :class:`RevisitConfig`).

    Args:
        cam_to_world: (T, 4, 4) poses of one trajectory.
        intrinsics: (T, 3, 3) or (3, 3) ``K``.
        height: image rows.
        width: image columns.
        config: the revisit rule; defaults if ``None``.
        batch_pairs: frame pairs evaluated at once (memory vs. speed).

    Returns:
        (T,) int64: the smallest ``s <= t - min_gap`` whose view ``t`` overlaps by at least
        ``threshold``, or -1 where there is none.
    """
    config = config or RevisitConfig()
    poses = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float64)
    frames = poses.shape[0]
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64)
    k = k.expand(frames, 3, 3) if k.dim() == 2 else k
    sources = np.full(frames, -1, dtype=np.int64)
    if frames <= config.min_gap:
        return sources
    points = frustum_samples(poses, k, height, width, config)  # (T, P, 3)
    # Two truncated frustums can only share points if their centres are within both radii.
    radius = _frustum_radius(k, height, width, config.far)
    centres = poses[:, :3, 3]
    reach = torch.cdist(centres, centres) <= radius[:, None] + radius[None, :]
    later, earlier = torch.nonzero(reach, as_tuple=True)
    keep = later - earlier >= config.min_gap
    # Earlier frames first: once a frame has a source, later batches cannot give a smaller one.
    order = torch.argsort(earlier[keep], stable=True)
    later, earlier = later[keep][order].numpy(), earlier[keep][order].numpy()
    world_to_cam = invert_rigid(poses)
    begin = 0
    while begin < len(later):
        t, s = later[begin : begin + batch_pairs], earlier[begin : begin + batch_pairs]
        begin += batch_pairs
        open_pairs = sources[t] < 0
        t, s = t[open_pairs], s[open_pairs]
        if len(t) == 0:
            continue
        camera = transform_points(world_to_cam[s], points[t])  # (B, P, 3)
        hit = (_inside_fraction(camera, k[s], height, width, config) >= config.threshold).numpy()
        # Pairs are sorted by s, so the first hit of each t in this batch is its smallest s.
        t_hit, first = np.unique(t[hit], return_index=True)
        sources[t_hit] = s[hit][first]
    return sources


def revisit_fraction(sources: np.ndarray) -> float:
    """Fraction of frames that revisit an earlier frame, from :func:`revisit_sources`."""
    return float((np.asarray(sources) >= 0).mean()) if len(sources) else 0.0


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
      model's VAE encodes them (see :mod:`worldsim.latents`)

    Args:
        root: dataset folder (see the module docstring), or an open :class:`TrajectoryStore`.
        config: clip settings.
        allow_incomplete: read a dataset whose collection has not finished (with a warning).
        latents: a :class:`~worldsim.latents.LatentCache` of this data set, or None.

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


def dataset_statistics(store: TrajectoryStore) -> dict[str, Any]:
    """Counts, sizes and revisit fractions of a dataset, from its attributes (no frames read).

    Returns:
        ``episodes``, ``frames``, ``bytes``, ``mb_per_1000_frames``, ``shards``,
        ``frames_per_episode`` (min, mean, max), ``scenes``, and per policy (from the episodes'
        ``policy`` metadata) the episode count, frame count and ``revisit_fraction`` (from the
        ``revisit_frames`` metadata the collector stores; absent where unknown).
    """
    lengths = np.array([info.num_frames for info in store.episodes])
    frames, size = int(lengths.sum()), store.num_bytes
    policies: dict[str, dict[str, float]] = {}
    for info in store.episodes:
        entry = policies.setdefault(
            str(info.metadata.get("policy", "unknown")),
            {"episodes": 0, "frames": 0, "revisit_frames": 0, "known": True},
        )
        entry["episodes"] += 1
        entry["frames"] += info.num_frames
        if "revisit_frames" in info.metadata:
            entry["revisit_frames"] += int(info.metadata["revisit_frames"])
        else:
            entry["known"] = False
    per_policy = {
        name: {
            "episodes": int(entry["episodes"]),
            "frames": int(entry["frames"]),
            **(
                {"revisit_fraction": entry["revisit_frames"] / max(entry["frames"], 1)}
                if entry["known"]
                else {}
            ),
        }
        for name, entry in sorted(policies.items())
    }
    return {
        "episodes": len(store.episodes),
        "frames": frames,
        "bytes": size,
        "mb_per_1000_frames": size / 1e6 / max(frames, 1) * 1000,
        "shards": len(store.shards),
        "scenes": len({info.scene_id for info in store.episodes}),
        "frames_per_episode": (
            (int(lengths.min()), float(lengths.mean()), int(lengths.max())) if len(lengths) else ()
        ),
        "policies": per_policy,
    }
