"""The Memory interface and the pieces every memory shares: input checks, lifting, embeddings.

A memory holds ``B`` independent maps (one per batch row). The world model and the planners only
use the five members of :class:`Memory`; the concrete memories differ in what they store and which
tokens they give back.

Lifting frames to points (:func:`lift_frames`)
    Each valid frame is encoded to a (C, h, w) feature grid with stride ``s``
    (:mod:`worldsim.models.encoders`). A feature cell gets one depth from the ``s x s`` pixels it
    covers:
    ``"median"`` (default) takes the lower median of the cell's valid depths, which is always one
    of the measured depths (at an occlusion edge it picks one of the two surfaces, never a phantom
    depth between them); ``"nearest"`` takes the pixel at row and column ``s // 2`` of the cell.
    A cell without a valid depth is dropped. The cell is then unprojected through its centre with
    the feature-grid intrinsics (:func:`worldsim.models.encoders.feature_intrinsics`) and the
    frame's
    ``cam_to_world`` (:func:`worldsim.geometry.depth_to_world_points`).

Bad input
    Depth that is 0, NaN, infinite, negative or beyond ``max_depth`` counts as "no hit" and is
    masked (such pixels add nothing to any memory). Poses that are not rigid transforms, non-finite
    or non-positive focal lengths, RGB outside [0, 1], shapes that disagree with each other or with
    the batch size given to :meth:`Memory.reset`: ``ValueError`` naming the value. Padding frames
    (``valid == False``) are never read, so they may hold anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from worldsim.geometry import (
    DEFAULT_MAX_DEPTH_M,
    check_rigid,
    depth_to_world_points,
    plucker_rays,
    relative_pose,
)
from worldsim.models.encoders import FeatureEncoder, feature_intrinsics

if TYPE_CHECKING:
    from worldsim.memory.splatting import MemoryRender

DEPTH_SAMPLING = ("median", "nearest")
"""How a feature cell gets its depth from the pixels it covers (see the module docstring)."""


class Memory(nn.Module):
    """Abstract base: ``B`` independent memories that read RGB-D frames and give them back.

    Usage: ``reset(B)``, then any number of ``update(...)`` calls, then, for the cameras about to
    be generated, ``tokens(...)`` (a memory with ``gives_tokens``: map tokens that memory blocks
    cross-attend to) or ``render(...)`` (a memory with ``gives_render``: the map drawn into each
    camera, read pixel-aligned); ``select(index)`` copies rows (e.g. one start state into K
    rollouts). A memory says which it gives; consumers ask it, never its type.

    Empty memories: :meth:`tokens` returns ``N = max`` number of tokens over the rows, with
    ``mask`` False on padding; when no row has any token, ``N = 0`` (tensors of shape (B, 0, D)
    and (B, 0)). Consumers must accept ``N = 0`` and rows whose mask is all False.

    Attributes:
        token_dim: D, width of the tokens.
        gives_tokens: :meth:`tokens` answers (class attribute).
        gives_render: :meth:`render` and :meth:`points` answer (class attribute).
    """

    token_dim: int
    gives_tokens: ClassVar[bool] = True
    gives_render: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.batch_size: int | None = None
        self.device = torch.device("cpu")

    def reset(self, batch_size: int, device: torch.device | str | None = None) -> None:
        """Empty all maps and set the batch size (and device) of the state.

        Args:
            batch_size: B, number of independent maps, >= 1.
            device: where the state and the encoder live; default: unchanged (initially CPU).
        """
        raise NotImplementedError

    def _start_reset(self, batch_size: int, device: torch.device | str | None) -> None:
        """The part of :meth:`reset` every memory shares: check ``B``, move to ``device``.

        Moves the memory's ``encoder`` too, where it has one.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None:
            self.device = torch.device(device)
            encoder = getattr(self, "encoder", None)
            if encoder is not None:
                encoder.to(self.device)
        self.batch_size = batch_size

    def update(
        self,
        rgb: Tensor,
        depth: Tensor,
        intrinsics: Tensor,
        cam_to_world: Tensor,
        valid: Tensor | None = None,
        source: str | Tensor = "observed",
    ) -> None:
        """Add frames to the maps.

        Args:
            rgb: (B, T, 3, H, W) float RGB in [0, 1].
            depth: (B, T, 1, H, W) metric z-depth, metres (0 = no hit; see module docstring).
            intrinsics: (B, T, 3, 3) ``K`` in pixels.
            cam_to_world: (B, T, 4, 4) camera poses (world frame y up, OpenCV camera).
            valid: (B, T) bool, False for padding frames; ``None`` = all valid.
            source: ``"observed"`` or ``"generated"`` frames (or a (B, T) bool tensor, True =
                observed); a memory that keeps observed content over generated uses it
                (:class:`~worldsim.memory.RenderedMemory`), the others ignore it.
        """
        raise NotImplementedError

    def tokens(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Tokens for the cameras about to be generated.

        Args:
            target_cam_to_world: (B, L, 4, 4) poses of the target cameras.
            target_intrinsics: (B, L, 3, 3) their ``K`` in pixels.
            image_size: ``(H, W)`` of the target images, pixels.

        Returns:
            ``(tokens, mask)``: (B, N, D) float and (B, N) bool (True = real token).

        Raises:
            TypeError: for a memory without ``gives_tokens``.
        """
        raise TypeError(f"{type(self).__name__} gives no tokens: read it with render()")

    def render(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> MemoryRender:
        """The map drawn into the cameras about to be generated (a memory with ``gives_render``).

        Args:
            target_cam_to_world: (B, L, 4, 4) poses of the target cameras.
            target_intrinsics: (B, L, 3, 3) their ``K`` in pixels.
            image_size: ``(H, W)`` of the target images, pixels.

        Returns:
            The render, each field (B, L, C, H, W).

        Raises:
            TypeError: for a memory without ``gives_render``.
        """
        raise TypeError(f"{type(self).__name__} gives no render: read it with tokens()")

    def select(self, index: Tensor) -> Memory:
        """A new memory holding copies of the rows ``index``.

        Args:
            index: (B',) integer row indices in ``[0, B)``; repeats allowed.

        Returns:
            A memory of batch size B' whose rows behave as copies: writing into it never
            changes this one, nor the other way round.
        """
        raise NotImplementedError

    def rows_alike(self) -> bool:
        """Whether every row is known to hold the same map (e.g. one row selected K times).

        ``False`` means unknown; a memory that can tell cheaply overrides this.
        """
        return self._require_reset() == 1

    # Shared helpers -----------------------------------------------------------------------

    def _require_reset(self) -> int:
        if self.batch_size is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(batch_size) before using it")
        return self.batch_size

    def _check_select_index(self, index: Tensor) -> Tensor:
        batch = self._require_reset()
        index = torch.as_tensor(index, device=self.device)
        if index.dim() != 1 or index.is_floating_point():
            raise ValueError(f"index must be a 1-D integer tensor, got {index.dtype} {index.shape}")
        if index.numel() == 0:
            raise ValueError("index must select at least one row")
        if int(index.min()) < 0 or int(index.max()) >= batch:
            raise ValueError(
                f"index values must be in [0, {batch}), "
                f"got [{int(index.min())}, {int(index.max())}]"
            )
        return index.long()

    def _check_targets(
        self, target_cam_to_world: Tensor, target_intrinsics: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        batch = self._require_reset()
        if target_cam_to_world.dim() != 4 or target_cam_to_world.shape[-2:] != (4, 4):
            raise ValueError(
                "target_cam_to_world must have shape (B, L, 4, 4), got "
                f"{tuple(target_cam_to_world.shape)}"
            )
        b, length = target_cam_to_world.shape[:2]
        if b != batch or length < 1:
            raise ValueError(
                f"target_cam_to_world has batch {b} and {length} cameras; the memory holds "
                f"{batch} rows and needs at least one target camera"
            )
        if tuple(target_intrinsics.shape) != (b, length, 3, 3):
            raise ValueError(
                f"target_intrinsics must have shape {(b, length, 3, 3)}, "
                f"got {tuple(target_intrinsics.shape)}"
            )
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with H, W >= 1, got {image_size}")
        check_rigid(target_cam_to_world, "target_cam_to_world")
        check_intrinsics(target_intrinsics, "target_intrinsics")
        return target_cam_to_world.to(self.device).float(), target_intrinsics.to(
            self.device
        ).float()

    def _check_frames(
        self,
        rgb: Tensor,
        depth: Tensor,
        intrinsics: Tensor,
        cam_to_world: Tensor,
        valid: Tensor | None,
    ) -> Frames:
        """Validate an update's inputs and gather its valid frames."""
        batch = self._require_reset()
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must have shape (B, T, 3, H, W), got {tuple(rgb.shape)}")
        b, t, _, height, width = rgb.shape
        if b != batch:
            raise ValueError(f"rgb has batch size {b}, but the memory was reset for {batch}")
        if not rgb.is_floating_point():
            raise ValueError(
                f"rgb must be floating RGB in [0, 1], got dtype {rgb.dtype}; "
                "convert uint8 frames with x.float() / 255"
            )
        expected = {
            "depth": (depth, (b, t, 1, height, width)),
            "intrinsics": (intrinsics, (b, t, 3, 3)),
            "cam_to_world": (cam_to_world, (b, t, 4, 4)),
        }
        if valid is not None:
            expected["valid"] = (valid, (b, t))
        for name, (value, shape) in expected.items():
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} to match rgb {tuple(rgb.shape)}, "
                    f"got {tuple(value.shape)}"
                )
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=self.device)
        elif valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got dtype {valid.dtype}")
        valid = valid.to(self.device)
        batch_index, time_index = valid.nonzero(as_tuple=True)  # (Nv,), row-major order
        pick = (batch_index.to(rgb.device), time_index.to(rgb.device))
        frame_pose = cam_to_world[pick].to(self.device).float()
        frame_k = intrinsics[pick].to(self.device).float()
        check_rigid(frame_pose, "cam_to_world")
        check_intrinsics(frame_k, "intrinsics")
        return Frames(
            rgb=rgb[pick].to(self.device).float(),
            depth=depth[pick].to(self.device).float()[:, 0],
            intrinsics=frame_k,
            cam_to_world=frame_pose,
            batch_index=batch_index,
            time_index=time_index,
        )


