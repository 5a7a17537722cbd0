"""Procedural multi-room houses as textured ``.glb`` meshes, and loading of any ``.glb`` scene.

Scene ids
    ``house-{split}-{index:04d}`` with ``split`` in :data:`SPLITS` and ``index`` in
    ``[0, SCENES_PER_SPLIT)``. A house is fully determined by its id: the random seed is a SHA-256
    digest of the generator version, the split and the index, so the three splits never share a
    scene and every machine builds the same house.

Houses
    3 to 8 axis-aligned rectangular rooms obtained by recursively splitting a rectangular
    footprint, joined by doorways so that the room graph is connected (a random spanning tree plus
    a few extra doors that make loops). Each room has its own wall and floor texture, furniture
    made of boxes (beds, sofas, tables, shelves, cabinets) that leaves the doorways clear and the
    floor connected for an agent of radius :data:`CLEARANCE_RADIUS_M`, and pictures on its walls:
    distinct textured quads slightly in front of the wall that act as landmarks.

Frames and units
    World frame of :mod:`worldsim.geometry`: right-handed, y up, metres, floor at ``y = 0``. glTF
    is y-up in metres as well, so generated houses are written and read without any axis
    conversion. Habitat's scene files (MP3D, HM3D, its test scenes) are z-up despite glTF: a scene
    file is rotated to y-up from the up axis that :func:`load_scene` is given (``up_axis="z"``),
    else from a Habitat stage config beside the file (``<name>.stage_config.json``) or the stage
    defaults of a ``*.scene_dataset_config.json`` in its folder or the two above it (keys ``"up"``
    and ``"front"``, as Habitat reads them), else it is taken as y-up. A file taken as y-up whose
    height (y extent) exceeds 1.5 times its smaller horizontal extent is refused: indoor scenes are
    wider than tall, and a z-up file read as y-up stands on its side. Basis Universal textures
    (HM3D's ``.basis.glb``, glTF extension ``KHR_texture_basisu``) are refused rather than drawn
    untextured.

Geometry
    Only the surfaces seen from inside the house are modelled: the inner faces of the walls (each
    room's walls are inset by half the wall thickness from the wall centre lines, so walls between
    rooms are ``wall_thickness`` thick and hollow), floors, ceilings, the jambs, floor and lintel of
    every doorway, furniture boxes and pictures. A house has about 300 to 1,300 triangles and 20
    to 40 textures of 128-256 pixels (a .glb of about 0.5 MB).
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage
from trimesh.visual.material import PBRMaterial

SPLITS = ("train", "val", "test")
"""Scene splits; the test split holds the unseen scenes."""
SCENES_PER_SPLIT = 10_000
"""Number of distinct house ids in each split."""
GENERATOR_VERSION = 1
"""Version of the house generator; part of every seed and of the cache path."""
CLEARANCE_RADIUS_M = 0.25
"""Radius of the agent for which every room's floor is kept connected between its doorways."""
CACHE_ENV_VAR = "PERSISTENT_WORLD_CACHE"
"""Environment variable naming the project's cache root (scenes go to ``<root>/scenes``)."""

UP_AXES = ("y", "z")
"""Up axes a scene file may be given in (:func:`load_scene`)."""
_UP_FRONT = {"y": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), "z": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0))}
"""(up, front) of each up axis in the file's frame: glTF's y-up, and Habitat's z-up with front +y
(as in its MP3D and HM3D dataset configs); they map to world +y and -z."""
_MAX_HEIGHT_TO_WIDTH = 1.5
"""A scene taken as y-up may be at most this much taller than its smaller horizontal extent."""
_DATASET_CONFIG_LEVELS = 3
"""Folders searched for a ``*.scene_dataset_config.json``: the scene file's and two above it."""
_UP_AXIS_FIX = (
    "pass up_axis='z' (IndoorNav(up_axis='z'), SimulatorConfig(up_axis='z') or "
    "load_scene(path, up_axis='z')) or put a Habitat <name>.stage_config.json with \"up\" beside "
    "the file; if the scene really is y-up, pass up_axis='y'"
)
_SCENE_ID = re.compile(r"^house-(train|val|test)-(\d{4})$")
_ALLOWED_IDS = f"'house-{{{'|'.join(SPLITS)}}}-NNNN' with NNNN in 0000..{SCENES_PER_SPLIT - 1:04d}"
_WALL_TEXTURE_PX = 256
_SMALL_TEXTURE_PX = 128
_MIN_ROOM_SIDE_M = 2.4
_DOOR_HEIGHT_M = 2.1
_MAX_ATTEMPTS = 100  # of drawing a floor plan; in practice one or two suffice
_DOOR_CLEARANCE_DEPTH_M = 1.0  # no furniture this far in front of a doorway
_GRID_M = 0.05  # resolution of the free-space check
_PICTURE_OFFSET_M = 0.02  # pictures float this far in front of their wall
_FRAME_OFFSET_M = 0.01
_FRAME_BORDER_M = 0.04

# Sides of a room's floor rectangle: (axis of the wall's normal, which bound, inward normal sign).
# Side 0: x = x_min, 1: x = x_max, 2: z = z_min, 3: z = z_max.
_SIDES = ((0, 0, 1.0), (0, 1, -1.0), (2, 0, 1.0), (2, 1, -1.0))


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


# --------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MaterialSpec:
    """A procedural surface material: a pattern coloured between two colours.

    Attributes:
        name: unique name in the house; the name of the glTF material.
        pattern: one of ``plain``, ``plaster``, ``stripes``, ``dots``, ``brick``, ``planks``,
            ``tiles``, ``checker``, ``carpet``, ``stone``, ``wood``, ``fabric``.
        color_a: dark end of the pattern, RGB in [0, 1].
        color_b: light end of the pattern, RGB in [0, 1] (the only colour of ``plain``).
        tile_m: metres covered by one repeat of the texture.
        seed: seed of the pattern's randomness.
        size: texture side in pixels.
    """

    name: str
    pattern: str
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    tile_m: float = 1.0
    seed: int = 0
    size: int = _WALL_TEXTURE_PX


@dataclass(frozen=True)
class Room:
    """A room: its floor rectangle between the inner faces of its walls.

    Attributes:
        index: position in :attr:`HouseLayout.rooms`.
        kind: ``living``, ``bedroom``, ``study``, ``dining`` or ``hall`` (decides the furniture).
        floor: ``(x_min, z_min, x_max, z_max)`` of the walkable floor, world metres.
        wall_material: texture of the room's walls.
        floor_material: texture of the room's floor.
    """

    index: int
    kind: str
    floor: tuple[float, float, float, float]
    wall_material: MaterialSpec
    floor_material: MaterialSpec

    @property
    def center(self) -> tuple[float, float]:
        """``(x, z)`` centre of the floor, metres."""
        x_min, z_min, x_max, z_max = self.floor
        return (x_min + x_max) / 2, (z_min + z_max) / 2


@dataclass(frozen=True)
class Door:
    """A doorway through the wall between two rooms.

    Attributes:
        rooms: indices of the two rooms, the one on the lower side of the wall first.
        axis: world axis of the wall's normal (0 for a wall at constant x, 2 for constant z); the
            passage runs along this axis.
        center: ``(x, z)`` of the doorway's centre on the wall's centre line, metres.
        width: clear width, metres.
        height: clear height, metres.
        thickness: wall thickness, i.e. length of the passage along ``axis``, metres.
    """

    rooms: tuple[int, int]
    axis: int
    center: tuple[float, float]
    width: float
    height: float
    thickness: float


