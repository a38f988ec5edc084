"""environment.yml (conda users, Binder) must say what pyproject.toml says: one list of dependencies, kept in sync."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement  # pytest's own dependency

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
yaml = pytest.importorskip("yaml")  # PyYAML comes with jupyterlab (the notebooks extra)

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ
PIP_ONLY = {"vit-pytorch", "linformer"}  # not on conda-forge: `pip: [-e .]` installs them


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_specs(env: dict) -> dict:
    """{name: version spec} of the conda packages (the pip section aside)."""
    specs = {}
    for entry in env["dependencies"]:
        if isinstance(entry, str):
            req = Requirement(entry.replace(" ", ""))
            specs[req.name] = req.specifier
    return specs


def test_conda_forge_only(env):
    assert env["channels"] == ["conda-forge"]


def test_every_requirement_is_mirrored_with_the_same_bounds(pyproject, env):
    project = pyproject["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    have = conda_specs(env)
    for req in wanted:
        if req.name in PIP_ONLY:
            assert req.name not in have
            continue
        name = CONDA_NAMES.get(req.name, req.name)
        assert name in have, f"{req.name} is in pyproject.toml but not in environment.yml"
        assert have[name] == req.specifier, f"{name}: environment.yml says {have[name]}, pyproject {req.specifier}"
    mirrored = {CONDA_NAMES.get(r.name, r.name) for r in wanted}
    assert set(have) - mirrored == {"python", "pip"}, "environment.yml has packages pyproject.toml does not"


def test_the_python_bound_matches(pyproject, env):
    assert conda_specs(env)["python"] == Requirement(f"python{pyproject['project']['requires-python']}").specifier


def test_it_ends_by_installing_vitlib_itself(env):
    assert env["dependencies"][-1] == {"pip": ["-e ."]}
    assert "pip" in env["dependencies"]


def test_pip_only_packages_are_real_dependencies(pyproject):
    """If one of them left pyproject, PIP_ONLY here would silently hide a missing conda package."""
    names = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    assert names >= PIP_ONLY

