"""Headless renderer: projection, depth against analytic and ray-cast references, colour, errors."""

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from envs.embedded.render import RenderConfig, Renderer, egl_available, projection_matrix
from envs.embedded.scenes import (
    build_scene,
    export_glb,
    generate_layout,
    load_glb,
    scene_mesh,
    scene_meshes,
    storey_house,
)
from envs.embedded.scenes.meshes import STOREY_SLAB_M
from worldsim.geometry import intrinsics_from_hfov, pose_from_position_yaw, project_points

pytestmark = pytest.mark.skipif(
    not egl_available(), reason="no headless OpenGL context can be created through EGL"
)

AMBIENT = 0.6  # the renderer's default ambient share, used to predict shaded colours
LIGHT = np.array([0.3, 1.0, 0.5]) / np.linalg.norm([0.3, 1.0, 0.5])


# ------------------------------------------------------------------------------------- helpers
def _pose(rotation, position):
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, position
    return pose


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _level_pose(x, z, yaw):
    position = torch.tensor([x, 0.0, z], dtype=torch.float64)
    return pose_from_position_yaw(position, torch.tensor(yaw, dtype=torch.float64)).numpy()


def _pixel_rays(cam_to_world, intrinsics, rows, cols):
    """World origins and directions (with camera-z component 1) through pixel centres."""
    k = np.asarray(intrinsics, dtype=np.float64)
    u, v = cols + 0.5, rows + 0.5
    camera = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    directions = camera @ cam_to_world[:3, :3].T
    return np.broadcast_to(cam_to_world[:3, 3], directions.shape), directions


def _ray_cast_depth(mesh, cam_to_world, intrinsics, rows, cols):
    """Brute-force Möller-Trumbore over every triangle: z-depth of the nearest hit (inf: none).

    Rays have camera-z component 1, so the ray parameter of a hit is its z-depth.
    """
    origins, directions = _pixel_rays(cam_to_world, intrinsics, rows, cols)
    triangles = mesh.triangles  # (T, 3, 3)
    a = triangles[:, 0]
    e1, e2 = triangles[:, 1] - a, triangles[:, 2] - a
    depth = np.full(len(origins), np.inf)
    for start in range(0, len(origins), 256):
        o, d = origins[start : start + 256, None], directions[start : start + 256, None]  # (R,1,3)
        p = np.cross(d, e2)
        det = np.einsum("rtk,tk->rt", p, e1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            s = o - a
            bu = np.einsum("rtk,rtk->rt", s, p) * inv
            q = np.cross(s, e1)
            bv = np.einsum("rk,rtk->rt", d[:, 0], q) * inv
            t = np.einsum("tk,rtk->rt", e2, q) * inv
        hit = (np.abs(det) > 1e-12) & (bu >= 0) & (bv >= 0) & (bu + bv <= 1) & (t > 1e-6)
        depth[start : start + 256] = np.where(hit, t, np.inf).min(axis=1)
    return depth


def _quad(corners, visual=None):
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    vertices = np.asarray(corners, dtype=np.float64)
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def _box_room(lo, hi):
    """The six inner faces of an axis-aligned box, as one grey mesh."""
    scene = trimesh.Scene()
    room = trimesh.creation.box(bounds=np.array([lo, hi]))
    room.invert()  # faces point inwards
    scene.add_geometry(room, geom_name="room")
    return scene


@pytest.fixture(scope="module")
def house():
    return build_scene(generate_layout("house-val-0002"))


@pytest.fixture(scope="module")
def house_renderer(house):
    renderer = Renderer(128, 128)
    renderer.load_scene(house)
    yield renderer
    renderer.release()


# ------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0}, "width"),
        ({"height": 4097}, "height"),
        ({"width": 12.5}, "width"),
        ({"hfov_deg": 0.0}, "hfov_deg"),
        ({"hfov_deg": 180.0}, "hfov_deg"),
        ({"max_depth": 0.005}, "max_depth"),
        ({"near": 0.0}, "near"),
        ({"far": 5.0}, "far"),
        ({"ambient": 1.5}, "ambient"),
        ({"texture_size": 0}, "texture_size"),
        ({"light_direction": (0.0, 0.0, 0.0)}, "light_direction"),
        ({"cull_min_triangles": -1}, "cull_min_triangles"),
    ],
)
def test_out_of_range_settings_are_rejected_by_name(kwargs, field):
    settings = {"width": 64, "height": 48, **kwargs}
    with pytest.raises(ValueError, match=field):
        RenderConfig(**settings)
    with pytest.raises(ValueError, match=field):
        Renderer(**settings)


