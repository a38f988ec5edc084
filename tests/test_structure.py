"""The package's shape: modules in teaching order, each importing only those before it, and all in the README."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vitlib"
README = PACKAGE.parent / "README.md"

# Each module may import only those before it (function-level imports included). A new module must be placed here.
ORDER = ["files", "settings", "device", "plots", "download", "sample", "extract", "data", "cache", "explore", "metrics",
         "patches", "models", "family", "attention", "attention_cost", "augment", "predict", "occlusion", "scratch",
         "presets", "checkpoints", "run_dir", "distill", "distributed", "train", "bench", "small_data", "calibration",
         "submit", "own_photos", "cli", "__main__"]
PACKAGE_INIT = "__init__"  # the package itself: `from . import __version__` may come from anywhere


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def vitlib_imports(name: str) -> set[str]:
    """The vitlib modules `name` imports anywhere in its file, relative or absolute, at any depth."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(), filename=f"{name}.py")):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vitlib":
                    found.add(parts[1] if len(parts) > 1 else PACKAGE_INIT)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "vitlib":
                module = node.module.split(".")[1:]
            elif node.level == 1:
                module = node.module.split(".") if node.module else []
            else:  # another package, or above vitlib (level > 1 cannot resolve in a flat package)
                assert node.level == 0, f"{name}.py imports from {'.' * node.level}{node.module or ''}"
                continue
            if module:
                found.add(module[0])
            else:  # from . import x, y: submodules, or names from the package (__version__)
                found |= {a.name if (PACKAGE / f"{a.name}.py").is_file() else PACKAGE_INIT for a in node.names}
    return found - {name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {name: vitlib_imports(name) for name in modules()}


def test_the_import_graph_reads_the_imports_it_should():
    """A check of the parser: known imports of several kinds are found."""
    assert {"data", "device", "metrics", "presets", "train", "submit", "bench", "checkpoints"} <= vitlib_imports("cli")
    assert PACKAGE_INIT in vitlib_imports("checkpoints")  # from . import __version__
    assert {"download", "sample", "files"} <= vitlib_imports("data")  # from . import download, sample
    assert "device" in vitlib_imports("train")  # from . import device as devices


def test_every_module_is_placed_in_the_order():
    unplaced = sorted(set(modules()) - set(ORDER) - {PACKAGE_INIT})
    assert not unplaced, f"place {unplaced} in ORDER in tests/test_structure.py (and in the README's table)"
    assert not sorted(set(ORDER) - set(modules())), "ORDER names a module that no longer exists"


def test_there_are_no_import_cycles(graph):
    """Among the modules; the package itself is loaded before any of them, so importing from it closes no cycle."""
    graph = {name: imported - {PACKAGE_INIT} for name, imported in graph.items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph.get(name, ())):
            visit(imported)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_each_module_imports_only_modules_before_it(graph):
    rank = {name: i for i, name in enumerate(ORDER)}
    late = [f"{name} imports {imported}" for name in ORDER if name in graph
            for imported in sorted(graph[name] - {PACKAGE_INIT}) if rank.get(imported, len(ORDER)) >= rank[name]]
    assert not late, f"imports of a module that comes later in ORDER: {late}"


def readme_modules() -> set[str]:
    """The modules named in the first column of README.md's "How the code is organised" table."""
    text = README.read_text()
    section = text.split("## How the code is organised", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`(\w+)\.py`", line.split("|")[1]))
    return names


def test_the_readme_table_names_every_module():
    assert "## How the code is organised" in README.read_text()
    named = readme_modules()
    missing = sorted(set(ORDER) - named)
    assert not missing, f"README.md's 'How the code is organised' table does not name {missing}"
    assert not sorted(named - set(modules())), "the README names a module that does not exist"


def test_predicting_stands_below_training(graph):
    """A submission and your own photos need a model and `predict`, not the training loop (issue 28's cut)."""
    for name in ("submit", "own_photos", "predict"):
        assert "train" not in graph[name], f"{name}.py imports train: predict through vitlib.predict"
