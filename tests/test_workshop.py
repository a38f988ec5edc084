"""benchmarks/workshop.py and WORKSHOP.md: the plan's reading times are those of the notebooks as they are."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("workshop", ROOT / "benchmarks" / "workshop.py")
workshop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workshop)


def test_markdown_words_counts_the_markdown_only(tmp_path):
    notebook = {"cells": [{"cell_type": "markdown", "source": ["# A title\n", "two | words"]},
                          {"cell_type": "code", "source": ["x = 1  # not read aloud"]},
                          {"cell_type": "markdown", "source": "one"}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook))
    assert workshop.markdown_words(path) == 7  # "#", "A", "title", "two", "|", "words", "one"


def test_the_workshop_plan_gives_each_notebooks_reading_time_as_measured():
    rows = {r["notebook"]: r["minutes"] for r in workshop.words()}
    lines = (ROOT / "WORKSHOP.md").read_text().splitlines()
    table = [line for line in lines if re.match(r"\| \d\d |\| solutions ", line)]
    assert len(table) == len(rows), "one row per notebook in WORKSHOP.md's measurements"
    for line in table:
        name, reading = (cell.strip() for cell in line.strip("|").split("|")[:2])
        stem = next(s for s in rows if s.startswith(name.split(" ")[0]))
        minutes = int(re.match(r"(\d+) min", reading).group(1))
        assert abs(minutes - rows[stem]) <= 1, f"{stem}: WORKSHOP.md says {minutes} min, the notebook {rows[stem]}"
