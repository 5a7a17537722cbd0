"""View overlap between frames of an episode: which earlier frames a frame revisits.

Revisits are judged from camera poses alone (:func:`frustum_overlap`): a frame *revisits* an
earlier one when enough of its view frustum (truncated to a working range) lies inside the
earlier camera's frustum. The collector's summary and the clip dataset's revisit sampling both
use :func:`revisit_sources`.

What a clip's memory can explain is judged by visibility instead (:func:`clip_coverage`, with
:func:`worldsim.data.visibility.seen_by`: depth consistency, so walls and furniture occlude): the
share of the clip's future pixels that earlier frames see and its context frames do not, and
the earlier frames that see most of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from worldsim.geometry import invert_rigid, transform_points, unproject_depth

if TYPE_CHECKING:
    from worldsim.data.visibility import DepthConsistency


# ================================================================================== view overlap
@dataclass(frozen=True)
class RevisitConfig:
    """When a frame counts as revisiting an earlier one.

    Frame ``t`` revisits frame ``s`` if ``t - s >= min_gap`` and at least ``threshold`` of the
    sample points of ``t``'s view frustum (a grid of ``grid x grid`` pixel rays at
    ``depth_samples`` depths evenly spaced in ``[near, far]``) lie inside ``s``'s frustum
    truncated to the same depth range. Only poses and intrinsics are used, so walls between
    the two cameras are not taken into account; the short default range limits that error.

    Attributes:
        min_gap: frames between the two views, >= 1.
        threshold: fraction of sample points that must be shared, in (0, 1].
        near: nearest sample depth, metres, > 0.
        far: farthest sample depth, metres, > near.
        grid: pixel rays per image side, >= 1.
        depth_samples: sample depths per ray, >= 1.
    """

    min_gap: int = 30
    threshold: float = 0.5
    near: float = 0.5
    far: float = 3.0
    grid: int = 6
    depth_samples: int = 3

    def __post_init__(self) -> None:
        if self.min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 frames, got {self.min_gap}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far metres, got near={self.near}, far={self.far}")
        if self.grid < 1 or self.depth_samples < 1:
            raise ValueError(
                f"grid and depth_samples must be >= 1, got {self.grid} and {self.depth_samples}"
            )


def frustum_samples(
    cam_to_world: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """World points that sample each camera's view frustum.

    Args:
        cam_to_world: (T, 4, 4) camera poses.
        intrinsics: (T, 3, 3) ``K`` of images of ``height`` x ``width`` pixels.
        height: image rows.
        width: image columns.
        config: the grid and depth range.

    Returns:
        (T, P, 3) world points, ``P = depth_samples * grid * grid``, float64.
    """
    frames, grid = cam_to_world.shape[0], config.grid
    # Scaling K maps the pixel centres of a grid x grid image onto the grid cells' centres.
    scale = torch.tensor([grid / width, grid / height, 1.0], dtype=torch.float64)
    k_grid = scale[:, None] * intrinsics.double()  # (T, 3, 3)
    depths = torch.linspace(config.near, config.far, config.depth_samples, dtype=torch.float64)
    planes = depths[None, :, None, None].expand(frames, -1, grid, grid)  # (T, D, g, g)
    points = unproject_depth(planes, k_grid[:, None])  # (T, D, g, g, 3)
    points = rearrange(points, "t d h w c -> t (d h w) c")
    return transform_points(cam_to_world.double(), points)  # (T, P, 3)


def frustum_overlap(
    points: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    config: RevisitConfig,
) -> Tensor:
    """Fraction of each point set that lies inside a camera's truncated view frustum.

    Args:
        points: (N, P, 3) world points (e.g. rows of :func:`frustum_samples`).
        cam_to_world: (N, 4, 4) poses of the cameras to test against.
        intrinsics: (N, 3, 3) their ``K``.
        height: image rows.
        width: image columns.
        config: the depth range ``[near, far]``.

    Returns:
        (N,) fractions in [0, 1], float64.
    """
    world_to_cam = invert_rigid(cam_to_world.double())
    camera = transform_points(world_to_cam, points.double())  # (N, P, 3)
    return _inside_fraction(camera, intrinsics.double(), height, width, config)


def _inside_fraction(
    camera: Tensor, intrinsics: Tensor, height: int, width: int, config: RevisitConfig
) -> Tensor:
    """(N,) fraction of camera points (N, P, 3) inside the truncated frustums of K (N, 3, 3)."""
    x, y, z = camera.unbind(-1)
    k = intrinsics[:, None]  # (N, 1, 3, 3)
    # u = fx x / z + cx in [0, W] without dividing: for z > 0, 0 <= fx x + cx z <= W z.
    u_z = k[..., 0, 0] * x + k[..., 0, 2] * z
    v_z = k[..., 1, 1] * y + k[..., 1, 2] * z
    inside = (
        (z >= config.near * (1 - 1e-9))  # slack: samples on the near/far planes count as inside
        & (z <= config.far * (1 + 1e-9))
        & (u_z >= 0)
        & (u_z <= width * z)
        & (v_z >= 0)
        & (v_z <= height * z)
    )
    return inside.double().mean(dim=-1)


def _frustum_radius(intrinsics: Tensor, height: int, width: int, far: float) -> Tensor:
    """(T,) distance from the camera centre to the farthest corner of its truncated frustum."""
    fx, fy = intrinsics[:, 0, 0].double(), intrinsics[:, 1, 1].double()
    cx, cy = intrinsics[:, 0, 2].double(), intrinsics[:, 1, 2].double()
    half_x = torch.maximum(cx, width - cx) / fx
    half_y = torch.maximum(cy, height - cy) / fy
    return far * torch.sqrt(1.0 + half_x**2 + half_y**2)


def revisit_sources(
    cam_to_world: np.ndarray | Tensor,
    intrinsics: np.ndarray | Tensor,
    height: int,
    width: int,
    config: RevisitConfig | None = None,
    batch_pairs: int = 2048,
) -> np.ndarray:
    """For each frame, the earliest earlier frame it revisits (see :class:`RevisitConfig`).

    Args:
        cam_to_world: (T, 4, 4) poses of one trajectory.
        intrinsics: (T, 3, 3) or (3, 3) ``K``.
        height: image rows.
        width: image columns.
        config: the revisit rule; defaults if ``None``.
        batch_pairs: frame pairs evaluated at once (memory vs. speed).

    Returns:
        (T,) int64: the smallest ``s <= t - min_gap`` whose view ``t`` overlaps by at least
        ``threshold``, or -1 where there is none.
    """
    config = config or RevisitConfig()
    poses = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float64)
    frames = poses.shape[0]
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64)
    k = k.expand(frames, 3, 3) if k.dim() == 2 else k
    sources = np.full(frames, -1, dtype=np.int64)
    if frames <= config.min_gap:
        return sources
    points = frustum_samples(poses, k, height, width, config)  # (T, P, 3)
    # Two truncated frustums can only share points if their centres are within both radii.
    radius = _frustum_radius(k, height, width, config.far)
    centres = poses[:, :3, 3]
    reach = torch.cdist(centres, centres) <= radius[:, None] + radius[None, :]
    later, earlier = torch.nonzero(reach, as_tuple=True)
    keep = later - earlier >= config.min_gap
    # Earlier frames first: once a frame has a source, later batches cannot give a smaller one.
    order = torch.argsort(earlier[keep], stable=True)
    later, earlier = later[keep][order].numpy(), earlier[keep][order].numpy()
    world_to_cam = invert_rigid(poses)
    begin = 0
    while begin < len(later):
        t, s = later[begin : begin + batch_pairs], earlier[begin : begin + batch_pairs]
        begin += batch_pairs
        open_pairs = sources[t] < 0
        t, s = t[open_pairs], s[open_pairs]
        if len(t) == 0:
            continue
        camera = transform_points(world_to_cam[s], points[t])  # (B, P, 3)
        hit = (_inside_fraction(camera, k[s], height, width, config) >= config.threshold).numpy()
        # Pairs are sorted by s, so the first hit of each t in this batch is its smallest s.
        t_hit, first = np.unique(t[hit], return_index=True)
        sources[t_hit] = s[hit][first]
    return sources


def revisit_fraction(sources: np.ndarray) -> float:
    """Fraction of frames that revisit an earlier frame, from :func:`revisit_sources`."""
    return float((np.asarray(sources) >= 0).mean()) if len(sources) else 0.0


# ================================================================================== clip coverage
@dataclass(frozen=True)
class CoverageConfig:
    """How :func:`clip_coverage` measures what a clip's memory can explain.

    Visibility (:func:`worldsim.data.visibility.seen_by`) is tested on a regular subsample of the
    pixels (:func:`subsample_depth`): every ``H // resolution``-th row and column, with ``K``
    adjusted to match, so a 64x64 frame is judged on 16x16 pixels: 16 times cheaper, and a
    share of pixels changes by little (an object thinner than 4 pixels may be missed). To bound
    the cost, the earlier frames tested against a future frame are the ``candidates`` that see
    most of it at the coarser ``prefilter_resolution`` (ties: the later frame), plus the frames
    just before it that a clip's context can hold; other frames count as not seeing it, so the
    coverage is a lower bound of the one over all earlier frames (equal when every earlier frame
    is a candidate).

    Attributes:
        resolution: pixels per image side of the visibility test, >= 1 (capped at the image).
        prefilter_resolution: pixels per image side of the pre-filter, >= 1.
        candidates: earlier frames tested against each future frame, >= 1; also the most memory
            frames :func:`clip_coverage` ranks per clip.
        consistency: the depth tolerances; None = ``DepthConsistency()``.
    """

    resolution: int = 16
    prefilter_resolution: int = 4
    candidates: int = 32
    consistency: DepthConsistency | None = None

    def __post_init__(self) -> None:
        for name in ("resolution", "prefilter_resolution", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"CoverageConfig.{name} must be >= 1, got {getattr(self, name)}")


def subsample_depth(depth: Tensor, intrinsics: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """A regular subsample of depth maps, and the ``K`` of the subsampled images.

    Pixel ``(i, j)`` of the subsample is pixel ``(o_y + i s_y, o_x + j s_x)`` of the frame, with
    steps ``s = max(1, H // size)`` (columns alike) and offsets ``o = s // 2``. Its centre
    ``x = o + 0.5 + j s`` must map to ``j + 0.5``, so ``fx' = fx / s`` and
    ``cx' = (cx - o - 0.5) / s + 0.5``: the subsampled pixels keep their exact rays.

    Args:
        depth: (F, H, W) z-depth, metres.
        intrinsics: (F, 3, 3) ``K`` of the frames, pixels.
        size: wanted pixels per side, >= 1.

    Returns:
        ``(depth, intrinsics)``: (F, H // s_y, W // s_x) and (F, 3, 3).
    """
    height, width = depth.shape[-2:]
    step_y, step_x = max(1, height // size), max(1, width // size)
    off_y, off_x = step_y // 2, step_x // 2
    sampled = depth[:, off_y::step_y, off_x::step_x][:, : height // step_y, : width // step_x]
    k = intrinsics.clone()
    k[:, 0, 0] = intrinsics[:, 0, 0] / step_x
    k[:, 1, 1] = intrinsics[:, 1, 1] / step_y
    k[:, 0, 2] = (intrinsics[:, 0, 2] - off_x - 0.5) / step_x + 0.5
    k[:, 1, 2] = (intrinsics[:, 1, 2] - off_y - 0.5) / step_y + 0.5
    return sampled.contiguous(), k


def _pair_seen(
    depth: Tensor,
    intrinsics: Tensor,
    cam_to_world: Tensor,
    targets: np.ndarray,
    sources: np.ndarray,
    consistency: DepthConsistency | None,
    batch_pairs: int,
) -> np.ndarray:
    """(N, h*w) bool: which pixels of frame ``targets[n]`` frame ``sources[n]`` sees."""
    from worldsim.data.visibility import seen_by  # imports the model stack: only when measuring

    parts = [np.zeros((0, depth.shape[1] * depth.shape[2]), dtype=bool)]
    for begin in range(0, len(targets), batch_pairs):
        t = torch.from_numpy(targets[begin : begin + batch_pairs])
        s = torch.from_numpy(sources[begin : begin + batch_pairs])
        seen = seen_by(
            depth[t][:, None, None],  # (B, 1, 1, h, w)
            intrinsics[t][:, None],
            cam_to_world[t][:, None],
            depth[s][:, None, None],
            intrinsics[s][:, None],
            cam_to_world[s][:, None],
            consistency=consistency,
        )
        parts.append(seen.reshape(len(t), -1).numpy())
    return np.concatenate(parts)


def _pack(mask: np.ndarray) -> np.ndarray:
    """(..., P) bool -> (..., ceil(P / 64)) uint64 bit sets (padding bits 0)."""
    pad = -mask.shape[-1] % 64
    padded = np.concatenate([mask, np.zeros((*mask.shape[:-1], pad), dtype=bool)], axis=-1)
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint64)


def _sources(
    coarse: np.ndarray, targets: np.ndarray, window: int, candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(t, s)`` to test: the pre-filter's best ``s < t - window``, then ``t - window..t-1``.

    Args:
        coarse: (R, F) pre-filter score of frame ``s`` (column) for ``targets[r]`` (row).
        targets: (R,) target frames, increasing.
        window: frames just before a target that are always tested.
        candidates: best earlier frames kept per target.

    Returns:
        ``(t, s)``: (N,) int64 each.
    """
    pair_t, pair_s = [], []
    for row, t in enumerate(targets):
        early = np.arange(max(t - window, 0))
        score = coarse[row, early]
        # Best score first; ties: the later frame.
        order = np.lexsort((-early, -score))[:candidates]
        chosen = early[order][score[order] > 0]
        near = np.arange(max(t - window, 0), t)
        both = np.concatenate([chosen, near])
        pair_t.append(np.full(len(both), t, dtype=np.int64))
        pair_s.append(both.astype(np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate([empty, *pair_t]), np.concatenate([empty, *pair_s])


def clip_coverage(
    depth: np.ndarray | Tensor,
    cam_to_world: np.ndarray | Tensor,
    intrinsics: np.ndarray | Tensor,
    starts: np.ndarray,
    n_context: int,
    n_future: int,
    config: CoverageConfig | None = None,
    batch_pairs: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-only coverage of clips of one episode, and their best memory frames.

    A clip starting at ``a`` has context frames ``a .. a + n_context - 1``, future frames
    ``a + n_context .. a + n_context + n_future - 1`` and may remember frames ``0 .. a - 1``.
    Its *memory-only* pixels are the future frames' valid-depth pixels that some earlier frame
    sees and no context frame sees (:func:`worldsim.data.visibility.seen_by`, on the subsample and
    candidates of :class:`CoverageConfig`). Its coverage is their number over the number of
    valid-depth future pixels (0 when there are none).

    The memory frames are ranked by a greedy cover of the memory-only pixels: first the earlier
    frame that sees most of them, then the one that sees most of those still uncovered, and so
    on while a frame adds at least one pixel; ties go to the later frame (nearer in time).

    Args:
        depth: (F, H, W) or (F, H, W, 1) z-depth of the episode, metres.
        cam_to_world: (F, 4, 4) poses.
        intrinsics: (F, 3, 3) ``K``, pixels.
        starts: (C,) first frames of the clips, each with ``start + n_context + n_future <= F``.
        n_context: context frames per clip, >= 1.
        n_future: future frames per clip, >= 1.
        config: subsample, candidates and tolerances; default :class:`CoverageConfig`.
        batch_pairs: frame pairs tested at once (memory vs. speed).

    Returns:
        ``(coverage, picks)``: (C,) float64 in [0, 1], and (C, candidates) int64 memory frames in
        greedy order, -1 after the last frame that adds pixels.
    """
    from worldsim.data.visibility import DepthConsistency
    from worldsim.memory.base import valid_depth_mask

    config = config or CoverageConfig()
    consistency = config.consistency or DepthConsistency()
    depth = torch.as_tensor(np.asarray(depth), dtype=torch.float32)
    depth = depth[..., 0] if depth.dim() == 4 else depth  # (F, H, W)
    poses = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float32)
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
    starts = np.asarray(starts, dtype=np.int64)
    frames, window = depth.shape[0], n_context + n_future - 1
    clips, keep = len(starts), config.candidates
    if clips and (starts.min() < 0 or starts.max() + window >= frames):
        raise ValueError(
            f"clip starts must lie in [0, {frames - window - 1}] for {frames} frames and "
            f"clips of {window + 1}, got {starts.min()}..{starts.max()}"
        )
    if clips == 0:
        return np.zeros(0), np.full((0, keep), -1, dtype=np.int64)

    future = starts[:, None] + n_context + np.arange(n_future)  # (C, n_future)
    targets = np.unique(future)
    # Pre-filter: every earlier frame a clip's memory could hold, on a coarse subsample.
    coarse_d, coarse_k = subsample_depth(depth, k, config.prefilter_resolution)
    grid_t, grid_s = np.meshgrid(targets, np.arange(frames), indexing="ij")
    early = grid_s < grid_t - window
    row_of = np.full(frames, -1, dtype=np.int64)
    row_of[targets] = np.arange(len(targets))
    coarse = np.zeros((len(targets), frames), dtype=np.float32)
    seen = _pair_seen(
        coarse_d, coarse_k, poses, grid_t[early], grid_s[early], config.consistency, batch_pairs
    )
    coarse[row_of[grid_t[early]], grid_s[early]] = seen.sum(-1)

    # Visibility on the fine subsample, for the pre-filter's candidates and the near frames.
    fine_d, fine_k = subsample_depth(depth, k, config.resolution)
    pair_t, pair_s = _sources(coarse, targets, window, keep)
    bits = _pack(
        _pair_seen(fine_d, fine_k, poses, pair_t, pair_s, config.consistency, batch_pairs)
    )  # (N, words)
    slots = keep + window
    slot = np.arange(len(pair_t)) - np.searchsorted(pair_t, pair_t)  # rank within its target
    src = np.full((len(targets), slots), -1, dtype=np.int64)
    src[row_of[pair_t], slot] = pair_s
    seen_bits = np.zeros((len(targets), slots, bits.shape[-1]), dtype=np.uint64)
    seen_bits[row_of[pair_t], slot] = bits
    valid = valid_depth_mask(fine_d, consistency.max_depth).flatten(1).sum(-1).numpy()

    rows = row_of[future]  # (C, n_future)
    source = src[rows]  # (C, n_future, J)
    masks = seen_bits[rows]  # (C, n_future, J, words)
    begin = starts[:, None, None]
    in_context = (source >= begin) & (source < begin + n_context)
    in_memory = (source >= 0) & (source < begin)
    zero = np.uint64(0)
    by_context = np.bitwise_or.reduce(np.where(in_context[..., None], masks, zero), axis=2)
    by_memory = np.bitwise_or.reduce(np.where(in_memory[..., None], masks, zero), axis=2)
    only = by_memory & ~by_context  # (C, n_future, words)
    counts = np.bitwise_count(only).sum(axis=(1, 2), dtype=np.int64)
    coverage = counts / np.maximum(valid[future].sum(-1), 1)

    picks = np.full((clips, keep), -1, dtype=np.int64)
    offered = np.where(in_memory[..., None], masks & only[:, :, None], zero)  # (C, n_f, J, w)
    covered = np.zeros_like(only)
    owner = np.where(in_memory, source, -1)  # (C, n_future, J) memory frame of each slot
    active = np.flatnonzero(counts > 0)  # clips still gaining pixels, compacted every step
    for step in range(keep):
        if len(active) == 0:
            break
        free = offered[active] & ~covered[active][:, :, None]
        gain = np.bitwise_count(free).sum(-1, dtype=np.int64)  # (A, n_future, J)
        mine = owner[active] >= 0
        flat = (np.arange(len(active))[:, None, None] * frames + owner[active])[mine]
        per_frame = np.bincount(flat, weights=gain[mine], minlength=len(active) * frames)
        per_frame = per_frame.reshape(len(active), frames)
        best = frames - 1 - np.argmax(per_frame[:, ::-1], axis=1)  # ties: the later frame
        gaining = per_frame[np.arange(len(active)), best] > 0
        active, best, free = active[gaining], best[gaining], free[gaining]
        picks[active, step] = best
        hit = owner[active] == best[:, None, None]
        covered[active] |= np.bitwise_or.reduce(np.where(hit[..., None], free, zero), axis=2)
    return coverage, picks