@dataclass(frozen=True)
class Furniture:
    """A piece of furniture made of boxes.

    Attributes:
        kind: ``bed``, ``sofa``, ``table``, ``shelf`` or ``cabinet``.
        room: index of its room.
        footprint: ``(x_min, z_min, x_max, z_max)`` on the floor, metres.
        height: top of the piece above the floor, metres.
        facing: side of the footprint facing the room, as an index of ``(+x, -x, +z, -z)``; its
            back is against the wall opposite that direction (free-standing tables face +x).
        material: wood material of the frame.
        fabric: fabric material of cushions and mattresses (``None`` for wooden pieces).
    """

    kind: str
    room: int
    footprint: tuple[float, float, float, float]
    height: float
    facing: int
    material: MaterialSpec
    fabric: MaterialSpec | None = None


@dataclass(frozen=True)
class Picture:
    """A picture on a wall, a visual landmark.

    Attributes:
        name: unique name in the house (``picture00``, ...), the glTF material and node name.
        room: index of its room.
        center: ``(x, y, z)`` centre of the image, world metres.
        normal: ``(nx, nz)`` unit direction the image faces (into the room).
        width: image width, metres.
        height: image height, metres.
        source: ``photo:<skimage.data name>`` or ``abstract``.
        seed: seed of the crop / composition.
        hue: tint of grey photographs and background of abstract pictures, in [0, 1); spread
            over the house's pictures so that they differ in colour as well as in content.
    """

    name: str
    room: int
    center: tuple[float, float, float]
    normal: tuple[float, float]
    width: float
    height: float
    source: str
    seed: int
    hue: float


@dataclass(frozen=True)
class HouseLayout:
    """Everything a house is made of, enough to build its mesh or plot a top-down map.

    Attributes:
        scene_id: id the house was generated from.
        rooms: the rooms.
        doors: doorways; the room graph they define is connected.
        furniture: furniture pieces.
        pictures: wall pictures.
        ceiling_height: height of every ceiling, metres.
        wall_thickness: thickness of every wall, metres.
        ceiling_material: material of the ceilings.
        frame_material: plain material of doorway jambs, floors and lintels.
    """

    scene_id: str
    rooms: tuple[Room, ...]
    doors: tuple[Door, ...]
    furniture: tuple[Furniture, ...]
    pictures: tuple[Picture, ...]
    ceiling_height: float
    wall_thickness: float
    ceiling_material: MaterialSpec
    frame_material: MaterialSpec

    def adjacency(self) -> dict[int, set[int]]:
        """Room graph: for each room index, the rooms it shares a doorway with."""
        graph: dict[int, set[int]] = {room.index: set() for room in self.rooms}
        for door in self.doors:
            a, b = door.rooms
            graph[a].add(b)
            graph[b].add(a)
        return graph

    def is_connected(self) -> bool:
        """Whether every room can be reached from every other through doorways."""
        graph = self.adjacency()
        seen, stack = {0}, [0]
        while stack:
            for other in graph[stack.pop()] - seen:
                seen.add(other)
                stack.append(other)
        return len(seen) == len(self.rooms)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, z_min, x_max, z_max)`` of all floors, metres."""
        floors = np.array([room.floor for room in self.rooms])
        return (
            float(floors[:, 0].min()),
            float(floors[:, 1].min()),
            float(floors[:, 2].max()),
            float(floors[:, 3].max()),
        )


def generate_layout(scene_id: str) -> HouseLayout:
    """The layout of a procedural house, deterministic from its id.

    Args:
        scene_id: ``house-{split}-{index:04d}``.

    Returns:
        The house's rooms, doors, furniture and pictures.

    Raises:
        ValueError: for an unknown scene id.
    """
    rng = np.random.default_rng(scene_seed(scene_id))
    wall_thickness = round(float(rng.uniform(0.12, 0.2)), 3)
    ceiling_height = round(float(rng.uniform(2.6, 3.0)), 3)
    for _ in range(_MAX_ATTEMPTS):  # rare retries when a plan admits no connected set of doors
        cells = _split_footprint(rng, int(rng.integers(3, 9)))
        doors = _choose_doors(rng, cells, wall_thickness)
        if doors is not None:
            break
    else:
        raise RuntimeError(f"no connected floor plan found for {scene_id!r}")
    materials = _room_materials(rng, len(cells))
    kinds = ["living", *rng.choice(["bedroom", "study", "dining", "hall"], len(cells) - 1)]
    half = wall_thickness / 2
    rooms = tuple(
        Room(
            index=i,
            kind=str(kinds[i]),
            floor=(cell[0] + half, cell[1] + half, cell[2] - half, cell[3] - half),
            wall_material=materials[i][0],
            floor_material=materials[i][1],
        )
        for i, cell in enumerate(cells)
    )
    small = _SMALL_TEXTURE_PX
    woods = [
        MaterialSpec(f"wood{i}", "wood", *_wood_colors(rng), 0.8, _seed(rng), small)
        for i in range(2)
    ]
    fabrics = [
        MaterialSpec(f"fabric{i}", "fabric", *_fabric_colors(rng), 0.5, _seed(rng), small)
        for i in range(3)
    ]
    furniture: list[Furniture] = []
    for room in rooms:
        furniture += _place_furniture(rng, room, doors, woods, fabrics)
    pictures: list[Picture] = []
    sources, hue0 = _picture_sources(rng), float(rng.random())
    for room in rooms:
        pictures += _place_pictures(rng, room, doors, furniture, sources, len(pictures), hue0)
    return HouseLayout(
        scene_id=scene_id,
        rooms=rooms,
        doors=tuple(doors),
        furniture=tuple(furniture),
        pictures=tuple(pictures),
        ceiling_height=ceiling_height,
        wall_thickness=wall_thickness,
        ceiling_material=MaterialSpec("ceiling", "plaster", (0.88,) * 3, (0.96,) * 3, 2.0, 1),
        frame_material=MaterialSpec("doorframe", "plain", (0.0,) * 3, (0.93, 0.91, 0.86)),
    )


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def _split_footprint(rng: np.random.Generator, num_rooms: int) -> list[tuple[float, ...]]:
    """Rectangles ``(x0, z0, x1, z1)`` tiling a footprint centred on the origin."""
    for _ in range(_MAX_ATTEMPTS):
        area = num_rooms * rng.uniform(11.0, 22.0)
        aspect = rng.uniform(1.0, 1.8)
        width = np.sqrt(area * aspect)
        depth = area / width
        if rng.random() < 0.5:
            width, depth = depth, width
        cells = [(-width / 2, -depth / 2, width / 2, depth / 2)]
        while len(cells) < num_rooms:
            sides = [max(c[2] - c[0], c[3] - c[1]) for c in cells]
            splittable = [i for i, side in enumerate(sides) if side >= 2 * _MIN_ROOM_SIDE_M]
            if not splittable:
                break
            areas = np.array(
                [(cells[i][2] - cells[i][0]) * (cells[i][3] - cells[i][1]) for i in splittable]
            )
            i = splittable[int(rng.choice(len(splittable), p=areas / areas.sum()))]
            x0, z0, x1, z1 = cells.pop(i)
            axis_x = (x1 - x0) >= (z1 - z0)
            lo, hi = (x0, x1) if axis_x else (z0, z1)
            cut = lo + (hi - lo) * rng.uniform(0.35, 0.65)
            cut = round(float(np.clip(cut, lo + _MIN_ROOM_SIDE_M, hi - _MIN_ROOM_SIDE_M)), 2)
            if axis_x:
                cells += [(x0, z0, cut, z1), (cut, z0, x1, z1)]
            else:
                cells += [(x0, z0, x1, cut), (x0, cut, x1, z1)]
        if len(cells) == num_rooms:
            return [tuple(round(float(v), 2) for v in cell) for cell in cells]
    raise RuntimeError(f"cannot split a footprint into {num_rooms} rooms")


def _choose_doors(
    rng: np.random.Generator, cells: list[tuple[float, ...]], thickness: float
) -> list[Door] | None:
    """Doors on a random spanning tree of the rooms sharing enough wall, plus some loops."""
    margin = 0.15  # between a door and the corner of either room
    candidates = []
    for a in range(len(cells)):
        for b in range(len(cells)):
            ca, cb = cells[a], cells[b]
            for axis, lo_i, hi_i, t_lo, t_hi in ((0, 2, 0, 1, 3), (2, 3, 1, 0, 2)):
                if abs(ca[lo_i] - cb[hi_i]) > 1e-6:
                    continue
                start = max(ca[t_lo], cb[t_lo]) + thickness / 2 + margin
                end = min(ca[t_hi], cb[t_hi]) - thickness / 2 - margin
                width = round(float(rng.uniform(0.9, 1.2)), 2)
                if end - start >= width:
                    candidates.append((a, b, axis, ca[lo_i], start, end, width))
    order = rng.permutation(len(candidates))
    parent = list(range(len(cells)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    doors = []
    for k in order:
        a, b, axis, line, start, end, width = candidates[k]
        tree_edge = root(a) != root(b)
        if not tree_edge and rng.random() > 0.2:
            continue
        parent[root(a)] = root(b)
        along = round(float(rng.uniform(start + width / 2, end - width / 2)), 3)
        center = (line, along) if axis == 0 else (along, line)
        doors.append(Door((a, b), axis, center, width, _DOOR_HEIGHT_M, thickness))
    if len({root(i) for i in range(len(cells))}) != 1:
        return None
    return doors


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(round(c, 4) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _room_materials(
    rng: np.random.Generator, num_rooms: int
) -> list[tuple[MaterialSpec, MaterialSpec]]:
    """Wall and floor materials, each room with its own hue and patterns."""
    hues = (rng.random() + np.arange(num_rooms) / num_rooms) % 1.0
    wall_patterns = ["plaster", "stripes", "dots", "brick"]
    floor_patterns = ["planks", "tiles", "checker", "carpet", "stone"]
    materials = []
    for i, hue in enumerate(rng.permutation(hues)):
        s, v = rng.uniform(0.15, 0.5), rng.uniform(0.75, 0.95)
        wall = MaterialSpec(
            f"room{i:02d}_wall",
            str(rng.choice(wall_patterns)),
            _hsv(hue, s + 0.1, v - 0.25),
            _hsv(hue, s, v),
            round(float(rng.uniform(1.0, 2.0)), 2),
            _seed(rng),
        )
        floor_hue = hue + rng.uniform(0.3, 0.7)
        fs, fv = rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.8)
        floor = MaterialSpec(
            f"room{i:02d}_floor",
            str(rng.choice(floor_patterns)),
            _hsv(floor_hue, fs, fv * 0.55),
            _hsv(floor_hue, fs * 0.8, fv),
            round(float(rng.uniform(1.0, 2.0)), 2),
            _seed(rng),
        )
        materials.append((wall, floor))
    return materials


def _wood_colors(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    hue, value = rng.uniform(0.04, 0.11), rng.uniform(0.35, 0.85)
    return _hsv(hue, 0.6, value * 0.6), _hsv(hue, 0.5, value)


def _fabric_colors(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    hue, value = rng.random(), rng.uniform(0.4, 0.8)
    return _hsv(hue, 0.55, value * 0.7), _hsv(hue, 0.45, value)


def _side_geometry(
    floor: tuple[float, ...], side: int
) -> tuple[int, float, float, int, float, float]:
    """``(normal_axis, wall_coordinate, inward_sign, tangent_axis, t_min, t_max)`` of a side."""
    axis, bound, sign = _SIDES[side]
    x_min, z_min, x_max, z_max = floor
    if axis == 0:
        return 0, (x_min, x_max)[bound], sign, 2, z_min, z_max
    return 2, (z_min, z_max)[bound], sign, 0, x_min, x_max


def _door_gaps(room: Room, doors: list[Door] | tuple[Door, ...], side: int) -> list[Door]:
    """Doors in a given side of a room's walls."""
    axis, coordinate, sign, _, _, _ = _side_geometry(room.floor, side)
    gaps = []
    for door in doors:
        if room.index not in door.rooms or door.axis != axis:
            continue
        line = door.center[0] if axis == 0 else door.center[1]
        if abs(coordinate - sign * door.thickness / 2 - line) < 1e-6:
            gaps.append(door)
    return gaps


