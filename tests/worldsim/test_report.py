import json

import imageio.v2 as imageio
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from worldsim.evaluation.report import (
    markdown_table,
    plot_metric_curves,
    plot_trajectories,
    write_panel_video,
    write_report,
)
from worldsim.metrics.video import MetricResult


def test_write_report_json_and_markdown(tmp_path):
    rows = [
        {"method": "memory", "psnr": 24.123456, "fvd": MetricResult.unavailable("fvd", "no I3D")},
        {"method": "no memory", "psnr": float("inf"), "success": True, "sim": np.float32(81.25)},
    ]
    json_path, md_path = write_report(rows, tmp_path / "out", "table")
    data = json.loads(json_path.read_text())
    assert data["rows"][0]["psnr"] == 24.123456
    assert data["rows"][0]["fvd"]["available"] is False
    assert data["rows"][0]["fvd"]["reason"] == "no I3D"
    assert data["rows"][1]["psnr"] == "inf" and data["rows"][1]["sim"] == 81.25
    lines = md_path.read_text().splitlines()
    assert lines[2] == "| method | psnr | fvd | success | sim |"
    assert lines[4] == "| memory | 24.12 | n/a[^1] | - | - |"
    assert lines[5] == "| no memory | inf | - | yes | 81.25 |"
    assert lines[-1] == "[^1]: fvd: unavailable: no I3D"


def test_write_report_lists_notes_under_the_table(tmp_path):
    rows = [{"method": "a", "psnr": 24.0}]
    notes = ["psnr: dB, the mean over frames", "a: the first method"]
    json_path, md_path = write_report(rows, tmp_path, "table", notes=notes)
    assert json.loads(json_path.read_text())["notes"] == notes
    assert md_path.read_text() == (
        "# table\n\n" + markdown_table(rows) + "\n- psnr: dB, the mean over frames\n"
        "- a: the first method\n"
    )
    json_path, _ = write_report(rows, tmp_path, "plain")
    assert "notes" not in json.loads(json_path.read_text())


def test_write_report_single_row_and_bad_input(tmp_path):
    json_path, _ = write_report({"ate_m": 0.5}, tmp_path, "one")
    assert json.loads(json_path.read_text())["rows"] == [{"ate_m": 0.5}]
    with pytest.raises(ValueError, match="empty"):
        write_report([], tmp_path, "empty")
    with pytest.raises(ValueError, match="plain file stem"):
        write_report({"a": 1}, tmp_path, "../escape")
    with pytest.raises(ValueError, match="row 1"):
        write_report([{"a": 1}, 3], tmp_path, "bad")


def test_plots_are_pngs_and_leave_pyplot_alone(tmp_path, rng):
    backend = matplotlib.get_backend()
    curve = MetricResult("psnr", 20.0, per_step=np.array([22.0, 20.0, 18.0]))
    path = plot_metric_curves(
        {"psnr": curve, "lpips": {"ours": [0.1, 0.2, 0.3], "baseline": [0.2, 0.3, 0.4]}},
        tmp_path / "curves.png",
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 320)
    positions = np.cumsum(rng.normal(scale=0.2, size=(12, 3)), axis=0)
    poses = np.tile(np.eye(4), (12, 1, 1))
    poses[:, :3, 3] = positions + 0.1
    occupancy = np.zeros((20, 30), dtype=bool)
    occupancy[4:16, 4:26] = True
    path = plot_trajectories(
        {"ground truth": positions, "predicted": poses},
        tmp_path / "nested" / "traj.png",
        occupancy=occupancy,
        extent=(-3.0, 3.0, -2.0, 2.0),
        goal=positions[-1],
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 500)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn
    assert matplotlib.get_backend() == backend


def test_plot_inputs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="extent"):
        plot_trajectories({"a": np.zeros((3, 3))}, tmp_path / "a.png", occupancy=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(T, 4, 4\) poses or \(T, 3\)"):
        plot_trajectories({"a": np.zeros((3, 2))}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no per-step values"):
        plot_metric_curves({"psnr": MetricResult("psnr", 1.0)}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="'sim' has 3 values but x has 2 positions"):
        plot_metric_curves({"sim": [1.0, 2.0, 3.0]}, tmp_path / "c.png", x=[1, 2])


def test_markdown_table_is_the_body_of_the_report(tmp_path):
    rows = [{"method": "a", "psnr": 24.123456}, {"method": "b|c", "ssim": None}]
    assert markdown_table(rows).splitlines() == [
        "| method | psnr | ssim |",
        "|---|---|---|",
        "| a | 24.12 | - |",
        "| b\\|c | - | - |",
    ]
    _, md_path = write_report(rows, tmp_path, "table")
    assert md_path.read_text() == "# table\n\n" + markdown_table(rows)


def test_panel_video_puts_labelled_sequences_side_by_side(tmp_path):
    goal = torch.zeros(3, 8, 8)
    goal[0] = 1.0  # red
    imagined = torch.full((3, 3, 8, 8), 0.5)
    executed = torch.ones(3, 3, 8, 6)
    path = write_panel_video(
        {"goal": goal, "imagined": imagined, "executed": executed}, tmp_path / "v.mp4", height=32
    )
    frames = imageio.mimread(path)
    assert len(frames) == 3 and frames[0].shape == (14 + 32, 4 * (8 + 8 + 6), 3)
    body = frames[0][14:].astype(float)
    assert body[16, 16, 0] > 200 and body[16, 16, 1] < 60  # the goal column is red
    assert abs(body[16, 48].mean() - 128) < 20 and body[16, 80].min() > 230
    assert frames[0][:14].max() > 200  # the labels are drawn
    with pytest.raises(ValueError, match="different numbers of frames"):
        write_panel_video({"a": imagined, "b": executed[:2]}, tmp_path / "w.mp4")
    with pytest.raises(ValueError, match="no panels"):
        write_panel_video({}, tmp_path / "w.mp4")
    captions = ["step 0", "", "step 2"]
    path = write_panel_video({"imagined": imagined}, tmp_path / "c.mp4", captions=captions)
    frames = imageio.mimread(path)
    assert frames[0].shape[0] == 14 + 256 + 14
    assert frames[0][-14:].max() > 200 and frames[1][-14:].max() < 30  # text only when given
    with pytest.raises(ValueError, match="one caption per frame: 3 frames, 2"):
        write_panel_video({"imagined": imagined}, tmp_path / "c.mp4", captions=captions[:2])
