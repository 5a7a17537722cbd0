"""Training on several processes trains as one process does on the same global batch.

A step's batch is the global batch, split evenly across processes (rows
``process_index::num_processes``); every process draws the global batch's noise and keeps its
rows; DDP averages the shards' gradients. The fast tests check the arithmetic in one process (the
shards' losses and gradients average to the global batch's); the slow ones launch
``examples/train_world_model.py`` on 1 and 2 CPU processes (gloo) and compare the weights.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.worldsim.conftest import make_tiny
from worldsim.training.losses import diffusion_loss, shard_rows
from worldsim.training.trainer import freeze_for_stage

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_world_model.py"


def test_shards_of_a_draw_are_the_global_draw():
    def draw(shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(3))

    whole = draw((6, 5))
    shards = [shard_rows(draw, (3, 5), (index, 2)) for index in range(2)]
    assert torch.equal(torch.stack(shards, 1).reshape(6, 5), whole)  # rows 0::2 and 1::2
    assert torch.equal(shard_rows(draw, (6, 5)), whole)  # one process: the draw itself
    # Control: each process drawing only its own rows gives another draw than the global one.
    assert not torch.equal(draw((3, 5)), whole[0::2])
    with pytest.raises(ValueError, match=r"0 <= index < count, got \(2, 2\)"):
        shard_rows(draw, (3, 5), (2, 2))


def _loss_and_gradients(model, batch, trained, seed, shard=(0, 1)):
    model.zero_grad(set_to_none=True)
    loss = diffusion_loss(
        model, batch, torch.Generator().manual_seed(seed), context_noise=0.3, shard=shard
    )
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trained]


def test_shard_losses_and_gradients_average_to_the_global_batch(tiny_batch):
    # What DDP computes on 2 processes, in one: the mean of the shards' losses and gradients.
    model = make_tiny().train()
    trained = freeze_for_stage(model, "backbone")
    loss, gradients = _loss_and_gradients(model, tiny_batch, trained, seed=0)
    shards = [{k: v[index::2] for k, v in tiny_batch.items()} for index in range(2)]
    parts = [_loss_and_gradients(model, s, trained, 0, (i, 2)) for i, s in enumerate(shards)]
    mean_loss = (parts[0][0] + parts[1][0]) / 2
    # float32 sums of the same terms in another order: ~1e-7 relative.
    torch.testing.assert_close(mean_loss, loss, rtol=1e-5, atol=0)
    for whole, first, second in zip(gradients, parts[0][1], parts[1][1], strict=True):
        torch.testing.assert_close((first + second) / 2, whole, rtol=1e-4, atol=1e-7)
    # Control: seeding each shard's noise by seed + process index (the old behaviour) trains on
    # other noise and timesteps, and the mean loss is far from the global batch's.
    old = [_loss_and_gradients(model, s, trained, i, (0, 1)) for i, s in enumerate(shards)]
    assert abs(float((old[0][0] + old[1][0]) / 2 - loss)) > 1e-3 * float(loss)


# ------------------------------------------------------------------------- launched processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(output_dir: Path, processes: int, *flags: str) -> subprocess.CompletedProcess:
    """Run the example's backbone stage of the tiny model on ``processes`` CPU processes."""
    argv = [
        "--stage", "backbone", "--config", "tiny", "--data-dir", "synthetic",
        "--memory-encoder", "pooled_color", "--memory-frames", "2", "--device", "cpu",
        "--threads", "1", "--output-dir", str(output_dir),
        "--train.learning-rate", "1e-3", "--train.warmup-steps", "3", "--train.ema-decay", "0.5",
        "--train.context-noise", "0.1", "--train.checkpoint-every", "2",
        "--train.sample-every", "2", "--train.sample-inference-steps", "2",
        "--train.log-every", "1", *flags,
    ]  # fmt: skip
    if processes == 1:
        command = [sys.executable, str(EXAMPLE), *argv]
    else:
        # accelerate's --cpu launcher starts a single process unless it has mpirun; its
        # torchrun launcher (--multi_gpu) starts N, which join over gloo with --device cpu.
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(EXAMPLE), *argv,
        ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _checked(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(path))
    return weights


def _max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    # 2 steps, then the same command for 4 steps resumes from the step-2 checkpoint.
    for steps in ("2", "4"):
        _checked(_train(one, 1, "--batch-size", "4", "--train.steps", steps))
        _checked(_train(two, 2, "--batch-size", "4", "--train.steps", steps))
    # Control: 2 processes on another global batch (2 clips, the same seed and initial model).
    _checked(_train(other, 2, "--batch-size", "2", "--train.steps", "4"))

    stage = "backbone"
    exported = {
        name: _weights(root / stage / "model")
        for name, root in (("one", one), ("two", two), ("other", other))
    }
    scale = max(float(w.abs().max()) for w in exported["one"].values())  # ~1 (norm weights)
    difference = _max_difference(exported["one"], exported["two"])
    control = _max_difference(exported["one"], exported["other"])
    # Tolerance: gloo sums the two shards' gradients in another order than one process sums the
    # batch (~1e-7 relative per step); Adam turns that into steps up to ~1e-5 on the attention
    # keys' biases, whose true gradient is zero (softmax ignores them). Measured 3.9e-6 (1.2e-7
    # in relative L2 over all weights).
    assert difference <= 1e-4 * scale, (difference, scale)
    assert control > 100 * max(difference, 1e-6), (control, difference)  # measured 3.1e-3

    # The raw weights at both checkpoints (before and after the resume) agree as well.
    for name in ("step-00000002", "step-00000004"):
        raw = [_weights(root / stage / "checkpoints" / name) for root in (one, two)]
        assert _max_difference(*raw) <= 1e-4 * scale, name
    # Both processes' RNG states made it into the checkpoints before they were renamed.
    for name in ("step-00000002", "step-00000004"):
        folder = two / stage / "checkpoints" / name
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in folder.iterdir()}

    # One line per step (only the main process writes), the same learning rates (one schedule
    # step per optimizer step, whatever the processes) and losses (the mean over the processes;
    # float32 sums in another order: 1e-6 relative).
    logs = [
        [json.loads(line) for line in (root / stage / "metrics.jsonl").read_text().splitlines()]
        for root in (one, two)
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]
    np.testing.assert_allclose(
        [r["loss"] for r in logs[1]], [r["loss"] for r in logs[0]], rtol=1e-5
    )

    # The main process wrote the same sample videos (same clips, weights 1e-6 apart: a pixel
    # may round to the neighbouring level).
    samples = [sorted((root / stage / "samples").glob("*.gif")) for root in (one, two)]
    assert [p.name for p in samples[0]] == [p.name for p in samples[1]] != []
    for first, second in zip(*samples, strict=True):
        frames = [iio.imread(path).astype(int) for path in (first, second)]
        assert frames[0].shape == frames[1].shape
        assert np.abs(frames[0] - frames[1]).max() <= 1


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_evenly_is_refused_before_any_work(tmp_path):
    result = _train(tmp_path / "out", 2, "--batch-size", "3", "--train.steps", "1")
    # Each process exits with status 2 (a user error); the launcher reports their failure.
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr, result.stderr[-3000:]
    assert "--batch-size 3 is the global batch" in result.stderr
    assert "use a multiple of 2" in result.stderr
    assert not (tmp_path / "out").exists()