def _door_along(door: Door) -> float:
    """Coordinate of a door's centre along its wall."""
    return door.center[1] if door.axis == 0 else door.center[0]


def _rect_on_side(
    floor: tuple[float, ...], side: int, t0: float, t1: float, d0: float, d1: float
) -> tuple[float, float, float, float]:
    """Floor rectangle spanning ``[t0, t1]`` along a side and ``[d0, d1]`` metres into the room."""
    axis, coordinate, sign, _, _, _ = _side_geometry(floor, side)
    n0, n1 = sorted((coordinate + sign * d0, coordinate + sign * d1))
    return (n0, t0, n1, t1) if axis == 0 else (t0, n0, t1, n1)


def _span(rect: tuple[float, ...], axis: int) -> tuple[float, float]:
    """Extent of a floor rectangle ``(x_min, z_min, x_max, z_max)`` along world axis 0 or 2."""
    return (rect[0], rect[2]) if axis == 0 else (rect[1], rect[3])


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


_FURNITURE_BY_KIND = {
    "living": (("sofa", 1.0), ("table", 0.8), ("shelf", 0.6), ("cabinet", 0.4)),
    "bedroom": (("bed", 1.0), ("cabinet", 0.7), ("shelf", 0.5)),
    "study": (("table", 1.0), ("shelf", 0.9), ("cabinet", 0.5)),
    "dining": (("table", 1.0), ("cabinet", 0.7), ("shelf", 0.4)),
    "hall": (("cabinet", 0.6), ("shelf", 0.4)),
}
# Width along the wall, depth away from it and height ranges, metres.
_FURNITURE_SIZES = {
    "bed": ((1.3, 1.8), (1.9, 2.1), (0.9, 1.1)),
    "sofa": ((1.5, 2.2), (0.8, 0.95), (0.8, 0.9)),
    "table": ((0.9, 1.6), (0.6, 1.0), (0.72, 0.78)),
    "shelf": ((0.7, 1.4), (0.3, 0.4), (1.5, 2.0)),
    "cabinet": ((0.5, 1.2), (0.4, 0.6), (0.75, 1.1)),
}


