"""`worldsim`, `planners` and `envs` are also names of unrelated PyPI packages."""

import ast
import dataclasses
import importlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("worldsim", "envs", "planners")
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
    former_names = {"WorldModelRollout": "LearnedSimulator"}
    for name in worldsim.__all__:
        assert getattr(worldsim, name).__name__ == former_names.get(name, name)
    from worldsim import WorldModel
    from worldsim.models.world_model import WorldModel as Defined

    assert WorldModel is Defined
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        worldsim.Nope  # noqa: B018


# ------------------------------------------------------------------------------- the layout

MAX_MODULE_LINES = 700
"""A module past this many lines holds two concepts: split it (STYLE.md)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every module an import statement names, outside ``if TYPE_CHECKING:`` blocks."""
    names: list[str] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.extend(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module is not None and node.level == 0:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(tree)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports at run time (lazy imports too)."""
    modules = {_module_name(path): path for path in (REPO / package).rglob("*.py")}
    return {
        name: {m for m in _runtime_imports(ast.parse(path.read_text())) if m in modules} - {name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_known_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package):
    graph = import_graph(package)
    assert find_cycle(graph) is None


def test_the_import_graph_sees_module_level_and_lazy_imports():
    graph = import_graph("envs")
    assert "envs.simulator" in graph["envs.backends"]  # at module level
    assert "envs.embedded.simulator" in graph["envs.backends"]  # inside make_simulator


@pytest.mark.parametrize("package", ["worldsim", "envs", "planners"])
def test_no_module_is_longer_than_the_bound(package):
    long = {
        str(path.relative_to(REPO)): count
        for path in (REPO / package).rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_shipped_model_config_holds_the_architecture_and_no_sampler_setting():
    from worldsim.models.world_model import DEFAULT_CHECKPOINT, LEGACY_SAMPLER_KEYS
    from worldsim.simulator.sampler import SAMPLER_FILE, SamplerConfig

    config = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    sampler_fields = {field.name for field in dataclasses.fields(SamplerConfig)}
    assert set(LEGACY_SAMPLER_KEYS) == sampler_fields
    assert sampler_fields.isdisjoint(config) and "height" in config
    assert (DEFAULT_CHECKPOINT / SAMPLER_FILE).is_file()


def test_tests_import_the_projects_modules_directly():
    """An import regression of our own modules must fail, not skip (STYLE.md)."""
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("*.py")
        if any(f'importorskip("{name}' in path.read_text() for name in PACKAGES)
    ]
    assert offenders == []
