"""Procedural houses: ids and splits, layout invariants, mesh contents, .glb round trips, errors."""

import hashlib
import itertools
import json
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from envs.embedded import scenes
from envs.embedded.scenes import (
    SCENES_PER_SPLIT,
    SPLITS,
    Door,
    Furniture,
    MaterialSpec,
    Room,
    build_scene,
    export_glb,
    generate_house,
    generate_layout,
    habitat_up_front,
    load_glb,
    load_scene,
    parse_scene_id,
    picture_image,
    room_is_navigable,
    scene_ids,
    scene_mesh,
    scene_seed,
)

SAMPLE_IDS = [f"house-{split}-{i:04d}" for split in SPLITS for i in range(8)]


@pytest.fixture(scope="module")
def house_id():
    return "house-train-0001"


@pytest.fixture(scope="module")
def layout(house_id):
    return generate_layout(house_id)


@pytest.fixture(scope="module")
def house(layout):
    return build_scene(layout)


# ------------------------------------------------------------------------------------- ids, splits
def test_parse_scene_id_round_trips():
    assert parse_scene_id("house-val-0042") == ("val", 42)
    assert scene_ids("test", 3, start=9997) == [
        "house-test-9997", "house-test-9998", "house-test-9999"
    ]  # fmt: skip
    for split, index in [("train", 0), ("val", 123), ("test", SCENES_PER_SPLIT - 1)]:
        assert parse_scene_id(scene_ids(split, 1, start=index)[0]) == (split, index)


@pytest.mark.parametrize(
    "bad", ["house-dev-0001", "house-train-10000", "house-train-12", "House-train-0001", "", 7]
)
def test_unknown_scene_ids_are_rejected_with_the_allowed_pattern(bad):
    with pytest.raises(ValueError, match=r"unknown scene id .*house-\{train\|val\|test\}-NNNN"):
        parse_scene_id(bad)
    if isinstance(bad, str) and bad.startswith("house-"):
        with pytest.raises(ValueError, match="unknown scene id"):
            generate_layout(bad)


def test_scene_ids_rejects_bad_split_and_range():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        scene_ids("dev", 1)
    with pytest.raises(ValueError, match="outside"):
        scene_ids("train", 2, start=SCENES_PER_SPLIT - 1)


def test_splits_never_share_a_seed():
    seeds = [scene_seed(i) for split in SPLITS for i in scene_ids(split, SCENES_PER_SPLIT)]
    assert len(set(seeds)) == len(SPLITS) * SCENES_PER_SPLIT
    # The seed is a stable digest (not Python's salted hash): recompute one by hand.
    digest = hashlib.sha256(b"persistent-world/house/v1/val/7").digest()
    assert scene_seed("house-val-0007") == int.from_bytes(digest[:8], "little")


def test_same_index_in_different_splits_gives_different_houses():
    layouts = [generate_layout(f"house-{split}-0000") for split in SPLITS]
    for a, b in itertools.combinations(layouts, 2):
        assert [r.floor for r in a.rooms] != [r.floor for r in b.rooms]


# ------------------------------------------------------------------------------------- determinism
def test_generation_is_deterministic_down_to_the_glb_bytes(tmp_path, house_id, layout):
    assert generate_layout(house_id) == layout
    first = export_glb(generate_house(house_id), tmp_path / "a.glb").read_bytes()
    second = export_glb(generate_house(house_id), tmp_path / "b.glb").read_bytes()
    assert first == second


# ------------------------------------------------------------------------------------- layouts
def _components(num_rooms, doors):
    """Connected components of the room graph by union-find (independent of HouseLayout)."""
    parent = list(range(num_rooms))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for door in doors:
        parent[root(door.rooms[0])] = root(door.rooms[1])
    return {root(i) for i in range(num_rooms)}


