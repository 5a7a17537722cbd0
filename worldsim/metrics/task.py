"""The point-goal navigation task's measures, shared by the environments and the planners.

Success is ending within :data:`SUCCESS_RADIUS_M` of the goal (floor-plane distance, Habitat's
PointNav / ImageNav setting); SPL is success weighted by (normalised inverse) path length
(Anderson et al. 2018). ``envs`` reports both per episode and ``planners.metrics`` over many,
through these functions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

SUCCESS_RADIUS_M = 0.2
"""Success radius around the goal, metres (Habitat's PointNav / ImageNav setting)."""


def success(
    final_position: ArrayLike,
    goal_position: ArrayLike,
    radius_m: float = SUCCESS_RADIUS_M,
) -> np.ndarray:
    """Whether each episode ended within ``radius_m`` of its goal (floor-plane distance).

    Args:
        final_position: (..., 3) final floor positions, world metres.
        goal_position: (..., 3) goal positions, broadcastable.
        radius_m: success radius, metres, > 0.

    Returns:
        (...) boolean array.

    Raises:
        ValueError: for a non-positive radius, wrong shapes or NaN.
    """
    if not radius_m > 0.0:
        raise ValueError(f"radius_m must be > 0 metres, got {radius_m}")
    final = np.asarray(final_position, dtype=np.float64)
    goal = np.asarray(goal_position, dtype=np.float64)
    if final.shape[-1:] != (3,) or goal.shape[-1:] != (3,):
        raise ValueError(f"positions must have shape (..., 3), got {final.shape} and {goal.shape}")
    if not (np.isfinite(final).all() and np.isfinite(goal).all()):
        raise ValueError("positions must be finite (no NaN or infinity)")
    offset = final[..., [0, 2]] - goal[..., [0, 2]]
    return np.linalg.norm(offset, axis=-1) <= radius_m


def spl(successes: ArrayLike, shortest_path_lengths: ArrayLike, path_lengths: ArrayLike) -> float:
    """Success weighted by (normalised inverse) Path Length, Anderson et al. 2018.

    ``SPL = mean_i S_i * l_i / max(p_i, l_i)``.

    Args:
        successes: (N,) booleans (or 0/1).
        shortest_path_lengths: (N,) geodesic start-to-goal distances ``l_i``, metres, > 0.
        path_lengths: (N,) lengths of the paths taken ``p_i``, metres, >= 0.

    Returns:
        SPL in [0, 1].

    Raises:
        ValueError: for mismatched or empty inputs, NaN, non-positive shortest paths or
            negative path lengths.
    """
    s = np.asarray(successes)
    short = np.asarray(shortest_path_lengths, dtype=np.float64)
    taken = np.asarray(path_lengths, dtype=np.float64)
    if not (s.ndim == short.ndim == taken.ndim == 1) or not (len(s) == len(short) == len(taken)):
        raise ValueError(
            f"successes, shortest_path_lengths and path_lengths must be (N,) arrays of one "
            f"length, got {s.shape}, {short.shape}, {taken.shape}"
        )
    if len(s) == 0:
        raise ValueError("SPL of zero episodes is undefined")
    if s.dtype != np.bool_ and not np.isin(s, (0, 1)).all():
        raise ValueError(f"successes must be booleans or 0/1, got values {np.unique(s)}")
    if not (np.isfinite(short).all() and np.isfinite(taken).all()):
        raise ValueError("path lengths must be finite (no NaN or infinity)")
    if (short <= 0).any():
        raise ValueError(f"shortest path lengths must be > 0 metres, got min {short.min()}")
    if (taken < 0).any():
        raise ValueError(f"path lengths must be >= 0 metres, got min {taken.min()}")
    return float(np.mean(s.astype(np.float64) * short / np.maximum(taken, short)))
