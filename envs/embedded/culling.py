"""Frustum and occlusion culling of large scenes by spatial chunks: the same surfaces, less work.

A scan-sized scene (HM3D: half a million triangles and more, two storeys) is mostly outside the
camera's view or hidden behind the walls and floors in front of it, and a software rasteriser
(Mesa's llvmpipe) pays for every triangle it is given. :class:`ChunkCuller` splits the scene
into chunks (the triangles whose centroids share a cell of a regular 3D grid and face the same
way; a chunk is a contiguous range of the vertex buffer, chunks in Morton order so that nearby
chunks are neighbours in the buffer) and draws, per frame:

1. the chunks in the view frustum that one of the last :data:`_MEMORY_FRAMES` frames showed
   (temporal coherence: an agent moves or turns a little between frames, and often back), and
   every chunk whose box comes within :attr:`ChunkCuller._touch_radius` of the camera;
2. then, where the frustum holds more, an occlusion test of the other chunks in it against the
   depth drawn so far, on the GPU: the faces of their bounding boxes that face the camera are
   rasterised in one draw (depth test on, no colour or depth written), and every box fragment
   that passes the depth test marks its chunk in a storage buffer; the marked chunks are drawn.
   When they hold many triangles (a turn or a doorway revealed much), only the nearest of them
   are drawn and the rest are tested again (at most :data:`_MAX_ROUNDS` tests per frame).

The test is exact up to a margin. The ray through a pixel centre that meets a chunk's triangle
enters the chunk's box first, at a face that faces the camera, so if the triangle passes the
depth test there, so does the box (drawn :data:`_BOX_DEPTH_OFFSET` nearer and
:data:`_BOX_PADDING_M` larger, far above the rounding of the rasterised depth). Where that entry
lies before the near plane (clipped), the ray crosses the near plane inside the box, within the
part of the near plane that the image covers: such boxes lie within the touch radius and are
drawn untested. Every pixel hence shows the surface that the whole scene drawn in one call
shows, except where two surfaces lie closer together than the depth buffer resolves
(z-fighting: coplanar faces, T-junctions), where the draw order decides. That order follows the
history (which chunks earlier frames showed; they are read from a chunk image drawn beside the
colour), so :meth:`ChunkCuller.forget` starts afresh (the simulator does at every agent reset,
so that an episode's frames depend on its poses alone); the first frame after it, or a jump to
a far pose, tests every chunk in the frustum.

The occlusion test needs OpenGL 4.3 (storage buffers); on an older context only the frustum
culls (the same images, more triangles).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_TARGET_CELLS = 1024
"""Grid cells a scene's bounding box is split into, about (chunks are occupied cells, split by
facing): small enough to cull a wall's far side, large enough that a frame's draw calls (one
per run of consecutive visible chunks) stay few."""
_MIN_CHUNK_M = 0.5
"""Smallest chunk cell edge, metres."""
_BOX_PADDING_M = 1e-3
"""Bounding boxes are grown by this much so that a chunk's surfaces lie strictly inside."""
_BOX_DEPTH_OFFSET = 2.0**-18
"""Boxes are drawn this much nearer in normalised device depth (32 steps of the 24-bit depth
buffer), so that rounding in the rasterised depth never hides a box in front of the drawn
surfaces."""
_MAX_ROUNDS = 4
"""Occlusion tests per frame at most (see :meth:`ChunkCuller.draw`)."""
_ROUND_TRIANGLES = 4_000
"""Chunks that passed a test and hold more triangles than this are drawn nearest first, about
this many triangles, and the rest tested again."""
_MEMORY_FRAMES = 8
"""Chunks shown in any of this many previous frames are drawn first (a turn back or a step
back shows them again)."""
_TEST_MIN_TRIANGLES = 2_000
"""Untested chunks holding fewer triangles than this are drawn without a test (it would cost
more than drawing them)."""
_CORNER_BITS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=np.float64)
_MORTON_BITS = 10
"""Bits per axis of the cell coordinates interleaved into the chunk order."""

_CUBE_TRIANGLES = np.array(
    [
        [0, 1, 3], [0, 3, 2],  # x = low
        [4, 6, 7], [4, 7, 5],  # x = high
        [0, 4, 5], [0, 5, 1],  # y = low
        [2, 3, 7], [2, 7, 6],  # y = high
        [0, 2, 6], [0, 6, 4],  # z = low
        [1, 5, 7], [1, 7, 3],  # z = high
    ]
)  # fmt: skip
"""The 12 triangles of the unit cube (corner ``k`` at ``_CORNER_BITS[k]``), two per face."""