def _place_furniture(
    rng: np.random.Generator,
    room: Room,
    doors: list[Door],
    woods: list[MaterialSpec],
    fabrics: list[MaterialSpec],
) -> list[Furniture]:
    """Furniture that keeps doorways clear and the room's free floor connected."""
    keep_out = []
    for side in range(4):
        for door in _door_gaps(room, doors, side):
            along = _door_along(door)
            t0, t1 = along - door.width / 2 - 0.3, along + door.width / 2 + 0.3
            keep_out.append(_rect_on_side(room.floor, side, t0, t1, 0.0, _DOOR_CLEARANCE_DEPTH_M))
    placed: list[Furniture] = []
    x_min, z_min, x_max, z_max = room.floor
    for kind, probability in _FURNITURE_BY_KIND[room.kind]:
        if rng.random() > probability:
            continue
        (w_lo, w_hi), (d_lo, d_hi), (h_lo, h_hi) = _FURNITURE_SIZES[kind]
        for _ in range(20):
            width, depth = rng.uniform(w_lo, w_hi), rng.uniform(d_lo, d_hi)
            height = round(float(rng.uniform(h_lo, h_hi)), 3)
            free_standing = kind == "table" and room.kind in ("living", "dining")
            if free_standing:
                facing = 0
                sx, sz = (width, depth) if rng.random() < 0.5 else (depth, width)
                if min(x_max - x_min - sx, z_max - z_min - sz) < 1.6:
                    continue
                cx = rng.uniform(x_min + 0.8 + sx / 2, x_max - 0.8 - sx / 2)
                cz = rng.uniform(z_min + 0.8 + sz / 2, z_max - 0.8 - sz / 2)
                rect = (cx - sx / 2, cz - sz / 2, cx + sx / 2, cz + sz / 2)
            else:
                side = int(rng.integers(4))
                _, _, _, _, t_min, t_max = _side_geometry(room.floor, side)
                if t_max - t_min < width + 0.1:
                    continue
                t0 = rng.uniform(t_min + 0.05, t_max - 0.05 - width)
                rect = _rect_on_side(room.floor, side, t0, t0 + width, 0.02, 0.02 + depth)
                facing = side
            rect = tuple(round(float(v), 3) for v in rect)
            inside = rect[0] >= x_min and rect[1] >= z_min and rect[2] <= x_max and rect[3] <= z_max
            if not inside or any(_overlaps(rect, zone) for zone in keep_out):
                continue
            if any(_overlaps(rect, other.footprint, 0.1) for other in placed):
                continue
            wood = woods[int(rng.integers(len(woods)))]
            fabric = fabrics[int(rng.integers(len(fabrics)))] if kind in ("bed", "sofa") else None
            piece = Furniture(kind, room.index, rect, height, facing, wood, fabric)
            if room_is_navigable(room, doors, [*placed, piece]):
                placed.append(piece)
                break
    return placed


