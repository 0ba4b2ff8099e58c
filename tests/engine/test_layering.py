"""The layering the style notes ask for: the engine never imports streamlit, the pages never import
torch and use only tlcore's public surface (``tlcore.__all__``)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tlcore
from tests.conftest import ROOT

PAGES = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]
ENGINE = sorted((ROOT / "tlcore").rglob("*.py"))
#: tlcore's layers, lowest first: a module imports only from its own layer and the ones before it (``top``: the
#: modules directly in tlcore/, the command line, the benchmark and the public surface).
LAYERS = ("core", "models", "data", "engine", "analysis", "jobs", "studio", "top")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_never_imports_streamlit(path):
    assert not [m for m, _ in _imports(path) if m.split(".")[0] == "streamlit"]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_use_only_the_public_api(path):
    public = set(tlcore.__all__)
    for module, names in _imports(path):
        assert module.split(".")[0] not in ("torch", "torchvision", "timm"), f"{path.name} imports {module}"
        if module.startswith("tlcore"):
            assert module == "tlcore", f"{path.name} reaches into {module}"
            assert set(names) <= public, f"{path.name} imports private {set(names) - public}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tlcore":
            assert node.attr in public, f"{path.name} uses tlcore.{node.attr}, which is not public"


def test_every_public_name_exists():
    assert all(hasattr(tlcore, n) for n in tlcore.__all__) and len(set(tlcore.__all__)) == len(tlcore.__all__)


def _module(path: Path) -> str:
    """``tlcore/engine/train.py`` -> ``engine.train``; ``tlcore/cli.py`` -> ``cli``; a package's ``__init__`` is the
    package."""
    parts = path.relative_to(ROOT / "tlcore").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _tlcore_imports(path: Path) -> set[str]:
    """The tlcore modules ``path`` imports (dotted below tlcore, e.g. ``engine.train``), at module level, inside a
    function (a deferred import still ties the two modules together) or under ``if TYPE_CHECKING:`` (a type-only
    back edge is a back edge all the same)."""
    package = list(path.relative_to(ROOT / "tlcore").parts[:-1])  # what a relative import starts from
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                out.add(".".join(base + node.module.split(".")))
            else:
                out |= {".".join(base + [a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlcore."):
            out.add(node.module.removeprefix("tlcore."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("tlcore.") for a in node.names if a.name.startswith("tlcore.")}
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _tlcore_imports(p) - {_module(p)} for p in ENGINE}


def _layer(module: str) -> str:
    return module.split(".")[0] if "." in module or module in LAYERS else "top"


def test_no_import_cycle_in_the_engine():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done or module not in graph:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        if module != "__init__":  # the package re-exports everything; nothing imports it back
            visit(module, [])


def test_every_module_imports_only_its_own_layer_and_those_below():
    """The tree is the map: ``LAYERS`` is the allowed-imports table, and every import counts (type-only ones too)."""
    graph = _graph()
    assert {_layer(m) for m in graph} == set(LAYERS), "a folder of tlcore/ is missing from LAYERS, or LAYERS names one"
    back = sorted(f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for m, deps in graph.items() for d in deps
                  if d in graph and LAYERS.index(_layer(d)) > LAYERS.index(_layer(m)))
    assert not back, "imports against the layers:\n" + "\n".join(back)
    unknown = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps if d not in graph)
    assert not unknown, unknown


def test_no_function_is_too_complex():
    """``ruff check --select C901`` with ``max-complexity`` from pyproject.toml (15) over the engine and pages."""
    import subprocess
    import sys

    found = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "C901", "--no-cache", "--output-format",
                            "concise", "tlcore", "pages", "app.py"], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr


def _fragments(tree: ast.Module) -> set[str]:
    """Names of the functions a page runs as fragments (``@st.fragment`` or ``st.fragment(f, ...)``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("fragment" in ast.unparse(d) for d in node.decorator_list):
            out.add(node.name)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "st.fragment" and node.args:
            if isinstance(node.args[0], ast.Name):
                out.add(node.args[0].id)
    return out


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_fragments_take_what_they_show_as_arguments(path):
    """A fragment reruns alone, later: what it shows comes in as arguments, never from the page's globals."""
    tree = ast.parse(path.read_text())
    assigned = {n.id for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import,
                                                                     ast.ImportFrom))
                for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in _fragments(tree):
            local = {a.arg for a in node.args.args} | {n.id for n in ast.walk(node)
                                                       if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            read = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert not (read & assigned) - local, f"{path.name}: {node.name} reads page globals {(read & assigned) - local}"


ALLOWED_INTERNALS = {"session_id", "session_alive", "leave_legacy_pages_mode", "keep_every_click"}  # pages/common.py, each
# says why


@pytest.mark.parametrize("path", PAGES + ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_private_apis_stay_in_one_place(path):
    """Streamlit's internals only inside the four commented functions of pages/common.py; nothing patches
    multiprocessing."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ALLOWED_INTERNALS and path.name == "common.py":
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                module = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                in_allowed = path.name == "common.py" and isinstance(node, ast.FunctionDef) and node.name in ALLOWED_INTERNALS
                private = (module or "").startswith("streamlit.") and not (module or "").startswith("streamlit.components")
                assert in_allowed or not private, f"{path.name} imports {module}"
    assert "get_preparation_data" not in path.read_text() and "multiprocessing.spawn" not in path.read_text()


def test_every_environment_variable_is_documented():
    """Each ``TLS_*`` / ``TLCORE_*`` variable the app or the engine reads is in the README (two were not)."""
    readme = (ROOT / "README.md").read_text()
    read = {node.value for path in [*ENGINE, *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"(TLS|TLCORE)_[A-Z0-9_]+", node.value)}
    assert read and not sorted(v for v in read if f"`{v}`" not in readme)


def test_a_jobs_task_is_training_or_one_of_the_analyses():
    """A job carries its task as an object (issue 40): a ``Training`` (its split, what run.json keeps, its time limit)
    or an ``Analysis`` of one of the analysis tasks, never a string beside an empty split."""
    import dataclasses
    import typing

    from tlcore.analysis.tasks import TASKS, Task
    from tlcore.jobs.spec import Analysis, JobSpec, Training

    assert [f.name for f in dataclasses.fields(JobSpec)] == ["name", "owner", "images", "config", "task", "folder"]
    assert typing.get_type_hints(JobSpec)["task"] == Training | Analysis
    assert typing.get_type_hints(Analysis, localns={"Task": Task})["kind"] == Task and "speed" in TASKS
