"""Frustum and occlusion culling of large scenes by spatial chunks: the same surfaces, less work.

A scan-sized scene (HM3D: half a million triangles and more, two storeys) is mostly outside the
camera's view or hidden behind the walls and floors in front of it, and a software rasteriser
(Mesa's llvmpipe) pays for every triangle it is given. :class:`ChunkCuller` splits the scene
into chunks (the triangles whose centroids share a cell of a regular 3D grid and face the same
way; a chunk is a contiguous range of the vertex buffer, chunks in Morton order so that nearby
chunks are neighbours in the buffer) and draws, per frame:

1. the chunks in the view frustum that were visible in the previous frame (temporal
   coherence: an agent moves a little between frames);
2. after reading back the depth drawn so far, every other chunk in the frustum that a
   max-depth pyramid of it (Hi-Z) does not prove hidden; when those hold many triangles (a
   turn or a doorway revealed much), only their nearer half, then step 2 again (at most
   :data:`_MAX_ROUNDS` read-backs).

A chunk is hidden when the nearest corner of its bounding box lies behind the farthest surface
drawn over every pixel its box can cover (plus :data:`_DEPTH_MARGIN_M`, far above the depth
buffer's rounding), so none of its fragments could pass the depth test: every pixel shows the
surface that the whole scene drawn in one call shows, except where two surfaces lie closer
together than the depth buffer resolves (z-fighting: coplanar faces, T-junctions), where the
draw order decides. That order follows the history (which chunks were visible before), so
:meth:`ChunkCuller.forget` starts afresh (the simulator does at every agent reset, so that an
episode's frames depend on its poses alone); the first frame after it, or a jump to a far
pose, draws every chunk in the frustum, nearer first. Boxes that cross the near plane are always
drawn. The chunks drawn, less those that the frame's final depth hides, are the next frame's
step 1.
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
"""Bounding boxes are grown by this much so that float rounding never hides a surface."""
_DEPTH_MARGIN_M = 0.01
"""A box is hidden only when it lies this much (plus 0.1 %) behind the drawn surfaces: the depth
buffer resolves about 0.6 mm at 10 m (24 bits, near plane 1 cm), the sensor's range."""
_MAX_ROUNDS = 3
"""Depth read-backs and occlusion tests per frame at most (see :meth:`ChunkCuller.draw`)."""
_ROUND_TRIANGLES = 16_000
"""Unproven chunks holding more triangles than this are drawn nearer half first."""
_CORNER_BITS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=np.float64)
_MORTON_BITS = 10
"""Bits per axis of the cell coordinates interleaved into the chunk order."""


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
        vao: moderngl vertex array of the scene, its triangles ordered by :func:`chunk_order`.
        triangles: (F, 3, 3) world-frame corners in that order, metres.
        starts: (C + 1,) chunk starts, in triangles.
        intrinsics: (3, 3) ``K`` of the images, pixels.
        size: ``(width, height)`` of the images, pixels.
        near: near plane, metres.
    """

    def __init__(
        self,
        vao,
        triangles: np.ndarray,
        starts: np.ndarray,
        intrinsics: np.ndarray,
        size: tuple[int, int],
        near: float,
    ) -> None:
        self._vao = vao
        self._first = np.asarray(starts[:-1], dtype=np.int64) * 3  # in vertices
        self._count = np.diff(starts).astype(np.int64) * 3
        lows = np.minimum.reduceat(triangles.min(axis=1), starts[:-1], axis=0)
        highs = np.maximum.reduceat(triangles.max(axis=1), starts[:-1], axis=0)
        low, high = lows - _BOX_PADDING_M, highs + _BOX_PADDING_M  # (C, 3)
        corners = low[:, None] + _CORNER_BITS * (high - low)[:, None]  # (C, 8, 3)
        # (3, 8, C): coordinate, corner, chunk, so that per-corner arithmetic runs on whole rows.
        self._corners = np.ascontiguousarray(corners.transpose(2, 1, 0))
        self._centres = 0.5 * (low + high)  # (C, 3)
        self._radii = 0.5 * np.linalg.norm(high - low, axis=1)  # (C,) bounding spheres
        self._visible = np.zeros(len(self._first), dtype=bool)
        k = np.asarray(intrinsics, dtype=np.float64)
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        self._k = (fx, fy, cx, cy)
        self._size = size
        self._near = near
        width, height = size
        # Outward unit normals of the four side planes of the view frustum (camera frame):
        # u < 0, u > W, v < 0, v > H for points with z > 0.
        sides = np.array(
            [[-fx, 0.0, -cx], [fx, 0.0, cx - width], [0.0, -fy, -cy], [0.0, fy, cy - height]]
        )
        self._side_normals = sides / np.linalg.norm(sides, axis=1, keepdims=True)

    @property
    def num_chunks(self) -> int:
        """Number of chunks."""
        return len(self._first)

    def forget(self) -> None:
        """Drop the visibility of past frames: the next frame is culled from scratch."""
        self._visible[:] = False

    def draw(self, world_to_camera: np.ndarray, read_depth: Callable[[], np.ndarray]) -> int:
        """Draw the scene into the bound framebuffer (program, uniforms and textures set).

        Args:
            world_to_camera: (4, 4) float64 world-to-camera transform (column vectors).
            read_depth: returns the (H, W) float32 metric z-depth drawn so far (0: nothing or
                beyond the sensor's range).

        Returns:
            The number of triangles drawn.
        """
        boxes = self._project(world_to_camera)
        in_view, crossing, z_min = boxes[0], boxes[1], boxes[2]
        drawn = in_view & (self._visible | crossing)
        self._render(drawn, z_min)
        pending = in_view & ~drawn
        for round_ in range(_MAX_ROUNDS):
            if not pending.any():
                break
            pending &= ~self._hidden(read_depth(), boxes)
            batch = pending
            if round_ + 1 < _MAX_ROUNDS and self._count[pending].sum() > 3 * _ROUND_TRIANGLES:
                # Many chunks still unproven (a turn or a doorway revealed much): draw the
                # nearer half, whose surfaces may hide the farther half, and test again.
                batch = pending & (z_min <= np.median(z_min[pending]))
            self._render(batch, z_min)
            drawn |= batch
            pending &= ~batch
        # Next frame starts from the chunks that the final depth does not hide.
        self._visible = drawn & ~self._hidden(read_depth(), boxes)
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

    def _project(self, world_to_camera: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per chunk: in view, crossing the near plane, nearest z and pixel rectangle.

        Returns:
            ``(in_view, crossing, z_min, col_lo, col_hi, row_lo, row_hi)``, each (C,): a box is
            out of view when its bounding sphere lies beyond one side of the view frustum, or
            all its corners lie behind the near plane, or (none behind it) their projections all
            lie beyond one image border; a box crossing the near plane is in view otherwise. The
            rectangle (inclusive, clipped to the image, one pixel wider on each side than the
            corners' projections) and ``z_min`` are meaningful for boxes in view and not
            crossing the near plane.
        """
        count = len(self._first)
        rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
        centres = self._centres @ rotation.T + translation  # (C, 3) camera frame
        # Spheres first (one point per chunk): most chunks of a house are behind or beside.
        near = centres @ np.array([0.0, 0.0, -1.0]) - self._radii > -self._near  # all z < near
        side = centres @ self._side_normals.T > self._radii[:, None]  # (C, 4) beyond a border
        maybe = np.flatnonzero(~(near | side.any(axis=1)))
        world = self._corners[:, :, maybe]  # (3, 8, M)
        x, y, z = (
            sum(rotation[axis, k] * world[k] for k in range(3)) + translation[axis]
            for axis in range(3)
        )  # each (8, M), camera frame
        behind = z < self._near
        straddles = behind.any(axis=0)  # drawn without further tests (a few, near the camera)
        fx, fy, cx, cy = self._k
        width, height = self._size
        safe_z = np.maximum(z, self._near)
        u = fx * x / safe_z + cx  # (8, M) pixels, exact where not behind
        v = fy * y / safe_z + cy
        u_lo, u_hi, v_lo, v_hi = u.min(axis=0), u.max(axis=0), v.min(axis=0), v.max(axis=0)
        outside = (u_hi < 0) | (u_lo > width) | (v_hi < 0) | (v_lo > height)
        outside = np.where(straddles, behind.all(axis=0), outside)
        in_view, crossing = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
        in_view[maybe] = ~outside
        crossing[maybe] = straddles & ~outside
        z_min = np.zeros(count)
        z_min[maybe] = z.min(axis=0)
        rectangle = np.zeros((4, count), dtype=np.int64)
        grow = np.array([[-1.0], [1.0], [-1.0], [1.0]])  # one pixel out on every side
        grown = np.floor(np.stack([u_lo, u_hi, v_lo, v_hi])) + grow  # (4, M)
        limits = np.array([[width - 1], [width - 1], [height - 1], [height - 1]])
        rectangle[:, maybe] = np.minimum(np.maximum(grown, 0), limits)
        return in_view, crossing, z_min, *rectangle

    def _hidden(self, depth: np.ndarray, boxes: tuple[np.ndarray, ...]) -> np.ndarray:
        """(C,) chunks in view, not crossing the near plane, whose box is behind ``depth``."""
        in_view, crossing, z_min, col_lo, col_hi, row_lo, row_hi = boxes
        candidates = np.flatnonzero(in_view & ~crossing)
        hidden = np.zeros(len(in_view), dtype=bool)
        if not len(candidates):
            return hidden
        pyramid = _max_pyramid(np.where(depth > 0, depth, np.float32(np.inf)))
        span = np.maximum(col_hi - col_lo, row_hi - row_lo)[candidates] + 1  # pixels
        levels = np.minimum(
            np.ceil(np.log2(span)).astype(np.int64), len(pyramid) - 1
        )  # a span of at most 2 texels per axis at that level
        farthest = np.empty(len(candidates))
        for level in np.unique(levels):
            pick = np.flatnonzero(levels == level)
            chunks = candidates[pick]
            texels = pyramid[level]
            rows = (row_lo[chunks] >> level, row_hi[chunks] >> level)
            cols = (col_lo[chunks] >> level, col_hi[chunks] >> level)
            farthest[pick] = np.maximum.reduce(
                [texels[r, c] for r in rows for c in cols]
            )  # the (at most) 2 x 2 texels cover the rectangle
        margin = _DEPTH_MARGIN_M + 1e-3 * farthest
        hidden[candidates] = z_min[candidates] > farthest + margin
        return hidden


def _max_pyramid(depth: np.ndarray) -> list[np.ndarray]:
    """Levels of 2 x 2 maxima of an (H, W) array, down to one texel (odd sizes padded with inf).

    Texel ``(r, c)`` of level ``l`` is the maximum of pixels ``[r 2^l, (r + 1) 2^l) x
    [c 2^l, (c + 1) 2^l)`` of level 0.
    """
    levels = [depth]
    while max(levels[-1].shape) > 1:
        level = levels[-1]
        height, width = level.shape
        if height % 2 or width % 2:
            padded = np.full((height + height % 2, width + width % 2), np.inf, level.dtype)
            padded[:height, :width] = level
            level = padded
        rows = np.maximum(level[0::2], level[1::2])  # (H / 2, W)
        levels.append(np.maximum(rows[:, 0::2], rows[:, 1::2]))  # (H / 2, W / 2)
    return levels