def room_is_navigable(
    room: Room,
    doors: list[Door] | tuple[Door, ...],
    furniture: list[Furniture] | tuple[Furniture, ...],
    radius: float = CLEARANCE_RADIUS_M,
) -> bool:
    """Whether an agent disc of ``radius`` can move between all doorways of a room.

    The floor is rasterised at 5 cm; a cell is free when its centre is at least ``radius`` from
    every wall and from the footprint of every piece of furniture in the room. The room passes
    when the cells just inside every doorway are free and connected, and that connected free floor
    covers at least 30 % of the room.

    Args:
        room: the room.
        doors: all doors of the house (those of other rooms are ignored).
        furniture: furniture pieces (those of other rooms are ignored).
        radius: agent radius, metres.

    Returns:
        ``True`` when the room is navigable.
    """
    x_min, z_min, x_max, z_max = room.floor
    xs = np.arange(x_min + _GRID_M / 2, x_max, _GRID_M)
    zs = np.arange(z_min + _GRID_M / 2, z_max, _GRID_M)
    gx, gz = np.meshgrid(xs, zs, indexing="ij")  # (X, Z)
    free = (gx - x_min >= radius) & (x_max - gx >= radius)
    free &= (gz - z_min >= radius) & (z_max - gz >= radius)
    for piece in furniture:
        if piece.room != room.index:
            continue
        fx0, fz0, fx1, fz1 = piece.footprint
        dx = np.maximum(np.maximum(fx0 - gx, gx - fx1), 0.0)
        dz = np.maximum(np.maximum(fz0 - gz, gz - fz1), 0.0)
        free &= np.hypot(dx, dz) >= radius
    labels, _ = ndimage.label(free)
    entries = []
    for side in range(4):
        for door in _door_gaps(room, doors, side):
            along = _door_along(door)
            rect = _rect_on_side(room.floor, side, along, along, radius + 0.05, radius + 0.05)
            i = int(np.clip((rect[0] - x_min) // _GRID_M, 0, len(xs) - 1))
            j = int(np.clip((rect[1] - z_min) // _GRID_M, 0, len(zs) - 1))
            entries.append(labels[i, j])
    if not entries or 0 in entries or len(set(entries)) != 1:
        return False
    return (labels == entries[0]).sum() * _GRID_M**2 >= 0.3 * (x_max - x_min) * (z_max - z_min)


_COLOR_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
    "rocket", "colorwheel", "stereo_motorcycle", "logo",
)  # fmt: skip
_GRAY_PHOTOS = ("camera", "moon", "coins", "page", "text", "clock", "cell", "horse")
_GOLDEN = (np.sqrt(5) - 1) / 2  # hue step that spreads any number of pictures around the circle


def _picture_sources(rng: np.random.Generator) -> list[str]:
    """Picture sources without repeats: shuffled photographs, then abstract compositions."""
    photos = [f"photo:{name}" for name in (*_COLOR_PHOTOS, *_GRAY_PHOTOS)]
    return [photos[i] for i in rng.permutation(len(photos))]


def _place_pictures(
    rng: np.random.Generator,
    room: Room,
    doors: list[Door],
    furniture: list[Furniture],
    sources: list[str],
    first: int,
    hue0: float,
) -> list[Picture]:
    """1-3 pictures on walls, clear of doorways, corners, each other and tall furniture."""
    pictures: list[Picture] = []
    count = int(rng.integers(1, 4))
    for _ in range(30):
        if len(pictures) == count:
            break
        side = int(rng.integers(4))
        axis, coordinate, sign, t_axis, t_min, t_max = _side_geometry(room.floor, side)
        width, height = rng.uniform(0.4, 1.0), rng.uniform(0.35, 0.7)
        y = rng.uniform(1.35, 1.7)
        bottom = y - height / 2
        if t_max - t_min < width + 0.5:  # 0.25 m from either corner
            continue
        along = rng.uniform(t_min + 0.25 + width / 2, t_max - 0.25 - width / 2)
        span = (along - width / 2, along + width / 2)
        blocked = [
            (_door_along(d) - d.width / 2 - 0.15, _door_along(d) + d.width / 2 + 0.15)
            for d in _door_gaps(room, doors, side)
        ]
        blocked += [
            (p_along - p.width / 2 - 0.2, p_along + p.width / 2 + 0.2)
            for p, p_side, p_along in _picture_sides(pictures)
            if p_side == side
        ]
        near_wall = _rect_on_side(room.floor, side, t_min, t_max, 0.0, 0.6)
        for piece in furniture:
            if piece.room == room.index and piece.height > bottom - 0.05:
                if _overlaps(piece.footprint, near_wall):
                    f_lo, f_hi = _span(piece.footprint, t_axis)
                    blocked.append((f_lo - 0.1, f_hi + 0.1))
        if any(span[0] < hi and lo < span[1] for lo, hi in blocked):
            continue
        wall_offset = coordinate + sign * _PICTURE_OFFSET_M
        center = (wall_offset, y, along) if axis == 0 else (along, y, wall_offset)
        normal = (sign, 0.0) if axis == 0 else (0.0, sign)
        index = first + len(pictures)
        source = sources[index] if index < len(sources) else "abstract"
        pictures.append(Picture(
            f"picture{index:02d}", room.index, tuple(round(float(c), 4) for c in center), normal,
            round(float(width), 3), round(float(height), 3), source, _seed(rng),
            round(float((hue0 + index * _GOLDEN) % 1.0), 4),
        ))  # fmt: skip
    return pictures


def _picture_sides(pictures: list[Picture]) -> list[tuple[Picture, int, float]]:
    """``(picture, side, coordinate along the wall)`` of pictures of one room."""
    out = []
    for picture in pictures:
        nx, nz = picture.normal
        side = (0 if nx > 0 else 1) if nx != 0 else (2 if nz > 0 else 3)
        along = picture.center[2] if nx != 0 else picture.center[0]
        out.append((picture, side, along))
    return out


# --------------------------------------------------------------------------------------- textures
def _periodic_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth value noise in [0, 1] that tiles seamlessly."""
    grid = rng.random((cells, cells))
    coords = np.arange(size) * cells / size
    i0 = np.floor(coords).astype(int)
    i1 = (i0 + 1) % cells
    frac = coords - i0
    w = frac * frac * (3 - 2 * frac)  # smoothstep
    rows = grid[i0] * (1 - w)[:, None] + grid[i1] * w[:, None]  # (size, cells)
    return rows[:, i0] * (1 - w)[None] + rows[:, i1] * w[None]


def _fractal_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """(size, size) sum of periodic noise octaves, rescaled to [0, 1]."""
    total = sum(0.5**k * _periodic_noise(rng, size, cells) for k, cells in enumerate(octaves))
    return (total - total.min()) / max(float(np.ptp(total)), 1e-9)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A photograph bundled with scikit-image, uint8 (H, W, 3) or (H, W) for grey ones."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 4:  # composite on white
        alpha = image[..., 3:] / 255.0
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    image.setflags(write=False)
    return image


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _mirror_tile(rng: np.random.Generator, gray: np.ndarray, size: int) -> np.ndarray:
    """(size, size) seamless tile in [0, 1] from a random crop of a grey photograph, mirrored."""
    crop = min(gray.shape) // 2
    r = int(rng.integers(gray.shape[0] - crop + 1))
    c = int(rng.integers(gray.shape[1] - crop + 1))
    half = _resize(np.ascontiguousarray(gray[r : r + crop, c : c + crop]), size // 2, size // 2)
    tile = np.block([[half, half[:, ::-1]], [half[::-1], half[::-1, ::-1]]]).astype(np.float64)
    return (tile - tile.min()) / max(float(np.ptp(tile)), 1e-9)


def _pattern(spec: MaterialSpec, rng: np.random.Generator) -> np.ndarray:
    """(size, size) pattern in [0, 1] of a material; every pattern tiles seamlessly."""
    size = spec.size
    u = np.arange(size)[None, :] / size  # (1, S) across the texture
    v = np.arange(size)[:, None] / size  # (S, 1) down the texture
    grain = _fractal_noise(rng, size, (4, 8, 16))
    if spec.pattern == "plaster":
        return 0.55 + 0.45 * _fractal_noise(rng, size, (4, 8, 16, 32))
    if spec.pattern == "stripes":
        stripes = np.clip(3 * np.sin(2 * np.pi * int(rng.integers(3, 8)) * u), -1, 1)
        return np.broadcast_to(0.6 + 0.3 * stripes, (size, size)) + 0.1 * grain - 0.05
    if spec.pattern == "dots":
        n = int(rng.integers(3, 7))
        du, dv = (u * n) % 1 - 0.5, (v * n) % 1 - 0.5
        return np.where(np.hypot(du, dv) < 0.22, 0.15, 0.95) - 0.1 * grain + 0.05
    if spec.pattern in ("brick", "stone"):
        return _mirror_tile(rng, _photo("brick" if spec.pattern == "brick" else "gravel"), size)
    if spec.pattern in ("planks", "wood"):
        rows = int(rng.integers(3, 7)) if spec.pattern == "planks" else 1
        row = np.floor(v * rows)
        shift = rng.random(rows + 1)[row.astype(int)]
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * ((u + shift) % 1) + 2.5 * grain))
        pattern = 0.35 + 0.5 * rings + 0.15 * rng.random(rows + 1)[row.astype(int)]
        if spec.pattern == "planks":
            seam = ((v * rows) % 1 < 0.03) | ((v * rows) % 1 > 0.97)
            pattern = np.where(seam, 0.05, pattern)
        return pattern
    if spec.pattern in ("tiles", "checker"):
        n = int(rng.integers(2, 6)) if spec.pattern == "tiles" else 2 * int(rng.integers(1, 3))
        i, j = np.floor(v * n).astype(int), np.floor(u * n).astype(int)
        if spec.pattern == "checker":
            base = np.where((i + j) % 2 == 0, 0.2, 0.95)
        else:
            base = 0.55 + 0.4 * rng.random((n, n))[i % n, j % n]
        grout = ((u * n) % 1 < 0.03) | ((v * n) % 1 < 0.03)
        return np.where(grout, 0.1, base) + 0.08 * grain - 0.04
    if spec.pattern == "carpet":
        return _fractal_noise(rng, size, (16, 32, 64))
    if spec.pattern == "fabric":
        weave = np.sin(2 * np.pi * 32 * u) * np.sin(2 * np.pi * 32 * v)
        return 0.6 + 0.15 * weave + 0.25 * grain
    raise ValueError(f"unknown texture pattern {spec.pattern!r} of material {spec.name!r}")


def material_texture(spec: MaterialSpec) -> np.ndarray | None:
    """The texture of a material.

    Args:
        spec: the material.

    Returns:
        uint8 (size, size, 3) RGB image, or ``None`` for ``plain`` materials.
    """
    if spec.pattern == "plain":
        return None
    pattern = np.clip(_pattern(spec, np.random.default_rng(spec.seed)), 0.0, 1.0)
    a, b = np.asarray(spec.color_a), np.asarray(spec.color_b)
    return np.round(255 * (a + (b - a) * pattern[..., None])).astype(np.uint8)


def picture_image(picture: Picture) -> np.ndarray:
    """The image of a wall picture: a crop of a photograph or an abstract composition.

    Args:
        picture: the picture.

    Returns:
        uint8 (h, w, 3) RGB image, 128 pixels on its longer side, with the picture's aspect ratio.
    """
    rng = np.random.default_rng(picture.seed)
    aspect = picture.width / picture.height
    width_px = _SMALL_TEXTURE_PX if aspect >= 1 else max(8, round(_SMALL_TEXTURE_PX * aspect))
    height_px = _SMALL_TEXTURE_PX if aspect < 1 else max(8, round(_SMALL_TEXTURE_PX / aspect))
    if picture.source.startswith("photo:"):
        photo = _photo(picture.source.removeprefix("photo:"))
        rows, cols = photo.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        crop_w = min(cols, rows * aspect) * scale
        crop_h = crop_w / aspect
        r = int(rng.uniform(0, rows - crop_h))
        c = int(rng.uniform(0, cols - crop_w))
        crop = np.ascontiguousarray(photo[r : r + int(crop_h), c : c + int(crop_w)])
        image = _resize(crop, width_px, height_px)
        if image.ndim == 2:  # stretch the contrast, then map dark..light to two hues
            lo, hi = np.percentile(image, [2, 98])
            gray = np.clip((image - lo) / max(hi - lo, 1.0), 0.0, 1.0)[..., None]
            dark = np.array(_hsv(picture.hue, 0.9, 0.2))
            light = np.array(_hsv(picture.hue + 0.4, 0.5, 1.0))
            image = np.round(255 * (dark + (light - dark) * gray))
        return image.astype(np.uint8)
    image = np.empty((height_px, width_px, 3))
    image[:] = _hsv(picture.hue, rng.uniform(0.3, 0.6), rng.uniform(0.7, 1.0))
    yy, xx = np.mgrid[0:height_px, 0:width_px] / _SMALL_TEXTURE_PX
    for _ in range(int(rng.integers(6, 13))):
        color = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.3, 1.0))
        cx, cy, r = rng.random() * aspect, rng.random(), rng.uniform(0.05, 0.3)
        if rng.random() < 0.5:
            mask = np.hypot(xx - cx, yy - cy) < r
        else:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < rng.uniform(0.05, 0.3))
        image[mask] = color
    return np.round(255 * image).astype(np.uint8)


# --------------------------------------------------------------------------------------- meshes
class _Surfaces:
    """Triangles of one material, accumulated quad by quad."""

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.uvs: list[np.ndarray] = []

    def quad(self, corners: np.ndarray, normal: np.ndarray, uv: np.ndarray) -> None:
        """Add a planar quad (4, 3) with UVs (4, 2), counter-clockwise seen from ``normal``."""
        corners = np.asarray(corners, dtype=np.float64)
        uv = np.asarray(uv, dtype=np.float64)
        order = [0, 1, 2, 0, 2, 3]
        if np.dot(np.cross(corners[1] - corners[0], corners[2] - corners[0]), normal) < 0:
            order = [0, 2, 1, 0, 3, 2]
        self.vertices.append(corners[order])
        self.uvs.append(uv[order])

    def box(self, lo: np.ndarray, hi: np.ndarray, tile: float) -> None:
        """Add the six outward faces of the axis-aligned box ``[lo, hi]``."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        for axis in range(3):
            a, b = [k for k in range(3) if k != axis]
            for bound, sign in ((lo[axis], -1.0), (hi[axis], 1.0)):
                corners = np.empty((4, 3))
                corners[:, axis] = bound
                corners[:, a] = [lo[a], hi[a], hi[a], lo[a]]
                corners[:, b] = [lo[b], lo[b], hi[b], hi[b]]
                normal = np.zeros(3)
                normal[axis] = sign
                self.quad(corners, normal, corners[:, [a, b]] / tile)

    def mesh(self, material: PBRMaterial, textured: bool) -> trimesh.Trimesh:
        vertices = np.concatenate(self.vertices)  # (3F, 3) unshared corners
        faces = np.arange(len(vertices)).reshape(-1, 3)  # (F, 3)
        uv = np.concatenate(self.uvs) if textured else None
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def _point(axis: int, normal: float, tangent: float, y: float) -> tuple[float, float, float]:
    """World point from coordinates along a wall normal ``axis`` (0 or 2), its tangent and y."""
    return (normal, y, tangent) if axis == 0 else (tangent, y, normal)


def _wall_quad(
    surfaces: _Surfaces, axis: int, at: float, sign: float, t: tuple[float, float],
    y: tuple[float, float], tile: float,
) -> None:  # fmt: skip
    corners = [_point(axis, at, t[0], y[0]), _point(axis, at, t[1], y[0]),
               _point(axis, at, t[1], y[1]), _point(axis, at, t[0], y[1])]  # fmt: skip
    normal = np.array(_point(axis, sign, 0.0, 0.0))
    uv = np.array([[t[0], y[0]], [t[1], y[0]], [t[1], y[1]], [t[0], y[1]]]) / tile
    surfaces.quad(np.array(corners), normal, uv)


def _floor_quad(surfaces: _Surfaces, rect: tuple[float, ...], y: float, up: bool, tile: float):
    x0, z0, x1, z1 = rect
    corners = np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]])
    surfaces.quad(corners, np.array([0.0, 1.0 if up else -1.0, 0.0]), corners[:, [0, 2]] / tile)


