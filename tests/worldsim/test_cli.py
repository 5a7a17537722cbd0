"""The shared command-line plumbing: user errors in one line, bugs with their traceback."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from worldsim import cli
from worldsim.devices import DeviceUnavailableError, check_device


@dataclass(frozen=True)
class Args:
    """Settings of a test script."""

    threads: int = 0
    """CPU threads of torch."""
    device: str = "cpu"
    """Torch device."""


def test_run_returns_what_main_returns():
    assert cli.run(lambda args: (args.threads, args.device), Args, []) == (0, "cpu")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ValueError("horizon must be >= 1, got 0"), "error: horizon must be >= 1, got 0\n"),
        (FileNotFoundError("no checkpoint at 'x'"), "error: no checkpoint at 'x'\n"),
        (NotADirectoryError("'x' is a file"), "error: 'x' is a file\n"),
    ],
)  # fmt: skip
def test_user_error_is_one_line_and_exit_status_2(error, message, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)

    def main(args):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, Args, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("error", [RuntimeError("a bug"), AssertionError("a bug"), KeyError("x")])
def test_a_bug_keeps_its_traceback(error):
    def main(args):
        raise error

    with pytest.raises(type(error)):
        cli.run(main, Args, [])


def test_the_traceback_variable_shows_user_errors_too(monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_VARIABLE, "1")

    def main(args):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        cli.run(main, Args, [])


def test_negative_threads_are_refused_before_torch_sees_them(capsys):
    before = torch.get_num_threads()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda args: None, Args, ["--threads", "-3"])
    assert exit_info.value.code == 2
    expected = "error: --threads must be >= 0 (0 takes the idle cores), got -3\n"
    assert capsys.readouterr().err == expected
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "mps:7"])
def test_an_unavailable_device_is_a_user_error(device):
    if device == "mps:7" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(DeviceUnavailableError, match=f"--device '{device}'"):
        check_device(device)


def test_cpu_and_auto_are_accepted():
    check_device("cpu")
    check_device("auto")


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda args: None, Args, ["--help"])
    assert exit_info.value.code == 0
    assert "--threads" in capsys.readouterr().out
    sphinx = "see :class:`~envs.embedded.scenes.SceneSpec`, ``None``"
    assert cli.plain_text(sphinx) == "see envs.embedded.scenes.SceneSpec, None"


def test_every_console_command_runs_an_example(monkeypatch, capsys):
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((cli.examples_folder().parent / "pyproject.toml").read_text())
    commands = pyproject["project"]["scripts"]
    for command, target in commands.items():
        module, name = target.split(":")
        assert module == "worldsim.cli" and command == "pw-" + name.replace("_", "-")
        assert (cli.examples_folder() / f"{name}.py").is_file()
        assert callable(getattr(cli, name))
    monkeypatch.setattr("sys.argv", ["pw-explore-scene", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        cli.explore_scene()
    assert exit_info.value.code == 0
    assert "--num-goals" in capsys.readouterr().out


def test_threads_zero_takes_the_cores_other_work_leaves_idle(monkeypatch):
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert cli.idle_threads() == 1  # one core busy elsewhere
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert cli.idle_threads() == 2  # an idle machine keeps both
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (7.5, 0.0, 0.0))
    assert cli.idle_threads() == 1  # never fewer than one


@dataclass(frozen=True)
class WritingArgs:
    """Settings of a test script that writes files."""

    output_dir: Path = Path("outputs/test")
    """Output folder."""
    success_radius_m: float = 0.5
    """Success radius."""


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_run(
    tmp_path, monkeypatch, capsys
):
    ran = []
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file")
    with pytest.raises(SystemExit):
        cli.run(ran.append, WritingArgs, ["--output-dir", str(blocker / "out")])
    assert "file.txt' is a file, not a folder" in capsys.readouterr().err
    # A read-only folder (root may write anywhere, so the permission check is what is tested).
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(SystemExit):
        cli.run(ran.append, WritingArgs, ["--output-dir", str(tmp_path / "new" / "out")])
    assert "cannot be written" in capsys.readouterr().err and ran == []
    monkeypatch.undo()
    cli.run(ran.append, WritingArgs, ["--output-dir", str(tmp_path / "new" / "out")])
    assert len(ran) == 1  # the control: a writable folder runs


def test_a_success_radius_that_is_not_positive_is_refused_before_the_run(capsys):
    ran = []
    with pytest.raises(SystemExit):
        cli.run(ran.append, WritingArgs, ["--success-radius-m", "-1"])
    assert "--success-radius-m must be > 0 metres, got -1.0" in capsys.readouterr().err
    assert ran == []
