"""Command-line plumbing shared by the example and benchmark scripts.

Every script in ``examples/`` and ``benchmarks/`` declares one ``Args`` dataclass and a
``main(args)``, and ends with ``run(main, Args)``. ``run`` parses the command line with tyro,
checks ``--threads`` and ``--device``, sets torch's thread count, calls ``main``, and turns a user
error into one line on stderr and exit status 2. A user error is a ``ValueError`` (a setting out of
range, an unknown scene, a checkpoint of the wrong kind, an unavailable device),
``FileNotFoundError``, ``NotADirectoryError`` or ``FileExistsError``; any other exception is a bug
and keeps its traceback. Set ``PERSISTENT_WORLD_TRACEBACK=1`` to see the traceback of a user error
too.

One flag per concept, in every script that has the concept:

    --output-dir      folder the script writes into; default ``outputs/<script name>``
    --data-dir        trajectory dataset folder to read (written by collect_data.py)
    --checkpoint      world model: a checkpoint folder or a shipped name
    --policy          navigation policy: a checkpoint folder or a shipped name
    --sampling-steps  denoising steps per generated chunk
    --workers         worker processes (data collection, data loading)
    --threads         CPU threads of torch, >= 0; 0 takes the cores other work leaves idle
    --device          torch device: cpu, cuda, cuda:N or mps ("auto" where a script allows it)
    --seed            the one seed every random choice of the run derives from

The console entry points of ``pyproject.toml`` (``pw-navigate``, ``pw-plan-cem``, ...) run the
example scripts of the source checkout this package is installed from (``pip install -e .``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import runpy
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
import tyro

from worldsim.devices import check_device

ArgsT = TypeVar("ArgsT")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError)
"""Exceptions that report a bad input: printed as one line, without a traceback."""

TRACEBACK_VARIABLE = "PERSISTENT_WORLD_TRACEBACK"
"""Environment variable: set to 1 to print the traceback of user errors too."""


SPHINX_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):`~?([^`]+)`")
"""A Sphinx cross-reference such as :class:`worldsim.WorldModel`; group 1 is the target."""


def plain_text(text: str) -> str:
    """Strip the Sphinx markup of docstrings (roles and double backticks) for a terminal.

    Args:
        text: help text built from docstrings.

    Returns:
        The text with ``:role:`target``` replaced by ``target`` and double backticks removed.
    """
    return SPHINX_ROLE.sub(r"\1", text).replace("``", "")


def parse(args_type: type[ArgsT], argv: Sequence[str] | None = None) -> ArgsT:
    """Parse the command line into ``args_type`` with tyro; ``--help`` prints plain text.

    The help of nested settings comes from the library's docstrings, which are written for
    Sphinx; the help text is captured and printed without that markup (and without colour).

    Args:
        args_type: the script's ``Args`` dataclass.
        argv: the arguments, without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The parsed arguments.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    if not {"-h", "--help"} & set(words):
        return tyro.cli(args_type, args=argv)
    buffer = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(shutil.get_terminal_size().columns)
    try:
        with contextlib.redirect_stdout(buffer):
            return tyro.cli(args_type, args=argv)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
        sys.stdout.write(plain_text(buffer.getvalue()))


def check_threads(threads: int) -> None:
    """Refuse a negative thread count.

    Args:
        threads: CPU threads of torch; 0 takes the idle cores (:func:`idle_threads`).

    Raises:
        ValueError: if ``threads`` is negative.
    """
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 takes the idle cores), got {threads}")