@pytest.mark.parametrize("scene_id", SAMPLE_IDS)
def test_layout_invariants(scene_id):
    layout = generate_layout(scene_id)
    assert 3 <= len(layout.rooms) <= 8
    assert len(_components(len(layout.rooms), layout.doors)) == 1
    assert layout.is_connected()
    assert 2.6 <= layout.ceiling_height <= 3.0
    assert 0.1 <= layout.wall_thickness <= 0.2
    for room in layout.rooms:
        x0, z0, x1, z1 = room.floor
        assert x1 - x0 >= 2.0 and z1 - z0 >= 2.0  # 2.4 m cells minus a wall thickness
        assert room_is_navigable(room, layout.doors, layout.furniture)
    for a, b in itertools.combinations(layout.rooms, 2):  # floors never overlap
        assert not (a.floor[0] < b.floor[2] and b.floor[0] < a.floor[2]
                    and a.floor[1] < b.floor[3] and b.floor[1] < a.floor[3])  # fmt: skip
    for door in layout.doors:
        assert 0.9 <= door.width <= 1.2 and door.height == pytest.approx(2.1)
        # The doorway opens into both rooms: its span lies inside both floors' extent.
        along = door.center[1] if door.axis == 0 else door.center[0]
        for index in door.rooms:
            lo, hi = layout.rooms[index].floor[1::2] if door.axis == 0 else \
                layout.rooms[index].floor[0::2]  # fmt: skip
            assert lo < along - door.width / 2 and along + door.width / 2 < hi
    for piece in layout.furniture:
        x0, z0, x1, z1 = layout.rooms[piece.room].floor
        fx0, fz0, fx1, fz1 = piece.footprint
        assert x0 <= fx0 < fx1 <= x1 and z0 <= fz0 < fz1 <= z1


def test_furniture_keeps_doorways_clear():
    for scene_id in SAMPLE_IDS:
        layout = generate_layout(scene_id)
        for door, piece in itertools.product(layout.doors, layout.furniture):
            if piece.room not in door.rooms:
                continue
            # 1 m in front of the doorway on both sides, 0.3 m wider than it on each side.
            along = door.center[1] if door.axis == 0 else door.center[0]
            line = door.center[0] if door.axis == 0 else door.center[1]
            zone = (
                line - 1.0 - door.thickness / 2,
                along - door.width / 2 - 0.3 + 1e-6,
                line + 1.0 + door.thickness / 2,
                along + door.width / 2 + 0.3 - 1e-6,
            )
            if door.axis == 2:
                zone = (zone[1], zone[0], zone[3], zone[2])
            fx0, fz0, fx1, fz1 = piece.footprint
            overlap = fx0 < zone[2] and zone[0] < fx1 and fz0 < zone[3] and zone[1] < fz1
            assert not overlap, (scene_id, door, piece)


def _room(floor=(0.0, 0.0, 3.0, 3.0)):
    plain = MaterialSpec("m", "plain", (0, 0, 0), (1, 1, 1))
    return Room(0, "hall", floor, plain, plain)


def test_room_navigability_check_on_hand_made_rooms():
    room = _room()
    plain = room.wall_material
    # Doors in the west (x = 0) and east (x = 3) walls at z = 1.5; walls 0.2 m thick.
    doors = [
        Door((1, 0), 0, (-0.1, 1.5), 1.0, 2.1, 0.2),
        Door((0, 2), 0, (3.1, 1.5), 1.0, 2.1, 0.2),
    ]
    assert room_is_navigable(room, doors, [])
    corner = Furniture("cabinet", 0, (0.0, 0.0, 0.5, 0.5), 1.0, 2, plain)
    assert room_is_navigable(room, doors, [corner])
    # A wall of furniture from z = 0 to 2.7 m leaves 0.3 m < 2 x 0.25 m: the doors are cut apart.
    barrier = Furniture("shelf", 0, (1.3, 0.0, 1.7, 2.7), 2.0, 2, plain)
    assert not room_is_navigable(room, doors, [barrier])
    # The same barrier in another room does not matter.
    elsewhere = Furniture("shelf", 5, (1.3, 0.0, 1.7, 2.7), 2.0, 2, plain)
    assert room_is_navigable(room, doors, [elsewhere])
    # A piece right in front of a doorway blocks the entry cell.
    blocking = Furniture("cabinet", 0, (0.0, 1.0, 0.4, 2.0), 1.0, 0, plain)
    assert not room_is_navigable(room, doors, [blocking])


