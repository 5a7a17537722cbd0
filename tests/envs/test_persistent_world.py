"""PersistentWorld-v0: Gymnasium contract, seeding, the batched vector env, starts, bad input."""

import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
from envs.indoor_nav import observation_space
from envs.persistent_world import PersistentWorldEnv, PersistentWorldVectorEnv
from envs.simulator import SimulatorConfig
from envs.tasks import ORACLE_TURN_STEP_DEG, planning_simulator
from tests.worldsim.conftest import make_tiny, randomise_memory_gates
from worldsim.memory import FeatureMap3D, build_memory
from worldsim.models.world_model import MEMORY_FILE, WorldModel
from worldsim.simulator.checkpoints import TINY_UNTRAINED, load_learned_simulator
from worldsim.simulator.learned import LearnedSimulator
from worldsim.simulator.sampler import SamplerConfig

if "PersistentWorld-v0" not in gym.registry:
    gym.register(
        id="PersistentWorld-v0",
        entry_point="envs.persistent_world:PersistentWorldEnv",
        vector_entry_point="envs.persistent_world:PersistentWorldVectorEnv",
        max_episode_steps=500,
    )

SCENE = "house-train-0000"
MEMORY = {"name": "feature_map", "encoder": "pooled_color", "voxel_size": 0.25}
# Batched and single-row matrix products round differently on the CPU (~1e-6 before
# quantisation), which can move a pixel across a uint8 rounding boundary.
RGB_LEVELS = 1
DEPTH_METRES = 1e-4


@pytest.fixture(scope="module")
def model() -> WorldModel:
    model = make_tiny(memory_token_dim=build_memory(**MEMORY).token_dim)
    randomise_memory_gates(model)  # so that the memory changes what is generated
    return model


def _make(model, **kwargs):
    # One denoising step keeps the tests fast; the model's default is tested through check_env.
    kwargs = {"memory": MEMORY, "num_sampling_steps": 1, **kwargs}
    return gym.make("PersistentWorld-v0", checkpoint=model, scene=SCENE, **kwargs)


def _frames(count=3, size=32):
    """Few-shot frames of a made-up room: poses on a line, looking along -z."""
    rng = np.random.default_rng(0)
    pose = np.repeat(np.eye(4)[None], count, axis=0)
    pose[:, 1, 1] = pose[:, 2, 2] = -1.0  # OpenCV camera of an agent with yaw 0 (y down, z -> -z)
    pose[:, 0, 3] = np.arange(count) * 0.5
    pose[:, 1, 3] = 1.25
    return {
        "rgb": rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        "depth": rng.uniform(0.5, 4.0, (count, size, size, 1)).astype(np.float32),
        "pose": pose,
    }


def test_check_env_passes_without_a_warning(model):
    env = _make(model, num_sampling_steps=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as Gymnasium's own suite: any checker warning fails
        check_env(env.unwrapped)
    assert env.spec.max_episode_steps == 500


def test_the_two_envs_report_the_same_info_keys(model):
    learned = _make(model)
    truth = gym.make("IndoorNav-v0", width=32, height=32, scene=SCENE)
    for env in (learned, truth):
        env.reset(seed=0)
    _, _, _, _, learned_info = learned.step(1)
    _, _, _, _, truth_info = truth.step(1)
    assert set(learned_info) == set(truth_info)
    assert learned_info["collided"] is False  # free-space motion is never blocked
    _, _, terminated, _, info = learned.step(0)
    assert terminated and 0.0 <= info["spl"] <= 1.0


def test_tiny_untrained_checkpoint_through_gym_make():
    env = gym.make(
        "PersistentWorld-v0", checkpoint="tiny-untrained", scene=SCENE, num_sampling_steps=1
    )
    observation, _ = env.reset(seed=0)
    assert observation["rgb"].shape == (32, 32, 3)
    assert env.step(1)[0]["rgb"].dtype == np.uint8


def test_few_shot_frames_beyond_the_pose_bound_are_refused(model):
    frames = _frames()
    frames["pose"][:, 0, 3] += 5000.0
    with pytest.raises(ValueError, match="beyond the pose space's bound of 1000 m"):
        _make(model).reset(seed=0, options={"frames": frames})


def test_spaces_are_those_of_indoor_nav(model):
    env = _make(model)
    expected = observation_space(SimulatorConfig(width=32, height=32))
    assert env.observation_space == expected
    assert env.action_space == gym.spaces.Discrete(4)
    assert gym.make("IndoorNav-v0", width=32, height=32).observation_space == env.observation_space


def test_same_seed_same_rollout_other_seed_other_start(model):
    env = _make(model)  # one env: a reset must clear everything the last episode left

    def run(seed, actions=(1, 2)):
        observations = [env.reset(seed=seed)[0]]
        return observations + [env.step(action)[0] for action in actions]

    first, other, second = run(3), run(4, actions=()), run(3)
    for a, b in zip(first, second, strict=True):
        for key in ("rgb", "depth", "pose"):
            assert np.array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["pose"], other[0]["pose"])  # another start


