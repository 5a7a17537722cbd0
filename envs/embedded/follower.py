"""The oracle: a greedy shortest-path follower that emits discrete actions, as Habitat's."""

from __future__ import annotations

import math

import numpy as np

from envs.embedded.navigation import NavGrid
from worldsim.geometry import Action, ActionSpec


# ------------------------------------------------------------------------------- the oracle
class ShortestPathFollower:
    """Greedy oracle that walks the geodesic path with the discrete actions.

    At each call it looks ahead along the grid's shortest path from the agent to the goal and
    aims at the farthest path point within ``lookahead_m`` that is in straight view; it turns
    towards it until the heading error is at most half a turn step, then moves forward. It stops
    when the goal is within ``goal_radius`` and in straight view. Give it the step sizes of the
    simulator it drives.

    Args:
        grid: the scene's navigation grid.
        forward_step_m: length of ``move_forward``, metres, in (0, 5].
        turn_step_deg: angle of ``turn_left`` / ``turn_right``, degrees, in (0, 180].
        goal_radius: stop within this distance of the goal, metres, > 0 (success radius of the
            metrics; keep it above about ``forward_step_m / 2`` or the discrete steps may keep
            stepping over the goal).
        lookahead_m: how far along the path to look for an aiming point, metres, > 0; ``None``
            looks four forward steps ahead.

    Raises:
        ValueError: for step sizes or radii out of range.
    """

    def __init__(
        self,
        grid: NavGrid,
        forward_step_m: float = 0.25,
        turn_step_deg: float = 10.0,
        goal_radius: float = 0.2,
        lookahead_m: float | None = None,
    ) -> None:
        self.spec = ActionSpec(forward_step_m=forward_step_m, turn_step_deg=turn_step_deg)
        if lookahead_m is None:
            lookahead_m = 4.0 * forward_step_m
        if not (math.isfinite(goal_radius) and goal_radius > 0.0):
            raise ValueError(f"goal_radius must be > 0 metres, got {goal_radius}")
        if not (math.isfinite(lookahead_m) and lookahead_m > 0.0):
            raise ValueError(f"lookahead_m must be > 0 metres, got {lookahead_m}")
        self.grid = grid
        self.goal_radius = float(goal_radius)
        self.lookahead_m = float(lookahead_m)

    def target(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The point the follower aims at.

        Args:
            position: (3,) navigable agent position, metres.
            goal: (3,) navigable goal, metres.

        Returns:
            (3,) float64 world point on the path ahead (the goal once it is in view and near).

        Raises:
            ValueError: for non-navigable points or an unreachable goal.
        """
        position = self.grid._require_navigable(position, "position")
        goal = self.grid._require_navigable(goal, "goal")
        return self._target(position, goal)

    def _target(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """:meth:`target` for validated points."""
        grid = self.grid
        start_node, goal_node = grid._node_of(position), grid._node_of(goal)
        cells = grid._cell_path(start_node, goal_node, max_length=self.lookahead_m)
        if cells is None:
            raise ValueError(
                f"goal {np.round(goal, 4).tolist()} is not reachable from position "
                f"{np.round(position, 4).tolist()} (they lie on separate navigable regions)"
            )
        candidates = grid._centres(grid._node_cells[cells[1:]])[:, [0, 2]]
        if cells[-1] == goal_node:
            candidates = np.concatenate([candidates, goal[None, [0, 2]]])
        visible = np.flatnonzero(grid._visible(position[[0, 2]], candidates))
        chosen = candidates[visible[-1] if len(visible) else 0]
        return np.array([chosen[0], grid.floor_height, chosen[1]])

    def next_action(self, position: np.ndarray, yaw: float, goal: np.ndarray) -> int:
        """The next discrete action towards the goal.

        Args:
            position: (3,) navigable agent position, metres.
            yaw: agent heading, radians (0 looks along world -z, positive turns left).
            goal: (3,) navigable goal, metres.

        Returns:
            An :class:`worldsim.geometry.Action` id: 0 stop, 1 forward, 2 turn left, 3 turn right.

        Raises:
            ValueError: for non-navigable points, an unreachable goal or a non-finite yaw.
        """
        if not math.isfinite(yaw):
            raise ValueError(f"yaw must be a finite angle in radians, got {yaw!r}")
        grid = self.grid
        position = grid._require_navigable(position, "position")
        goal = grid._require_navigable(goal, "goal")
        offset = goal[[0, 2]] - position[[0, 2]]
        if (
            math.hypot(*offset) <= self.goal_radius
            and grid._visible(position[[0, 2]], goal[None, [0, 2]])[0]
        ):
            return int(Action.STOP)
        target = self._target(position, goal)
        dx, dz = (target - position)[[0, 2]]
        # Forward is (-sin yaw, -cos yaw) in (x, z), so the heading that faces (dx, dz) is:
        heading = math.atan2(-dx, -dz)
        error = math.remainder(heading - yaw, 2.0 * math.pi)
        if abs(error) <= 0.5 * self.spec.turn_step_rad + 1e-9:
            return int(Action.MOVE_FORWARD)
        return int(Action.TURN_LEFT if error > 0.0 else Action.TURN_RIGHT)
