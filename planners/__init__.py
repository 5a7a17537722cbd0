"""Planners that act through a simulator's rollout interface: policy ranking, CEM MPC, fine-tuning."""