def _room_walls(layout: HouseLayout, room: Room) -> _Surfaces:
    """Inner faces of a room's four walls, with openings and lintels at its doorways."""
    surfaces, tile, top = _Surfaces(), room.wall_material.tile_m, layout.ceiling_height
    for side in range(4):
        axis, at, sign, _, t_min, t_max = _side_geometry(room.floor, side)
        cursor = t_min
        for door in sorted(_door_gaps(room, layout.doors, side), key=_door_along):
            lo, hi = _door_along(door) - door.width / 2, _door_along(door) + door.width / 2
            _wall_quad(surfaces, axis, at, sign, (cursor, lo), (0.0, top), tile)
            _wall_quad(surfaces, axis, at, sign, (lo, hi), (door.height, top), tile)
            cursor = hi
        _wall_quad(surfaces, axis, at, sign, (cursor, t_max), (0.0, top), tile)
    return surfaces


def _doorway(surfaces: _Surfaces, door: Door) -> None:
    """Floor, jambs and lintel of the passage through the wall."""
    line = door.center[0] if door.axis == 0 else door.center[1]
    along = _door_along(door)
    n = (line - door.thickness / 2, line + door.thickness / 2)
    t = (along - door.width / 2, along + door.width / 2)
    tangent_axis = 2 if door.axis == 0 else 0
    for t_at, sign in ((t[0], 1.0), (t[1], -1.0)):  # jambs face into the passage
        _wall_quad(surfaces, tangent_axis, t_at, sign, n, (0.0, door.height), 1.0)
    rect = (n[0], t[0], n[1], t[1]) if door.axis == 0 else (t[0], n[0], t[1], n[1])
    _floor_quad(surfaces, rect, 0.0, True, 1.0)
    _floor_quad(surfaces, rect, door.height, False, 1.0)


def _furniture_boxes(piece: Furniture) -> list[tuple[str, tuple[float, ...]]]:
    """Boxes ``(part, (u0, u1, v0, v1, y0, y1))`` of a piece in its own frame.

    u runs along its back wall from the footprint's start, v away from the wall, y up; part is
    ``wood``, ``fabric`` or ``trim``.
    """
    axis, _, _ = _SIDES[piece.facing]
    width = np.ptp(_span(piece.footprint, 2 if axis == 0 else 0))
    depth = np.ptp(_span(piece.footprint, axis))
    w, d, h = float(width), float(depth), piece.height
    if piece.kind == "table":
        boxes = [("wood", (0, w, 0, d, h - 0.04, h))]
        for u, v in ((0.03, 0.03), (w - 0.09, 0.03), (0.03, d - 0.09), (w - 0.09, d - 0.09)):
            boxes.append(("wood", (u, u + 0.06, v, v + 0.06, 0, h - 0.04)))
        return boxes
    if piece.kind == "shelf":
        boxes = [("wood", (0, 0.03, 0, d, 0, h)), ("wood", (w - 0.03, w, 0, d, 0, h)),
                 ("wood", (0.03, w - 0.03, 0, 0.02, 0, h))]  # fmt: skip
        for y in np.linspace(0, h - 0.025, max(2, int(h / 0.4)) + 1):
            boxes.append(("wood", (0.03, w - 0.03, 0.02, d, float(y), float(y) + 0.025)))
        return boxes
    if piece.kind == "cabinet":
        return [("wood", (0.01, w - 0.01, 0, d - 0.01, 0, h - 0.03)),
                ("wood", (0, w, 0, d, h - 0.03, h))]  # fmt: skip
    if piece.kind == "bed":
        return [("wood", (0, w, 0, d, 0, 0.3)), ("wood", (0, w, 0, 0.06, 0.3, h)),
                ("fabric", (0.03, w - 0.03, 0.06, d - 0.02, 0.3, 0.5)),
                ("trim", (0.15, w - 0.15, 0.1, 0.45, 0.5, 0.6))]  # fmt: skip
    if piece.kind == "sofa":
        return [("fabric", (0, w, 0, d, 0.05, 0.42)), ("fabric", (0, w, 0, 0.2, 0.42, h)),
                ("fabric", (0, 0.15, 0.2, d, 0.42, 0.62)),
                ("fabric", (w - 0.15, w, 0.2, d, 0.42, 0.62)),
                ("wood", (0.05, w - 0.05, 0.05, d - 0.05, 0, 0.05))]  # fmt: skip
    raise ValueError(f"unknown furniture kind {piece.kind!r}")


def _add_furniture(parts: dict[str, _Surfaces], piece: Furniture, materials: dict) -> None:
    axis, _, sign = _SIDES[piece.facing]
    tangent_axis = 2 if axis == 0 else 0
    normal_span = _span(piece.footprint, axis)
    back = normal_span[0] if sign > 0 else normal_span[1]
    start = _span(piece.footprint, tangent_axis)[0]
    for part, (u0, u1, v0, v1, y0, y1) in _furniture_boxes(piece):
        spec = {"wood": piece.material, "fabric": piece.fabric, "trim": None}[part]
        name = spec.name if spec is not None else "trim"
        n0, n1 = sorted((back + sign * v0, back + sign * v1))
        lo, hi = np.zeros(3), np.zeros(3)
        lo[axis], hi[axis] = n0, n1
        lo[tangent_axis], hi[tangent_axis] = start + u0, start + u1
        lo[1], hi[1] = y0, y1
        parts.setdefault(name, _Surfaces()).box(lo, hi, spec.tile_m if spec else 1.0)
        if spec is not None:
            materials[name] = spec


