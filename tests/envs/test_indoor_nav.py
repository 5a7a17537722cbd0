"""IndoorNav-v0: Gymnasium API, determinism, rewards, and clear errors for bad input."""

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import trimesh
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from envs.backends import make_simulator
from envs.embedded.simulator import Simulator
from envs.indoor_nav import IndoorNavEnv
from envs.simulator import SimulatorConfig
from worldsim.geometry import Action

SCENE = "house-train-0000"
SMALL = {"scene": SCENE, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def env():
    environment = gym.make("IndoorNav-v0", **SMALL)
    yield environment
    environment.close()


def test_check_env_passes_without_a_warning():
    environment = gym.make("IndoorNav-v0", **SMALL).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as Gymnasium's own suite: any checker warning fails
        check_env(environment, skip_render_check=False)


def test_pose_space_is_bounded_and_holds_the_observed_poses():
    from envs.indoor_nav import POSE_BOUND_M, pose_space

    space = pose_space()
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all()
    assert space.high[0, 3] == POSE_BOUND_M and space.low[0, 0] == -1.0
    environment = gym.make("IndoorNav-v0", **SMALL)
    observation, _ = environment.reset(seed=3)
    assert space.contains(observation["pose"])


def test_observation_dtypes_shapes_and_info(env):
    observation, info = env.reset(seed=0)
    assert observation["rgb"].dtype == np.uint8 and observation["rgb"].shape == (32, 32, 3)
    assert observation["depth"].dtype == np.float32 and observation["depth"].shape == (32, 32, 1)
    assert observation["pose"].dtype == np.float32 and observation["pose"].shape == (4, 4)
    assert env.observation_space.contains(observation)
    np.testing.assert_allclose(info["intrinsics"], [[16, 0, 16], [0, 16, 16], [0, 0, 1]])
    assert {"distance_to_goal", "collided", "success", "spl", "position", "goal"} <= set(info)
    # The pose is the camera of the agent: sensor height above its floor position.
    np.testing.assert_allclose(
        observation["pose"][:3, 3], info["position"] + [0, 1.25, 0], atol=1e-5
    )


def test_same_seed_same_rollout():
    def rollout(seed):
        environment = gym.make("IndoorNav-v0", **SMALL)
        observation, _ = environment.reset(seed=seed)
        frames, rewards = [observation["rgb"]], []
        action_rng = np.random.default_rng(seed)
        for _ in range(30):
            observation, reward, *_ = environment.step(int(action_rng.integers(1, 4)))
            frames.append(observation["rgb"])
            rewards.append(reward)
        environment.close()
        return np.stack(frames), np.array(rewards)

    frames_a, rewards_a = rollout(7)
    frames_b, rewards_b = rollout(7)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    frames_c, _ = rollout(8)
    assert not np.array_equal(frames_a[0], frames_c[0])


def test_reward_is_decrease_of_geodesic_distance_and_oracle_succeeds(env):
    _, info = env.reset(seed=3)
    sim = env.unwrapped.sim
    total, start_distance = 0.0, info["distance_to_goal"]
    for _ in range(400):
        action = sim.oracle_action(env.unwrapped.goal)
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        if terminated or truncated:
            break
    assert terminated and info["success"]
    # Rewards telescope: their sum is the geodesic distance covered.
    assert total == pytest.approx(start_distance - info["distance_to_goal"], abs=1e-9)
    assert 0.0 < info["spl"] <= 1.0


def test_stop_far_from_goal_terminates_without_success(env):
    env.reset(seed=1)
    while env.unwrapped.sim.geodesic_distance(env.unwrapped.sim.position, env.unwrapped.goal) < 0.5:
        env.reset()
    _, reward, terminated, _, info = env.step(Action.STOP)
    assert terminated and not info["success"] and info["spl"] == 0.0 and reward == 0.0


def test_reset_options_place_start_and_goal(env):
    sim = env.unwrapped.sim
    env.reset(seed=0)
    rng = np.random.default_rng(5)
    start, goal = sim.sample_navigable_point(rng), sim.sample_navigable_point(rng)
    _, info = env.reset(options={"start": [*start, 0.5], "goal": goal})
    np.testing.assert_allclose(info["position"], start)
    assert info["yaw"] == pytest.approx(0.5)
    np.testing.assert_allclose(info["goal"], goal)


@pytest.mark.parametrize("action", [-1, 4, 1.5, "forward"])
def test_actions_outside_the_space_raise(env, action):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_unknown_reset_option_raises(env):
    with pytest.raises(ValueError, match=r"unknown reset options \['goall'\]"):
        env.reset(seed=0, options={"goall": (0, 0, 0)})


def test_start_off_the_navigable_area_raises(env):
    with pytest.raises(ValueError, match="not on the navigable area"):
        env.reset(seed=0, options={"start": (1000.0, 0.0, 1000.0, 0.0)})


def test_goal_off_the_navigable_area_raises(env):
    with pytest.raises(ValueError, match=r"goal \[1000.0, 0.0, 1000.0\] is not on the navigable"):
        env.reset(seed=0, options={"goal": (1000.0, 0.0, 1000.0)})


def test_unknown_scene_id_raises():
    environment = gym.make("IndoorNav-v0", scene="house-train-xyz", width=16, height=16)
    with pytest.raises(ValueError, match="house-train-xyz"):
        environment.reset(seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, r"width must be an integer in \[1, 4096\], got 0"),
        ({"height": 5000}, r"height must be an integer in \[1, 4096\], got 5000"),
        ({"hfov_deg": 180.0}, r"hfov_deg must be in \(0, 180\)"),
        ({"max_depth": -1.0}, "max_depth must be > 0"),
        ({"render_mode": "human"}, "render_mode must be None or 'rgb_array'"),
        ({"split": "dev"}, "split must be one of"),
    ],
)
def test_out_of_range_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndoorNavEnv(**kwargs)  # gym.make would wrap a 'human' render mode before the env sees it


