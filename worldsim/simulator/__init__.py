"""The learned simulator: one chunk, the stepper, episodes, the rollout protocol, checkpoints."""