_BOX_VERTEX_SHADER = """
#version 430
uniform mat4 world_to_camera;
uniform mat4 projection;
uniform float depth_offset;
in vec3 in_position;
in float in_chunk;
flat out int v_chunk;
void main() {
    gl_Position = projection * (world_to_camera * vec4(in_position, 1.0));
    gl_Position.z -= depth_offset * gl_Position.w;
    v_chunk = int(in_chunk);
}
"""

_BOX_FRAGMENT_SHADER = """
#version 430
layout(early_fragment_tests) in;
layout(std430, binding = 0) buffer Marks { uint marks[]; };
flat in int v_chunk;
void main() {
    marks[v_chunk] = 1u;
}
"""


def chunk_order(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group triangles into spatial chunks.

    Args:
        triangles: (F, 3, 3) world-frame corners, metres.

    Returns:
        ``(order, starts)``: (F,) permutation that makes every chunk's triangles contiguous, and
        (C + 1,) start of each chunk in that order (the last entry is F).
    """
    centroids = triangles.mean(axis=1)  # (F, 3)
    low, high = centroids.min(axis=0), centroids.max(axis=0)
    volume = float(np.prod(np.maximum(high - low, _MIN_CHUNK_M)))
    edge = max(_MIN_CHUNK_M, (volume / _TARGET_CELLS) ** (1.0 / 3.0))
    cells = np.floor((centroids - low) / edge).astype(np.int64)  # (F, 3)
    cells = np.minimum(cells, 2**_MORTON_BITS - 1)
    morton = np.zeros(len(cells), dtype=np.int64)
    for bit in range(_MORTON_BITS):
        for axis in range(3):
            morton |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    # Split each cell by the facing of its triangles (dominant normal axis and sign), so that a
    # ceiling and the floor above it, or the two faces of a wall, get boxes of their own.
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    axis = np.abs(normals).argmax(axis=1)  # (F,)
    facing = 2 * axis + (normals[np.arange(len(axis)), axis] > 0)  # (F,) in [0, 6)
    key = morton * 6 + facing
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]]))
    return order, np.concatenate([starts, [len(key)]])


class ChunkCuller:
    """Draws a chunked vertex buffer with frustum and occlusion culling (see the module doc).

    Args:
        ctx: the moderngl context of ``vao``.
        framebuffer: the moderngl framebuffer that frames are drawn into.
        vao: moderngl vertex array of the scene, its triangles ordered by :func:`chunk_order`,
            drawn by a program that writes each fragment's chunk index + 1 (see ``draw``).
        triangles: (F, 3, 3) world-frame corners in that order, metres.
        starts: (C + 1,) chunk starts, in triangles.
        intrinsics: (3, 3) ``K`` of the images, pixels.
        size: ``(width, height)`` of the images, pixels.
        near: near plane, metres.
        projection: (4, 4) GL projection of the images (:func:`envs.embedded.render.
            projection_matrix`).
    """

    def __init__(
        self,
        ctx,
        framebuffer,
        vao,
        triangles: np.ndarray,
        starts: np.ndarray,
        intrinsics: np.ndarray,
        size: tuple[int, int],
        near: float,
        projection: np.ndarray,
    ) -> None:
        self._ctx = ctx
        self._vao = vao
        self._first = np.asarray(starts[:-1], dtype=np.int64) * 3  # in vertices
        self._count = np.diff(starts).astype(np.int64) * 3
        lows = np.minimum.reduceat(triangles.min(axis=1), starts[:-1], axis=0)
        highs = np.maximum.reduceat(triangles.max(axis=1), starts[:-1], axis=0)
        low, high = lows - _BOX_PADDING_M, highs + _BOX_PADDING_M  # (C, 3)
        self._centres = 0.5 * (low + high)  # (C, 3)
        self._half_sizes = 0.5 * (high - low)  # (C, 3)
        self._frame = 0  # frames drawn
        self._last_seen = np.full(len(self._first), -(2**62), dtype=np.int64)  # last shown in
        self._near = near
        k = np.asarray(intrinsics, dtype=np.float64)
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        width, height = size
        # The part of the near plane that the image covers lies within near x (length of the
        # ray through an image corner, at z = 1) of the camera; twice that for a margin.
        corner_ray = np.hypot(max(cx, width - cx) / fx, max(cy, height - cy) / fy)
        self._touch_radius = 2.0 * near * float(np.hypot(1.0, corner_ray))
        # The view frustum's planes n . p + d = 0 in the camera frame, normals outwards: the
        # near plane z = near, then u < 0, u > W, v < 0, v > H for points with z > 0.
        self._planes = np.array(
            [
                [0.0, 0.0, -1.0, near],
                [-fx, 0.0, -cx, 0.0],
                [fx, 0.0, cx - width, 0.0],
                [0.0, -fy, -cy, 0.0],
                [0.0, fy, cy - height, 0.0],
            ]
        )  # (5, 4)
        self._boxes = None
        if ctx.version_code >= 430:
            self._boxes = _BoxTest(ctx, framebuffer, low, high, projection)

    @property
    def num_chunks(self) -> int:
        """Number of chunks."""
        return len(self._first)

    @property
    def occlusion(self) -> bool:
        """Whether chunks hidden behind others are culled (OpenGL >= 4.3), not only the frustum."""
        return self._boxes is not None

    def forget(self) -> None:
        """Drop the visibility of past frames: the next frame is culled from scratch."""
        self._last_seen[:] = -(2**62)

    def release(self) -> None:
        """Free the GL objects of the occlusion test."""
        if self._boxes is not None:
            self._boxes.release()
            self._boxes = None

    def draw(self, world_to_camera: np.ndarray, read_chunks: Callable[[], np.ndarray]) -> int:
        """Draw the scene into the bound framebuffer (program, uniforms and textures set).

        Args:
            world_to_camera: (4, 4) float64 world-to-camera transform (column vectors).
            read_chunks: returns the (H, W) chunk image of the frame drawn: index + 1 of the
                chunk seen at each pixel, 0 where nothing was drawn (any integer or float dtype).

        Returns:
            The number of triangles drawn.
        """
        in_view, touching, z_min = self._project(world_to_camera)
        drawn = in_view & ((self._last_seen > self._frame - _MEMORY_FRAMES) | touching)
        self._render(drawn, z_min)
        pending = in_view & ~drawn
        for round_ in range(_MAX_ROUNDS):
            if not pending.any():
                break
            if self._boxes is not None and self._count[pending].sum() > 3 * _TEST_MIN_TRIANGLES:
                pending &= self._boxes.marks(pending, world_to_camera)
            batch = pending
            if round_ + 1 < _MAX_ROUNDS and self._count[pending].sum() > 3 * _ROUND_TRIANGLES:
                # Many chunks still unproven (a turn or a doorway revealed much): draw the
                # nearest of them, whose surfaces may hide the others, and test those again.
                index = np.flatnonzero(pending)
                index = index[np.argsort(z_min[index], kind="stable")]
                within = np.cumsum(self._count[index]) <= 3 * _ROUND_TRIANGLES
                within[0] = True
                batch = np.zeros_like(pending)
                batch[index[within]] = True
            self._render(batch, z_min)
            drawn |= batch
            pending &= ~batch
        # The next frames start from the chunks that this one shows.
        shown = read_chunks().astype(np.int64, copy=False).ravel()  # (H W,) index + 1, 0: none
        self._frame += 1
        self._last_seen[shown[shown > 0] - 1] = self._frame
        return int(self._count[drawn].sum()) // 3

    def _render(self, chunks: np.ndarray, z_min: np.ndarray) -> None:
        """Draw the chosen chunks, one call per run of consecutive chunks, nearest runs first.

        Front to back, the depth test rejects more fragments before they are shaded.
        """
        index = np.flatnonzero(chunks)
        if not len(index):
            return
        breaks = np.flatnonzero(np.diff(index) != 1)
        run_starts = index[np.concatenate([[0], breaks + 1])]
        run_ends = index[np.concatenate([breaks, [len(index) - 1]])]
        nearest = np.minimum.reduceat(z_min[index], np.concatenate([[0], breaks + 1]))
        order = np.argsort(nearest, kind="stable")
        for start, end in zip(run_starts[order], run_ends[order], strict=True):
            vertices = self._first[end] + self._count[end] - self._first[start]
            self._vao.render(first=int(self._first[start]), vertices=int(vertices))

    def _project(self, world_to_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per chunk: in view, touching the camera, and nearest camera z of its box.

        Returns:
            ``(in_view, touching, z_min)``, each (C,): a box is out of view when it lies wholly
            beyond the near plane or one of the four side planes of the view frustum (a box
            beyond none of them but outside the frustum near one of its edges counts as in
            view); ``touching``: in view and within :attr:`_touch_radius` of the camera.
        """
        rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
        # Signed distance of each box centre to each plane, and the reach of the box towards
        # it (the support of the box along the plane normal): a box lies wholly on the outer
        # side of a plane when distance - reach > 0.
        normals = self._planes[:, :3] @ rotation  # (5, 3) world-frame plane normals
        offsets = self._planes[:, :3] @ translation + self._planes[:, 3]  # (5,)
        distance = self._centres @ normals.T + offsets  # (C, 5)
        reach = self._half_sizes @ np.abs(normals).T  # (C, 5)
        in_view = ((distance - reach) <= 0).all(axis=1)
        # Plane 0 is z = near with its normal towards the camera: distance = near - z_centre.
        z_min = self._near - distance[:, 0] - reach[:, 0]
        camera = -rotation.T @ translation  # (3,) world position
        gap = np.maximum(np.abs(camera - self._centres) - self._half_sizes, 0.0)  # (C, 3)
        touching = in_view & ((gap * gap).sum(axis=1) <= self._touch_radius**2)
        return in_view, touching, z_min


class _BoxTest:
    """Which chunks' boxes pass the depth test of the bound framebuffer (see the module doc).

    Args:
        ctx: the moderngl context (OpenGL >= 4.3).
        framebuffer: the moderngl framebuffer whose depth the boxes are tested against.
        low: (C, 3) chunk box minima, world metres.
        high: (C, 3) chunk box maxima, world metres.
        projection: (4, 4) GL projection of the images.
    """

    def __init__(
        self,
        ctx,
        framebuffer,
        low: np.ndarray,
        high: np.ndarray,
        projection: np.ndarray,
    ) -> None:
        self._ctx = ctx
        self._framebuffer = framebuffer
        self._low, self._high = low, high
        count = len(low)
        self._program = ctx.program(
            vertex_shader=_BOX_VERTEX_SHADER, fragment_shader=_BOX_FRAGMENT_SHADER
        )
        self._program["projection"].write(projection.T.astype("f4").tobytes())
        self._program["depth_offset"].value = _BOX_DEPTH_OFFSET
        self._world_to_camera = self._program["world_to_camera"]
        corners = self._low[:, None] + _CORNER_BITS * (self._high - self._low)[:, None]
        chunk = np.broadcast_to(np.arange(count)[:, None, None], (count, 8, 1))
        # Per corner: position, chunk index (exact in float32 below 2^24 chunks).
        vertices = np.concatenate([corners, chunk], axis=2).astype("f4")  # (C, 8, 4)
        self._corners = ctx.buffer(vertices.tobytes())
        self._index = ctx.buffer(reserve=4 * len(_CUBE_TRIANGLES) * 3 * count)
        self._marks = ctx.buffer(reserve=4 * count)
        self._vao = ctx.vertex_array(
            self._program,
            [(self._corners, "3f 1f", "in_position", "in_chunk")],
            index_buffer=self._index,
            index_element_size=4,
        )

    def marks(self, chunks: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
        """(C,) bool: chunks among ``chunks`` (C,) whose box has a pixel in front of the depth.

        Boxes must not contain the camera nor reach the part of the near plane in the image.
        """
        ctx = self._ctx
        index = np.flatnonzero(chunks)
        # Only the faces that face the camera (it lies on their outer side): together they
        # cover the box's outline, nearer than the faces behind.
        rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
        camera = -rotation.T @ translation  # (3,) world position
        front = np.empty((len(index), 6), dtype=bool)  # faces x = low, x = high, y = low, ...
        front[:, 0::2] = camera < self._low[index]
        front[:, 1::2] = camera > self._high[index]
        box, face = np.nonzero(front)
        corners = _CUBE_TRIANGLES.reshape(6, 6)[face] + 8 * index[box][:, None]  # (faces, 6)
        self._index.write(corners.astype("<u4").tobytes())
        self._marks.clear()
        self._marks.bind_to_storage_buffer(0)
        self._world_to_camera.write(world_to_camera.T.astype("f4").tobytes())
        framebuffer = self._framebuffer
        color_mask, depth_mask = framebuffer.color_mask, framebuffer.depth_mask
        framebuffer.color_mask = tuple((False,) * 4 for _ in color_mask)
        framebuffer.depth_mask = False
        self._vao.render(vertices=corners.size)
        framebuffer.color_mask, framebuffer.depth_mask = color_mask, depth_mask
        ctx.memory_barrier(ctx.BUFFER_UPDATE_BARRIER_BIT)
        return np.frombuffer(self._marks.read(), dtype=np.uint32) > 0

    def release(self) -> None:
        """Free the GL objects."""
        for resource in (self._vao, self._corners, self._index, self._marks, self._program):
            resource.release()
