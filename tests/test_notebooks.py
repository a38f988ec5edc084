"""The committed notebooks' conventions (CONTRIBUTING.md): small enough to open, nbval markers as tags, exercises at
the end of each with a solution section for each, committed executed."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("0*.ipynb"))
MAX_BYTES = 1_500_000


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_seven_chapters_and_the_solutions():
    assert [p.name[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05", "06", "07"]
    assert (NOTEBOOKS / "solutions.ipynb").is_file()


@pytest.mark.parametrize("path", [*CHAPTERS, NOTEBOOKS / "solutions.ipynb"], ids=lambda p: p.stem)
def test_a_notebook_is_small_executed_and_tagged_not_commented(path):
    assert path.stat().st_size <= MAX_BYTES, f"{path.name}: {path.stat().st_size / 1e6:.2f} MB (photo grids as JPEG)"
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), "committed executed, top to bottom"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), "executed in order"
    marked = [source(c).splitlines()[0] for c in code if re.search(r"^# NBVAL_", source(c), re.M)]
    assert not marked, f"nbval markers belong in cell tags, not in the learner's code: {marked}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_ends_with_exercises_that_have_a_solution_section(path):
    last = source(cells(path)[-1])
    assert last.startswith("## Exercises")
    exercises = re.findall(r"^\d\. \*\*\((.+?)\)\*\*", last, re.M)
    assert 2 <= len(exercises) <= 4
    number = path.name[:2]
    assert f"section {number}" in last and "solutions.ipynb" in last
    solutions = "\n".join(source(c) for c in cells(NOTEBOOKS / "solutions.ipynb") if c["cell_type"] == "markdown")
    assert re.search(rf"^## {number} · ", solutions, re.M), f"solutions.ipynb has no section {number}"
    solved = re.findall(rf"\*\*{number}\.(\d)", solutions)
    closed = [e for e in exercises if not e.startswith("open-ended")]
    assert len(solved) == len(closed), f"{path.name}: {len(closed)} exercises to solve, {len(solved)} solutions"


ALL = [*CHAPTERS, NOTEBOOKS / "solutions.ipynb"]


def test_every_notebook_starts_with_the_same_set_up_cell():
    """One first cell everywhere: Colab installs what every notebook installs (not the notebooks extra, which
    upgrades Colab's own Jupyter), and outside Colab a missing vitlib says what to do."""
    first = {p.name: source([c for c in cells(p) if c["cell_type"] == "code"][0]) for p in ALL}
    assert len(set(first.values())) == 1, "the set-up cells differ"
    setup = next(iter(first.values()))
    assert '"vitlib[kaggle] @ git+' in setup and "[notebooks]" not in setup
    assert "run `make setup`" in setup and "ModuleNotFoundError" in setup and "import vitlib" in setup
    assert "DATA" not in setup and "STORAGE" not in setup, "the settings belong in the configuration cell"


SETTINGS = r"^(DATA|STORAGE|PRESET|EPOCHS|GRID_SEED|CHECKPOINT|SUBMIT|MESSAGE) = "


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_the_configuration_is_one_cell_right_after_the_install_cell(path):
    """The settings a learner edits, in one cell in the same place everywhere (the second code cell), read by
    vitlib.configure (an edit wins over the environment), and set nowhere else."""
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    config = code[1]
    assert re.search(r'^DATA = "auto"  #', config, re.M) and re.search(r'^STORAGE = "local"  #', config, re.M)
    names = re.findall(r"^(\w+) = ", config, re.M)
    call = config.strip().splitlines()[-1]
    assert re.fullmatch(r"(\w+(, \w+)*) = vitlib\.configure\((.*)\)", call), call
    passed = re.findall(r"(\w+)=\1\b", call)
    assert {"DATA", "STORAGE"} <= set(passed) <= set(names), f"{path.name}: configure is not given {names}"
    assert "os.environ" not in config, "the environment is read by vitlib.configure, not by the cell"
    elsewhere = [i for i, s in enumerate(code) if i != 1 and re.search(SETTINGS, s, re.M)]
    assert not elsewhere, f"{path.name}: code cells {elsewhere} set a setting outside the configuration cell"
