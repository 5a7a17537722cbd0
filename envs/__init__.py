"""Gymnasium environments of persistent-world; importing this package registers them.

- ``IndoorNav-v0``: the ground-truth indoor simulator (embedded renderer by default).
- ``PersistentWorld-v0``: the learned simulator, whose dynamics are the world model.
"""

from gymnasium.envs.registration import register

register(id="IndoorNav-v0", entry_point="envs.indoor_nav:IndoorNavEnv", max_episode_steps=500)
register(
    id="PersistentWorld-v0",
    entry_point="envs.persistent_world:PersistentWorldEnv",
    vector_entry_point="envs.persistent_world:PersistentWorldVectorEnv",
    max_episode_steps=500,
)
