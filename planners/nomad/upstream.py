"""Loading upstream NoMaD checkpoints (visualnav-transformer's ``nomad.pth``) into the policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from planners.nomad.policy import NoMaDPolicy

# ================================================================================= upstream
UPSTREAM_IGNORED_SUFFIXES = ("_fc.weight", "_fc.bias")
"""Keys of upstream checkpoints that NoMaD never uses (EfficientNet's ImageNet classifier)."""


def load_upstream_state_dict(
    policy: NoMaDPolicy, path: str | Path, map_location: str | torch.device = "cpu"
) -> None:
    """Load an upstream NoMaD checkpoint (``nomad.pth`` of ``visualnav-transformer``) in place.

    The upstream file is a state dict of ``NoMaD(vision_encoder, noise_pred_net,
    dist_pred_net)`` (optionally wrapped as ``{"model": state_dict}`` or saved from
    ``nn.DataParallel`` with a ``module.`` prefix). The EfficientNet classifier (``_fc``) is
    dropped; the U-Net's ``cond_encoder`` Rearrange layer has no parameters, so the Linear keeps
    index 1 in both. Build the policy with the upstream settings (``NoMaDPolicy()`` defaults:
    96 x 96, context 3, width 256, 4 heads, 4 layers, B0) so the architecture matches.

    Args:
        policy: the policy to fill.
        path: local path of the checkpoint.
        map_location: device the file is read to.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a state dict, or keys are missing / unexpected / of the
            wrong shape (the message lists them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NoMaD checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith(UPSTREAM_IGNORED_SUFFIXES):
            continue
        mapped[key] = value
    own = policy.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(mapped)
        if mapped[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match this NoMaDPolicy's architecture ({policy.config}):\n"
            f"missing keys ({len(missing)}): {missing[:20]}\n"
            f"unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"shape mismatches ({len(wrong)}): {wrong[:20]}"
        )
    policy.load_state_dict(mapped, strict=True)
