"""The learned simulator: sampling a chunk, the chunk stepper, the one object that owns an
episode's learned-world state, the planners' rollout protocol, map collisions and checkpoints.
"""