@dataclass
class Frames:
    """The valid frames of one update, gathered in (row, time) order.

    Attributes:
        rgb: (Nv, 3, H, W) float RGB in [0, 1].
        depth: (Nv, H, W) metres, unmasked.
        intrinsics: (Nv, 3, 3) pixels.
        cam_to_world: (Nv, 4, 4) rigid poses.
        batch_index: (Nv,) map row of each frame.
        time_index: (Nv,) position of each frame in the update's T axis.
    """

    rgb: Tensor
    depth: Tensor
    intrinsics: Tensor
    cam_to_world: Tensor
    batch_index: Tensor
    time_index: Tensor


@dataclass
class LiftedFrames:
    """Feature cells of frames with their world points.

    Attributes:
        features: (Nv, C, h, w) encoder features.
        feature_k: (Nv, 3, 3) intrinsics of the feature grid (cells as pixels).
        points: (Nv, h, w, 3) world points of the cell centres, metres.
        point_valid: (Nv, h, w) bool, False where the cell had no valid depth.
    """

    features: Tensor
    feature_k: Tensor
    points: Tensor
    point_valid: Tensor


def check_intrinsics(intrinsics: Tensor, name: str = "intrinsics") -> None:
    """Raise unless every ``K`` is finite with positive focal lengths.

    Args:
        intrinsics: (..., 3, 3) matrices.
        name: what they are, for the message.

    Raises:
        ValueError: naming the problem.
    """
    if not torch.isfinite(intrinsics).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    focal = torch.stack([intrinsics[..., 0, 0], intrinsics[..., 1, 1]], dim=-1)
    if focal.numel() and float(focal.min()) <= 0:
        raise ValueError(f"{name} must have positive focal lengths, got min {float(focal.min())}")


