"""Goal costs: how far an imagined rollout ends from an image goal.

The cost of a rollout is the LPIPS distance (:class:`worldsim.metrics.lpips.LPIPS`, v0.1, AlexNet by
default) between the goal image and the rollout's last predicted frame, as in the paper's
planning experiments (§4.3). Optionally it averages over the last ``last_frames`` frames, which
rewards sequences that reach the goal early and stay there::

    cost_b = mean_{f in last k frames of row b} LPIPS(goal, frame_f)

Lower is better; identical images give 0. Optionally both images are first blurred by the same
Gaussian (``blur_px``): a world model's imagined frames are blurrier than the goal picture, and
LPIPS then penalises the blur as much as a wrong view. With the embedded world model, a 1-2
pixel blur raised the rank correlation between the LPIPS of imagined and of true frames over the
CEM probes of three episodes from 0.17 / 0.65 / 0.68 to 0.46 / 0.77 / 0.82.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from worldsim.metrics.lpips import LPIPS, check_images
from worldsim.simulator.protocol import RolloutResult


@dataclass(frozen=True)
class GoalCostConfig:
    """Settings of :class:`GoalCost`.

    Attributes:
        net: LPIPS trunk, ``"alex"`` or ``"vgg"``.
        last_frames: frames at the end of a rollout averaged into the cost, >= 1.
        blur_px: standard deviation of the Gaussian blur applied to frames and goal before
            LPIPS, pixels, >= 0; 0 compares them as they are.
    """

    net: str = "alex"
    last_frames: int = 1
    blur_px: float = 0.0

    def __post_init__(self) -> None:
        if self.net not in ("alex", "vgg"):
            raise ValueError(f"net must be 'alex' or 'vgg', got {self.net!r}")
        if self.last_frames < 1:
            raise ValueError(f"last_frames must be >= 1, got {self.last_frames}")
        if not self.blur_px >= 0.0:
            raise ValueError(f"blur_px must be >= 0 pixels, got {self.blur_px}")


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur (N, C, H, W) images by a Gaussian of ``sigma`` pixels (edges replicated).

    The kernel is separable, truncated at ``ceil(3 sigma)`` pixels and normalised to sum 1, so
    constant images stay constant; ``sigma = 0`` returns the images unchanged.
    """
    if sigma == 0.0:
        return images
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, rows, groups=channels)
    return F.conv2d(blurred, columns, groups=channels)


def check_goal_image(goal: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Validate an image goal and return it as a (1, 3, H, W) batch.

    Args:
        goal: (3, H, W) or (1, 3, H, W) float RGB in [0, 1].
        image_size: the ``(H, W)`` the simulator's frames have.

    Returns:
        (1, 3, H, W) float tensor.

    Raises:
        ValueError: for a wrong size (naming both sizes), shape, dtype, range or NaN.
    """
    if not isinstance(goal, Tensor):
        raise ValueError(f"the goal image must be a torch tensor, got {type(goal).__name__}")
    if goal.dim() == 3:
        goal = goal[None]
    if goal.dim() != 4 or goal.shape[:2] != (1, 3):
        raise ValueError(
            f"the goal image must be (3, H, W) or (1, 3, H, W), got {tuple(goal.shape)}"
        )
    if tuple(goal.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"the goal image is {tuple(goal.shape[-2:])} (H, W) but the simulator's frames are "
            f"{tuple(image_size)}; render or resize the goal at the simulator's size"
        )
    check_images(goal, "the goal image")
    return goal


class GoalCost:
    """LPIPS between an image goal and the last frames of rollouts.

    Args:
        config: the cost settings.
        lpips: an LPIPS module to share (its ``net`` must match ``config.net``); ``None`` builds
            one on ``device``.
        device: device of a new LPIPS module.
    """

    def __init__(
        self,
        config: GoalCostConfig | None = None,
        lpips: LPIPS | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config or GoalCostConfig()
        if lpips is not None and lpips.net_name != self.config.net:
            raise ValueError(
                f"the LPIPS module uses net {lpips.net_name!r} but the config asks for "
                f"{self.config.net!r}"
            )
        self.lpips = lpips if lpips is not None else LPIPS(self.config.net).to(device)

    @torch.no_grad()
    def frames(self, frames: Tensor, goal: Tensor) -> Tensor:
        """Cost of frame sequences.

        Args:
            frames: (B, F, 3, H, W) float RGB in [0, 1]; the last ``min(F, last_frames)``
                frames of each row are scored.
            goal: (3, H, W) or (1, 3, H, W) goal image in [0, 1], the frames' size.

        Returns:
            (B,) float32 costs >= 0 on the CPU.

        Raises:
            ValueError: for a goal of the wrong size or invalid images.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, F, 3, H, W), got {tuple(frames.shape)}")
        goal = check_goal_image(goal, tuple(frames.shape[-2:]))
        device = next(self.lpips.parameters()).device
        scored = frames[:, -self.config.last_frames :]
        batch, count = scored.shape[:2]
        flat = rearrange(scored, "b f c h w -> (b f) c h w").to(device)
        goal = goal.to(device, flat.dtype)
        sigma = self.config.blur_px
        distances = self.lpips(gaussian_blur(flat, sigma), gaussian_blur(goal, sigma))  # (B F,)
        return distances.reshape(batch, count).mean(dim=1).float().cpu()

    def score(self, frames: Tensor, poses: Tensor, goal: Tensor) -> Tensor:
        """(B,) costs of frame sequences ending at camera ``poses`` (B, 4, 4).

        The LPIPS cost reads the frames only; a cost that also reads where a rollout ends
        (:class:`planners.goal_map.MapGoalCost`) has the same method.
        """
        del poses  # LPIPS sees pictures, not poses
        return self.frames(frames, goal)

    def __call__(self, result: RolloutResult, goal: Tensor) -> Tensor:
        """(B,) costs of rollouts: their last frames and end poses (see :meth:`score`).

        Raises:
            ValueError: if the result has fewer frames than ``last_frames``, or as
                :meth:`frames`.
        """
        if result.num_frames < self.config.last_frames:
            raise ValueError(
                f"the cost averages the last {self.config.last_frames} frames but the rollout "
                f"returned {result.num_frames}; roll out with num_frames >= "
                f"{self.config.last_frames}"
            )
        return self.score(result.rgb, result.cam_to_world[:, -1], goal)
