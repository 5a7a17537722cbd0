"""The embedded ground-truth backend: houses, headless rendering, navigation, the simulator."""
