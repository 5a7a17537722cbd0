"""Scene ids: ``house-{split}-{index:04d}``, fixed disjoint splits, one seed per house.

``split`` is one of :data:`SPLITS` and ``index`` lies in ``[0, SCENES_PER_SPLIT)``. A house is
fully determined by its id: the random seed is a SHA-256 digest of the generator version, the
split and the index, so the three splits never share a scene and every machine builds the same
house.
"""

from __future__ import annotations

import hashlib
import re

SPLITS = ("train", "val", "test")
"""Scene splits; the test split holds the unseen scenes."""
SCENES_PER_SPLIT = 10_000
"""Number of distinct house ids in each split."""
GENERATOR_VERSION = 1
"""Version of the house generator; part of every seed and of the cache path."""
_SCENE_ID = re.compile(r"^house-(train|val|test)-(\d{4})$")
_ALLOWED_IDS = f"'house-{{{'|'.join(SPLITS)}}}-NNNN' with NNNN in 0000..{SCENES_PER_SPLIT - 1:04d}"


# --------------------------------------------------------------------------------------- scene ids
def parse_scene_id(scene_id: str) -> tuple[str, int]:
    """Split a scene id into its split and index.

    Args:
        scene_id: e.g. ``"house-val-0042"``.

    Returns:
        ``(split, index)``, e.g. ``("val", 42)``.

    Raises:
        ValueError: if ``scene_id`` is not of the form :data:`_ALLOWED_IDS` describes.
    """
    match = _SCENE_ID.match(scene_id) if isinstance(scene_id, str) else None
    if match is None:
        raise ValueError(f"unknown scene id {scene_id!r}: allowed are {_ALLOWED_IDS}")
    return match.group(1), int(match.group(2))


def scene_ids(split: str, count: int, start: int = 0) -> list[str]:
    """Ids of consecutive houses of one split.

    Args:
        split: one of :data:`SPLITS`.
        count: number of ids, ``>= 0``.
        start: first index; ``start + count <= SCENES_PER_SPLIT``.

    Returns:
        ``["house-{split}-{start:04d}", ...]``.

    Raises:
        ValueError: for an unknown split or a range outside ``[0, SCENES_PER_SPLIT)``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: allowed are {SPLITS}")
    if count < 0 or start < 0 or start + count > SCENES_PER_SPLIT:
        raise ValueError(
            f"scene range start={start}, count={count} is outside [0, {SCENES_PER_SPLIT}) "
            f"for split {split!r}"
        )
    return [f"house-{split}-{index:04d}" for index in range(start, start + count)]


def scene_seed(scene_id: str) -> int:
    """The 64-bit seed of a house, a SHA-256 digest of the generator version, split and index.

    Raises:
        ValueError: for an unknown scene id.
    """
    split, index = parse_scene_id(scene_id)
    key = f"persistent-world/house/v{GENERATOR_VERSION}/{split}/{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