def test_scene_start_is_rendered_by_the_ground_truth(model):
    env = _make(model)
    observation, info = env.reset(seed=0)
    truth = gym.make("IndoorNav-v0", scene=SCENE, width=32, height=32)
    expected, _ = truth.reset(
        options={"start": (*info["position"], info["yaw"]), "goal": info["goal"]}
    )
    for key in ("rgb", "depth", "pose"):
        assert np.array_equal(observation[key], expected[key])
    assert observation["rgb"].dtype == np.uint8 and observation["depth"].dtype == np.float32
    assert info["scene"] == SCENE
    # The start frame is in the memory: tokens exist for the start view.
    memory = env.unwrapped.memory
    assert isinstance(memory, FeatureMap3D)
    pose = torch.from_numpy(observation["pose"])[None, None]
    k = torch.from_numpy(info["intrinsics"])[None, None]
    assert memory.tokens(pose, k, (32, 32))[1].sum() > 0


def test_reward_and_pose_follow_the_integrated_free_space_motion(model):
    env = _make(model)
    frames = _frames()
    last = frames["pose"][-1]
    goal = last[:3, 3] - np.array([0.0, 1.25, 2.0])  # 2 m straight ahead of the last camera
    observation, info = env.reset(seed=0, options={"frames": frames, "goal": goal})
    assert np.array_equal(observation["rgb"], frames["rgb"][-1])
    assert info["distance_to_goal"] == pytest.approx(2.0)
    observation, reward, terminated, truncated, info = env.step(1)  # forward 0.25 m
    assert reward == pytest.approx(0.25) and not terminated and not truncated
    observation, reward, *_ = env.step(2)  # turn left 10 deg: no distance change
    assert reward == pytest.approx(0.0, abs=1e-12)
    observation, reward, *_, info = env.step(1)
    turn = math.radians(10.0)
    position = (
        last[:3, 3]
        - np.array([0.0, 1.25, 0.25])
        + 0.25 * np.array([-math.sin(turn), 0.0, -math.cos(turn)])
    )  # yaw 10 deg looks along (-sin, 0, -cos)
    np.testing.assert_allclose(info["position"], position, atol=1e-9)  # float64 integration
    assert info["yaw"] == pytest.approx(turn)
    assert reward == pytest.approx(1.75 - np.linalg.norm(position - goal))
    np.testing.assert_allclose(
        observation["pose"][:3, 3], position + np.array([0.0, 1.25, 0.0]), atol=1e-6
    )
    before = observation
    observation, reward, terminated, _, info = env.step(0)  # stop: nothing is generated
    assert terminated and reward == 0.0 and not info["success"]
    assert np.array_equal(observation["rgb"], before["rgb"])


def test_stopping_at_the_goal_succeeds(model):
    env = _make(model)
    frames = _frames(count=1)
    goal = frames["pose"][0, :3, 3] - np.array([0.0, 1.25, 0.25])
    env.reset(seed=0, options={"frames": frames, "goal": goal})
    env.step(1)
    *_, terminated, _, info = env.step(0)
    assert terminated and info["success"] and info["distance_to_goal"] == pytest.approx(0.0)


def test_few_shot_frames_all_enter_the_memory(model):
    env = _make(model)
    frames = _frames(count=3)
    env.reset(seed=0, options={"frames": frames})
    one = _make(model)
    one.reset(seed=0, options={"frames": {k: v[-1:] for k, v in frames.items()}})
    poses = torch.from_numpy(frames["pose"]).float()[None]
    k = torch.from_numpy(SimulatorConfig(width=32, height=32).intrinsics).expand(1, 3, 3, 3)
    seen = env.unwrapped.memory.tokens(poses, k, (32, 32))[1].sum()
    assert seen > one.unwrapped.memory.tokens(poses, k, (32, 32))[1].sum()
    _, _, _, _, info = env.step(1)
    assert np.isnan(info["goal"]).all() and np.isnan(info["distance_to_goal"])


