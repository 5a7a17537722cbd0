"""Metrics: video quality, LPIPS itself, and the navigation task's success and SPL."""