def test_default_env_needs_no_arguments():
    environment = gym.make("IndoorNav-v0")
    observation, _ = environment.reset(seed=0)
    assert observation["rgb"].shape == (128, 128, 3)
    environment.close()


def test_render_returns_the_observed_frame():
    environment = gym.make("IndoorNav-v0", render_mode="rgb_array", **SMALL)
    observation, _ = environment.reset(seed=0)
    np.testing.assert_array_equal(environment.render(), observation["rgb"])


def test_simulator_turns_and_moves_by_the_configured_steps():
    sim = Simulator(SimulatorConfig(width=16, height=16, forward_step_m=0.25, turn_step_deg=30))
    sim.load_scene(SCENE)
    rng = np.random.default_rng(0)
    for _ in range(20):  # find a start with free space ahead
        start, yaw = sim.sample_navigable_point(rng), float(rng.uniform(-np.pi, np.pi))
        ahead = start + 0.25 * np.array([-np.sin(yaw), 0.0, -np.cos(yaw)])
        if sim.is_navigable(ahead) and sim.is_navigable(start + 2 * (ahead - start)):
            break
    sim.reset_agent(start, yaw)
    assert sim.step(Action.MOVE_FORWARD) is False
    np.testing.assert_allclose(sim.position, ahead, atol=1e-9)
    sim.step(Action.TURN_LEFT)
    assert sim.yaw == pytest.approx(np.remainder(yaw + np.radians(30) + np.pi, 2 * np.pi) - np.pi)
    sim.step(Action.STOP)
    np.testing.assert_allclose(sim.position, ahead, atol=1e-9)


def test_habitat_backend_without_habitat_sim_says_how_to_install():
    importlib.import_module("envs.habitat")  # our module imports without habitat-sim
    try:
        import habitat_sim  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="conda install habitat-sim"):
            make_simulator(SimulatorConfig(), backend="habitat")
    else:
        pytest.skip("habitat-sim is installed here")


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown simulator backend 'unity'"):
        make_simulator(SimulatorConfig(), backend="unity")