def test_projection_matrix_reproduces_the_pinhole_model(rng):
    width, height, near, far = 80, 60, 0.05, 50.0
    k = intrinsics_from_hfov(75.0, width, height)
    points = rng.uniform([-3, -3, 0.5], [3, 3, 20], size=(100, 3))
    clip = np.c_[points, np.ones(100)] @ projection_matrix(k.numpy(), width, height, near, far).T
    ndc = clip[:, :3] / clip[:, 3:]
    window = np.stack([(ndc[:, 0] + 1) / 2 * width, (ndc[:, 1] + 1) / 2 * height], -1)
    identity = torch.eye(4, dtype=torch.float64)[None]  # camera frame = world frame
    uv, z = project_points(torch.from_numpy(points)[None], k, identity)
    np.testing.assert_allclose(window, uv[0].numpy(), atol=1e-9)  # float64 round-off only
    np.testing.assert_allclose(clip[:, 3], z[0].numpy())
    limits = (
        np.array([[0, 0, near, 1], [0, 0, far, 1]])
        @ projection_matrix(k.numpy(), width, height, near, far).T
    )
    np.testing.assert_allclose(limits[:, 2] / limits[:, 3], [-1, 1], atol=1e-12)


# ------------------------------------------------------------------------------------- depth
def test_depth_in_a_box_room_matches_the_analytic_z_depth(rng):
    lo, hi = np.array([-2.0, 0.0, -3.0]), np.array([2.5, 3.0, 2.0])
    renderer = Renderer(128, 96, hfov_deg=80.0)
    renderer.load_scene(_box_room(lo, hi))
    rows, cols = np.mgrid[0:96, 0:128]
    errors = []
    for _ in range(4):
        pose = _pose(_random_rotation(rng), rng.uniform(lo + 0.3, hi - 0.3))
        _, depth = renderer.render(pose)
        origins, directions = _pixel_rays(pose, renderer.intrinsics, rows.ravel(), cols.ravel())
        with np.errstate(divide="ignore"):
            exits = np.where(directions > 0, hi - origins, lo - origins) / directions
        expected = exits.min(axis=1).reshape(96, 128)  # ray parameter = z-depth
        assert (depth > 0).all()
        errors.append(np.abs(depth - expected))
    errors = np.concatenate([e.ravel() for e in errors])
    assert np.median(errors) < 1e-5  # far below the 1 cm asked for: float32 round-off only
    assert errors.max() < 1e-4  # float32 round-off of metre-scale coordinates, at any pixel
    renderer.release()


def test_house_depth_matches_brute_force_ray_casting(house, house_renderer):
    mesh = scene_mesh(house)
    layout = generate_layout("house-val-0002")
    rows, cols = np.mgrid[0:128:4, 0:128:4]  # 32 x 32 pixels: a brute-force reference is slow
    errors, agree = [], []
    for room, yaw in zip(layout.rooms[:3], (0.3, 2.0, -1.7), strict=True):
        pose = _level_pose(*room.center, yaw)
        _, depth = house_renderer.render(pose)
        k = house_renderer.intrinsics
        reference = _ray_cast_depth(mesh, pose, k, rows.ravel(), cols.ravel())
        reference = np.where(reference <= 10.0, reference, 0.0)  # the sensor's range
        rendered = depth[rows, cols].ravel()
        agree.append((rendered > 0) == (reference > 0))
        both = (rendered > 0) & (reference > 0)
        errors.append(np.abs(rendered - reference)[both])
    errors, agree = np.concatenate(errors), np.concatenate(agree)
    assert np.median(errors) < 0.01  # the bound: median error below 1 cm at 128 x 128
    assert np.median(errors) < 1e-4  # in fact float32 round-off only
    # Silhouette pixels may differ: GL snaps vertices to 1/256 pixel, the reference does not.
    assert (errors < 0.01).mean() > 0.98
    assert agree.mean() > 0.99


