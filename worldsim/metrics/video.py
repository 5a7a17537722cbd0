"""Video metrics: PSNR, SSIM, LPIPS, SRC, FVD and DreamSim.

All images are channels-first float RGB in [0, 1]: frames (N, 3, H, W) or videos (B, T, 3, H, W).
Every metric returns a :class:`MetricResult`. A metric whose network weights are not available
locally (FVD's I3D, DreamSim) comes back with ``available=False`` and the reason; it is never
replaced by another network under the same name.

* **PSNR**, **SSIM**: torchmetrics (``data_range = 1``; SSIM with an 11x11 Gaussian window,
  sigma 1.5, k1 = 0.01, k2 = 0.03). Identical frames have infinite PSNR.
* **LPIPS**: :class:`worldsim.metrics.lpips.LPIPS` (v0.1, AlexNet by default).
* **SRC** (Scene Revisit Consistency): mean cosine similarity between image features of frames
  at a first visit and at a revisit of the same place, in [-1, 1] (1 = identical features). The
  result names its encoder: the ImageNet VGG16 (``relu5_3``, spatially averaged) by default, or
  any encoder passed in (e.g. DINOv2 where a checkpoint is available locally).
* **FVD**: Fréchet distance between Gaussian fits of I3D features of real and generated videos,
  with I3D loaded from a local TorchScript file (the common ``i3d_torchscript.pt``).
* **DreamSim**: ``1 - cos(e(x0), e(x1))`` of DreamSim embeddings, from a local TorchScript
  export of the DreamSim embedding network.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from worldsim.metrics.lpips import LPIPS, check_images
from worldsim.models.backbones import VGG16Trunk, imagenet_normalize

_IMAGINARY_TOLERANCE = 1e-3  # largest imaginary part of sqrtm accepted as round-off
_COVARIANCE_OFFSET = 1e-6  # added to the diagonals when sqrtm of a singular product fails


@dataclass(frozen=True)
class MetricResult:
    """One metric's value, or the reason it could not be computed.

    Attributes:
        name: metric name, e.g. ``"psnr"``, ``"src"``, ``"fvd"``.
        value: the mean value, ``None`` when unavailable.
        available: ``False`` when the metric's weights are not available locally.
        reason: why it is unavailable (``None`` when available).
        unit: unit or range of the value, e.g. ``"dB"``, ``"[0, 1]"``.
        details: extra facts, e.g. ``{"encoder": "vgg16-imagenet/relu5_3"}``.
        per_item: per-frame / per-pair values (float64), when they exist.
        per_step: (T,) per-time-step means over videos, for videos (B, T, 3, H, W).
    """

    name: str
    value: float | None
    available: bool = True
    reason: str | None = None
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    per_item: np.ndarray | None = None
    per_step: np.ndarray | None = None

    @classmethod
    def unavailable(cls, name: str, reason: str, **details: Any) -> MetricResult:
        """A result that says why ``name`` could not be computed."""
        return cls(name=name, value=None, available=False, reason=reason, details=details)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays become lists)."""
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "available": self.available,
            "reason": self.reason,
            "unit": self.unit,
            **{f"details.{k}": v for k, v in self.details.items()},
        }
        if self.per_step is not None:
            out["per_step"] = self.per_step.tolist()
        return out


def _frames(x: Tensor, name: str) -> tuple[Tensor, tuple[int, ...]]:
    """Flatten (N, 3, H, W) or (B, T, 3, H, W) to frames; return them and the leading shape."""
    if x.dim() == 5:
        return rearrange(x, "b t c h w -> (b t) c h w"), tuple(x.shape[:2])
    if x.dim() == 4:
        return x, tuple(x.shape[:1])
    raise ValueError(
        f"{name} must be (N, 3, H, W) frames or (B, T, 3, H, W) videos, got {tuple(x.shape)}"
    )


def _paired_frames(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape "
            "(frames of one size, paired one to one); resize or trim first"
        )
    pred_frames, lead = _frames(pred, "pred")
    target_frames, _ = _frames(target, "target")
    check_images(pred_frames, "pred")
    check_images(target_frames, "target")
    return pred_frames, target_frames, lead


def _result(name: str, values: Tensor, lead: tuple[int, ...], unit: str, **details) -> MetricResult:
    per_item = values.detach().double().cpu().numpy()  # (N,) or (B*T,)
    per_step = per_item.reshape(lead).mean(axis=0) if len(lead) == 2 else None  # (T,)
    return MetricResult(
        name=name,
        value=float(per_item.mean()),
        unit=unit,
        details=details,
        per_item=per_item,
        per_step=per_step,
    )


