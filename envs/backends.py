"""The ground-truth simulator's backends, by name: the one place that knows them all."""

from __future__ import annotations

from envs.simulator import GroundTruthSimulator, SimulatorConfig


def make_simulator(
    config: SimulatorConfig | None = None, backend: str = "embedded"
) -> GroundTruthSimulator:
    """Create a ground-truth simulator.

    Args:
        config: sensor and agent settings; defaults if ``None``.
        backend: ``"embedded"`` (every machine) or ``"habitat"`` (needs habitat-sim).

    Returns:
        A simulator with no scene loaded yet.

    Raises:
        ValueError: for an unknown backend.
        ImportError: for ``"habitat"`` when habitat-sim is not installed, saying how to install it.
    """
    config = config or SimulatorConfig()
    if backend == "embedded":
        from envs.embedded.simulator import Simulator  # OpenGL: loaded only when used

        return Simulator(config)
    if backend == "habitat":
        from envs.habitat import HabitatSimulator

        return HabitatSimulator(config)
    raise ValueError(f"unknown simulator backend {backend!r}: allowed are 'embedded', 'habitat'")
