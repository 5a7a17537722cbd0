"""Gymnasium environments of persistent-world; importing this package registers them.

- ``IndoorNav-v0``: the ground-truth indoor simulator (embedded renderer by default).
"""

from gymnasium.envs.registration import register

register(id="IndoorNav-v0", entry_point="envs.indoor_nav:IndoorNavEnv", max_episode_steps=500)