def test_depth_is_zero_beyond_max_depth_while_rgb_still_shows_the_surface():
    scene = trimesh.Scene()
    wall = [[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]]
    scene.add_geometry(_quad(wall))
    renderer = Renderer(32, 32, max_depth=10.0)
    renderer.load_scene(scene)
    for distance, expected in ((8.0, 8.0), (12.0, 0.0)):
        pose = _pose(np.eye(3), [0.0, 0.0, -distance])  # looks along +z at the wall at z = 0
        rgb, depth = renderer.render(pose)
        np.testing.assert_allclose(depth, expected, atol=1e-4)  # float32 z of a plane at 8 m
        assert (rgb > 0).all()
    renderer.release()


# ------------------------------------------------------------------------------------- colour
def _shaded(albedo, normal):
    """Expected uint8 colour of a surface under the renderer's default lighting."""
    lambert = abs(float(np.dot(normal, LIGHT)))
    return np.round(np.asarray(albedo, dtype=np.float64) * (AMBIENT + (1 - AMBIENT) * lambert))


def test_each_pixel_shows_the_colour_of_the_surface_it_sees():
    # Four squares facing the camera, placed in its frame and moved to the world with a
    # generic pose; each uses another kind of colour.
    rng = np.random.default_rng(3)
    pose = _pose(_random_rotation(rng), rng.uniform(-5, 5, size=3))
    # Square centres in the camera frame (x right, y down, z forward).
    centres = {"face": (-1.5, -0.8, 4.0), "vertex": (1.2, -0.7, 5.0), "pbr": (-1.0, 1.0, 3.0),
               "simple": (1.4, 0.9, 4.5)}  # fmt: skip
    colours = {"face": (200, 40, 40), "vertex": (30, 180, 60), "pbr": (40, 60, 220),
               "simple": (230, 200, 20)}  # fmt: skip
    square = np.array([[-0.4, -0.4, 0], [0.4, -0.4, 0], [0.4, 0.4, 0], [-0.4, 0.4, 0]])
    scene = trimesh.Scene()
    for name, centre in centres.items():
        colour = [*colours[name], 255]
        corners = trimesh.transform_points(square + centre, pose)
        if name == "face":
            visual = trimesh.visual.ColorVisuals(face_colors=np.tile(colour, (2, 1)))
        elif name == "vertex":
            visual = trimesh.visual.ColorVisuals(vertex_colors=np.tile(colour, (4, 1)))
        elif name == "pbr":
            material = trimesh.visual.material.PBRMaterial(baseColorFactor=colour)
            visual = trimesh.visual.TextureVisuals(material=material)
        else:
            material = trimesh.visual.material.SimpleMaterial(diffuse=colour)
            visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(_quad(corners, visual), geom_name=name)
    renderer = Renderer(96, 64, hfov_deg=100.0)
    renderer.load_scene(scene)
    rgb, depth = renderer.render(pose)
    world = trimesh.transform_points(np.array(list(centres.values())), pose)
    uv, z = project_points(torch.from_numpy(world)[None], renderer.intrinsics,
                           torch.from_numpy(pose)[None])  # fmt: skip
    normal = pose[:3, 2]  # the squares face the camera: their normal is its z axis
    for name, (u, v), zz in zip(centres, uv[0].numpy(), z[0].numpy(), strict=True):
        row, col = int(v), int(u)
        np.testing.assert_allclose(rgb[row, col], _shaded(colours[name], normal), atol=1)  # 8 bit
        assert depth[row, col] == pytest.approx(zz, abs=1e-4)  # float32 z at 5 m
    assert (rgb[0, 0] == 0).all() and depth[0, 0] == 0  # the background is empty
    renderer.release()


def test_pixel_centres_sit_at_half_integers():
    # A plane at z = 2 whose left part is red and right part green; the boundary projects to
    # u = 40.3, so column 39 (centre 39.5) is red and column 40 (centre 40.5) green. A half-pixel
    # shift of the projection would flip one of them.
    width, height, depth_m = 64, 48, 2.0
    k = intrinsics_from_hfov(90.0, width, height).double()
    x_edge = (40.3 - k[0, 2]) / k[0, 0] * depth_m
    y_edge = (20.7 - k[1, 2]) / k[1, 1] * depth_m  # top part red, bottom part blue
    scene = trimesh.Scene()
    regions = {"red": ((-10, -10), (x_edge, y_edge)), "green": ((x_edge, -10), (10, 10)),
               "blue": ((-10, y_edge), (x_edge, 10))}  # fmt: skip
    rgb_of = {"red": (255, 0, 0, 255), "green": (0, 255, 0, 255), "blue": (0, 0, 255, 255)}
    for name, ((x0, y0), (x1, y1)) in regions.items():
        corners = [[x0, y0, depth_m], [x1, y0, depth_m], [x1, y1, depth_m], [x0, y1, depth_m]]
        visual = trimesh.visual.ColorVisuals(face_colors=np.tile(rgb_of[name], (2, 1)))
        scene.add_geometry(_quad(corners, visual), geom_name=name)
    renderer = Renderer(width, height, hfov_deg=90.0)
    renderer.load_scene(scene)
    rgb, _ = renderer.render(np.eye(4))
    dominant = rgb.argmax(axis=-1)  # 0 red, 1 green, 2 blue
    assert (dominant[:, :40] != 1).all() and (dominant[:, 40:] == 1).all()
    assert (dominant[:21, :40] == 0).all() and (dominant[21:, :40] == 2).all()
    renderer.release()


