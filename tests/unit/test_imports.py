"""The package imports go one way (no cycles) and Ray stays at the edge (ARCHITECTURE.md): read
from the source with ast, so imports inside functions count too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adr_scale", "data_pipeline")
# adr_scale.cli: only `--address auto`, whose lookup of the running cluster is Ray's own
RAY_ALLOWED = ("adr_scale.ray_adapter", "adr_scale.search.driver", "adr_scale.search.trial",
               "adr_scale.search.confirmation", "adr_scale.search.schedulers",
               "adr_scale.search.resume", "adr_scale.cli", "data_pipeline.generate_ddpm")
DRIVERS = {"adr_scale.train", "adr_scale.tune", "adr_scale.tune.__main__",
           "adr_scale.search.driver", "adr_scale.search.trial", "adr_scale.search.confirmation",
           "adr_scale.drivers", "adr_scale.ray_adapter"}
CLIS = ("adr_scale.train", "adr_scale.search.driver")  # python -m adr_scale.train / .tune
REPORTS = ("adr_scale.search.report", "adr_scale.run.outputs", "adr_scale.run.files")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module `name` imports anywhere in its source (ray as 'ray')."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    raw = {name: _imports(path, name, modules) for name, path in modules.items()}
    internal = {name: {m for m in deps if m in modules and m != name} for name, deps in raw.items()}
    return internal, raw


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_package_imports_have_no_cycle():
    graph, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ray_is_imported_only_by_the_drivers_and_the_data_pipeline():
    _, raw = _graph()
    importers = sorted(name for name, deps in raw.items()
                       if any(d == "ray" or d.startswith("ray.") for d in deps))
    assert _outside(importers, RAY_ALLOWED) == []
    # the walk does see lazy imports (the search driver imports Ray inside functions only)
    assert {"adr_scale.ray_adapter", "adr_scale.search.driver"} <= set(importers)


def _outside(names: list[str], allowed: tuple[str, ...]) -> list[str]:
    return [n for n in names if not any(n == a or n.startswith(a + ".") for a in allowed)]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_reports_never_import_the_drivers():
    """Not even through another module: a search's report is rebuilt without Ray."""
    graph, _ = _graph()
    for report in REPORTS:
        assert not _reachable(graph, report) & DRIVERS, report


def test_the_two_clis_do_not_import_each_other():
    """Not even through another module: what both need lives in the Ray adapter and below."""
    graph, _ = _graph()
    for cli in CLIS:
        assert not _reachable(graph, cli) & (set(CLIS) - {cli}), cli
    assert not _reachable(graph, "adr_scale.ray_adapter") & set(CLIS)


def test_the_rules_name_modules_that_exist():
    """A moved or renamed module would leave its rule checking nothing."""
    modules = _modules()
    assert sorted(n for n in {*RAY_ALLOWED, *DRIVERS, *REPORTS, *CLIS} if n not in modules) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_report_check_sees_a_driver_behind_another_module():
    assert _reachable({"r": {"m"}, "m": {"d"}, "d": set()}, "r") == {"m", "d"}


def test_the_ray_check_names_a_module_outside_the_allowed_ones():
    allowed = ("pkg.adapter", "data_pipeline.generate_ddpm")
    assert _outside(["pkg.adapter", "pkg.train", "data_pipeline.generate_ddpm",
                     "data_pipeline.shard_npz", "pkg.adapterx"], allowed) == [
        "pkg.train", "data_pipeline.shard_npz", "pkg.adapterx"]