# ------------------------------------------------------------------------------------- up axis
def _z_up_house(path):
    from envs.embedded.scenes import export_glb, generate_house

    house = generate_house("house-train-0000")
    house.apply_transform(np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
    return export_glb(house, path)  # (x, y, z) -> (x, -z, y): z-up, front +y, as Habitat's files


def _first_frame(env):
    observation, _ = env.reset(seed=0)
    return observation, env.sim.navigation.floor_height


def test_z_up_scene_file_stands_on_its_floor_with_the_up_axis_given_or_configured(tmp_path):
    path = _z_up_house(tmp_path / "house.glb")
    with pytest.raises(ValueError, match=r"up_axis='z'"):  # read as y-up: refused, not accepted
        IndoorNavEnv(scene=path, width=32, height=32).reset(seed=0)
    configured = _z_up_house(tmp_path / "configured.glb")
    (tmp_path / "configured.stage_config.json").write_text('{"up": [0, 0, 1]}')
    for env in (
        IndoorNavEnv(scene=path, width=32, height=32, up_axis="z"),
        IndoorNavEnv(scene=configured, width=32, height=32),
    ):
        observation, floor_height = _first_frame(env)
        assert abs(floor_height) < 1e-3  # the house's floor, at y = 0
        assert abs(observation["pose"][1, 3] - env.config.sensor_height) < 1e-4
        assert (observation["depth"] > 0).mean() > 0.9 and observation["rgb"].mean() > 10
        env.close()


def test_scene_whose_first_views_see_nothing_is_refused(tmp_path):
    import trimesh

    from envs.embedded.scenes import export_glb

    # A 1 m square facing up and nothing else: the agent stands on it (a box roof) and, from
    # 1.25 m above it, sees only empty space in every heading (black frames, depth 0).
    roof = trimesh.Trimesh(
        [[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]], [[0, 2, 1], [0, 3, 2]]
    )
    path = export_glb(trimesh.Scene(roof), tmp_path / "roof.glb")
    sim = Simulator(SimulatorConfig(width=32, height=32))
    with pytest.raises(ValueError, match=r"first views see geometry in only 0\.0% .*up_axis='z'"):
        sim.load_scene(path)
    with pytest.raises(RuntimeError, match="no scene loaded"):  # nothing half-loaded is kept
        sim.scene_id  # noqa: B018
    with pytest.raises(ValueError, match=r"unknown up_axis 'up'"):
        SimulatorConfig(up_axis="up")


def test_a_start_on_the_upper_storey_moves_navigation_there(tmp_path):
    from envs.embedded.scenes import STOREY_SLAB_M, export_glb, generate_layout, storey_house

    scene = "house-val-0003"
    lift = generate_layout(scene).ceiling_height + STOREY_SLAB_M
    house = storey_house(scene, storeys=2)
    ledge = generate_layout(scene).rooms[0].center
    box = trimesh.creation.box(bounds=[[ledge[0] - 0.05, 1.9, ledge[1] - 0.05],
                                       [ledge[0] + 0.05, 2.0, ledge[1] + 0.05]])  # fmt: skip
    house.add_geometry(box, "ledge", "ledge")
    path = export_glb(house, tmp_path / "two-storeys.glb")
    sim = Simulator(SimulatorConfig(width=16, height=16))
    sim.load_scene(path)
    assert sim.position[1] == pytest.approx(0.0, abs=1e-6)  # starts on the lower storey
    ground = sim.navigation
    x, _, z = sim.sample_navigable_point(np.random.default_rng(3))
    upstairs = np.array([x, lift, z])
    assert sim.is_navigable(upstairs) and sim.navigation is ground  # asking moves nothing
    sim.reset_agent(upstairs, 0.0)
    assert sim.navigation.floor_height == pytest.approx(lift)
    np.testing.assert_array_equal(sim.navigation.navigable, ground.navigable)  # same plan
    for _ in range(8):
        sim.step(int(Action.MOVE_FORWARD))
        assert sim.position[1] == pytest.approx(lift)
    goal = sim.sample_navigable_point(np.random.default_rng(4))
    assert goal[1] == pytest.approx(lift) and np.isfinite(sim.geodesic_distance(sim.position, goal))
    with pytest.raises(ValueError, match="not on the navigable area"):
        sim.reset_agent(np.array([x, lift / 2, z]), 0.0)  # between storeys: no floor there
    # A surface too small for the body (a 0.1 m ledge at 2 m) is no storey: just not navigable.
    lx, lz = ledge
    assert not sim.is_navigable(np.array([lx, 2.0, lz]))
    assert sim.navigation.floor_height == pytest.approx(lift)  # the agent's storey is kept
    sim.reset_agent(np.array([x, 0.0, z]), 0.0)
    assert sim.navigation is ground  # back down: the grid built at load, not a new one
    # The env: a start on the upper storey puts its goal there too.
    env = gym.make("IndoorNav-v0", scene=str(path), width=16, height=16)
    _, info = env.reset(seed=0, options={"start": (x, lift, z, 0.0)})
    assert info["position"][1] == pytest.approx(lift) and info["goal"][1] == pytest.approx(lift)
    assert np.isfinite(info["distance_to_goal"])
    env.close()