def test_textures_keep_their_orientation_through_a_glb(tmp_path):
    # A 2 x 2 image: red top-left, green top-right, blue bottom-left, white bottom-right,
    # on a quad facing the camera with UV (0, 0) at its bottom-left corner.
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:32, :32], image[:32, 32:] = (255, 0, 0), (0, 255, 0)
    image[32:, :32], image[32:, 32:] = (0, 0, 255), (255, 255, 255)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(image))
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # World y up; the camera below looks along world -z with its y axis pointing down.
    corners = [[-1, -1, -3], [1, -1, -3], [1, 1, -3], [-1, 1, -3]]
    scene = trimesh.Scene()
    scene.add_geometry(_quad(corners, trimesh.visual.TextureVisuals(uv=uv, material=material)))
    loaded = load_glb(export_glb(scene, tmp_path / "quad.glb"))
    pose = _level_pose(0.0, 0.0, 0.0)
    pose[:3, 3] = 0.0
    renderer = Renderer(64, 64, hfov_deg=60.0)
    for source in (scene, loaded):
        renderer.load_scene(source)
        rgb, _ = renderer.render(pose)
        # The quad spans about pixels 4..60; sample the centre of each quadrant.
        dominant = {
            name: tuple(rgb[r, c] > 128)
            for name, (r, c) in {
                "tl": (18, 18),
                "tr": (18, 46),
                "bl": (46, 18),
                "br": (46, 46),
            }.items()
        }
        assert dominant == {"tl": (True, False, False), "tr": (False, True, False),
                            "bl": (False, False, True), "br": (True, True, True)}  # fmt: skip
    renderer.release()


# ------------------------------------------------------------------------------------- API
def test_render_batch_equals_single_renders_and_is_deterministic(house, house_renderer):
    layout = generate_layout("house-val-0002")
    poses = np.stack([_level_pose(*room.center, 0.7 * i) for i, room in enumerate(layout.rooms)])
    rgb, depth = house_renderer.render_batch(poses)
    assert rgb.shape == (len(poses), 128, 128, 3) and rgb.dtype == np.uint8
    assert depth.shape == (len(poses), 128, 128) and depth.dtype == np.float32
    for i, pose in enumerate(poses):
        single_rgb, single_depth = house_renderer.render(pose)
        np.testing.assert_array_equal(single_rgb, rgb[i])
        np.testing.assert_array_equal(single_depth, depth[i])
    assert rgb.std() > 20  # textured, lit images, not a flat colour
    assert ((depth > 0.1) & (depth < 10)).mean() > 0.95  # inside a closed house


def test_a_house_renders_identically_from_its_glb(tmp_path, house, house_renderer):
    loaded = load_glb(export_glb(house, tmp_path / "house.glb"))
    other = Renderer(128, 128)
    other.load_scene(loaded)
    layout = generate_layout("house-val-0002")
    pose = _level_pose(*layout.rooms[1].center, 1.0)
    for a, b in zip(house_renderer.render(pose), other.render(pose), strict=True):
        np.testing.assert_array_equal(a, b)
    other.release()


def test_renderers_share_the_context_but_not_their_scenes(house, house_renderer):
    box = Renderer(128, 128)
    box.load_scene(_box_room([-1.0, 0.0, -1.0], [1.0, 3.0, 1.0]))
    pose = _level_pose(*generate_layout("house-val-0002").rooms[0].center, 0.0)
    before = house_renderer.render(pose)
    box.render(_level_pose(0.0, 0.0, 0.0))
    after = house_renderer.render(pose)
    np.testing.assert_array_equal(before[1], after[1])
    box.release()


