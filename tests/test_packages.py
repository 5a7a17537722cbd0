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


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("envs", ("import planners", "from planners")), ("planners", ("import envs", "from envs"))],
)
def test_envs_and_planners_stand_side_by_side(package, forbidden):
    offenders = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in (REPO / package).rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip().startswith(forbidden)
    ]
    assert offenders == []


def test_top_level_exports_load():
    import worldsim

    assert sorted(worldsim.__all__) == sorted(worldsim._EXPORTS)
    for name in worldsim.__all__:
        assert getattr(worldsim, name).__name__ == name
    from worldsim import WorldModel
    from worldsim.models.world_model import WorldModel as Defined

    assert WorldModel is Defined
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        worldsim.Nope  # noqa: B018
