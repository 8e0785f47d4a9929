"""The package's import structure: no pcea import hidden in a function, no import cycle.

An import inside a function body is how a cycle hides: the module imports fine until
the function runs. So the rule is checked on the source (only ``pcea/cli.py`` imports
lazily, so that ``pcea --help`` starts fast; optional third-party libraries such as
h5py, trimesh, matplotlib, sklearn and onnx may still be imported where they are used),
the module-level import graph is checked for cycles, and every module is imported first
in a fresh interpreter, so that no import order can break.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcea"
LAZY_ALLOWED = {"pcea/cli.py"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``pcea.data`` for pcea/data/__init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement reads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under TYPE_CHECKING."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def _pcea_imports_in_functions(path: Path, module: str) -> list[str]:
    """``file:line (in function): statement`` for every pcea import inside a function body."""
    shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = _imported(node, module, path.name == "__init__.py")
                if any(name == "pcea" or name.startswith("pcea.") for name in names):
                    problems.append(f"{shown}:{node.lineno} "
                                    f"(in {function.name}): {ast.unparse(node)}")
    return sorted(set(problems))


def test_no_pcea_import_inside_a_function():
    problems = []
    for module, path in _modules().items():
        if path.relative_to(PACKAGE.parent).as_posix() not in LAZY_ALLOWED:
            problems += _pcea_imports_in_functions(path, module)
    assert not problems, "imports of pcea inside functions (move them to the top of the module):\n" + \
        "\n".join(problems)


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    path = tmp_path / "example.py"
    path.write_text("import os\nfrom pcea.errors import PceaError\n\n\ndef f():\n    import h5py\n"
                    "    from pcea.io import load_points\n    return load_points\n\n\n"
                    "class C:\n    def g(self):\n        from . import ops\n")
    assert _pcea_imports_in_functions(path, "pcea.example") == [
        "example.py:13 (in g): from . import ops",
        "example.py:7 (in f): from pcea.io import load_points",
    ]


def _graph() -> dict[str, set[str]]:
    """Module -> the pcea modules importing it executes, at module level.

    Importing ``pcea.a.b`` also runs ``pcea/a/__init__.py`` unless the importer is inside
    ``pcea.a`` (its package is then already being imported); ``pcea`` itself always runs
    first, so only an explicit import of it counts.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for node in _module_level_imports(tree):
            names = [name for name in _imported(node, module, path.name == "__init__.py") if name in modules]
            base = names[0] if isinstance(node, ast.ImportFrom) and names else None
            if base is not None and len(names) < 1 + len(node.names):
                edges.add(base)  # ``from package import attribute`` reads the package's __init__
            for name in names:
                if name == base:
                    continue
                edges.add(name)  # a module, or a submodule named in ``from package import sub``
                parts = name.split(".")
                for depth in range(2, len(parts)):  # the packages above it are initialised first
                    package = ".".join(parts[:depth])
                    if not (module == package or module.startswith(package + ".")):
                        edges.add(package)
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one."""
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail)
        trail.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_module_level_import_graph_has_no_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_search_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_graph_sees_the_io_and_data_packages():
    graph = _graph()
    assert "pcea.geometry" in graph["pcea.io"]           # io reads the geometry from below
    assert "pcea.data" not in graph["pcea.io"]           # and never reaches back into data
    assert "pcea.io" in graph["pcea.data.modelnet"]      # datasets read files with pcea.io


_IMPORT_EACH_FIRST = """
import importlib, sys, traceback, types
package_dir, names = sys.argv[1], sys.argv[2:]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "pcea" or m.startswith("pcea.")]:
        del sys.modules[loaded]
    # pcea/__init__.py imports most modules in its own order; a bare package in its place
    # lets each module be the first one imported, as it would be if __init__ changed.
    root = types.ModuleType("pcea")
    root.__path__ = [package_dir]
    sys.modules["pcea"] = root
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=-3))
for loaded in [m for m in sys.modules if m == "pcea" or m.startswith("pcea.")]:
    del sys.modules[loaded]
import pcea  # and the real package, with its __init__
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    names = [name for name in _modules() if name not in ("pcea", "pcea.__main__")]
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH_FIRST, str(PACKAGE), *names],
                            capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr


# A finder first on sys.meta_path that refuses torch, as an interpreter without torch would.
_BLOCK_TORCH = """
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
"""

TORCH_FREE = ["pcea", "pcea.digest", "pcea.errors", "pcea.geometry", "pcea.io", "pcea.io.formats",
              "pcea.io.inputs", "pcea.onnx_runner", "pcea.weights"]


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_TORCH + code], capture_output=True, text=True,
                          timeout=120, cwd=PACKAGE.parent)


@pytest.mark.slow
def test_the_torch_block_works():
    blocked = _run_without_torch("import torch")
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr


@pytest.mark.slow
def test_the_file_readers_import_without_torch():
    # Each module first in its own interpreter: one that happened to import torch could not hide
    # behind another imported before it.
    for name in TORCH_FREE:
        code = (f"import importlib; importlib.import_module({name!r})\n"
                "import pcea\n"
                "print(pcea.__version__, pcea.load_points.__module__, pcea.PceaError.__name__,\n"
                "      pcea.PceaFileError.__name__, pcea.PceaWarning.__name__)\n"
                "from pcea import load_points, PceaError\n"
                "assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n")
        run = _run_without_torch(code)
        assert run.returncode == 0, f"{name}:\n{run.stderr}"
        assert run.stdout.split() == ["0.1.0", "pcea.io", "PceaError", "PceaFileError", "PceaWarning"]


@pytest.mark.slow
def test_a_name_that_needs_torch_says_so_without_torch():
    run = _run_without_torch("import pcea\npcea.build_model\n")
    assert run.returncode != 0 and "blocked by the test" in run.stderr


@pytest.mark.slow
def test_every_public_name_resolves_lazily():
    import pcea

    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    typed = {alias.name: node.module for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module.startswith("pcea") for alias in node.names}
    assert set(pcea._EXPORTS) | {"__version__"} == set(pcea.__all__)
    assert typed == pcea._EXPORTS  # the TYPE_CHECKING imports name the same modules as the table
    code = ("import pcea, importlib\n"
            "for name in pcea.__all__:\n"
            "    value = getattr(pcea, name)\n"
            "    assert name == '__version__' or value is getattr(importlib.import_module(\n"
            "        pcea._EXPORTS[name]), name), name\n"
            "namespace = {}\n"
            "exec('from pcea import *', namespace)\n"
            "assert set(pcea.__all__) <= set(namespace), set(pcea.__all__) - set(namespace)\n"
            "assert set(pcea.__all__) <= set(dir(pcea))\n"
            "import pcea.model\n"
            "assert pcea.model.PCTClassifier is pcea.PCTClassifier\n"
            "try:\n"
            "    pcea.no_such_name\n"
            "except AttributeError as err:\n"
            "    print(err)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "module 'pcea' has no attribute 'no_such_name'"


@pytest.mark.slow
def test_a_submodule_is_reachable_from_the_package():
    run = subprocess.run([sys.executable, "-c", "import pcea; print(pcea.geometry.to_canonical.__name__)"],
                         capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
    assert run.returncode == 0 and run.stdout.strip() == "to_canonical", run.stderr