def check_principal_point(intrinsics: Tensor, size: tuple[int, int], name: str) -> None:
    """Raise unless every ``K`` fits images of ``size``: principal point in the central half.

    A ``K`` made for another image size puts the principal point elsewhere (for twice the size at
    the image's corner, for half the size at a quarter of it), so ``|cx - W/2| < W/4`` and
    ``|cy - H/2| < H/4`` catch the common mix-up while admitting real, slightly off-centre lenses.

    Args:
        intrinsics: (..., 3, 3) matrices, pixels.
        size: ``(H, W)`` of the images they are used with.
        name: what they are, for the message.

    Raises:
        ValueError: naming the expected range and the principal point given.
    """
    height, width = size
    cx, cy = intrinsics[..., 0, 2].reshape(-1), intrinsics[..., 1, 2].reshape(-1)
    bad = ((cx - width / 2).abs() >= width / 4) | ((cy - height / 2).abs() >= height / 4)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"{name}[{index}] has its principal point at (cx, cy) = ({float(cx[index]):.2f}, "
            f"{float(cy[index]):.2f}) px, but images of {height}x{width} (H x W) need it within "
            f"({width / 4:g}, {3 * width / 4:g}) x ({height / 4:g}, {3 * height / 4:g}): were "
            "these intrinsics made for another image size?"
        )


