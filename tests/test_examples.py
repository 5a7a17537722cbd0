"""Every example runs end to end with its tiny setting, parsed from the command line."""

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import tyro

from worldsim import cli
from worldsim.models.world_model import WorldModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, argv: list[str]):
    module = cli.load_example(name)
    args = tyro.cli(module.Args, args=argv)
    return module.main(args)


def test_every_example_has_a_test():
    tested = {
        name.removeprefix("test_")
        for name, value in globals().items()
        if name.startswith("test_") and callable(value)
    }
    untested = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem not in tested)
    assert untested == []


def test_explore_scene(tmp_path):
    summary = run(
        "explore_scene",
        ["--num-goals", "2", "--width", "32", "--height", "32", "--output-dir", str(tmp_path)],
    )
    assert summary["goals_reached"] == 2
    frames = imageio.mimread(tmp_path / "tour.mp4")
    assert len(frames) == summary["steps"] > 0
    assert frames[0].shape == (32, 64, 3)  # RGB | depth side by side
    top_down = imageio.imread(tmp_path / "top_down.png")
    assert top_down.ndim == 3 and top_down.std() > 10  # a picture, not a blank canvas


def test_build_memory(tmp_path):
    run(
        "build_memory",
        [
            "--steps",
            "12",
            "--size",
            "32",
            "--encoder",
            "pooled_color",
            "--output-dir",
            str(tmp_path),
        ],
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary  # one entry per memory
    for picture in ("feature_map_topdown.png", "bev_topdown.png", "retrieval.png"):
        image = imageio.imread(tmp_path / picture)
        assert image.ndim == 3 and np.asarray(image).std() > 5


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    argv = [
        "--output-dir",
        str(root),
        "--scene-count",
        "2",
        "--episodes-per-scene",
        "3",
        "--episodes-per-shard",
        "1",
        "--max-steps",
        "20",
        "--width",
        "32",
        "--height",
        "32",
        "--workers",
        "1",
        "--quiet",
    ]
    run("collect_data", argv)
    return root


def test_collect_data(tiny_dataset):
    from worldsim.data import TrajectoryStore

    store = TrajectoryStore(tiny_dataset)
    assert len(store.episodes) == 6  # 2 scenes x 3 episodes, all complete
    first = store.read_episode(0)
    assert first.rgb.shape[1:] == (32, 32, 3) and len(first.rgb) <= 21


def test_inspect_data(tiny_dataset, tmp_path):
    argv = [
        "--data-dir",
        str(tiny_dataset),
        "--output-dir",
        str(tmp_path),
        "--clips",
        "2",
        "--n-context",
        "1",
        "--n-future",
        "2",
        "--max-memory-frames",
        "2",
    ]
    run("inspect_data", argv)
    image = imageio.imread(tmp_path / "contact_sheet.png")
    assert image.ndim == 3 and image.std() > 10


def test_train_world_model(tmp_path, tiny_dataset):
    # Tiny episodes of 20 steps hold no revisits, so every clip is drawn uniformly.
    argv = [
        "--stage",
        "all",
        "--config",
        "tiny",
        "--output-dir",
        str(tmp_path),
        "--data-dir",
        str(tiny_dataset),
        "--revisit-fraction",
        "0",
        "--workers",
        "0",
        "--memory-encoder",
        "pooled_color",
        "--batch-size",
        "1",
        "--memory-frames",
        "2",
        "--device",
        "cpu",
        "--train.steps",
        "1",
        "--train.checkpoint-every",
        "1",
        "--train.sample-every",
        "1",
        "--train.log-every",
        "1",
    ]
    run("train_world_model", argv)
    for stage in ("vae", "backbone", "memory"):
        assert (tmp_path / stage / "model" / "config.json").is_file()
        assert list((tmp_path / stage / "samples").glob("*.gif"))
        spec = json.loads((tmp_path / stage / "model" / "memory.json").read_text())
        assert spec == {"name": "feature_map", "encoder": "pooled_color"}
    vae_config = json.loads((tmp_path / "vae" / "model" / "config.json").read_text())
    memory_config = json.loads((tmp_path / "memory" / "model" / "config.json").read_text())
    # The VAE stage fits the latent scale; later stages keep it.
    assert vae_config["vae_scaling_factor"] != 1.0
    assert memory_config["vae_scaling_factor"] == vae_config["vae_scaling_factor"]
    # Stages 1 and 2 trained on latents encoded once, by the trained VAE, for every frame.
    from worldsim.data import TrajectoryStore
    from worldsim.data.latents import LatentCache
    from worldsim.models.world_model import WorldModel

    store = TrajectoryStore(tiny_dataset)
    model = WorldModel.from_pretrained(tmp_path / "memory" / "model")
    cache = LatentCache.load(tmp_path / "latents.safetensors", model, store)
    assert [len(x) for x in cache.latents] == [info.num_frames for info in store.episodes]


def test_plan_cem(tmp_path):
    argv = [
        "--output-dir",
        str(tmp_path),
        "--episodes",
        "1",
        "--iterations",
        "1",
        "2",
        "--num-samples",
        "6",
        "--horizon",
        "3",
        "--execute-steps",
        "3",
        "--max-steps",
        "3",
        "--size",
        "32",
    ]
    rows = run("plan_cem", [*argv, "--tour-steps", "20"])
    assert [row["cem_iterations"] for row in rows] == [1, 2]
    assert all(0.0 < row["sim"] <= 100.0 and row["mean_steps"] <= 3 for row in rows)
    assert all(row["success_ci_low"] <= row["success"] <= row["success_ci_high"] for row in rows)
    for name in ("plan_cem.md", "plan_cem.json", "episodes.png", "stop_calibration.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert list(tmp_path.glob("imagined_vs_executed_*.mp4"))  # a success's or a failure's
    episodes = json.loads((tmp_path / "episodes.json").read_text())
    for episode in episodes:  # the planner's belief apart from the truth
        assert episode["success"] == (episode["end_distance_m"] <= 0.5)
        assert episode["false_stop"] == (episode["stopped"] and not episode["success"])
    calibration = json.loads((tmp_path / "stop_calibration.json").read_text())
    assert len(calibration["views"]) == sum(e["steps"] + 1 for e in episodes)


def test_plan_cem_in_houses_chosen_by_flag(tmp_path):
    argv = ["--output-dir", str(tmp_path), "--episodes", "2", "--iterations", "1"]
    argv += ["--num-samples", "4", "--horizon", "3", "--execute-steps", "3", "--max-steps", "3"]
    argv += ["--size", "32"]
    run("plan_cem", [*argv, "--split", "test", "--scene-start", "10", "--num-scenes", "2"])
    episodes = json.loads((tmp_path / "episodes.json").read_text())
    assert sorted({e["scene"] for e in episodes}) == ["house-test-0010", "house-test-0011"]
    with pytest.raises(ValueError, match=r"scene range start=9999, count=2 is outside"):
        run("plan_cem", [*argv, "--split", "test", "--scene-start", "9999", "--num-scenes", "2"])


def test_plan_cem_with_the_learned_simulator(tmp_path):
    argv = [
        "--output-dir",
        str(tmp_path),
        "--planner",
        "world-model",
        "--checkpoint",
        "tiny-untrained",
    ]
    argv += ["--episodes", "1", "--iterations", "1", "--num-samples", "4", "--horizon", "3"]
    argv += ["--execute-steps", "3", "--max-steps", "3", "--sampling-steps", "2"]
    rows = run("plan_cem", argv)
    assert [row["planner"] for row in rows] == ["world-model"]
    assert 0.0 < rows[0]["sim"] <= 100.0 and rows[0]["mean_steps"] <= 3
    [video_path] = tmp_path.glob("imagined_vs_executed_*.mp4")  # one episode: success or not
    video = imageio.mimread(video_path)
    # goal | imagined | executed, enlarged to 256 pixels, under a 14-pixel label strip
    assert video[0].shape[:2] == (14 + 256, 3 * 256)
    # Without --checkpoint: the embedded model, whose 10° turns the executed actions take on.
    with pytest.raises(ValueError, match=r"turns by 10\.0 deg per action but 30\.0 deg"):
        run(
            "plan_cem",
            ["--output-dir", str(tmp_path), "--planner", "world-model", "--turn-step-deg", "30"],
        )
    with pytest.raises(ValueError, match="differs from the world model's frames"):
        run("plan_cem", [*argv, "--size", "64"])


def test_rank_nomad_with_the_learned_simulator(tmp_path):
    argv = [
        "--output-dir",
        str(tmp_path),
        "--policy",
        "untrained",
        "--preset",
        "tiny",
        "--episodes",
        "1",
    ]
    argv += ["--num-samples", "2"]
    argv += ["--planner", "world-model", "--checkpoint", "tiny-untrained", "--sampling-steps", "2"]
    argv += ["--tour-steps", "5"]  # the episode map starts from an earlier walk
    rows = run("rank_nomad", argv)
    assert [row["method"] for row in rows] == ["policy alone", "ranked by world-model, N=2"]
    assert all(row["ate_m"] >= 0 and 0 < row["sim"] <= 100 for row in rows)
    for name in ("rank_nomad.md", "topdown.png", "imagined_vs_executed.mp4"):
        assert (tmp_path / name).stat().st_size > 0


def test_compare_costs(tmp_path):
    argv = ["--output-dir", str(tmp_path), "--episodes", "1", "--num-samples", "4"]
    argv += ["--horizon", "4", "--tour-steps", "20", "--coverages", "1.0", "0.5"]
    rows = {row["cost input"]: row for row in run("compare_costs", argv)}
    assert list(rows) == ["imagined", "map >= 1", "map >= 0.5", "oracle"]
    # At c = 1 the map answers candidates with exactly the frames the model would generate.
    for key in ("spearman", "regret_m"):
        assert rows["map >= 1"][key] == pytest.approx(rows["imagined"][key], abs=1e-6)
    assert rows["imagined"]["map_answered"] == 0
    assert rows["map >= 1"]["map_answered"] <= rows["map >= 0.5"]["map_answered"]
    assert rows["oracle"]["regret_m"] >= 0 and -1 <= rows["oracle"]["spearman"] <= 1
    for name in ("compare_costs.md", "compare_costs.json", "cost_vs_distance.png"):
        assert (tmp_path / name).stat().st_size > 0
    with pytest.raises(ValueError, match=r"--coverages must lie in \(0, 1\]"):
        run("compare_costs", [*argv, "--coverages", "1.5"])


def test_check_collisions(tmp_path):
    argv = ["--output-dir", str(tmp_path), "--num-scenes", "1", "--starts", "3"]
    argv += ["--tour-steps", "300", "--size", "32"]
    rows = run("check_collisions", argv)
    assert [row["scene"] for row in rows] == ["house-test-0000", "all"]
    total = rows[-1]
    assert total["steps"] == 3 * 12 and 0.0 <= total["agreement"] <= 1.0
    # The map's walls bring the end nearer the truth's than free motion (the control).
    assert total["end_error_map_m"] <= 0.5 * total["end_error_free_m"]
    assert (tmp_path / "check_collisions.md").stat().st_size > 0
    with pytest.raises(ValueError, match=r"--forward-share must be in \[0, 1\]"):
        run("check_collisions", [*argv, "--forward-share", "1.5"])


def test_adapt_policy(tmp_path):
    argv = ["--checkpoint", "tiny-untrained", "--policy", "untrained", "--preset", "tiny"]
    argv += ["--output-dir", str(tmp_path)]
    argv += ["--episodes", "1", "--eval-steps", "4", "--sampling-steps", "2"]
    argv += ["--hindsight.rounds", "1", "--hindsight.rollouts", "1"]
    argv += ["--hindsight.rollout-steps", "6", "--hindsight.training.max-goal-distance", "2"]
    argv += ["--hindsight.training.min-action-distance", "1", "--hindsight.training.steps", "2"]
    rows = run("adapt_policy", argv)
    assert [(row["policy"], row["scene"]) for row in rows] == [
        ("before", "house-test-0000"),
        ("after 1 rounds", "house-test-0000"),
        ("before", "all"),
        ("after 1 rounds", "all"),
    ]
    for row in rows:
        assert 0.0 < row["sim"] <= 100.0 and 0.0 <= row["success"] <= 1.0
        assert row["success_low"] <= row["success"] <= row["success_high"]
        assert row["success"] <= row["reached"]  # ending at the goal means having reached it
    # the diffusion term trains (min action distance 1): the loss is not the tiny distance term
    assert rows[0]["heldout_loss"] > 0.01 and np.isfinite(rows[1]["heldout_loss"])
    assert rows[0]["heldout_loss"] != rows[1]["heldout_loss"]  # the held-out set saw training
    video = imageio.mimread(tmp_path / "imagined_vs_executed.mp4")
    assert len(video) == 5 and video[0].shape[1] == 3 * (video[0].shape[0] - 14)  # 4 steps + start
    assert imageio.imread(tmp_path / "topdown.png").std() > 10  # a picture, not a blank canvas


def test_adapt_policy_in_the_ground_truth_on_chosen_houses(tmp_path):
    argv = ["--simulator", "ground_truth", "--policy", "untrained", "--preset", "tiny"]
    argv += ["--scene-start", "10", "--num-scenes", "2", "--output-dir", str(tmp_path)]
    argv += ["--episodes", "2", "--eval-steps", "4", "--stop-distance", "1e9"]
    argv += ["--hindsight.rounds", "2", "--hindsight.rollouts", "1"]
    argv += ["--hindsight.rollout-steps", "6", "--hindsight.training.max-goal-distance", "2"]
    argv += ["--hindsight.training.min-action-distance", "1", "--hindsight.training.steps", "2"]
    rows = run("adapt_policy", argv)
    assert [row["scene"] for row in rows] == [
        *["house-test-0010"] * 2,
        *["house-test-0011"] * 2,
        "all",
        "all",
    ]
    assert rows[-1]["episodes"] == 4 and all(row["simulator"] == "ground_truth" for row in rows)
    # a stop distance above any prediction stops every episode at its start
    assert all(row["stopped"] == 1.0 for row in rows)
    rounds = json.loads((tmp_path / "adapt_policy_rounds.json").read_text())["rows"]
    assert [(row["scene"], row["round"]) for row in rounds] == [
        ("house-test-0010", 0.0),
        ("house-test-0011", 0.0),
        ("house-test-0010", 1.0),
        ("house-test-0010", 2.0),
        ("house-test-0011", 1.0),
        ("house-test-0011", 2.0),
    ]


@pytest.mark.slow  # five interpreters start: ~40 s on an idle core
def test_adapt_policy_rejects_bad_inputs_before_any_work(tmp_path):
    from planners.nomad import POLICY_PRESETS, NoMaDPolicy

    other = tmp_path / "policy-16"
    NoMaDPolicy(**{**POLICY_PRESETS["tiny"], "image_size": (16, 16)}).save_pretrained(other)
    tiny = ["--policy", "untrained", "--preset", "tiny", "--episodes", "1"]
    cases = [
        (["--simulator", "ground_truth", *tiny, "--few-images", "1"],
         "start 0 has 1 few-shot frames but the policy's context needs 2"),
        (["--checkpoint", "tiny-untrained", "--policy", str(other)],
         "the policy works on (16, 16) frames but the simulator renders (32, 32)"),
        (["--simulator", "ground_truth", *tiny, "--hindsight.replay-fraction", "0.5"],
         "--hindsight.replay-fraction 0.5 needs --replay-dir"),
    ]  # fmt: skip
    for argv, message in cases:
        result = run_command("examples/adapt_policy.py", [*argv, "--output-dir", str(tmp_path)])
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    # zero rounds fail inside tyro's parsing of the nested HindsightConfig: its own framed error
    result = run_command(
        "examples/adapt_policy.py",
        [*tiny, "--hindsight.rounds", "0", "--output-dir", str(tmp_path)],
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rounds must be >= 1" in result.stderr
    assert not (tmp_path / "adapt_policy.md").exists()


def test_rank_nomad(tmp_path):
    argv = [
        "--output-dir",
        str(tmp_path),
        "--policy",
        "untrained",
        "--preset",
        "tiny",
        "--episodes",
        "1",
        "--num-samples",
        "2",
        "--size",
        "32",
    ]
    rows = run("rank_nomad", argv)
    assert [row["method"] for row in rows] == ["policy alone", "ranked by oracle, N=2"]
    assert all(row["ate_m"] >= 0 and 0 < row["sim"] <= 100 for row in rows)
    for name in ("rank_nomad.md", "topdown.png", "imagined_vs_executed.mp4"):
        assert (tmp_path / name).stat().st_size > 0


def test_train_nomad(tmp_path, tiny_dataset):
    from planners.nomad import NoMaDPolicy

    argv = [
        "--data-dir",
        str(tiny_dataset),
        "--output-dir",
        str(tmp_path / "policy"),
        "--preset",
        "tiny",
        "--training.max-goal-distance",
        "6",
        "--training.steps",
        "2",
        "--training.batch-size",
        "2",
    ]
    history = run("train_nomad", argv)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    loaded = NoMaDPolicy.from_pretrained(tmp_path / "policy")
    assert loaded.config.context_size == 1
    assert (tmp_path / "policy" / "train_nomad.md").exists()


def test_imagine(tmp_path):
    argv = [
        "--checkpoint",
        "tiny-untrained",
        "--scene",
        "house-train-0000",
        "--out-steps",
        "1",
        "--sampling-steps",
        "1",
        "--output-dir",
        str(tmp_path),
        "--scale",
        "2",
    ]
    summary = run("imagine", argv)
    frames = imageio.mimread(tmp_path / "imagine.mp4")
    assert len(frames) == summary["steps"] + 1 > summary["out_length"] >= 1
    assert frames[0].shape[1] == 3 * 32 * 2  # ground truth | with memory | without memory
    assert frames[0].shape[0] > 32 * 2  # the metric strip below
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["with memory", "without memory"]
    assert all(np.isfinite(row["LPIPS all"]) for row in rows)
    assert imageio.imread(tmp_path / "metrics.png").std() > 5  # a picture, not a blank canvas


def test_evaluate_world_model(tmp_path, tiny_dataset):
    from tests.worldsim.conftest import make_tiny
    from worldsim.memory import build_memory

    spec = {"name": "feature_map", "encoder": "pooled_color"}
    make_tiny(memory_token_dim=build_memory(**spec).token_dim).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "memory.json").write_text(json.dumps(spec))
    argv = ["--data-dir", str(tiny_dataset), "--checkpoint", str(tmp_path / "model")]
    argv += ["--output-dir", str(tmp_path / "out"), "--chunks", "2", "--max-windows", "5"]
    argv += ["--memory-frames", "4", "--min-coverage", "0", "--batch-size", "2"]
    argv += ["--sampling-steps", "1", "--max-clips", "2", "--device", "cpu"]
    run("evaluate_world_model", argv)
    rows = json.loads((tmp_path / "out" / "evaluation.json").read_text())["rows"]
    variants = ["model: feature_map", "model: none", "model: context only", "model: shuffled"]
    variants += ["reprojection", "reprojection: context only", "harmonic fill", "nearest fill"]
    assert [r["variant"] for r in rows[:9]] == [*variants, "last frame"]
    assert {r["frames"] for r in rows} == {
        "all",
        "0-10 %",
        "10-50 %",
        ">= 50 %",
        "exploration: render < 20 %",
        "chunk 1",
        "chunk 2",
    }
    assert rows[0]["frames_n"] == 5 * 4 and all(r["psnr"]["value"] > 0 for r in rows[:9])
    # Hole scores on one mask for every variant; the classical fills change only the holes.
    everything = {r["variant"]: r for r in rows if r["frames"] == "all"}
    assert len({r["holes_n"] for r in everything.values()}) == 1
    reprojection, harmonic = everything["reprojection"], everything["harmonic fill"]
    assert harmonic["psnr_holes"]["value"] != reprojection["psnr_holes"]["value"]
    assert all(np.isfinite(r["psnr_pooled"]["value"]) for r in everything.values())
    markdown = (tmp_path / "out" / "evaluation.md").read_text()
    assert markdown.startswith("# evaluation") and "\n- holes: the pixels" in markdown
    assert imageio.imread(tmp_path / "out" / "evaluation.png").ndim == 3
    # The single-chunk validation the model card embeds (export_checkpoint.py --validation).
    validation = json.loads((tmp_path / "out" / "validation.json").read_text())["rows"]
    assert [(r["subset"], r["memory"]) for r in validation if r["clips"]] == [
        ("all", "feature_map"),
        ("all", "none"),
        ("all", "last frame"),
        ("all", "reprojection"),
    ]
    assert imageio.imread(tmp_path / "out" / "validation.png").ndim == 3

    # Houses by flag: the second house alone; a range past the dataset names its houses.
    from worldsim.data import TrajectoryStore

    module = cli.load_example("evaluate_world_model")
    store = TrajectoryStore(tiny_dataset)
    houses = sorted({e.scene_id for e in store.episodes})
    second = tyro.cli(module.Args, args=[*argv, "--scene-start", str(int(houses[1][-4:]))])
    assert module.chosen_scenes(second, store) == houses[1:]
    assert module.chosen_scenes(tyro.cli(module.Args, args=argv), store) is None
    named = tyro.cli(module.Args, args=[*argv, "--scenes", houses[0]])
    assert module.chosen_scenes(named, store) == houses[:1]
    with pytest.raises(ValueError, match=f"selects no house .* it holds {houses[0]}, {houses[1]}"):
        run("evaluate_world_model", [*argv, "--scene-start", "9"])
    with pytest.raises(ValueError, match=r"holds no episode of the houses \['house-x'\]"):
        run("evaluate_world_model", [*argv, "--scenes", "house-x"])


def test_paper_tables(tmp_path, tiny_dataset):
    argv = ["--quick", "--data-dir", str(tiny_dataset), "--output-dir", str(tmp_path)]
    content = run("paper_tables", argv)
    assert json.loads((tmp_path / "tables.json").read_text()) == content
    assert content["quick"] and content["machine"]["torch"] == torch.__version__
    for name in ("tables.md", "fig6a.png", "fig6b.png"):
        assert (tmp_path / name).stat().st_size > 0
    tables = content["tables"]
    assert list(tables) == ["table1", "table2", "fig6a", "fig6b"]
    markdown = (tmp_path / "tables.md").read_text()
    assert all(f"## {table['title']}" in markdown for table in tables.values())

    # Table 1: every variant on 2 windows x 2 chunks x 2 frames of the tiny untrained model
    table1 = [row for row in tables["table1"]["rows"] if row["frames"] == "all"]
    variants = ["feature_map", "none", "context only", "shuffled"]
    assert [row["variant"] for row in table1] == [
        *(f"tiny-untrained: {variant}" for variant in variants),
        "reprojection",
        "reprojection: context only",
        "harmonic fill",
        "nearest fill",
        "last frame",
    ]
    for row in table1:
        assert row["frames_n"] == 8
        assert all(np.isfinite(row[key]) for key in ("psnr", "ssim", "lpips", "depth_l1"))
    assert (tmp_path / "table1" / "evaluation.json").is_file()

    # Table 2: the same episode and samples in every run (the policy alone agrees)
    table2 = tables["table2"]["rows"]
    rankers = ["the world model without memory", "the world model with memory"]
    rankers.append("the ground truth (upper bound)")
    assert [(row["method"], row["N"]) for row in table2] == [("policy alone", 1)] + [
        (f"ranked by {ranker}", n) for ranker in rankers for n in (2, 4)
    ]
    for row in table2:
        assert row["episodes"] == 1 and row["ate_m"] >= 0 and row["rpe_m"] >= 0
        assert 0 < row["sim"] <= 100
    alone = [
        json.loads((tmp_path / "table2" / run / "rank_nomad.json").read_text())["rows"][0]
        for run in ("world-model-no-memory", "world-model", "oracle")
    ]
    assert alone[0] == alone[1] == alone[2] and tables["table2"]["notes"] == []

    # Fig. 6a: both simulators at 1 and 2 CEM iterations
    fig6a = tables["fig6a"]["rows"]
    assert [(row["imagined in"], row["cem_iterations"]) for row in fig6a] == [
        ("world model", 1),
        ("world model", 2),
        ("ground truth", 1),
        ("ground truth", 2),
    ]
    for row in fig6a:
        assert row["episodes"] == 1 and 0 <= row["success"] <= 1 and 0 < row["sim"] <= 100

    # Fig. 6b: before (round 0) and after each of 2 rounds, each round count its own run
    fig6b = tables["fig6b"]["rows"]
    assert [row["hindsight_rounds"] for row in fig6b] == [0, 1, 2]
    for row in fig6b:
        assert row["episodes"] == 1 and 0 <= row["success"] <= 1 and 0 < row["sim"] <= 100
        assert row["success_low"] <= row["success"] <= row["success_high"]
    assert all(np.isfinite(row["heldout_loss"]) for row in fig6b[1:])

    # Every recorded command parses into its script's settings and names its own folder.
    commands = [command for table in tables.values() for command in table["commands"]]
    assert len(commands) == 1 + 3 + 2 + 2
    folders = set()
    for command in commands:
        python, script, *words = shlex.split(command)
        assert python == "python" and script.startswith("examples/")
        parsed = tyro.cli(cli.load_example(Path(script).stem).Args, args=words)
        assert parsed.seed == 0 and tmp_path in parsed.output_dir.parents
        folders.add(parsed.output_dir)
    assert len(folders) == len(commands)


def test_paper_tables_settings():
    module = cli.load_example("paper_tables")
    quick = module.resolve(module.Args(quick=True))
    assert (quick.checkpoint, quick.policy, quick.episodes) == ("tiny-untrained", "untrained", 1)
    assert module.resolve(module.Args()).episodes == 20  # the full setting
    table = module.video_quality(quick)  # no --data-dir: Table 1 is skipped, with a note
    assert table.rows == [] and table.notes[0].startswith("Skipped: no --data-dir")
    with pytest.raises(ValueError, match=r"every table, but --table2\.\* were given"):
        run("paper_tables", ["--quick", "--table2.num-samples", "3"])
    with pytest.raises(ValueError, match=r"distinct table names, got \['fig6b', 'fig6b'\]"):
        module.Args(tables=("fig6b", "fig6b"))


def test_paper_tables_makes_only_the_tables_asked_for(tmp_path):
    content = run(
        "paper_tables",
        ["--quick", "--tables", "fig6b", "--output-dir", str(tmp_path), "--threads", "1"],
    )
    assert list(content["tables"]) == ["fig6b"]
    assert (tmp_path / "fig6b.png").is_file() and not (tmp_path / "fig6a.png").exists()


def test_export_checkpoint(tmp_path):
    from tests.worldsim.conftest import make_tiny
    from worldsim.models.world_model import WorldModel

    make_tiny().save_pretrained(tmp_path / "run" / "memory" / "model")
    argv = [
        "--run-dir",
        str(tmp_path / "run"),
        "--output-dir",
        str(tmp_path / "ckpt"),
        "--machine",
        "test CPU",
    ]
    run("export_checkpoint", argv)
    assert "test CPU" in (tmp_path / "ckpt" / "README.md").read_text()
    assert WorldModel.from_pretrained(tmp_path / "ckpt").config.height == 32


@pytest.mark.parametrize("flag", ["--help"])
def test_explore_scene_cli_help(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("explore_scene", [flag])
    assert exit_info.value.code == 0
    assert "--num-goals" in capsys.readouterr().out


def test_navigate(tmp_path):
    argv = ["--checkpoint", "tiny-untrained", "--output-dir", str(tmp_path), "--episodes", "1"]
    argv += ["--num-samples", "4", "--horizon", "4", "--max-steps", "4", "--sampling-steps", "2"]
    rows = run("navigate", [*argv, "--tour-steps", "6"])
    assert [(row["planner"], row["episode"]) for row in rows] == [
        ("world model", 0),
        ("oracle", 0),
        ("world model", "all"),
        ("oracle", "all"),
    ]
    for row in rows:
        assert 0.0 < row["sim"] <= 100.0 and row["actions"] <= 4
        assert row["final_straight_line_m"] >= 0 and 1.5 <= row["start_geodesic_m"] <= 2.5
    table = json.loads((tmp_path / "navigate.json").read_text())["rows"]
    assert len(table) == 4
    video = imageio.mimread(tmp_path / "navigate.mp4")
    # Both episodes in turn: the start view, then one frame per action, for each planner.
    assert len(video) == rows[0]["actions"] + 1 + rows[1]["actions"] + 1
    assert video[0].shape[:2] == (14 + 256 + 14, 3 * 256)  # goal | imagined | executed, caption
    assert imageio.imread(tmp_path / "topdown.png").std() > 10
    with pytest.raises(ValueError, match="--tour-steps must be >= 0"):
        run("navigate", [*argv, "--tour-steps", "-1"])


SCRIPTS = sorted(EXAMPLES.glob("*.py")) + sorted((EXAMPLES.parent / "benchmarks").glob("*.py"))
RETIRED_NAMES = {
    "out": "output_dir",
    "out_dir": "output_dir",
    "output": "output_dir",
    "root": "data_dir",
    "data": "data_dir",
    "num_sampling_steps": "sampling_steps",
    "num_inference_steps": "sampling_steps",
    "inference_steps": "sampling_steps",
    "num_workers": "workers",
}


def flag_fields(args_type, prefix=""):
    """Every (dotted name, default) of a dataclass and the dataclasses nested in it."""
    hints = typing.get_type_hints(args_type)
    for field in dataclasses.fields(args_type):
        name = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            yield from flag_fields(hints[field.name], name + ".")
        else:
            yield name, field.default


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_one_flag_name_per_concept(path):
    module = cli.load_example(path.stem) if path.parent == EXAMPLES else load_script(path)
    fields = dict(flag_fields(module.Args))
    leaves = {name.rsplit(".", 1)[-1] for name in fields}
    assert {name: RETIRED_NAMES[name] for name in leaves & RETIRED_NAMES.keys()} == {}
    source = path.read_text()
    if "import torch" in source:
        assert "threads" in fields, "a script that runs torch takes --threads"
    assert "seed" in leaves or path.stem == "export_checkpoint"  # export draws nothing at random
    assert "cli.run(main, Args)" in source  # user errors in one line, --threads applied
    if path.parent == EXAMPLES:  # every example writes files, into --output-dir
        [output_dir] = [name for name in fields if name.rsplit(".", 1)[-1] == "output_dir"]
        default = fields[output_dir]
        if path.stem == "export_checkpoint":  # its output is the embedded checkpoint itself
            from worldsim.models.world_model import DEFAULT_CHECKPOINT

            assert default == DEFAULT_CHECKPOINT
        elif default is not dataclasses.MISSING:
            assert default == Path("outputs") / path.stem


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_memory_kinds():
    module = load_script(EXAMPLES.parent / "benchmarks" / "bench_memory_kinds.py")
    argv = ["--config", "tiny", "--kinds", "none", "rendered", "pooled_color", "--steps", "1"]
    argv += ["--batch-sizes", "1", "2", "--memory-frames", "4", "--map-sizes", "2", "4"]
    argv += ["--repeats", "1", "--sampling-steps", "1"]
    tables = module.main(tyro.cli(module.Args, args=argv))
    assert [row["kind"] for row in tables["steps"]] == ["none", "rendered", "pooled_color"]
    for row in tables["steps"]:
        assert row.keys() == {"kind", "step_s", "chunk_b1_s", "chunk_b2_s"}
        assert all(row[key] > 0 for key in row if key != "kind")
    assert [(row["kind"], row["frames"]) for row in tables["maps"]] == [
        ("rendered", 2),
        ("rendered", 4),
        ("pooled_color", 2),
        ("pooled_color", 4),
    ]
    for small, large in zip(tables["maps"][::2], tables["maps"][1::2], strict=True):
        assert 0 < small["size"] < large["size"]  # more frames, a larger map
        assert small["update_ms"] > 0 and small["read_ms"] > 0


def run_command(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, str(EXAMPLES.parent / script), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_bad_inputs_end_in_one_line_without_a_traceback(tmp_path):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    missing = tmp_path / "no-such-checkpoint"
    cases = [
        ("examples/navigate.py", ["--threads", "-3"], "--threads must be >= 0"),
        ("examples/navigate.py", ["--device", device], f"--device '{device}'"),
        ("examples/plan_cem.py", ["--planner", "world-model", "--checkpoint", str(missing)],
         f"no world model checkpoint at '{missing}'"),
        ("examples/explore_scene.py", ["--scene", "house-nowhere"],
         "unknown scene id 'house-nowhere'"),
    ]  # fmt: skip
    for script, argv, message in cases:
        result = run_command(script, [*argv, "--output-dir", str(tmp_path / "out")])
        assert result.returncode == 2, (script, argv, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_train_pixel_generator(tmp_path):
    data = tmp_path / "data"
    collect = "--scene-count 2 --episodes-per-scene 2 --episodes-per-shard 1 --max-steps 20"
    size = "--width 32 --height 32 --workers 1 --quiet"
    run("collect_data", ["--output-dir", str(data), *collect.split(), *size.split()])
    argv = [
        *("--config", "tiny", "--data-dir", str(data), "--val-data-dir", str(data)),
        *("--output-dir", str(tmp_path / "out")),
        *"--index.num-clips 4 --index.clips-per-part 2 --index.memory-dependent-fraction 0".split(),
        *"--val-clips 2 --max-steps 3 --batch-size 2 --eval-every 2 --eval-samples 4".split(),
        *"--final-eval-samples 4 --sampler.num-steps 2 --threads 1 --quiet".split(),
    ]
    run("train_pixel_generator", argv)
    out = tmp_path / "out"
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert curve[-1]["step"] == 3 and "hole_psnr_model" in curve[-1]["validation"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["no_map"]["hole_share"] == 1.0
    assert evaluation["sampler"]["num_steps"] == 2
    picture = imageio.imread(out / "samples.png")
    assert picture.ndim == 3 and np.asarray(picture).std() > 5
    # Rerunning resumes: nothing left to train, the same step.
    run("train_pixel_generator", [*argv, "--stage", "train"])
    assert json.loads((out / "curve.jsonl").read_text().splitlines()[-1])["step"] == 3
    (out / "model" / "config.json").unlink()
    run("train_pixel_generator", [*argv, "--stage", "export"])
    assert (out / "model" / "config.json").is_file()
    # Attached to a world model, the generator loads with it and keeps its sampler.
    world = tmp_path / "world"
    WorldModel.from_config_name("tiny", memory_token_dim=0, memory_render=True).save_pretrained(
        world
    )
    run("train_pixel_generator", [*argv, "--stage", "attach", "--attach-to", str(world)])
    loaded = WorldModel.from_pretrained(world)
    assert loaded.pixel_generator is not None and loaded.pixel_sampler.num_steps == 2
