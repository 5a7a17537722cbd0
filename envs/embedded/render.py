"""Headless RGB-D rendering of textured triangle scenes with OpenGL through EGL (moderngl).

Camera
    OpenCV axes (x right, y down, z forward) and the pinhole intrinsics of
    :func:`worldsim.geometry.intrinsics_from_hfov`: pixel ``(row i, column j)`` shows the ray
    through image point ``(j + 0.5, i + 0.5)``. The GL projection is built from ``K`` so that
    rasterisation samples exactly those pixel centres, and image row 0 is the first row of the
    framebuffer, so no flip is needed on read-back.

Depth
    Metric z-depth in metres written by the fragment shader into a float32 colour attachment
    (view-space z, interpolated perspective-correctly, hence exact up to float rounding, not the
    non-linear depth buffer); ``0`` where nothing was hit or beyond ``max_depth``.

Shading
    Albedo = base colour texture x base colour factor x vertex colour (sRGB values, used as
    is), lit by an ambient term plus a two-sided Lambertian term of a fixed world-space
    directional light, with flat normals from screen-space derivatives. Shading is
    deterministic and independent of the viewpoint, so a surface keeps its colour as the
    camera moves. Alpha is ignored (all surfaces opaque); back faces are drawn.

Context
    One EGL context per process, created on first use and shared by every :class:`Renderer`
    (use renderers from the thread that created the first one). All textures of a scene are
    resampled to ``texture_size`` squared and stacked in one texture array, and identical
    triangle corners are shared through an index buffer, so a scene renders with a single
    indexed draw call; a scene of at least ``cull_min_triangles`` triangles is drawn chunk by
    chunk with frustum and occlusion culling instead (:mod:`envs.embedded.culling`), which shows
    the same surface at every pixel (where two surfaces z-fight, the draw order picks one; see
    :meth:`Renderer.forget_visibility`). A third colour attachment records each pixel's chunk,
    which tells the culler what a frame shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import trimesh
from PIL import Image

from envs.embedded.culling import ChunkCuller, chunk_order
from envs.embedded.scenes import scene_meshes
from worldsim.geometry import (
    DEFAULT_HFOV_DEG,
    DEFAULT_MAX_DEPTH_M,
    check_rigid,
    intrinsics_from_hfov,
    invert_rigid,
)

MAX_SIZE = 4096
"""Largest rendered width or height, pixels."""

_CONTEXT = None  # the process's moderngl context, created by _context()

_VERTEX_SHADER = """
#version 330
uniform mat4 world_to_camera;
uniform mat4 projection;
in vec3 in_position;
in vec2 in_uv;
in vec4 in_color;
in float in_layer;
in float in_chunk;
out vec3 v_world;
out vec2 v_uv;
out vec4 v_color;
flat out float v_layer;
flat out float v_chunk;
out float v_depth;
void main() {
    vec4 camera = world_to_camera * vec4(in_position, 1.0);
    gl_Position = projection * camera;
    v_world = in_position;
    v_uv = in_uv;
    v_color = in_color;
    v_layer = in_layer;
    v_chunk = in_chunk;
    v_depth = camera.z;
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform sampler2DArray textures;
uniform vec3 light_direction;
uniform float ambient;
uniform float max_depth;
in vec3 v_world;
in vec2 v_uv;
in vec4 v_color;
flat in float v_layer;
flat in float v_chunk;
in float v_depth;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
layout(location = 2) out float out_chunk;
void main() {
    vec3 normal = cross(dFdx(v_world), dFdy(v_world));
    float length_normal = length(normal);
    float lambert = length_normal > 1e-20 ? abs(dot(normal / length_normal, light_direction)) : 1.0;
    vec4 albedo = texture(textures, vec3(v_uv, v_layer)) * v_color;
    out_color = vec4(albedo.rgb * (ambient + (1.0 - ambient) * lambert), 1.0);
    out_depth = v_depth <= max_depth ? v_depth : 0.0;
    out_chunk = v_chunk;
}
"""

# Interleaved vertex layout: position (3 f4), uv (2 f4), colour (4 u1, normalised), layer (f4),
# culling chunk + 1 (f4, 0 without culling; exact below 2^24).
_VERTEX_DTYPE = np.dtype(
    [
        ("position", "<f4", 3),
        ("uv", "<f4", 2),
        ("color", "u1", 4),
        ("layer", "<f4"),
        ("chunk", "<f4"),
    ]
)
_VERTEX_FORMAT = "3f 2f 4f1 1f 1f"


class EGLUnavailableError(RuntimeError):
    """No headless OpenGL 3.3 context could be created through EGL."""


def _context():
    """The process's moderngl context (EGL, OpenGL >= 3.3), created on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        import moderngl

        try:
            _CONTEXT = moderngl.create_standalone_context(backend="egl", require=330)
        except Exception as error:
            raise EGLUnavailableError(
                f"cannot create a headless OpenGL 3.3 context through EGL ({error}); install "
                "Mesa's EGL and GL drivers (Debian/Ubuntu: apt-get install libegl1 "
                "libgl1-mesa-dri) or an NVIDIA driver with EGL"
            ) from error
    return _CONTEXT


def egl_available() -> bool:
    """Whether a headless EGL OpenGL context can be created in this process."""
    try:
        _context()
    except EGLUnavailableError:
        return False
    return True


@dataclass(frozen=True)
class RenderConfig:
    """Settings of a :class:`Renderer`.

    Attributes:
        width: image width, pixels, in [1, 4096].
        height: image height, pixels, in [1, 4096].
        hfov_deg: horizontal field of view, degrees, in (0, 180).
        max_depth: depth range, metres, > near; farther surfaces read depth 0 (and still appear
            in RGB up to ``far``).
        near: near clipping distance, metres, > 0.
        far: far clipping distance, metres, >= max_depth.
        texture_size: side in pixels that every texture is resampled to, in [1, 4096].
        ambient: share of ambient light, in [0, 1]; the rest is a directional light.
        light_direction: world-space direction towards the light (normalised internally).
        cull_min_triangles: scenes with at least this many triangles are drawn chunk by chunk
            with frustum and occlusion culling (:mod:`envs.embedded.culling`; the same surfaces,
            less work), >= 0; smaller scenes are drawn in one call.
    """

    width: int
    height: int
    hfov_deg: float = DEFAULT_HFOV_DEG
    max_depth: float = DEFAULT_MAX_DEPTH_M
    near: float = 0.01
    far: float = 100.0
    texture_size: int = 256
    ambient: float = 0.6
    light_direction: tuple[float, float, float] = (0.3, 1.0, 0.5)
    cull_min_triangles: int = 100_000

    def __post_init__(self) -> None:
        for name in ("width", "height", "texture_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SIZE:
                raise ValueError(f"{name} must be an integer in [1, {MAX_SIZE}], got {value!r}")
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {self.hfov_deg}")
        if not self.near > 0.0:
            raise ValueError(f"near must be > 0 metres, got {self.near}")
        if not self.max_depth > self.near:
            raise ValueError(f"max_depth must be > near ({self.near} m), got {self.max_depth}")
        if not self.far >= self.max_depth:
            raise ValueError(f"far must be >= max_depth ({self.max_depth} m), got {self.far}")
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError(f"ambient must be in [0, 1], got {self.ambient}")
        if (
            not isinstance(self.cull_min_triangles, (int, np.integer))
            or self.cull_min_triangles < 0
        ):
            raise ValueError(
                f"cull_min_triangles must be an integer >= 0, got {self.cull_min_triangles!r}"
            )
        direction = np.asarray(self.light_direction, dtype=np.float64)
        if direction.shape != (3,) or not np.isfinite(direction).all() or not direction.any():
            raise ValueError(
                f"light_direction must be a finite non-zero 3-vector, got {self.light_direction}"
            )

    @property
    def intrinsics(self) -> torch.Tensor:
        """(3, 3) float32 ``K`` of the rendered images."""
        return intrinsics_from_hfov(self.hfov_deg, self.width, self.height)


def projection_matrix(intrinsics: np.ndarray, width: int, height: int, near: float, far: float):
    """OpenGL projection of OpenCV camera coordinates that reproduces a pinhole ``K`` exactly.

    Maps camera point ``(x, y, z)`` to normalised device coordinates with
    ``x_ndc = 2 u / W - 1`` and ``y_ndc = 2 v / H - 1`` where ``(u, v) = (fx x / z + cx,
    fy y / z + cy)``, so that window pixel ``(j, i)`` (origin at the framebuffer's first row)
    samples image point ``(j + 0.5, i + 0.5)``; depth maps ``[near, far]`` to ``[-1, 1]``.

    Args:
        intrinsics: (3, 3) ``K`` in pixels.
        width: image width, pixels.
        height: image height, pixels.
        near: near plane, metres.
        far: far plane, metres.

    Returns:
        (4, 4) float64 matrix acting on column vectors ``(x, y, z, 1)``.
    """
    k = np.asarray(intrinsics, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    return np.array(
        [
            [2 * fx / width, 0.0, 2 * cx / width - 1, 0.0],
            [0.0, 2 * fy / height, 2 * cy / height - 1, 0.0],
            [0.0, 0.0, (far + near) / (far - near), -2 * far * near / (far - near)],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )


class _Material(NamedTuple):
    """Base colour of one mesh: a texture layer (0 is plain white) and an RGBA factor in [0, 1]."""

    layer: int
    factor: np.ndarray


def _corner_appearance(
    mesh: trimesh.Trimesh, faces: np.ndarray, images: list, image_layers: dict[int, int]
) -> tuple[_Material, np.ndarray | None, np.ndarray | None]:
    """Base colour of a mesh's triangle corners.

    Args:
        mesh: the mesh.
        faces: (3F,) vertex index of every triangle corner.
        images: textures met so far; a new texture is appended (layer = its position + 1).
        image_layers: ``id(image) -> layer`` of the textures in ``images``.

    Returns:
        ``(material, uv, colors)``: the texture layer and RGBA factor in [0, 1], (3F, 2) UVs or
        ``None``, and (3F, 4) vertex colours in [0, 255] or ``None``.
    """
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        image, factor = None, np.full(4, 255.0)
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            image = material.baseColorTexture
            if material.baseColorFactor is not None:
                factor = np.asarray(material.baseColorFactor, dtype=np.float64)
        elif isinstance(material, trimesh.visual.material.SimpleMaterial):
            image = material.image
            if image is None:  # an image map replaces the (often grey default) diffuse
                factor = np.asarray(material.diffuse, dtype=np.float64)
        uv = None if visual.uv is None or image is None else np.asarray(visual.uv)[faces]
        layer = 0
        if uv is not None:
            if id(image) not in image_layers:
                images.append(image)
                image_layers[id(image)] = len(images)
            layer = image_layers[id(image)]
        colors = (visual.vertex_attributes or {}).get("color")
        if colors is not None:
            colors = np.asarray(colors, dtype=np.float64)[faces]
            if colors.shape[1] == 3:
                colors = np.concatenate([colors, np.full((len(colors), 1), 255.0)], axis=1)
        return _Material(layer, factor / 255.0), uv, colors
    if getattr(visual, "kind", None) == "face":
        colors = np.repeat(np.asarray(visual.face_colors, dtype=np.float64), 3, axis=0)
    else:  # vertex colours, or trimesh's default grey
        colors = np.asarray(visual.vertex_colors, dtype=np.float64)[faces]
    return _Material(0, np.ones(4)), None, colors


class Renderer:
    """Renders RGB-D images of a loaded scene from camera poses.

    Args:
        width: image width, pixels, in [1, 4096].
        height: image height, pixels, in [1, 4096].
        hfov_deg: horizontal field of view, degrees, in (0, 180).
        max_depth: depth range, metres; farther surfaces read depth 0.
        **options: further :class:`RenderConfig` fields (``near``, ``far``, ``texture_size``,
            ``ambient``, ``light_direction``, ``cull_min_triangles``).

    Raises:
        ValueError: for settings out of range (see :class:`RenderConfig`).
        EGLUnavailableError: if no headless OpenGL context can be created.
    """

    def __init__(
        self,
        width: int,
        height: int,
        hfov_deg: float = DEFAULT_HFOV_DEG,
        max_depth: float = DEFAULT_MAX_DEPTH_M,
        **options,
    ) -> None:
        self.config = RenderConfig(width, height, hfov_deg, max_depth, **options)
        self.intrinsics = self.config.intrinsics
        ctx = _context()
        self._ctx = ctx
        self._program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        size = (int(width), int(height))
        self._color = ctx.renderbuffer(size, components=4)
        self._depth_value = ctx.renderbuffer(size, components=1, dtype="f4")
        self._chunk = ctx.renderbuffer(size, components=1, dtype="f4")  # culling chunk + 1
        self._depth_buffer = ctx.depth_renderbuffer(size)
        self._fbo = ctx.framebuffer(
            [self._color, self._depth_value, self._chunk], self._depth_buffer
        )
        self._chunks = np.empty((int(height), int(width)), dtype=np.float32)
        self._projection = projection_matrix(
            self.intrinsics.numpy(), width, height, self.config.near, self.config.far
        )
        self._program["projection"].write(self._projection.T.astype("f4").tobytes())
        light = np.asarray(self.config.light_direction, dtype=np.float64)
        self._program["light_direction"].value = tuple(light / np.linalg.norm(light))
        self._program["ambient"].value = self.config.ambient
        self._program["max_depth"].value = self.config.max_depth
        self._program["textures"].value = 0
        self._world_to_camera = self._program["world_to_camera"]
        self._vbo = None
        self._ibo = None
        self._vao = None
        self._textures = None
        self._culler: ChunkCuller | None = None
        self.num_triangles = 0
        self.triangles_drawn = 0
        """Triangles handed to the rasteriser for the last image (all of them without culling)."""

    # ----------------------------------------------------------------------------- scene
    def load_scene(self, scene: trimesh.Scene) -> None:
        """Upload a scene's triangles and textures, replacing the previous scene.

        Handles meshes with ``TextureVisuals`` (PBR ``baseColorTexture`` / ``baseColorFactor``,
        or a simple material's image and diffuse colour, multiplied by ``COLOR_0`` vertex colours
        where present) and ``ColorVisuals`` (vertex or face colours). Node transforms are
        applied, so the scene is rendered in its world frame.

        Args:
            scene: any trimesh scene (e.g. from :func:`envs.embedded.scenes.load_scene`).

        Raises:
            ValueError: if the scene has no triangles or more textures than the GL allows.
        """
        parts = scene_meshes(scene)
        if not parts:
            raise ValueError("scene has no triangle meshes to render")
        images: list[Image.Image] = []
        image_layers: dict[int, int] = {}
        chunks = []
        for _, mesh, transform in parts:
            faces = np.asarray(mesh.faces).reshape(-1)  # (3F,) corner -> vertex
            material, uv, colors = _corner_appearance(mesh, faces, images, image_layers)
            chunk = np.empty(len(faces), dtype=_VERTEX_DTYPE)
            chunk["position"] = trimesh.transform_points(mesh.vertices, transform)[faces]
            chunk["uv"] = 0.0 if uv is None else uv
            rgba = material.factor if colors is None else colors / 255.0 * material.factor
            chunk["color"] = np.clip(np.round(rgba * 255), 0, 255)
            chunk["layer"] = material.layer
            chunk["chunk"] = 0.0
            chunks.append(chunk)
        vertices = np.concatenate(chunks)  # (3F,) unshared corners
        cull = len(vertices) // 3 >= self.config.cull_min_triangles
        if cull:
            triangles = vertices["position"].reshape(-1, 3, 3).astype(np.float64)  # (F, 3, 3)
            order, starts = chunk_order(triangles)
            vertices = vertices.reshape(-1, 3)[order]  # (F, 3)
            sizes = np.diff(starts)
            vertices["chunk"] = np.repeat(np.arange(1, len(sizes) + 1), sizes)[:, None]
            vertices = vertices.reshape(-1)
        self._upload(vertices, images)
        self.num_triangles = len(vertices) // 3
        if cull:
            self._culler = ChunkCuller(
                self._ctx,
                self._fbo,
                self._vao,
                triangles[order],
                starts,
                self.intrinsics.numpy(),
                (self.config.width, self.config.height),
                self.config.near,
                self._projection,
            )

    def _upload(self, vertices: np.ndarray, images: list) -> None:
        """Upload (3F,) triangle corners as shared vertices and an index buffer, and textures.

        Identical corners (same position, UV, colour and layer) become one vertex: indexed
        drawing shades each vertex about once instead of once per triangle corner, which halves
        llvmpipe's time on meshes whose triangles share corners (glTF meshes, scans) and draws
        the same pixels.
        """
        ctx = self._ctx
        max_layers = ctx.info.get("GL_MAX_ARRAY_TEXTURE_LAYERS", 256)
        if len(images) + 1 > max_layers:
            raise ValueError(
                f"scene has {len(images)} textures but this OpenGL allows {max_layers - 1}"
            )
        size = self.config.texture_size
        layers = np.empty((len(images) + 1, size, size, 3), dtype=np.uint8)
        layers[0] = 255  # plain white for untextured materials
        for i, image in enumerate(images, start=1):
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            # trimesh UVs have v = 0 at the image's bottom row; GL's t = 0 is the first row.
            layers[i] = np.asarray(resized)[::-1]
        self.release_scene()
        self._textures = ctx.texture_array(
            (size, size, len(layers)), 3, layers.tobytes(), alignment=1
        )
        self._textures.build_mipmaps()
        self._textures.filter = (ctx.LINEAR_MIPMAP_LINEAR, ctx.LINEAR)
        records = np.ascontiguousarray(vertices).view(np.dtype((np.void, vertices.dtype.itemsize)))
        shared, first, index = np.unique(records, return_index=True, return_inverse=True)
        # Vertices in the order of their first use, so that a run of triangles reads a compact
        # stretch of the vertex buffer.
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        shared, index = shared[order], rank[index.ravel()]
        self._vbo = ctx.buffer(shared.tobytes())  # (V,) unique vertices
        self._ibo = ctx.buffer(index.astype("<u4").ravel().tobytes())  # (3F,) corner -> vertex
        self._vao = ctx.vertex_array(
            self._program,
            [
                (
                    self._vbo,
                    _VERTEX_FORMAT,
                    "in_position",
                    "in_uv",
                    "in_color",
                    "in_layer",
                    "in_chunk",
                )
            ],
            index_buffer=self._ibo,
            index_element_size=4,
        )

    def forget_visibility(self) -> None:
        """Cull the next frame without the visibility of the frames before it.

        With culling (scenes of at least ``cull_min_triangles``), a pixel where two surfaces
        z-fight shows the one drawn first, and which is drawn first follows the chunks seen in
        earlier frames (:mod:`envs.embedded.culling`); after this call, the frames that follow
        depend on their own poses only. A no-op for scenes drawn in one call.
        """
        if self._culler is not None:
            self._culler.forget()

    def release_scene(self) -> None:
        """Free the GL buffers and textures of the loaded scene."""
        if self._culler is not None:
            self._culler.release()
        self._culler = None
        for resource in (self._vao, self._vbo, self._ibo, self._textures):
            if resource is not None:
                resource.release()
        self._vao = self._vbo = self._ibo = self._textures = None
        self.num_triangles = 0

    def release(self) -> None:
        """Free every GL object of this renderer (the shared context stays)."""
        self.release_scene()
        for resource in (
            self._fbo,
            self._color,
            self._depth_value,
            self._chunk,
            self._depth_buffer,
        ):
            resource.release()
        self._program.release()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # ----------------------------------------------------------------------------- render
    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render one RGB-D image.

        Args:
            cam_to_world: (4, 4) rigid camera pose (OpenCV camera axes, world metres).

        Returns:
            ``(rgb, depth)``: uint8 (H, W, 3) and float32 (H, W) metric z-depth in metres, 0 where
            nothing was hit or beyond ``max_depth``.

        Raises:
            RuntimeError: if no scene is loaded.
            ValueError: if the pose is not a finite (4, 4) rigid transform.
        """
        world_to_camera = self._world_to_camera_matrix(cam_to_world, "cam_to_world")
        rgb = np.empty((self.config.height, self.config.width, 3), dtype=np.uint8)
        depth = np.empty((self.config.height, self.config.width), dtype=np.float32)
        self._draw(world_to_camera[0], rgb, depth)
        return rgb, depth

    def render_batch(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render RGB-D images of many poses.

        Args:
            cam_to_world: (N, 4, 4) rigid camera poses.

        Returns:
            ``(rgb, depth)``: uint8 (N, H, W, 3) and float32 (N, H, W), as :meth:`render`.

        Raises:
            RuntimeError: if no scene is loaded.
            ValueError: if a pose is not a finite rigid transform.
        """
        cam_to_world = np.asarray(cam_to_world)
        if cam_to_world.ndim != 3:
            raise ValueError(
                f"cam_to_world must have shape (N, 4, 4), got {tuple(cam_to_world.shape)}"
            )
        world_to_camera = self._world_to_camera_matrix(cam_to_world, "cam_to_world")
        count, height, width = len(cam_to_world), self.config.height, self.config.width
        rgb = np.empty((count, height, width, 3), dtype=np.uint8)
        depth = np.empty((count, height, width), dtype=np.float32)
        for i in range(count):
            self._draw(world_to_camera[i], rgb[i], depth[i])
        return rgb, depth

    def _world_to_camera_matrix(self, cam_to_world: np.ndarray, name: str) -> np.ndarray:
        """(N, 4, 4) float32 column-major-ready inverses of validated poses."""
        if self._vao is None:
            raise RuntimeError("no scene loaded: call renderer.load_scene(scene) first")
        pose = torch.as_tensor(np.asarray(cam_to_world, dtype=np.float64))
        if pose.shape[-2:] != (4, 4):
            raise ValueError(f"{name} must have shape (4, 4), got {tuple(pose.shape)}")
        check_rigid(pose, name)
        # Shader matrices are column-major: the transpose's C-order bytes are M's columns.
        inverse = invert_rigid(pose.reshape(-1, 4, 4))
        return np.ascontiguousarray(inverse.transpose(-1, -2).numpy(), dtype=np.float32)

    def _draw(self, world_to_camera_t: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> None:
        """Draw one frame and read it back into ``rgb`` (H, W, 3) and ``depth`` (H, W)."""
        ctx = self._ctx
        self._fbo.use()
        ctx.enable_only(ctx.DEPTH_TEST)
        self._fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._world_to_camera.write(world_to_camera_t)
        self._textures.use(0)
        if self._culler is None:
            self._vao.render()
            self.triangles_drawn = self.num_triangles
        else:
            world_to_camera = world_to_camera_t.T.astype(np.float64)

            def read_chunks() -> np.ndarray:
                chunks = self._chunks
                self._fbo.read_into(chunks, components=1, attachment=2, alignment=1, dtype="f4")
                return chunks

            self.triangles_drawn = self._culler.draw(world_to_camera, read_chunks)
        # Framebuffer row 0 is image row 0 (see projection_matrix): no flip.
        self._fbo.read_into(rgb, components=3, attachment=0, alignment=1)
        self._fbo.read_into(depth, components=1, attachment=1, alignment=1, dtype="f4")
