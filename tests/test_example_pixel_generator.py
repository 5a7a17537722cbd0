"""examples/train_pixel_generator.py end to end with its tiny setting.

(To merge into ``tests/test_examples.py``, whose ``test_every_example_has_a_test`` looks for a
``test_train_pixel_generator`` there.)
"""

import json

import imageio.v2 as imageio
import numpy as np
import tyro

from worldsim import cli


def run(name: str, argv: list[str]):
    module = cli.load_example(name)
    return module.main(tyro.cli(module.Args, args=argv))


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