def test_pictures_are_on_walls_and_distinct(layout):
    assert len(layout.pictures) >= len(layout.rooms)
    images = []
    for picture in layout.pictures:
        room = layout.rooms[picture.room]
        nx, nz = picture.normal
        x, y, z = picture.center
        wall = (room.floor[0] if nx > 0 else room.floor[2]) if nx else \
            (room.floor[1] if nz > 0 else room.floor[3])  # fmt: skip
        offset = (x - wall) * nx + (z - wall) * nz  # distance in front of the wall
        assert offset == pytest.approx(0.02, abs=1e-3)  # coordinates are rounded to 0.1 mm
        assert y - picture.height / 2 >= 0.9 and y + picture.height / 2 < layout.ceiling_height
        image = picture_image(picture)
        assert image.dtype == np.uint8 and max(image.shape[:2]) == 128
        assert image.shape[1] / image.shape[0] == pytest.approx(
            picture.width / picture.height,
            rel=0.05,  # pixel rounding of a 128 px side
        )
        images.append(np.asarray(Image.fromarray(image).resize((32, 32))))
    for a, b in itertools.combinations(images, 2):
        # Landmarks must differ: mean absolute difference above 20 grey levels of 255.
        assert np.abs(a.astype(float) - b.astype(float)).mean() > 20


# ------------------------------------------------------------------------------------- meshes
def test_house_mesh_size_bounds_and_textures(layout, house):
    mesh = scene_mesh(house)
    assert 200 <= len(mesh.faces) <= 5000
    lo, hi = mesh.bounds
    assert lo[1] == pytest.approx(0.0) and hi[1] == pytest.approx(layout.ceiling_height)
    x0, z0, x1, z1 = layout.bounds
    assert lo[0] == pytest.approx(x0) and hi[0] == pytest.approx(x1)
    assert lo[2] == pytest.approx(z0) and hi[2] == pytest.approx(z1)
    textures = {}
    for name, geometry in house.geometry.items():
        material = geometry.visual.material
        if material.baseColorTexture is not None:
            size = material.baseColorTexture.size
            assert max(size) <= 256 and geometry.visual.uv.shape == (len(geometry.vertices), 2)
            textures[name] = np.asarray(material.baseColorTexture)
    walls = [textures[f"room{r.index:02d}_walls"] for r in layout.rooms]
    floors = [textures[f"room{r.index:02d}_floor"] for r in layout.rooms]
    for group in (walls, floors):  # every room has its own wall and floor texture
        for a, b in itertools.combinations(group, 2):
            assert not np.array_equal(a, b)


def _section_segments(mesh, height):
    """2D (x, z) segments of the mesh cut by the plane y = height."""
    lines = trimesh.intersections.mesh_plane(mesh, [0, 1, 0], [0, height, 0])  # (n, 2, 3)
    return lines[:, :, [0, 2]]