def test_memory_none_runs_the_model_without_memory(model):
    with_memory, without = (
        _make(model),
        gym.make("PersistentWorld-v0", checkpoint=model, memory="none", scene=SCENE),
    )
    assert without.unwrapped.memory is None
    a, _ = with_memory.reset(seed=1)
    b, _ = without.reset(seed=1)
    assert np.array_equal(a["rgb"], b["rgb"])  # same ground-truth start
    a = with_memory.step(1)[0]
    b = without.step(1)[0]
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max() > 0


def test_vector_env_equals_single_envs_with_the_same_seeds(model):
    vector = gym.make_vec(
        "PersistentWorld-v0",
        num_envs=2,
        checkpoint=model,
        memory=MEMORY,
        scene=SCENE,
        num_sampling_steps=1,
    )
    assert isinstance(vector, PersistentWorldVectorEnv)
    assert vector.observation_space["rgb"].shape == (2, 32, 32, 3)
    actions = np.array([[1, 0], [2, 1]])  # row 1 stops, then autoresets
    observations = [vector.reset(seed=10)[0]]
    results = [vector.step(a) for a in actions]
    observations += [r[0] for r in results]
    assert results[0][2].tolist() == [False, True]
    assert results[1][1][1] == 0.0 and not results[1][2][1]  # the autoreset step
    single = _make(model)
    for row in range(2):
        expected = [single.reset(seed=10 + row)[0]]
        for step, action in enumerate(actions[:, row]):
            if step > 0 and actions[step - 1, row] == 0:
                expected.append(single.reset()[0])  # the vector env autoresets this row
            else:
                expected.append(single.step(int(action))[0])
        for step, observation in enumerate(expected):
            rgb = observations[step]["rgb"][row].astype(int)
            assert np.abs(rgb - observation["rgb"]).max() <= RGB_LEVELS
            np.testing.assert_allclose(
                observations[step]["depth"][row], observation["depth"], atol=DEPTH_METRES
            )
            np.testing.assert_allclose(observations[step]["pose"][row], observation["pose"])


def test_vector_env_truncates_and_resets_rows_on_request(model):
    vector = PersistentWorldVectorEnv(
        num_envs=2,
        max_episode_steps=1,
        checkpoint=model,
        memory=MEMORY,
        scene=SCENE,
        num_sampling_steps=1,
    )
    first, _ = vector.reset(seed=0)
    _, _, terminated, truncated, _ = vector.step(np.array([2, 3]))
    assert truncated.tolist() == [True, True] and terminated.tolist() == [False, False]
    again, _ = vector.reset(seed=0, options={"reset_mask": np.array([True, False])})
    assert np.array_equal(again["rgb"][0], first["rgb"][0])
    with pytest.raises(ValueError, match="reset_mask"):
        vector.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match=r"actions must be \(2,\)"):
        vector.step(np.array([1, 1, 1]))


def test_vector_env_rows_per_call_do_not_change_the_rows(model):
    def first_step(batch_size):
        vector = PersistentWorldVectorEnv(
            num_envs=2,
            batch_size=batch_size,
            checkpoint=model,
            memory=MEMORY,
            scene=SCENE,
            num_sampling_steps=1,
        )
        vector.reset(seed=0)
        return vector.step(np.array([1, 2]))[0]

    together, apart = first_step(None), first_step(1)
    assert np.abs(together["rgb"].astype(int) - apart["rgb"]).max() <= RGB_LEVELS
    np.testing.assert_allclose(together["depth"], apart["depth"], atol=DEPTH_METRES)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PersistentWorldVectorEnv(num_envs=2, batch_size=0, checkpoint=model, memory=MEMORY)