def psnr(pred: Tensor, target: Tensor) -> MetricResult:
    """Peak signal-to-noise ratio per frame (torchmetrics), data range 1.

    Args:
        pred: (N, 3, H, W) or (B, T, 3, H, W) float RGB in [0, 1].
        target: same shape as ``pred``.

    Returns:
        ``"psnr"`` in dB (higher is better; ``inf`` for identical frames), with per-frame values
        and, for videos, per-step means.

    Raises:
        ValueError: for mismatched shapes, non-float inputs, NaN or values outside [0, 1].
    """
    pred_frames, target_frames, lead = _paired_frames(pred, target)
    values = peak_signal_noise_ratio(
        pred_frames, target_frames, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return _result("psnr", values, lead, "dB")


def ssim(pred: Tensor, target: Tensor) -> MetricResult:
    """Structural similarity per frame (torchmetrics; Gaussian 11x11 window, sigma 1.5).

    Args:
        pred: (N, 3, H, W) or (B, T, 3, H, W) float RGB in [0, 1], H, W >= 11.
        target: same shape as ``pred``.

    Returns:
        ``"ssim"`` in [-1, 1] (1 for identical frames), per frame and per step.

    Raises:
        ValueError: as :func:`psnr`.
    """
    pred_frames, target_frames, lead = _paired_frames(pred, target)
    if min(pred_frames.shape[-2:]) < 11:
        raise ValueError(
            f"SSIM needs frames of at least 11x11 pixels, got {tuple(pred_frames.shape[-2:])}"
        )
    values = structural_similarity_index_measure(
        pred_frames, target_frames, data_range=1.0, reduction="none"
    )
    return _result("ssim", values, lead, "[-1, 1]")


@torch.no_grad()
def lpips(
    pred: Tensor, target: Tensor, model: LPIPS | None = None, batch_size: int = 64
) -> MetricResult:
    """LPIPS v0.1 per frame.

    Args:
        pred: (N, 3, H, W) or (B, T, 3, H, W) float RGB in [0, 1].
        target: same shape as ``pred``.
        model: an :class:`~worldsim.metrics.lpips.LPIPS` with ``input_range=(0, 1)`` on the inputs'
            device; a new AlexNet one on that device if ``None``.
        batch_size: frames per trunk pass.

    Returns:
        ``"lpips"`` (lower is better, 0 for identical frames), naming the trunk.

    Raises:
        ValueError: as :func:`psnr`, or for a model expecting [-1, 1] inputs.
    """
    pred_frames, target_frames, lead = _paired_frames(pred, target)
    if model is None:
        model = LPIPS("alex").to(pred_frames.device)
    if model.input_range != (0.0, 1.0):
        raise ValueError(
            f"the LPIPS model expects inputs in {model.input_range}; pass one with (0, 1)"
        )
    values = torch.cat(
        [
            model(pred_frames[i : i + batch_size], target_frames[i : i + batch_size])
            for i in range(0, pred_frames.shape[0], batch_size)
        ]
    )
    return _result("lpips", values, lead, "distance", net=model.net_name)


class VGG16Features(nn.Module):
    """The default SRC encoder: ImageNet VGG16 features of RGB in [0, 1].

    Args:
        layer: VGG16 output to use (see :data:`worldsim.models.backbones.VGG16_LAYER_STRIDES`).
        weights: trunk weights (``"imagenet"`` or a path; see :class:`VGG16Trunk`).
    """

    def __init__(self, layer: str = "relu5_3", weights: str | Path | None = "imagenet") -> None:
        super().__init__()
        self.trunk = VGG16Trunk(weights)
        self.layer = layer
        self.name = f"vgg16-imagenet/{layer}" if weights == "imagenet" else f"vgg16/{layer}"

    def forward(self, images: Tensor) -> Tensor:
        """Map (B, 3, H, W) RGB in [0, 1] to (B, C, h, w) features (C = 512 for relu5_3)."""
        return self.trunk(imagenet_normalize(images), layers=[self.layer])[self.layer]


def _encoder_name(encoder: Callable[[Tensor], Tensor], given: str | None) -> str:
    if given:
        return given
    name = getattr(encoder, "name", None)
    return name if isinstance(name, str) and name else type(encoder).__name__


@torch.no_grad()
def scene_revisit_consistency(
    first_visit: Tensor,
    revisit: Tensor,
    encoder: Callable[[Tensor], Tensor] | None = None,
    encoder_name: str | None = None,
    pooling: Literal["mean", "flatten"] = "mean",
    batch_size: int = 32,
) -> MetricResult:
    """SRC: cosine similarity of image features between first visits and revisits of a place.

    Args:
        first_visit: (N, 3, H, W) float RGB in [0, 1], frames seen at the first visit.
        revisit: (N, 3, H, W), the frames generated when the same places are revisited (same
            poses), paired one to one with ``first_visit``.
        encoder: maps (B, 3, H, W) RGB in [0, 1] to (B, C, h, w) feature maps or (B, C)
            vectors; :class:`VGG16Features` (ImageNet VGG16, ``relu5_3``) if ``None``.
        encoder_name: name reported in the result; by default the encoder's ``name`` attribute
            or its class name.
        pooling: how a (B, C, h, w) map becomes a vector: ``"mean"`` (spatial average) or
            ``"flatten"`` (keeps the layout, stricter).
        batch_size: frames per encoder call.

    Returns:
        ``"src"``: mean cosine similarity in [-1, 1] (higher is more consistent), with
        ``details["encoder"]`` and per-pair values.

    Raises:
        ValueError: for mismatched shapes, invalid images, an unknown pooling, or encoder
            outputs of an unsupported shape.
    """
    if pooling not in ("mean", "flatten"):
        raise ValueError(f"pooling must be 'mean' or 'flatten', got {pooling!r}")
    first_frames, revisit_frames, lead = _paired_frames(first_visit, revisit)
    if encoder is None:
        encoder = VGG16Features().to(first_frames.device)
    name = _encoder_name(encoder, encoder_name)

    def embed(images: Tensor) -> Tensor:
        features = encoder(images)
        if features.dim() == 4:
            features = features.mean(dim=(2, 3)) if pooling == "mean" else features.flatten(1)
        elif features.dim() != 2:
            raise ValueError(
                f"encoder {name!r} returned shape {tuple(features.shape)}; SRC needs "
                "(B, C, h, w) feature maps or (B, C) vectors"
            )
        return features.float()

    values = []
    for i in range(0, first_frames.shape[0], batch_size):
        a = embed(first_frames[i : i + batch_size])
        b = embed(revisit_frames[i : i + batch_size])
        values.append(F.cosine_similarity(a, b, dim=1))
    return _result("src", torch.cat(values), lead, "cosine [-1, 1]", encoder=name, pooling=pooling)


def gaussian_fit(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of feature vectors.

    Args:
        features: (N, D) features, N >= 2.

    Returns:
        ``(mu, sigma)``: (D,) and (D, D) float64.
    """
    features = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features)
    features = features.astype(np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between two Gaussians.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, the matrix square
    root by :func:`scipy.linalg.sqrtm`.

    Args:
        mu1: (D,) mean of the first Gaussian.
        sigma1: (D, D) covariance of the first Gaussian.
        mu2: (D,) mean of the second Gaussian.
        sigma2: (D, D) covariance of the second Gaussian.

    Returns:
        The squared Fréchet distance ``d^2`` (what FID / FVD report), >= 0 up to round-off.

    Raises:
        ValueError: for inconsistent shapes, or a square root with a large imaginary part.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"inconsistent shapes: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer samples than dimensions): regularise as FID tools do.
        offset = np.eye(dim) * _COVARIANCE_OFFSET
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if np.abs(covmean.imag).max() > _IMAGINARY_TOLERANCE:
            raise ValueError(
                f"sqrtm(sigma1 sigma2) has an imaginary part of {np.abs(covmean.imag).max():.3g}: "
                "the covariances are not valid (positive semi-definite) or far too few samples"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _load_torchscript(path: str | Path, what: str) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is the upstream format of these checkpoints, deprecated or not.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a loadable TorchScript {what}: {error}") from error


def _resolve_network(
    network: nn.Module | str | Path | None, name: str, what: str, hint: str
) -> nn.Module | MetricResult:
    """A loaded network, or an "unavailable" result saying why there is none."""
    if network is None:
        return MetricResult.unavailable(name, f"no {what} checkpoint given ({hint})")
    if isinstance(network, nn.Module):
        return network
    path = Path(network)
    if not path.is_file():
        return MetricResult.unavailable(name, f"{what} checkpoint {path} does not exist ({hint})")
    return _load_torchscript(path, what)


@torch.no_grad()
def i3d_features(detector: nn.Module, videos: Tensor, batch_size: int = 16) -> Tensor:
    """I3D features of videos, with the calling convention of ``i3d_torchscript.pt``.

    The detector is called as ``detector(x, rescale=False, resize=True, return_features=True)``
    with ``x`` of shape (B, 3, T, H, W) in [-1, 1]; it resizes the frames to 224x224 itself and
    returns (B, 400) pre-softmax features.

    Args:
        detector: the loaded TorchScript I3D (or a module with the same call signature).
        videos: (B, T, 3, H, W) float RGB in [0, 1].
        batch_size: videos per detector call.

    Returns:
        (B, D) float64 features on the CPU.
    """
    device = next(iter(detector.parameters()), videos).device
    features = []
    for i in range(0, videos.shape[0], batch_size):
        chunk = videos[i : i + batch_size].to(device)
        chunk = rearrange(chunk * 2.0 - 1.0, "b t c h w -> b c t h w")  # I3D's layout and range
        out = detector(chunk, rescale=False, resize=True, return_features=True)
        features.append(out.reshape(out.shape[0], -1).double().cpu())
    return torch.cat(features)


def fvd(
    real: Tensor,
    generated: Tensor,
    detector: nn.Module | str | Path | None = None,
    batch_size: int = 16,
) -> MetricResult:
    """Fréchet Video Distance between real and generated videos.

    Args:
        real: (B1, T, 3, H, W) float RGB in [0, 1], B1 >= 2.
        generated: (B2, T', 3, H', W') float RGB in [0, 1], B2 >= 2.
        detector: a loaded I3D module, or the path of a local ``i3d_torchscript.pt``; with
            ``None`` or a missing file the result is unavailable (no download is attempted).
        batch_size: videos per detector call.

    Returns:
        ``"fvd"`` (lower is better), or an unavailable result with the reason.

    Raises:
        ValueError: for invalid videos, fewer than 2 videos per side, or a file that is not a
            TorchScript module.
    """
    network = _resolve_network(
        detector, "fvd", "I3D", "pass the path of a local i3d_torchscript.pt"
    )
    if isinstance(network, MetricResult):
        return network
    for name, videos in (("real", real), ("generated", generated)):
        if videos.dim() != 5:
            raise ValueError(f"{name} videos must be (B, T, 3, H, W), got {tuple(videos.shape)}")
        if videos.shape[0] < 2:
            raise ValueError(f"FVD needs at least 2 {name} videos, got {videos.shape[0]}")
        check_images(rearrange(videos, "b t c h w -> (b t) c h w"), f"{name} videos")
    real_features = i3d_features(network, real, batch_size)
    generated_features = i3d_features(network, generated, batch_size)
    mu1, sigma1 = gaussian_fit(real_features)
    mu2, sigma2 = gaussian_fit(generated_features)
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    return MetricResult(
        name="fvd",
        value=value,
        unit="distance",
        details={"feature_dim": int(real_features.shape[1]), "videos": [len(real), len(generated)]},
    )


@torch.no_grad()
def dreamsim(
    pred: Tensor,
    target: Tensor,
    model: nn.Module | str | Path | None = None,
    image_size: int = 224,
    batch_size: int = 32,
) -> MetricResult:
    """DreamSim distance ``1 - cos(e(pred), e(target))`` per frame pair.

    Args:
        pred: (N, 3, H, W) or (B, T, 3, H, W) float RGB in [0, 1].
        target: same shape as ``pred``.
        model: a loaded embedding network, or the path of a local TorchScript export of the
            DreamSim embedding (``forward`` maps (B, 3, image_size, image_size) RGB in [0, 1] to
            (B, D) embeddings); with ``None`` or a missing file the result is unavailable.
        image_size: side the frames are resized to (bilinear, antialiased) before embedding.
        batch_size: frames per call.

    Returns:
        ``"dreamsim"`` in [0, 2] (lower is more similar), or an unavailable result.

    Raises:
        ValueError: for invalid images, a file that is not a TorchScript module, or embeddings
            that are not (B, D).
    """
    network = _resolve_network(
        model, "dreamsim", "DreamSim", "pass the path of a TorchScript export of its embedding"
    )
    if isinstance(network, MetricResult):
        return network
    pred_frames, target_frames, lead = _paired_frames(pred, target)
    device = next(iter(network.parameters()), pred_frames).device

    def embed(images: Tensor) -> Tensor:
        images = F.interpolate(
            images.to(device), size=(image_size, image_size), mode="bilinear", antialias=True
        )
        out = network(images)
        if out.dim() != 2:
            raise ValueError(f"the DreamSim model returned {tuple(out.shape)}, expected (B, D)")
        return out.float()

    values = []
    for i in range(0, pred_frames.shape[0], batch_size):
        a, b = embed(pred_frames[i : i + batch_size]), embed(target_frames[i : i + batch_size])
        values.append(1.0 - F.cosine_similarity(a, b, dim=1))
    return _result("dreamsim", torch.cat(values), lead, "distance [0, 2]")