def _crosses(segments, p, q):
    """Whether segment p-q properly crosses any of the (n, 2, 2) segments."""
    a, b = segments[:, 0], segments[:, 1]

    def orient(u, v, w):
        return (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (
            w[..., 0] - u[..., 0]
        )

    p, q = np.asarray(p, float), np.asarray(q, float)
    d1, d2 = orient(a, b, p), orient(a, b, q)
    d3, d4 = orient(p[None], q[None], a), orient(p[None], q[None], b)
    return bool(np.any((d1 * d2 < 0) & (d3 * d4 < 0)))


@pytest.mark.parametrize("scene_id", ["house-train-0001", "house-val-0003", "house-test-0005"])
def test_doorway_gaps_exist_in_the_mesh(scene_id):
    layout = generate_layout(scene_id)
    mesh = scene_mesh(build_scene(layout))
    segments = _section_segments(mesh, 1.0)
    above_doors = _section_segments(mesh, 2.3)  # between the lintels (2.1 m) and the ceiling
    for door in layout.doors:
        line = door.center[0] if door.axis == 0 else door.center[1]
        along = door.center[1] if door.axis == 0 else door.center[0]

        def point(n, t, axis=door.axis):
            return (n, t) if axis == 0 else (t, n)

        through = (point(line - 0.3, along), point(line + 0.3, along))
        assert not _crosses(segments, *through), f"doorway {door} is closed in the mesh"
        # Just beside the opening, the same crossing hits the walls.
        beside = along + door.width / 2 + 0.05
        assert _crosses(segments, point(line - 0.3, beside), point(line + 0.3, beside))
        assert _crosses(above_doors, *through)  # the wall is closed above the lintel


def test_scene_mesh_applies_node_transforms():
    scene = trimesh.Scene()
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    shift = trimesh.transformations.translation_matrix([10.0, 0.5, -3.0])
    scene.add_geometry(box, node_name="a", geom_name="box", transform=shift)
    scene.add_geometry(box, node_name="b", geom_name="box")  # the same geometry, twice
    mesh = scene_mesh(scene)
    assert len(mesh.faces) == 2 * len(box.faces)
    shifted = box.vertices + np.array([10.0, 0.5, -3.0])
    np.testing.assert_allclose(mesh.vertices[: len(box.vertices)], shifted)
    np.testing.assert_allclose(mesh.vertices[len(box.vertices) :], box.vertices)
    with pytest.raises(ValueError, match="no triangle"):
        scene_mesh(trimesh.Scene())


# ------------------------------------------------------------------------------------- files
def test_glb_round_trip_preserves_geometry_and_textures(tmp_path, house):
    path = export_glb(house, tmp_path / "sub" / "house.glb")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = load_glb(path)
    assert set(loaded.geometry) == set(house.geometry)
    for name, original in house.geometry.items():
        copy = loaded.geometry[name]
        # glTF stores float32 positions and UVs.
        np.testing.assert_allclose(copy.vertices, original.vertices, atol=1e-5)
        np.testing.assert_array_equal(copy.faces, original.faces)
        texture = original.visual.material.baseColorTexture
        if texture is None:
            np.testing.assert_allclose(
                copy.visual.material.baseColorFactor, original.visual.material.baseColorFactor
            )
        else:
            np.testing.assert_allclose(copy.visual.uv, original.visual.uv, atol=1e-5)
            np.testing.assert_array_equal(  # PNG is lossless
                np.asarray(copy.visual.material.baseColorTexture.convert("RGB")),
                np.asarray(texture),
            )


def test_load_scene_generates_once_then_reads_the_cache(tmp_path, monkeypatch, house_id):
    monkeypatch.setenv("PERSISTENT_WORLD_CACHE", str(tmp_path))
    scene = load_scene(house_id)
    path = tmp_path / "scenes" / f"v{scenes.GENERATOR_VERSION}" / f"{house_id}.glb"
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    again = load_scene(house_id)
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(scene_mesh(scene).vertices, scene_mesh(again).vertices)
    # A path (str or Path) to the cached file loads the same scene.
    for source in (path, str(path)):
        np.testing.assert_array_equal(
            scene_mesh(load_scene(source)).vertices, scene_mesh(scene).vertices
        )
    other = tmp_path / "explicit"
    load_scene(house_id, cache_dir=other)
    assert (other / f"{house_id}.glb").is_file()


def test_relative_cache_root_is_rejected(monkeypatch):
    monkeypatch.setenv("PERSISTENT_WORLD_CACHE", "relative/cache")
    with pytest.raises(ValueError, match="PERSISTENT_WORLD_CACHE must be an absolute path"):
        scenes.default_cache_dir()


def test_load_scene_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown scene id 'house-train-99999'"):
        load_scene("house-train-99999", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"neither a scene id .* nor an existing \.glb file"):
        load_scene("kitchen", cache_dir=tmp_path)
    missing = tmp_path / "missing.glb"
    with pytest.raises(FileNotFoundError, match=r"missing\.glb"):
        load_scene(missing)


def _valid_glb(tmp_path):
    return export_glb(trimesh.Scene(trimesh.creation.box()), tmp_path / "box.glb").read_bytes()


def test_corrupt_files_raise_naming_the_path_and_problem(tmp_path):
    good = _valid_glb(tmp_path)
    assert len(scene_mesh(load_glb(tmp_path / "box.glb")).faces) == 12
    cases = {
        "text.glb": (b"this is not a mesh at all", "does not start with the 'glTF' magic"),
        "short.glb": (b"glT", "does not start with the 'glTF' magic"),
        "truncated.glb": (good[: len(good) // 2], "truncated or corrupted"),
        "version.glb": (good[:4] + struct.pack("<I", 1) + good[8:], "glTF version 1"),
        "garbage.glb": (good[:20] + b"\xff" * (len(good) - 20), "malformed glTF binary"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message) as error:
            load_scene(path)
        assert name in str(error.value)


def test_glb_without_triangles_is_rejected(tmp_path):
    points = trimesh.PointCloud(np.random.default_rng(0).random((10, 3)))
    path = export_glb(trimesh.Scene(points), tmp_path / "points.glb")
    with pytest.raises(ValueError, match=r"points\.glb.*no triangle meshes"):
        load_scene(path)


# ------------------------------------------------------------------------------------- up axis
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
"""(x, y, z) -> (x, -z, y): world +y becomes +z and world -z becomes +y (Habitat's front)."""


def z_up_house(house, path):
    """The house exported as Habitat's scene files are: z-up, front +y."""
    rotated = house.copy()
    rotated.apply_transform(Y_UP_TO_Z_UP)
    return export_glb(rotated, path)


def _coordinates(scene):
    """Each world coordinate's sorted values (a glb round trip may reorder the meshes)."""
    return np.sort(scene_mesh(scene).vertices, axis=0)


def test_z_up_file_is_turned_y_up_by_keyword_stage_config_or_dataset_config(tmp_path, house):
    expected = _coordinates(house)
    path = z_up_house(house, tmp_path / "scan" / "house.glb")
    # glTF stores float32 positions.
    np.testing.assert_allclose(_coordinates(load_scene(path, up_axis="z")), expected, atol=1e-5)
    stage = tmp_path / "scan" / "house.stage_config.json"
    stage.write_text(json.dumps({"render_asset": "house.glb", "up": [0, 0, 1], "front": [0, 1, 0]}))
    np.testing.assert_allclose(_coordinates(load_scene(path)), expected, atol=1e-5)
    stage.unlink()
    dataset = tmp_path / "scans.scene_dataset_config.json"  # one folder up, as HM3D's
    dataset.write_text(json.dumps({"stages": {"default_attributes": {"up": [0, 0, 1]}}}))
    up, front, source = habitat_up_front(path)
    assert source == dataset and up.tolist() == [0, 0, 1] and front.tolist() == [0, 1, 0]
    np.testing.assert_allclose(_coordinates(load_scene(path)), expected, atol=1e-5)
    # An explicit keyword wins over the configs.
    assert np.allclose(
        scene_mesh(load_scene(path, up_axis="y")).bounds, scene_mesh(load_glb(path)).bounds
    )


def test_z_up_file_read_as_y_up_is_refused_naming_the_fix(tmp_path, house):
    path = z_up_house(house, tmp_path / "house.glb")
    with pytest.raises(ValueError, match=r"house\.glb.* tall but only .* wide.*up_axis='z'"):
        load_scene(path)


def test_bad_up_axis_and_habitat_configs_end_in_one_clear_error(tmp_path, house):
    path = z_up_house(house, tmp_path / "house.glb")
    with pytest.raises(ValueError, match=r"unknown up_axis 'x': allowed are \('y', 'z'\)"):
        load_scene(path, up_axis="x")
    stage = tmp_path / "house.stage_config.json"
    stage.write_text('{"up": [0, 0, 1],')
    with pytest.raises(ValueError, match=r"house\.stage_config\.json' is not valid JSON"):
        load_scene(path)
    stage.write_text(json.dumps({"up": [0, 0, 1], "front": [0, 0, -1]}))
    with pytest.raises(ValueError, match=r"\"up\" and \"front\" must be two orthogonal"):
        load_scene(path)
    stage.write_text(json.dumps({"up": "z"}))
    with pytest.raises(ValueError, match=r"must be two orthogonal non-zero 3-vectors"):
        load_scene(path)


def test_undecodable_basis_universal_textures_are_refused_not_drawn_untextured(tmp_path):
    good = _valid_glb(tmp_path)
    (length,) = struct.unpack_from("<I", good, 12)
    header = json.loads(good[20 : 20 + length])
    header["extensionsUsed"] = ["KHR_texture_basisu"]
    header["images"] = [{"mimeType": "image/ktx2", "bufferView": 0}]
    chunk = json.dumps(header).encode().ljust(len(json.dumps(header)) + 3 & ~3, b" ")
    rest = good[20 + length :]
    data = good[:8] + struct.pack("<I", 20 + len(chunk) + len(rest)) + struct.pack("<I", len(chunk))
    data += b"JSON" + chunk + rest
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(data)
    # The "image" is the first buffer view, which holds vertex positions, not a KTX2 file.
    with pytest.raises(ValueError, match=r"scan\.basis\.glb.*Basis Universal.*cannot be decoded"):
        load_scene(path)


# ------------------------------------------------------------------------------------- storeys
def test_storey_house_stacks_and_subdivides_without_changing_surfaces(layout, house):
    scene = scenes.storey_house("house-train-0001", storeys=2, min_triangles=30_000)
    mesh, single = scene_mesh(scene), scene_mesh(house)
    assert len(mesh.faces) >= 30_000
    assert mesh.area == pytest.approx(2 * single.area, rel=1e-9)  # splitting keeps the area
    lift = layout.ceiling_height + scenes.STOREY_SLAB_M
    np.testing.assert_allclose(mesh.bounds[0], single.bounds[0], atol=1e-12)
    np.testing.assert_allclose(mesh.bounds[1], single.bounds[1] + [0.0, lift, 0.0], atol=1e-12)
    # Triangles end up of about one size: the longest edge varies far less than the house's.
    edges = np.linalg.norm(mesh.triangles - np.roll(mesh.triangles, 1, axis=1), axis=-1).max(1)
    house_edges = np.linalg.norm(single.triangles - np.roll(single.triangles, 1, axis=1), axis=-1)
    assert edges.max() / np.median(edges) < house_edges.max() / np.median(house_edges.max(1))
    lower = [n for n in scene.graph.nodes_geometry if n.startswith("storey0/")]
    upper = [n for n in scene.graph.nodes_geometry if n.startswith("storey1/")]
    assert len(lower) == len(upper) == len(house.graph.nodes_geometry)
    plain = scenes.storey_house("house-train-0001", storeys=3)
    assert len(scene_mesh(plain).faces) == 3 * len(single.faces)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"storeys": 0}, "storeys"), ({"min_triangles": -1}, "min_triangles")]
)
def test_storey_house_rejects_out_of_range_counts(kwargs, field):
    with pytest.raises(ValueError, match=field):
        scenes.storey_house("house-train-0001", **kwargs)
