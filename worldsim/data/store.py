"""A data set folder as one store: its manifest, plans and shards, checked and opened by name."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass
from worldsim.data.format import (
    _ARRAYS,
    PLAN_DIR,
    SHARD_DIR,
    SHARD_SUFFIX,
    TEMP_SUFFIX,
    DataFormatError,
    Episode,
    read_manifest,
    read_plans,
)
from worldsim.data.shards import EpisodeInfo, ShardReader


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