def valid_depth_mask(depth: Tensor, max_depth: float) -> Tensor:
    """Pixels that count as measurements: finite, > 0 and <= ``max_depth`` metres."""
    return torch.isfinite(depth) & (depth > 0) & (depth <= max_depth)


def feature_depth(depth: Tensor, stride: int, mode: str, max_depth: float) -> Tensor:
    """One depth per feature cell (see the module docstring).

    Args:
        depth: (N, H, W) metres; invalid values (0, NaN, inf, negative, > ``max_depth``) ignored.
        stride: s, pixels per cell side.
        mode: ``"median"`` or ``"nearest"``.
        max_depth: largest valid depth, metres.

    Returns:
        (N, H // s, W // s) float depth, 0 where the cell has no valid pixel.
    """
    if mode not in DEPTH_SAMPLING:
        raise ValueError(f"depth sampling must be one of {DEPTH_SAMPLING}, got {mode!r}")
    _, height, width = depth.shape
    h, w = height // stride, width // stride
    cells = rearrange(
        depth[:, : h * stride, : w * stride], "n (h a) (w b) -> n h w (a b)", a=stride, b=stride
    )  # (N, h, w, s*s)
    ok = valid_depth_mask(cells, max_depth)
    if mode == "nearest":
        centre = (stride // 2) * stride + stride // 2
        return torch.where(ok[..., centre], cells[..., centre], torch.zeros_like(cells[..., 0]))
    masked = torch.where(ok, cells, torch.full_like(cells, float("nan")))
    median = masked.nanmedian(dim=-1).values  # (N, h, w), NaN where no valid pixel
    return torch.nan_to_num(median, nan=0.0)


def lift_frames(
    frames: Frames, encoder: FeatureEncoder, depth_sampling: str, max_depth: float
) -> LiftedFrames:
    """Encode frames and unproject their feature cells to world points.

    Args:
        frames: validated frames (:meth:`Memory._check_frames`).
        encoder: the feature encoder.
        depth_sampling: ``"median"`` or ``"nearest"``.
        max_depth: largest valid depth, metres.

    Returns:
        The features, feature-grid intrinsics, world points and their validity.
    """
    with torch.no_grad():
        features = encoder(frames.rgb).float()  # (Nv, C, h, w)
    cell_depth = feature_depth(frames.depth, encoder.stride, depth_sampling, max_depth)
    k = feature_intrinsics(frames.intrinsics, encoder.stride)
    points = depth_to_world_points(cell_depth, k, frames.cam_to_world)  # (Nv, h, w, 3)
    return LiftedFrames(features, k, points, cell_depth > 0)


def sinusoidal_embedding(
    coords: Tensor, num_frequencies: int, min_wavelength: float, max_wavelength: float
) -> Tensor:
    """Sinusoidal embedding of metric coordinates.

    Wavelengths are geometrically spaced from ``min_wavelength`` to ``max_wavelength``
    (``lambda_k``, k < F); each coordinate ``x`` gives ``sin(2 pi x / lambda_k)`` for all k, then
    ``cos(2 pi x / lambda_k)`` for all k.

    Args:
        coords: (..., A) coordinates in metres.
        num_frequencies: F >= 1.
        min_wavelength: shortest wavelength, metres, > 0.
        max_wavelength: longest wavelength, metres, >= ``min_wavelength``.

    Returns:
        (..., 2 * F * A): per axis ``[sin_0 … sin_{F-1}, cos_0 … cos_{F-1}]``, axes in order.
    """
    if num_frequencies == 1:
        wavelengths = torch.tensor([min_wavelength], dtype=coords.dtype, device=coords.device)
    else:
        ratio = math.log(max_wavelength / min_wavelength) / (num_frequencies - 1)
        exponent = torch.arange(num_frequencies, dtype=coords.dtype, device=coords.device)
        wavelengths = min_wavelength * torch.exp(exponent * ratio)  # (F,)
    angles = 2 * math.pi * coords[..., None] / wavelengths  # (..., A, F)
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., A, 2F)
    return rearrange(embedding, "... a f -> ... (a f)")