def _add_picture(surfaces: _Surfaces, frame: _Surfaces, picture: Picture) -> None:
    normal = np.array([picture.normal[0], 0.0, picture.normal[1]])
    right = np.array([picture.normal[1], 0.0, -picture.normal[0]])  # viewer's right
    up = np.array([0.0, 1.0, 0.0])
    center = np.asarray(picture.center)
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    half = np.array([picture.width / 2, picture.height / 2])
    corners = center + (signs * half) @ np.stack([right, up])
    surfaces.quad(corners, normal, (signs + 1) / 2)
    half_frame = half + _FRAME_BORDER_M
    behind = center - normal * (_PICTURE_OFFSET_M - _FRAME_OFFSET_M)
    frame.quad(behind + (signs * half_frame) @ np.stack([right, up]), normal, (signs + 1) / 2)


def _pbr(name: str, image: np.ndarray | None, color=(1.0, 1.0, 1.0)):
    return PBRMaterial(
        name=name,
        baseColorTexture=None if image is None else Image.fromarray(image),
        baseColorFactor=[*(round(255 * c) for c in color), 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=True,
    )


def build_scene(layout: HouseLayout) -> trimesh.Scene:
    """Textured triangle meshes of a house layout, one node per material.

    Args:
        layout: the house.

    Returns:
        A scene in the world frame (y up, metres) whose geometries carry UVs and PBR materials
        with ``baseColorTexture`` (or a plain ``baseColorFactor``).
    """
    groups: dict[str, tuple[_Surfaces, MaterialSpec | None]] = {}
    for room in layout.rooms:
        groups[f"room{room.index:02d}_walls"] = (_room_walls(layout, room), room.wall_material)
        floor = _Surfaces()
        _floor_quad(floor, room.floor, 0.0, True, room.floor_material.tile_m)
        groups[f"room{room.index:02d}_floor"] = (floor, room.floor_material)
    ceiling = _Surfaces()
    for room in layout.rooms:
        _floor_quad(ceiling, room.floor, layout.ceiling_height, False, 2.0)
    groups["ceiling"] = (ceiling, layout.ceiling_material)
    doorways = _Surfaces()
    for door in layout.doors:
        _doorway(doorways, door)
    groups["doorways"] = (doorways, layout.frame_material)
    parts: dict[str, _Surfaces] = {}
    materials: dict[str, MaterialSpec] = {}
    for piece in layout.furniture:
        _add_furniture(parts, piece, materials)
    for name in sorted(parts):
        spec = materials.get(name, layout.frame_material)
        groups[f"furniture_{name}"] = (parts[name], spec)
    frames = _Surfaces()
    scene = trimesh.Scene()
    for name, (surfaces, spec) in groups.items():
        if not surfaces.vertices:
            continue
        image = material_texture(spec)
        material = _pbr(spec.name, image, (1.0,) * 3 if image is not None else spec.color_b)
        scene.add_geometry(surfaces.mesh(material, image is not None), name, name)
    for picture in layout.pictures:
        surfaces = _Surfaces()
        _add_picture(surfaces, frames, picture)
        material = _pbr(picture.name, picture_image(picture))
        scene.add_geometry(surfaces.mesh(material, True), picture.name, picture.name)
    if frames.vertices:
        material = _pbr("picture_frame", None, (0.12, 0.1, 0.08))
        scene.add_geometry(frames.mesh(material, False), "picture_frames", "picture_frames")
    return scene


def generate_house(scene_id: str) -> trimesh.Scene:
    """The textured mesh of a procedural house, deterministic from its id.

    Args:
        scene_id: ``house-{split}-{index:04d}``.

    Returns:
        The scene (see :func:`build_scene`).

    Raises:
        ValueError: for an unknown scene id.
    """
    return build_scene(generate_layout(scene_id))


# --------------------------------------------------------------------------------------- files
def default_cache_dir() -> Path:
    """Folder of the generated ``.glb`` houses.

    ``$PERSISTENT_WORLD_CACHE/scenes/v<GENERATOR_VERSION>`` when that variable is set (it must be
    an absolute path), otherwise ``~/.cache/persistent-world/scenes/v<GENERATOR_VERSION>``.

    Raises:
        ValueError: if ``$PERSISTENT_WORLD_CACHE`` is a relative path.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise ValueError(
                f"${CACHE_ENV_VAR} must be an absolute path, got {root!r}; "
                "set it to a folder such as /data/persistent-world-cache"
            )
    else:
        path = Path.home() / ".cache" / "persistent-world"
    return path / "scenes" / f"v{GENERATOR_VERSION}"


def export_glb(scene: trimesh.Scene, path: str | Path) -> Path:
    """Write a scene to a binary glTF file atomically (temporary file, then rename).

    Args:
        scene: the scene; its world frame is written as is (glTF is y-up, metres).
        path: destination ``.glb``; missing parent folders are created.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = scene.export(file_type="glb")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files; scenes are shareable
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_glb(path: str | Path) -> trimesh.Scene:
    """Read a binary glTF file as a scene, without any axis conversion.

    Args:
        path: a ``.glb`` file.

    Returns:
        The scene, with at least one triangle.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a binary glTF, is truncated, cannot be parsed or has no
            triangles; the message names the path and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file {str(path)!r} does not exist (or is not a file)")
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"glTF":
        raise ValueError(
            f"{str(path)!r} is not a binary glTF (.glb) file: it does not start with the "
            f"'glTF' magic bytes (got {data[:4]!r}); export the scene as .glb"
        )
    version, declared = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise ValueError(f"{str(path)!r} is glTF version {version}; only version 2 is supported")
    if declared != len(data):
        raise ValueError(
            f"{str(path)!r} is truncated or corrupted: its header declares {declared} bytes "
            f"but the file has {len(data)}; regenerate or re-export it"
        )
    _refuse_basis_textures(path, data)
    try:
        scene = trimesh.load_scene(trimesh.util.wrap_as_stream(data), file_type="glb")
    except Exception as error:
        raise ValueError(f"{str(path)!r} is a malformed glTF binary: {error}") from error
    if sum(len(mesh.faces) for _, mesh, _ in scene_meshes(scene)) == 0:
        raise ValueError(f"{str(path)!r} contains no triangle meshes; nothing to render or walk on")
    return scene


def _refuse_basis_textures(path: Path, data: bytes) -> None:
    """Refuse a glb whose textures are Basis Universal (KTX2) images, which trimesh cannot read.

    trimesh would load the geometry and drop those textures, so the scene would render untextured
    without a word; the transcoder on PyPI (``opengl-basisu``) could not be checked against a real
    file here, so such files are refused.
    """
    if len(data) < 20 or data[16:20] != b"JSON":
        return  # no JSON chunk: trimesh reports the problem
    (length,) = struct.unpack_from("<I", data, 12)
    try:
        header = json.loads(data[20 : 20 + length])
    except ValueError:
        return  # trimesh reports the problem
    extensions = set(header.get("extensionsUsed", [])) | set(header.get("extensionsRequired", []))
    ktx2 = any(image.get("mimeType") == "image/ktx2" for image in header.get("images", []))
    if "KHR_texture_basisu" in extensions or ktx2:
        raise ValueError(
            f"{str(path)!r} has Basis Universal (KTX2, KHR_texture_basisu) textures, which the "
            "embedded renderer cannot decode; use the habitat backend, or convert the textures "
            "to PNG/JPEG (e.g. HM3D's non-basis .glb files, or gltf-transform's ktxdecompress)"
        )


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def habitat_up_front(path: str | Path) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """The up and front vectors of a scene file from the Habitat configs beside it, if any.

    Looked up as Habitat resolves a stage: ``<name>.stage_config.json`` beside the file (``<name>``
    the file name without ``.glb``, or without ``.basis.glb``) with keys ``"up"`` and ``"front"``;
    else the ``stages.default_attributes`` of a ``*.scene_dataset_config.json`` in the file's
    folder or the two above it (the nearest folder that has one). A missing ``"front"`` is
    ``(0, 0, -1)``, or ``(0, 1, 0)`` when ``"up"`` is along z.

    Args:
        path: the scene file.

    Returns:
        ``(up, front, config path)`` with (3,) float64 unit vectors in the file's frame, or
        ``None`` when no config names an up vector.

    Raises:
        ValueError: a config that is not valid JSON, or whose up / front are not two orthogonal
            non-zero 3-vectors; the message names the file.
    """
    path = Path(path)
    stems = {path.name.removesuffix(".glb"), path.name.removesuffix(".basis.glb")}
    for stem in sorted(stems):
        stage = path.with_name(f"{stem}.stage_config.json")
        if stage.is_file():
            config = _read_json(stage)
            if "up" in config:
                return (*_up_front(config, stage), stage)
    for folder in list(path.resolve().parents)[:_DATASET_CONFIG_LEVELS]:
        datasets = sorted(folder.glob("*.scene_dataset_config.json"))
        for dataset in datasets:
            defaults = _read_json(dataset).get("stages", {}).get("default_attributes", {})
            if "up" in defaults:
                return (*_up_front(defaults, dataset), dataset)
        if datasets:
            return None
    return None


def _up_front(config: dict, source: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        up = np.asarray(config["up"], dtype=np.float64)
        default_front = (0.0, 1.0, 0.0) if up.shape == (3,) and abs(up[2]) > abs(up[1]) else None
        front = np.asarray(config.get("front", default_front or (0.0, 0.0, -1.0)), np.float64)
    except (TypeError, ValueError):
        up = front = np.zeros(0)
    if (
        up.shape != (3,)
        or front.shape != (3,)
        or not (np.isfinite(up).all() and np.isfinite(front).all())
        or min(np.linalg.norm(up), np.linalg.norm(front)) == 0
        or abs(up @ front) > 1e-3 * np.linalg.norm(up) * np.linalg.norm(front)
    ):
        raise ValueError(
            f'{str(source)!r}: "up" and "front" must be two orthogonal non-zero 3-vectors, '
            f"got up={config.get('up')!r}, front={config.get('front')!r}"
        )
    return up / np.linalg.norm(up), front / np.linalg.norm(front)


def to_y_up(up: np.ndarray, front: np.ndarray) -> np.ndarray:
    """(4, 4) rotation taking a file's ``up`` to world +y and its ``front`` to world -z.

    Args:
        up: (3,) unit up vector in the file's frame.
        front: (3,) unit front vector, orthogonal to ``up``.
    """
    up, front = np.asarray(up, np.float64), np.asarray(front, np.float64)
    source = np.stack([np.cross(front, up), up, -front])  # rows: file's right, up, back
    transform = np.eye(4)
    transform[:3, :3] = source  # maps right -> +x, up -> +y, back -> +z
    return transform


def load_scene(
    source: str | Path, cache_dir: str | Path | None = None, up_axis: str | None = None
) -> trimesh.Scene:
    """Load a procedural house by id or any ``.glb`` scene file by path, in the y-up world frame.

    Args:
        source: a scene id (``house-{split}-{index:04d}``; generated on first use and cached as
            ``<cache_dir>/<id>.glb``) or the path of a ``.glb`` file (e.g. an HM3D scene).
        cache_dir: folder of generated houses; :func:`default_cache_dir` if ``None``.
        up_axis: up axis of a scene file, one of :data:`UP_AXES` (``"z"`` for Habitat's MP3D and
            HM3D files); ``None`` reads it from Habitat configs beside the file
            (:func:`habitat_up_front`), else ``"y"``. Generated houses are always y-up.

    Returns:
        The scene (y up, metres). Generated houses are always read back from their ``.glb`` so
        that a cached and a freshly generated house are identical.

    Raises:
        ValueError: for an unknown scene id or up axis, a string that is neither an id nor a file,
            a malformed ``.glb`` (see :func:`load_glb`) or Habitat config, or a file taken as
            y-up (no ``up_axis``, no config) that is taller than wide (see the module docstring).
        FileNotFoundError: for a ``.glb`` path that does not exist.
    """
    if up_axis is not None and up_axis not in UP_AXES:
        raise ValueError(f"unknown up_axis {up_axis!r}: allowed are {UP_AXES} (or None)")
    if isinstance(source, str) and not source.lower().endswith(".glb"):
        if source.startswith("house-"):
            parse_scene_id(source)
            path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            path = path / f"{source}.glb"
            if not path.is_file():
                export_glb(generate_house(source), path)
            return load_glb(path)
        if not Path(source).is_file():
            raise ValueError(
                f"{source!r} is neither a scene id ({_ALLOWED_IDS}) nor an existing .glb file"
            )
    path = Path(source)
    configured = None if up_axis is not None or not path.is_file() else habitat_up_front(path)
    scene = load_glb(path)
    if up_axis is not None:
        scene.apply_transform(to_y_up(*map(np.asarray, _UP_FRONT[up_axis])))
    elif configured is not None:
        scene.apply_transform(to_y_up(configured[0], configured[1]))
    else:
        _refuse_taller_than_wide(scene, path)
    return scene


def _refuse_taller_than_wide(scene: trimesh.Scene, path: Path) -> None:
    width_x, height, width_z = scene_mesh(scene).extents
    if height > _MAX_HEIGHT_TO_WIDTH * min(width_x, width_z):
        raise ValueError(
            f"{str(path)!r} read as y-up is {height:.2f} m tall but only "
            f"{min(width_x, width_z):.2f} m wide (x {width_x:.2f} m, z {width_z:.2f} m): it looks "
            f"like a z-up file (Habitat's MP3D / HM3D scenes are) standing on its side; "
            f"{_UP_AXIS_FIX}"
        )


def scene_meshes(scene: trimesh.Scene) -> list[tuple[str, trimesh.Trimesh, np.ndarray]]:
    """The triangle meshes of a scene with their node transforms.

    Args:
        scene: any trimesh scene.

    Returns:
        ``(node name, mesh in its own frame, (4, 4) float64 node-to-world transform)`` for every
        node holding a mesh with at least one triangle (point clouds and paths are skipped).
    """
    out = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        mesh = scene.geometry.get(name)
        if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0:
            out.append((node, mesh, np.asarray(transform, dtype=np.float64)))
    return out


def scene_mesh(scene: trimesh.Scene) -> trimesh.Trimesh:
    """The whole scene as one untextured world-frame mesh, for navigation and ray casting.

    Args:
        scene: any trimesh scene.

    Returns:
        A mesh with every node's transform applied (no visuals, vertices not merged).

    Raises:
        ValueError: if the scene has no triangles.
    """
    parts = scene_meshes(scene)
    if not parts:
        raise ValueError("scene has no triangle meshes")
    vertices, faces, offset = [], [], 0
    for _, mesh, transform in parts:
        vertices.append(trimesh.transform_points(mesh.vertices, transform))
        faces.append(np.asarray(mesh.faces) + offset)
        offset += len(mesh.vertices)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)
