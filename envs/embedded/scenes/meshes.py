"""A house layout as a textured triangle mesh (a ``trimesh.Scene`` that exports to ``.glb``).

Only the surfaces seen from inside the house are modelled: the inner faces of the walls (each
room's walls are inset by half the wall thickness from the wall centre lines, so walls between
rooms are ``wall_thickness`` thick and hollow), floors, ceilings, the jambs, floor and lintel of
every doorway, furniture boxes and pictures. A house has about 300 to 1,300 triangles and 20
to 40 textures of 128-256 pixels (a .glb of about 0.5 MB). :func:`storey_house` stacks a house
into several storeys and subdivides its triangles, for scenes of a scan's size (HM3D: two
storeys, half a million triangles and more) with the same textures and an exact layout.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial

from envs.embedded.scenes.layout import (
    _PICTURE_OFFSET_M,
    _SIDES,
    Door,
    Furniture,
    HouseLayout,
    MaterialSpec,
    Picture,
    Room,
    _door_along,
    _door_gaps,
    _side_geometry,
    _span,
    generate_layout,
)
from envs.embedded.scenes.textures import material_texture, picture_image

_FRAME_OFFSET_M = 0.01
_FRAME_BORDER_M = 0.04
STOREY_SLAB_M = 0.2
"""Thickness of the slab between a storey's ceiling and the floor of the storey above, metres."""


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


def storey_house(scene_id: str, storeys: int = 2, min_triangles: int = 0) -> trimesh.Scene:
    """A house stacked into storeys, its triangles subdivided to a size (for large-scene tests).

    Storey ``k`` is the house moved up by ``k * (ceiling_height + STOREY_SLAB_M)``; its nodes are
    named ``storey{k}/<node>``. There are no stairs: each storey is its own navigable floor.
    Triangles are then split into four at their edge midpoints (UVs interpolated, so surfaces,
    textures and layout stay exactly those of the house), each as often as it takes to bring its
    longest edge to a common length, so the triangles have about one size everywhere, as in a
    scanned mesh; the length is the longest that gives at least ``min_triangles``.

    Args:
        scene_id: ``house-{split}-{index:04d}``.
        storeys: number of storeys, in [1, 16].
        min_triangles: least number of triangles of the result, in [0, 50_000_000].

    Returns:
        The scene (y up, metres).

    Raises:
        ValueError: for an unknown scene id or out-of-range counts.
    """
    if not isinstance(storeys, int) or not 1 <= storeys <= 16:
        raise ValueError(f"storeys must be an integer in [1, 16], got {storeys!r}")
    if not isinstance(min_triangles, int) or not 0 <= min_triangles <= 50_000_000:
        raise ValueError(f"min_triangles must be in [0, 50_000_000], got {min_triangles!r}")
    layout = generate_layout(scene_id)
    house = build_scene(layout)
    nodes = list(house.graph.nodes_geometry)
    meshes = [house.geometry[house.graph[name][1]] for name in nodes]
    longest = [_longest_edges(np.asarray(mesh.vertices)[mesh.faces]) for mesh in meshes]
    edges = np.concatenate(longest)  # (F,) over the whole house

    def splits(length: float, edge: np.ndarray) -> np.ndarray:
        """Times each triangle is split so that its longest edge is at most ``length``."""
        return np.maximum(np.ceil(np.log2(edge / length)), 0).astype(np.int64)

    length = float(edges.max())
    while storeys * int((4 ** splits(length, edges)).sum()) < min_triangles:
        length /= 1.05  # 5 % steps: the count lands within about 10 % above the target
    scene = trimesh.Scene()
    for name, mesh, edge in zip(nodes, meshes, longest, strict=True):
        corners = np.asarray(mesh.vertices)[mesh.faces]  # (F, 3, 3)
        uv = None if mesh.visual.uv is None else np.asarray(mesh.visual.uv)[mesh.faces]
        count = splits(length, edge)
        parts, uv_parts = [], []
        for times in np.unique(count):
            pick = count == times
            part, part_uv = corners[pick], None if uv is None else uv[pick]
            for _ in range(times):
                part = _split_in_four(part)
                part_uv = None if part_uv is None else _split_in_four(part_uv)
            parts.append(part)
            uv_parts.append(part_uv)
        corners = np.concatenate(parts)
        uv = None if uv is None else np.concatenate(uv_parts).reshape(-1, 2)
        faces = np.arange(3 * len(corners)).reshape(-1, 3)
        for storey in range(storeys):
            lift = np.array([0.0, storey * (layout.ceiling_height + STOREY_SLAB_M), 0.0])
            visual = trimesh.visual.TextureVisuals(uv=uv, material=mesh.visual.material)
            vertices = (corners + lift).reshape(-1, 3)
            part = trimesh.Trimesh(vertices, faces, visual=visual, process=False)
            scene.add_geometry(part, f"storey{storey}/{name}", f"storey{storey}/{name}")
    return scene


def _longest_edges(corners: np.ndarray) -> np.ndarray:
    """(F,) longest edge of each of the (F, 3, 3) triangles, metres."""
    return np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).max(axis=1)


def _split_in_four(corners: np.ndarray) -> np.ndarray:
    """(F, 3, D) triangle corners -> (4F, 3, D): the three corner triangles and the middle one."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
    parts = [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]  # each keeps the winding
    return np.stack([np.stack(part, axis=1) for part in parts], axis=1).reshape(-1, 3, a.shape[1])