@dataclass(frozen=True)
class PositionEncoding:
    """Settings of the sinusoidal position embedding of map tokens.

    Attributes:
        num_frequencies: F, wavelengths per axis, in [1, 64].
        min_wavelength_m: shortest wavelength, metres, > 0.
        max_wavelength_m: longest wavelength, metres, >= ``min_wavelength_m``.
    """

    num_frequencies: int = 8
    min_wavelength_m: float = 0.25
    max_wavelength_m: float = 32.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_frequencies <= 64:
            raise ValueError(f"num_frequencies must be in [1, 64], got {self.num_frequencies}")
        if not self.min_wavelength_m > 0:
            raise ValueError(f"min_wavelength_m must be > 0 metres, got {self.min_wavelength_m}")
        if not self.max_wavelength_m >= self.min_wavelength_m:
            raise ValueError(
                f"max_wavelength_m must be >= min_wavelength_m = {self.min_wavelength_m}, "
                f"got {self.max_wavelength_m}"
            )

    def dim(self, axes: int) -> int:
        """Embedding width for ``axes`` coordinates."""
        return 2 * self.num_frequencies * axes

    def __call__(self, coords: Tensor) -> Tensor:
        """Embed (..., A) metric coordinates -> (..., 2 F A) (see :func:`sinusoidal_embedding`)."""
        return sinusoidal_embedding(
            coords, self.num_frequencies, self.min_wavelength_m, self.max_wavelength_m
        )


def frame_tokens(
    features: Tensor, feature_k: Tensor, cam_to_world: Tensor, reference: Tensor
) -> Tensor:
    """Tokens of stored frames: each feature cell with the Plücker ray of its centre.

    Rays are expressed in the camera frame of ``reference`` (the first target camera), so the
    model sees where each stored view looked relative to where it is about to look.

    Args:
        features: (B, S, C, h, w) stored frame features.
        feature_k: (B, S, 3, 3) feature-grid intrinsics.
        cam_to_world: (B, S, 4, 4) poses of the stored frames.
        reference: (B, 4, 4) pose of the reference camera.

    Returns:
        (B, S * h * w, C + 6) tokens: features, then ``(moment_xyz, direction_xyz)``.
    """
    b, s, _, h, w = features.shape
    cam_to_ref = relative_pose(reference[:, None].expand(b, s, 4, 4), cam_to_world)
    rays = plucker_rays(
        feature_k.reshape(b * s, 3, 3), cam_to_ref.reshape(b * s, 4, 4), h, w
    )  # (B*S, 6, h, w)
    rays = rearrange(rays, "(b s) c h w -> b s c h w", b=b)
    tokens = torch.cat([features, rays.to(features.dtype)], dim=2)  # (B, S, C + 6, h, w)
    return rearrange(tokens, "b s c h w -> b (s h w) c")


DEFAULT_MAX_DEPTH = DEFAULT_MAX_DEPTH_M
"""Depths beyond this (metres) are treated as no hit unless a config says otherwise."""


