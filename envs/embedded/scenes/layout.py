"""House floor plans: rooms, doorways, furniture and pictures, drawn from a house's seed.

3 to 8 axis-aligned rectangular rooms obtained by recursively splitting a rectangular footprint,
joined by doorways so that the room graph is connected (a random spanning tree plus a few extra
doors that make loops). Each room has its own wall and floor material, furniture made of boxes
(beds, sofas, tables, shelves, cabinets) that leaves the doorways clear and the floor connected
for an agent of radius :data:`CLEARANCE_RADIUS_M`, and pictures on its walls: distinct textured
quads slightly in front of the wall that act as landmarks. World frame of
:mod:`worldsim.geometry`: right-handed, y up, metres, floor at ``y = 0``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from envs.embedded.scenes.ids import scene_seed

CLEARANCE_RADIUS_M = 0.25
"""Radius of the agent for which every room's floor is kept connected between its doorways."""
_WALL_TEXTURE_PX = 256
_SMALL_TEXTURE_PX = 128
_MIN_ROOM_SIDE_M = 2.4
_DOOR_HEIGHT_M = 2.1
_MAX_ATTEMPTS = 100  # of drawing a floor plan; in practice one or two suffice
_DOOR_CLEARANCE_DEPTH_M = 1.0  # no furniture this far in front of a doorway
_GRID_M = 0.05  # resolution of the free-space check
_PICTURE_OFFSET_M = 0.02  # pictures float this far in front of their wall

# Sides of a room's floor rectangle: (axis of the wall's normal, which bound, inward normal sign).
# Side 0: x = x_min, 1: x = x_max, 2: z = z_min, 3: z = z_max.
_SIDES = ((0, 0, 1.0), (0, 1, -1.0), (2, 0, 1.0), (2, 1, -1.0))


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
