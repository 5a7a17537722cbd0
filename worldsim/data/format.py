"""The trajectory data set's format: episodes, ids, manifest and plans, atomic writes.

A *dataset* is a folder::

    ROOT/manifest.json              settings that determine the content (simulator, policies, seed),
                                    format name and version
    ROOT/plans/<name>.json          the shards one collection run (a scene range) is to write, and
                                    whether it finished
    ROOT/shards/<scene>__e<a>-<b>.h5   HDF5 shard: episodes ``a .. b-1`` of one scene

Every file is written to a temporary file in the same folder, flushed to disk and renamed into
place (:func:`commit_file`), so a file with a final name is always complete. The layout of a
shard is in :mod:`worldsim.data.shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worldsim.geometry import NUM_ACTIONS

if TYPE_CHECKING:
    pass

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