def idle_threads() -> int:
    """Threads for torch on this machine now: the cores other processes leave idle, at least 1.

    torch's default takes every core; when other processes keep them busy its threads wait on
    each other and small operations slow down 10-100x. The cores this process may use, minus
    the 1-minute load average (rounded), avoids that on a busy machine and keeps all cores on
    an idle one.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average here
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def check_output_dir(path: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created or written to.

    Args:
        path: the folder (it need not exist yet; its nearest existing ancestor is checked).

    Raises:
        ValueError: if the path or an ancestor is a file, or the folder is not writable.
    """
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--output-dir {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the folder" if existing == Path(path).absolute() else f"{str(existing)!r}"
        raise ValueError(
            f"--output-dir {str(path)!r} cannot be written ({what} is read-only for this user); "
            "choose a folder you can write to"
        )


def configure(args: object) -> None:
    """Check the flags every script shares, before any work; set torch's threads.

    ``threads`` (>= 0), ``device`` (available here), ``output_dir`` (writable) and
    ``success_radius_m`` (> 0), where ``args`` has them.

    Args:
        args: a parsed ``Args`` of a script.

    Raises:
        ValueError: for a negative thread count, an unavailable device, an output folder that
            cannot be written or a success radius that is not positive.
    """
    threads = getattr(args, "threads", None)
    if threads is not None:
        check_threads(threads)
        torch.set_num_threads(threads if threads > 0 else idle_threads())
    device = getattr(args, "device", None)
    if isinstance(device, str):
        check_device(device)
    output_dir = getattr(args, "output_dir", None)
    if isinstance(output_dir, Path):
        check_output_dir(output_dir)
    radius = getattr(args, "success_radius_m", None)
    if radius is not None and not radius > 0:
        raise ValueError(f"--success-radius-m must be > 0 metres, got {radius}")


def run(
    main: Callable[[ArgsT], Any], args_type: type[ArgsT], argv: Sequence[str] | None = None
) -> Any:
    """Parse the command line, configure torch, call ``main``; report user errors in one line.

    Args:
        main: the script's ``main(args)``.
        args_type: the script's ``Args`` dataclass.
        argv: the arguments, without the program name; ``None`` reads ``sys.argv``.

    Returns:
        What ``main`` returns.

    Raises:
        SystemExit: status 2 after printing ``error: <message>`` to stderr for a user error
            (see :data:`USER_ERRORS`); tyro's own exit for ``--help`` and unknown flags.
    """
    try:
        args = parse(args_type, argv)
        configure(args)
        return main(args)
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def examples_folder() -> Path:
    """The ``examples/`` folder of the source checkout this package runs from.

    Raises:
        FileNotFoundError: if the package is not installed from a source checkout.
    """
    folder = Path(__file__).resolve().parents[1] / "examples"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no example scripts at {str(folder)!r}: the console commands run the scripts of a "
            "source checkout; install persistent-world with `pip install -e <checkout>`"
        )
    return folder


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as the module ``example_<name>`` (not run as ``__main__``).

    The module is registered in ``sys.modules`` so that the postponed annotations of its
    dataclasses resolve (tyro and ``typing.get_type_hints`` look the module up there).

    Args:
        name: the script's file name without ``.py``, e.g. ``"rank_nomad"``.

    Returns:
        The module: its ``Args`` and ``main``.

    Raises:
        FileNotFoundError: if the checkout has no such example script.
    """
    path = examples_folder() / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no example script {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_example(name: str) -> None:
    """Run ``examples/<name>.py`` as ``__main__`` with the current command-line arguments.

    Args:
        name: the script's file name without ``.py``, e.g. ``"plan_cem"``.
    """
    try:
        script = examples_folder() / f"{name}.py"
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    runpy.run_path(str(script), run_name="__main__")


def collect_data() -> None:
    """Console command ``pw-collect-data``: ``examples/collect_data.py``."""
    run_example("collect_data")


def inspect_data() -> None:
    """Console command ``pw-inspect-data``: ``examples/inspect_data.py``."""
    run_example("inspect_data")


def train_world_model() -> None:
    """Console command ``pw-train-world-model``: ``examples/train_world_model.py``."""
    run_example("train_world_model")


def evaluate_world_model() -> None:
    """Console command ``pw-evaluate-world-model``: ``examples/evaluate_world_model.py``."""
    run_example("evaluate_world_model")


def export_checkpoint() -> None:
    """Console command ``pw-export-checkpoint``: ``examples/export_checkpoint.py``."""
    run_example("export_checkpoint")


def imagine() -> None:
    """Console command ``pw-imagine``: ``examples/imagine.py``."""
    run_example("imagine")


def navigate() -> None:
    """Console command ``pw-navigate``: ``examples/navigate.py``."""
    run_example("navigate")


def plan_cem() -> None:
    """Console command ``pw-plan-cem``: ``examples/plan_cem.py``."""
    run_example("plan_cem")


def rank_nomad() -> None:
    """Console command ``pw-rank-nomad``: ``examples/rank_nomad.py``."""
    run_example("rank_nomad")


def train_nomad() -> None:
    """Console command ``pw-train-nomad``: ``examples/train_nomad.py``."""
    run_example("train_nomad")


def adapt_policy() -> None:
    """Console command ``pw-adapt-policy``: ``examples/adapt_policy.py``."""
    run_example("adapt_policy")


def explore_scene() -> None:
    """Console command ``pw-explore-scene``: ``examples/explore_scene.py``."""
    run_example("explore_scene")


def build_memory() -> None:
    """Console command ``pw-build-memory``: ``examples/build_memory.py``."""
    run_example("build_memory")


def paper_tables() -> None:
    """Console command ``pw-paper-tables``: ``examples/paper_tables.py``."""
    run_example("paper_tables")


def compare_costs() -> None:
    """Console command ``pw-compare-costs``: ``examples/compare_costs.py``."""
    run_example("compare_costs")


def check_collisions() -> None:
    """Console command ``pw-check-collisions``: ``examples/check_collisions.py``."""
    run_example("check_collisions")