def test_checkpoint_folder_and_its_memory_file(model, tmp_path):
    model.save_pretrained(tmp_path)
    (tmp_path / MEMORY_FILE).write_text(json.dumps(MEMORY))
    env = gym.make("PersistentWorld-v0", checkpoint=str(tmp_path), scene=SCENE)
    assert isinstance(env.unwrapped.world.memory, FeatureMap3D)
    assert env.unwrapped.world.memory.config.voxel_size == 0.25
    assert env.reset(seed=0)[0]["rgb"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match=r"width=64 was requested.*32x32"):
        gym.make("PersistentWorld-v0", checkpoint=str(tmp_path), width=64)
    (tmp_path / MEMORY_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        gym.make("PersistentWorld-v0", checkpoint=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no world model checkpoint"):
        gym.make("PersistentWorld-v0", checkpoint=str(tmp_path / "missing"))


def test_no_arguments_load_the_shipped_checkpoint():
    env = gym.make("PersistentWorld-v0")
    observation, _ = env.reset(seed=0)
    assert observation["rgb"].shape == (64, 64, 3)
    after = env.step(1)[0]  # move forward: one generated chunk, its first frame served
    assert after["rgb"].shape == env.observation_space["rgb"].shape == (64, 64, 3)
    assert after["rgb"].dtype == np.uint8 and after["depth"].shape == (64, 64, 1)
    # The pose moved 0.25 m along the camera's forward axis (-z of the agent, +z of the camera).
    step = np.linalg.inv(observation["pose"]) @ after["pose"]
    np.testing.assert_allclose(step[:3, 3], [0.0, 0.0, 0.25], atol=1e-5)


def test_bad_input_raises_clear_errors(model):
    env = _make(model)
    with pytest.raises(ValueError, match=r"unknown reset options \['speed'\]"):
        env.reset(options={"speed": 2})
    with pytest.raises(ValueError, match="need their camera poses"):
        env.reset(options={"frames": {k: v for k, v in _frames().items() if k != "pose"}})
    with pytest.raises(ValueError, match=r"16x16 pixels.*32x32"):
        env.reset(options={"frames": _frames(size=16)})
    frames = _frames()
    frames["depth"] = frames["depth"][:2]
    with pytest.raises(ValueError, match=r"frames\['depth'\] must be"):
        env.reset(options={"frames": frames})
    frames = _frames()
    frames["pose"] = frames["pose"] * 2.0
    with pytest.raises(ValueError, match="not a rigid transform"):
        env.reset(options={"frames": frames})
    with pytest.raises(ValueError, match="cannot be combined with 'frames'"):
        env.reset(options={"frames": _frames(), "scene": SCENE})
    with pytest.raises(ValueError, match="unknown keys"):
        env.reset(options={"frames": {**_frames(), "normals": 0}})
    narrow = {**MEMORY, "position": {"num_frequencies": 2}}  # tokens of width 3 + 12
    with pytest.raises(ValueError, match=r"width 15 .* memory_token_dim=51"):
        gym.make("PersistentWorld-v0", checkpoint=model, memory=narrow)
    with pytest.raises(TypeError, match="unexpected keyword argument 'resolution'"):
        gym.make("PersistentWorld-v0", checkpoint=model, resolution=64)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown action 7"):
        env.step(7)
    with pytest.raises(ValueError, match="num_sampling_steps"):
        PersistentWorldEnv(checkpoint=model, memory=MEMORY, num_sampling_steps=0)


def test_env_state_feeds_the_planners_rollout(model):
    env = _make(model)
    env.reset(seed=0)
    env.step(1)
    start = env.unwrapped.rollout_start()
    assert start.rgb.shape == (1, 1, 3, 32, 32) and start.scene == (SCENE,)
    tokens_before = start.memory.tokens(start.cam_to_world, start.intrinsics[:, None], (32, 32))
    result = LearnedSimulator(model, sampler=SamplerConfig(num_inference_steps=1)).rollout(
        start, torch.tensor([[1, 1]]), generator=torch.Generator().manual_seed(0)
    )
    assert result.rgb.shape == (1, 2, 3, 32, 32)
    tokens_after = start.memory.tokens(start.cam_to_world, start.intrinsics[:, None], (32, 32))
    assert torch.equal(tokens_before[0], tokens_after[0])  # the planner works on a copy


def test_load_learned_simulator_builds_the_smoke_model_and_checks_the_turn_step(tmp_path):
    simulator = load_learned_simulator(TINY_UNTRAINED, turn_step_deg=30.0)
    model, memory = simulator.model, simulator.memory
    assert model.action_spec.turn_step_deg == 30.0 and not model.training
    assert isinstance(memory, FeatureMap3D) and memory.token_dim == model.config.memory_token_dim
    assert simulator.sampler == SamplerConfig()  # a model built in code: the default sampler
    assert load_learned_simulator(TINY_UNTRAINED, memory="none").memory is None
    spec = {"name": "feature_map", "encoder": "pooled_color"}
    make_tiny(memory_token_dim=build_memory(**spec).token_dim).save_pretrained(tmp_path)
    (tmp_path / MEMORY_FILE).write_text(json.dumps(spec))
    SamplerConfig(num_inference_steps=3).save(tmp_path)
    loaded = load_learned_simulator(tmp_path, turn_step_deg=10.0)
    assert loaded.model.config.height == 32
    assert loaded.sampler.num_inference_steps == 3  # the folder's sampler_config.json
    assert load_learned_simulator(tmp_path, num_inference_steps=1).sampler.num_inference_steps == 1
    with pytest.raises(ValueError, match=r"turns by 10\.0 deg per action but 30\.0 deg was asked"):
        load_learned_simulator(tmp_path, turn_step_deg=30.0)


def test_planning_simulator_takes_the_turn_step_of_what_imagines():
    assert planning_simulator("oracle") == (None, 64, ORACLE_TURN_STEP_DEG)
    assert planning_simulator("oracle", turn_step_deg=10.0, size=32) == (None, 32, 10.0)
    rollout, size, turn = planning_simulator("world-model", TINY_UNTRAINED, "cpu", None, 45.0)
    assert (size, turn) == (32, 45.0) and rollout.model.action_spec.turn_step_deg == 45.0
    rollout, size, turn = planning_simulator("world-model")  # the embedded checkpoint
    assert rollout is not None and (size, turn) == (64, 10.0)
    with pytest.raises(ValueError, match=r"turns by 10\.0 deg per action but 30\.0"):
        planning_simulator("world-model", turn_step_deg=30.0)
    with pytest.raises(ValueError, match="planner must be 'oracle' or 'world-model'"):
        planning_simulator("habitat")


def test_a_render_model_steps_with_its_rendered_memory():
    model = make_tiny(memory_token_dim=0, memory_render=True)
    with torch.no_grad():  # open the render branch, as after training
        model.transformer.render_embed.weight.normal_(generator=torch.Generator().manual_seed(0))
    env = gym.make(
        "PersistentWorld-v0",
        checkpoint=model,
        memory="rendered",
        num_sampling_steps=1,
        scene=SCENE,
    )
    env.reset(seed=0)
    for action in (1, 2, 2):
        env.step(action)
    points = env.unwrapped.memory.points()
    assert points.observed.any() and (~points.observed).any()  # the start, generated frames
    # The vector env steps the same rows (its memories are one per row).
    vector = gym.make_vec(
        "PersistentWorld-v0",
        num_envs=2,
        checkpoint=model,
        memory="rendered",
        num_sampling_steps=1,
        scene=SCENE,
    )
    observations, _ = vector.reset(seed=0)
    observations, *_ = vector.step(np.array([1, 2]))
    assert observations["rgb"].shape == (2, 32, 32, 3)


def test_collisions_stop_the_agent_at_an_observed_wall():
    """A few-shot start facing a wall 1 m away: with collisions the agent stops before it."""
    model = make_tiny(memory_token_dim=0, memory_render=True)
    wall = _frames(count=1)
    wall["depth"][:] = 1.0  # a flat wall across the view, 1 m ahead
    ends = {}
    for collisions in (True, False):
        env = _make(model, memory="rendered", collisions=collisions)
        _, info = env.reset(seed=0, options={"frames": wall})
        assert info["collided"] is False
        hits = []
        for _ in range(6):  # 1.5 m forward
            _, _, _, _, info = env.step(1)
            hits.append(info["collided"])
        ends[collisions] = float(info["position"][2])
        assert any(hits) == collisions
        _, _, _, _, info = env.step(2)  # a turn never collides
        assert info["collided"] is False
    assert -1.0 + 0.1 <= ends[True] <= -0.75 + 1e-6  # stopped one body radius before the wall
    assert ends[False] == pytest.approx(-1.5, abs=1e-4)  # the control: through it
    with pytest.raises(ValueError, match="collisions=True needs the walls of a map of points"):
        gym.make("PersistentWorld-v0", checkpoint=model, memory="none", collisions=True)


def test_a_device_this_machine_lacks_and_options_that_are_no_dict_are_refused():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available.*device='cpu'"):
            gym.make("PersistentWorld-v0", checkpoint=TINY_UNTRAINED, device="cuda")
    env = gym.make("PersistentWorld-v0", checkpoint=TINY_UNTRAINED, num_sampling_steps=1)
    with pytest.raises(ValueError, match=r"options=\{'scene': 'house-val-0002'\}, got str"):
        env.reset(options="house-val-0002")
    env.reset(seed=0, options={"scene": "house-val-0002"})  # the control
    assert env.unwrapped.world.ground_truth.sim.scene_id == "house-val-0002"


def test_a_z_up_scene_file_starts_on_its_floor_with_up_axis(tmp_path):
    from tests.envs.test_indoor_nav import _z_up_house

    path = _z_up_house(tmp_path / "house.glb")
    settings = dict(checkpoint=TINY_UNTRAINED, num_sampling_steps=1, scene=path)
    with pytest.raises(ValueError, match=r"up_axis='z'"):  # read as y-up: refused
        gym.make("PersistentWorld-v0", **settings).reset(seed=0)
    env = gym.make("PersistentWorld-v0", up_axis="z", **settings)
    observation, _ = env.reset(seed=0)
    assert abs(observation["pose"][1, 3] - 1.25) < 1e-4  # the sensor above the house's floor
    assert (observation["depth"] > 0).mean() > 0.9
