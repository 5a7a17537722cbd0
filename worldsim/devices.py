"""Torch devices: refuse, before any work, one this machine or this torch build cannot use."""

from __future__ import annotations

import torch


class DeviceUnavailableError(ValueError):
    """The requested torch device does not exist on this machine or in this torch build."""


def check_device(device: str | torch.device, label: str = "--device") -> None:
    """Refuse a torch device that this machine or this torch build cannot use.

    Args:
        device: a torch device or its string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``),
            or ``"auto"``, which the caller resolves itself.
        label: how the message names the setting (a script's ``--device``, an env's
            ``device=``).

    Raises:
        DeviceUnavailableError: if the string is no torch device, or names a CUDA / MPS device
            that is not available.
    """
    if device == "auto":
        return
    device = str(device)
    flag = label.startswith("--")
    named = f"{label} {device!r}" if flag else f"{label}={device!r}"
    use_cpu = f"use {label} cpu" if flag else f"use {label}='cpu'"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise DeviceUnavailableError(
            f"{named} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"{named}: CUDA is not available to this torch "
                f"({torch.__version__}, {torch.cuda.device_count()} GPUs); {use_cpu}"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceUnavailableError(
                f"{named}: this machine has {count} CUDA devices (cuda:0..{count - 1})"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"{named}: MPS is not available; {use_cpu}")