class FrameSlots:
    """Per-row slots of stored frames (features, poses, lifted points), batched over rows.

    Tensors are allocated on the first write, when the feature grid size is known; every later
    frame must have the same (C, h, w).

    Args:
        batch_size: B.
        num_slots: S, frames per row.
        channels: C, feature channels.
        device: where the tensors live.
    """

    def __init__(
        self, batch_size: int, num_slots: int, channels: int, device: torch.device
    ) -> None:
        self.batch_size = batch_size
        self.num_slots = num_slots
        self.channels = channels
        self.device = device
        self.filled = torch.zeros(batch_size, num_slots, dtype=torch.bool, device=device)
        self.time = torch.zeros(batch_size, num_slots, dtype=torch.long, device=device)
        self.features: Tensor | None = None  # (B, S, C, h, w)
        self.feature_k: Tensor | None = None  # (B, S, 3, 3)
        self.cam_to_world: Tensor | None = None  # (B, S, 4, 4)
        self.points: Tensor | None = None  # (B, S, h*w, 3)
        self.point_valid: Tensor | None = None  # (B, S, h*w)

    def write(
        self, rows: Tensor, slots: Tensor, lifted: LiftedFrames, cam_to_world: Tensor, time: Tensor
    ) -> None:
        """Store frames ``lifted`` (Nv of them) at ``(rows, slots)``; pairs must be distinct."""
        nv, c, h, w = lifted.features.shape
        if self.features is None:
            b, s = self.batch_size, self.num_slots
            self.features = torch.zeros(b, s, c, h, w, device=self.device)
            self.feature_k = torch.eye(3, device=self.device).repeat(b, s, 1, 1)
            self.cam_to_world = torch.eye(4, device=self.device).repeat(b, s, 1, 1)
            self.points = torch.zeros(b, s, h * w, 3, device=self.device)
            self.point_valid = torch.zeros(b, s, h * w, dtype=torch.bool, device=self.device)
        elif tuple(self.features.shape[2:]) != (c, h, w):
            raise ValueError(
                f"frames give features of shape {(c, h, w)}, but this memory stores "
                f"{tuple(self.features.shape[2:])}: keep the image size fixed between resets"
            )
        self.features[rows, slots] = lifted.features
        self.feature_k[rows, slots] = lifted.feature_k
        self.cam_to_world[rows, slots] = cam_to_world
        self.points[rows, slots] = lifted.points.reshape(nv, h * w, 3)
        self.point_valid[rows, slots] = lifted.point_valid.reshape(nv, h * w)
        self.time[rows, slots] = time
        self.filled[rows, slots] = True

    def select(self, index: Tensor) -> FrameSlots:
        """Copies of rows ``index`` (B',)."""
        out = FrameSlots(index.numel(), self.num_slots, self.channels, self.device)
        for name in (
            "filled",
            "time",
            "features",
            "feature_k",
            "cam_to_world",
            "points",
            "point_valid",
        ):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value[index].clone())
        return out

    def tokens(
        self, picked: Tensor, picked_valid: Tensor, reference: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Frame tokens (:func:`frame_tokens`) of slots ``picked`` (B, K) where ``picked_valid``.

        Returns:
            ``(tokens, mask)``: (B, K * h * w, C + 6) and (B, K * h * w) bool; K = 0 or no stored
            frame gives N = 0.
        """
        b, k = picked.shape
        if self.features is None or k == 0:
            return (
                torch.zeros(b, 0, self.channels + 6, device=self.device),
                torch.zeros(b, 0, dtype=torch.bool, device=self.device),
            )
        rows = torch.arange(b, device=self.device)[:, None].expand(b, k)
        slots = picked.clamp(min=0)  # unpicked entries (-1) read slot 0 and are masked below
        features = self.features[rows, slots]  # (B, K, C, h, w)
        tokens = frame_tokens(
            features, self.feature_k[rows, slots], self.cam_to_world[rows, slots], reference
        )
        cells = features.shape[-2] * features.shape[-1]
        mask = picked_valid[:, :, None].expand(b, k, cells).reshape(b, k * cells)
        return tokens * mask[..., None], mask