def test_bad_poses_and_scenes_raise_clear_errors(house_renderer):
    empty = Renderer(16, 16)
    with pytest.raises(RuntimeError, match="no scene loaded"):
        empty.render(np.eye(4))
    with pytest.raises(ValueError, match="no triangle meshes"):
        empty.load_scene(trimesh.Scene())
    empty.release()
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        house_renderer.render(np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        house_renderer.render(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="not a rigid transform"):
        house_renderer.render(np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(N, 4, 4\)"):
        house_renderer.render_batch(np.eye(4))


# ------------------------------------------------------------------------------------- culling
def _assert_same_surfaces(culled, whole, near=0.01, reverse=None):
    """Culled and whole-scene renders show the same surface at every pixel.

    Where two surfaces lie closer together than the 24-bit depth buffer resolves at that depth
    (z-fighting), the draw order picks one: such pixels may differ in colour and by at most
    that resolution in depth. A chunk culled wrongly would show a surface metres behind (or a
    millimetre: ten times the resolution at 3 m). Without ``reverse`` a thousandth of the
    pixels may differ in colour; ``reverse``, the whole scene drawn in reverse triangle order,
    shows where the order decides (each triangle's depth is rasterised the same in any order,
    so a colour depends on the order only where fragments tie): colours may differ there only.
    """
    (rgb_a, depth_a), (rgb_b, depth_b) = culled, whole
    resolution = 2.0 * np.maximum(depth_a, depth_b) ** 2 / (near * 2**24) + 1e-6  # metres
    np.testing.assert_array_equal(depth_a > 0, depth_b > 0)
    assert (np.abs(depth_a - depth_b) <= resolution).all()
    differ = (rgb_a != rgb_b).any(axis=-1)
    if reverse is None:
        assert differ.mean() < 1e-3
    else:
        fighting = (reverse[0] != rgb_b).any(axis=-1)
        assert not (differ & ~fighting).any(), np.argwhere(differ & ~fighting)


def _reversed(scene):
    """The scene with its meshes, and each mesh's triangles, in reverse order."""
    out = trimesh.Scene()
    for name, mesh, transform in reversed(scene_meshes(scene)):
        flipped = mesh.copy()
        flipped.update_faces(np.arange(len(mesh.faces))[::-1])
        out.add_geometry(flipped, node_name=name, geom_name=name, transform=transform)
    return out


def _poses_everywhere(scene, rng, count):
    """Camera poses that stress culling: any rotation, anywhere in the scene's bounding box
    (inside walls and slabs, between storeys, outside), and on chunk-box faces and corners."""
    from envs.embedded.culling import chunk_order

    triangles = _world_triangles(scene)
    order, starts = chunk_order(triangles)
    ordered = triangles[order]
    lows = np.minimum.reduceat(ordered.min(axis=1), starts[:-1], axis=0)  # (C, 3) chunk boxes
    highs = np.maximum.reduceat(ordered.max(axis=1), starts[:-1], axis=0)
    low, high = triangles.reshape(-1, 3).min(axis=0), triangles.reshape(-1, 3).max(axis=0)
    poses = []
    for i in range(count):
        if i % 3 == 0:  # anywhere, a little beyond the scene too
            position = rng.uniform(low - 1.0, high + 1.0)
        else:  # on a chunk box's face (i % 3 == 1) or corner
            chunk = rng.integers(len(lows))
            corner = rng.integers(0, 2, size=3).astype(bool)
            position = np.where(corner, highs[chunk], lows[chunk])
            if i % 3 == 1:
                axis = rng.integers(3)
                position[axis] = rng.uniform(lows[chunk, axis], highs[chunk, axis])
        poses.append(_pose(_random_rotation(rng), position))
    return poses


def _world_triangles(scene):
    """(F, 3, 3) world-frame triangle corners of a scene."""
    parts = scene_meshes(scene)
    return np.concatenate([trimesh.transform_points(m.vertices, t)[m.faces] for _, m, t in parts])


def _storey_poses(layout, storeys):
    """Level walks with a few turns per room and storey, and looks up and down through
    ceilings and floors."""
    lift = layout.ceiling_height + STOREY_SLAB_M
    poses = []
    for storey in range(storeys):
        for room in layout.rooms:  # a few small turns per room (coherent), then a jump
            for turn in range(3):
                pose = _level_pose(*room.center, 0.4 * turn + room.index)
                pose[1, 3] += storey * lift
                poses.append(pose)
    for room in layout.rooms[:3]:
        level = _level_pose(*room.center, room.index)
        for pitch in (-1.2, -0.6, 0.6, 1.2):  # looking up at the ceiling, down at the floor
            rotation = trimesh.transformations.rotation_matrix(pitch, [1.0, 0.0, 0.0])[:3, :3]
            poses.append(_pose(level[:3, :3] @ rotation, level[:3, 3]))
    return poses


def _grazing_poses(layout, scene, rng, count):
    """Poses that look along coplanar faces (a wall and the floor it stands on, a slab's
    layers): from just under a ceiling, inside a slab, just above the upper floor, outside
    across both storeys, and :func:`_poses_everywhere`. Draw order decides many pixels there
    (up to a quarter, for the culler before this one too)."""
    lift = layout.ceiling_height + STOREY_SLAB_M
    poses = []
    for room in layout.rooms[:3]:
        x, z = room.center
        for height in (layout.ceiling_height - 0.05, layout.ceiling_height + 0.1, lift + 0.05):
            poses.append(_pose(_level_pose(x, z, 0.3)[:3, :3], [x, height, z]))
    x, z = layout.rooms[0].center
    poses.append(_pose(_level_pose(x, z, 0.0)[:3, :3], [x, lift, z + 15.0]))  # outside
    return poses + _poses_everywhere(scene, rng, count)


def test_culled_renders_equal_whole_scene_renders_along_a_walk_with_jumps(rng):
    # Two storeys subdivided to ~20 k triangles; culling forced on for one renderer only.
    scene = storey_house("house-val-0002", storeys=2, min_triangles=20_000)
    culled = Renderer(96, 64, cull_min_triangles=0)
    whole = Renderer(96, 64, cull_min_triangles=10**9)
    culled.load_scene(scene)
    whole.load_scene(scene)
    layout = generate_layout("house-val-0002")
    level = _storey_poses(layout, storeys=2)
    x, z = layout.rooms[2].center
    level.append(_pose(_random_rotation(rng), [x, 1.0, z]))  # looking any way, ceiling too
    grazing = _grazing_poses(layout, scene, rng, 30)
    reverse = Renderer(96, 64, cull_min_triangles=10**9)
    reverse.load_scene(_reversed(scene))
    drawn, frames = [], []
    for i, pose in enumerate(level + grazing):
        frames.append(culled.render(pose))
        ordered = reverse.render(pose) if i >= len(level) else None
        _assert_same_surfaces(frames[-1], whole.render(pose), reverse=ordered)
        drawn.append(culled.triangles_drawn)
    assert whole.triangles_drawn == whole.num_triangles == culled.num_triangles >= 20_000
    # After forgetting, the same poses give the same frames, bit for bit, whatever came before.
    culled.forget_visibility()
    for pose, frame in zip(level + grazing, frames, strict=True):
        for a, b in zip(culled.render(pose), frame, strict=True):
            np.testing.assert_array_equal(a, b)
    # Inside one room of one storey most of the house is out of view or behind walls.
    assert np.median(drawn[: 2 * len(layout.rooms) * 3]) < 0.35 * culled.num_triangles, drawn
    for renderer in (culled, whole, reverse):
        renderer.release()


def test_culled_small_house_renders_equal_whole_renders_from_any_pose(rng):
    # A generated house as it ships (a few hundred triangles), chunked down to single faces.
    scene = build_scene(generate_layout("house-train-0000"))
    culled = Renderer(64, 48, cull_min_triangles=0)
    whole = Renderer(64, 48, cull_min_triangles=10**9)
    culled.load_scene(scene)
    whole.load_scene(scene)
    layout = generate_layout("house-train-0000")
    for pose in _storey_poses(layout, storeys=1):
        _assert_same_surfaces(culled.render(pose), whole.render(pose))
    reverse = Renderer(64, 48, cull_min_triangles=10**9)
    reverse.load_scene(_reversed(scene))
    for pose in _grazing_poses(layout, scene, rng, 60):
        culled_frame, whole_frame = culled.render(pose), whole.render(pose)
        _assert_same_surfaces(culled_frame, whole_frame, reverse=reverse.render(pose))
    for renderer in (culled, whole, reverse):
        renderer.release()


def test_occlusion_culling_drops_what_the_frustum_keeps():
    # Control: a camera facing a wall from 0.3 m has much of the house in its frustum (a 90
    # degree cone reaching through the wall) but sees only the wall; the culler must draw a
    # small part of what lies in the frustum.
    scene = storey_house("house-val-0002", storeys=2, min_triangles=20_000)
    renderer = Renderer(96, 64, cull_min_triangles=0)
    renderer.load_scene(scene)
    corners = torch.as_tensor(_world_triangles(scene).reshape(1, -1, 3))  # (1, 3F, 3)

    def in_frustum(pose):
        """Triangles with a corner in view (a lower bound of the frustum's triangles)."""
        pixels, z = project_points(
            corners, renderer.intrinsics.double(), torch.as_tensor(pose)[None]
        )
        pixels, z = pixels[0].numpy(), z[0].numpy()  # (3F, 2), (3F,)
        inside = (z > 0.01) & (pixels >= 0).all(axis=1)
        inside &= (pixels[:, 0] <= 96) & (pixels[:, 1] <= 64)
        return int(inside.reshape(-1, 3).any(axis=1).sum())

    walls = []  # 0.3 m from the middle of each wall of each room, facing it
    for room in generate_layout("house-val-0002").rooms:
        x0, z0, x1, z1 = room.floor
        xm, zm = 0.5 * (x0 + x1), 0.5 * (z0 + z1)
        # Yaw 0 looks along -z; yaw pi / 2 along -x.
        walls += [
            _level_pose(xm, z0 + 0.3, 0.0),
            _level_pose(xm, z1 - 0.3, np.pi),
            _level_pose(x0 + 0.3, zm, 0.5 * np.pi),
            _level_pose(x1 - 0.3, zm, -0.5 * np.pi),
        ]
    blank = [pose for pose in walls if 0 < renderer.render(pose)[1].max() < 0.6]  # no doorway
    pose = max(blank, key=in_frustum)
    seen = in_frustum(pose)
    assert seen > 0.1 * renderer.num_triangles, seen
    renderer.forget_visibility()
    renderer.render(pose)  # nearest chunks first (a round of them), then the rest tested
    assert renderer.triangles_drawn < 0.5 * seen, renderer.triangles_drawn
    renderer.render(pose)  # the chunks the last frame showed, then the rest tested
    assert renderer.triangles_drawn < 0.05 * seen, renderer.triangles_drawn
    renderer.release()


@pytest.mark.slow
def test_hm3d_scale_basis_scene_renders_the_same_surfaces_with_culling(tmp_path, monkeypatch):
    from envs.embedded.scenes import encode_basis_textures, load_scene

    monkeypatch.setenv("PERSISTENT_WORLD_CACHE", str(tmp_path / "cache"))
    scene = storey_house("house-train-0004", storeys=2, min_triangles=500_000)
    path = tmp_path / "large.basis.glb"
    path.write_bytes(encode_basis_textures(scene.export(file_type="glb")))
    loaded = load_scene(path)
    culled, whole = Renderer(128, 128), Renderer(128, 128, cull_min_triangles=10**9)
    culled.load_scene(loaded)
    whole.load_scene(loaded)
    assert culled.num_triangles >= 500_000
    layout = generate_layout("house-train-0004")
    drawn = []
    for room in layout.rooms:  # a jump, then four 10-degree turns, per room and storey
        for lift in (0.0, layout.ceiling_height + 0.2):
            for turn in range(5):
                pose = _level_pose(*room.center, np.radians(10.0) * turn + room.index)
                pose[1, 3] += lift
                _assert_same_surfaces(culled.render(pose), whole.render(pose))
                drawn.append(culled.triangles_drawn)
    # Most frames follow a small turn: they draw a small part of the scene.
    assert np.median(drawn) < 0.1 * culled.num_triangles, drawn
    reverse = Renderer(128, 128, cull_min_triangles=10**9)
    reverse.load_scene(_reversed(loaded))
    for pose in _grazing_poses(layout, loaded, np.random.default_rng(0), 20):
        culled_frame, whole_frame = culled.render(pose), whole.render(pose)
        _assert_same_surfaces(culled_frame, whole_frame, reverse=reverse.render(pose))
    for renderer in (culled, whole, reverse):
        renderer.release()
