"""A NoMaD-style goal-conditioned diffusion policy over future waypoints (Sridhar et al. 2023).

=============  ==================================================================
module         what it holds
=============  ==================================================================
``policy``     :class:`NoMaDPolicy` (the model, presets, the shipped checkpoint)
``encoder``    EfficientNet-style image encoders and the goal-masked transformer
``unet``       the 1-D conditional U-Net noise predictor and the distance head
``waypoints``  waypoint normalisation, conversion to actions, sampling
``upstream``   loading upstream ``visualnav-transformer`` checkpoints
``training``   supervised training on trajectory clips
=============  ==================================================================

The public names of ``policy``, ``waypoints``, ``upstream`` and ``training`` are importable from
this package (``from planners.nomad import NoMaDPolicy, sample_waypoints``).
"""

from __future__ import annotations

from planners.nomad.policy import (
    ACTION_STATS_MAX,
    ACTION_STATS_MIN,
    DEFAULT_CHECKPOINT,
    POLICY_PRESETS,
    UNTRAINED,
    NoMaDPolicy,
    load_policy,
    make_scheduler,
)
from planners.nomad.training import (
    NoMaDTrainingConfig,
    policy_batch,
    policy_loss,
    train_policy,
)
from planners.nomad.upstream import (
    UPSTREAM_IGNORED_SUFFIXES,
    load_upstream_state_dict,
)
from planners.nomad.waypoints import (
    future_positions,
    normalize_waypoints,
    sample_waypoints,
    unnormalize_deltas,
    waypoints_to_actions,
    waypoints_to_local,
)

__all__ = [
    "ACTION_STATS_MAX",
    "ACTION_STATS_MIN",
    "DEFAULT_CHECKPOINT",
    "POLICY_PRESETS",
    "UNTRAINED",
    "UPSTREAM_IGNORED_SUFFIXES",
    "NoMaDPolicy",
    "NoMaDTrainingConfig",
    "future_positions",
    "load_policy",
    "load_upstream_state_dict",
    "make_scheduler",
    "normalize_waypoints",
    "policy_batch",
    "policy_loss",
    "sample_waypoints",
    "train_policy",
    "unnormalize_deltas",
    "waypoints_to_actions",
    "waypoints_to_local",
]
