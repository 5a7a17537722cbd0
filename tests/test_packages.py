"""`worldsim`, `planners` and `envs` are also names of unrelated PyPI packages."""

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("import envs", "from envs", "import planners", "from planners")


@pytest.mark.parametrize("name", ["worldsim", "planners", "envs"])
def test_package_comes_from_this_repository(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


def test_worldsim_imports_neither_envs_nor_planners():
    offenders = []
    for path in (REPO / "worldsim").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(FORBIDDEN):
                offenders.append(f"{path.relative_to(REPO)}: {stripped}")
    assert offenders == []
