"""Planners that act through a simulator's rollout interface: ranking, CEM MPC, fine-tuning."""
