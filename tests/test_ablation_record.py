"""The committed ablation record stays reproducible: every run in it is a row of small_data.ABLATION_ROWS (what
benchmarks/ablation.py runs), recorded with that row's exact command, and every row makes a valid recipe."""

import shlex

import pytest

from vitlib import models, small_data
from vitlib.checkpoints import reference_runs
from vitlib.presets import get_preset, with_text_settings

RUNS = small_data.ablation_runs()
SEARCH = small_data.SEARCH_RECORD


@pytest.mark.parametrize("record", ["ablation", "search"])
def test_every_recorded_run_is_a_row_with_its_exact_command(record):
    runs = RUNS if record == "ablation" else reference_runs(SEARCH) if SEARCH.is_file() else None
    if runs is None:
        pytest.skip("the search has recorded no run yet")
    assert len(runs), "the record is empty"
    for name, history in runs.groupby("run"):
        assert (small_data.record_of(name) == SEARCH) == (record == "search"), f"{name} is in the wrong record"
        assert name in small_data.ABLATION_ROWS, f"{name} is recorded but not a row of small_data.ABLATION_ROWS"
        commands = set(history["command"])
        assert len(commands) == 1, name
        command = commands.pop().split("  #")[0]  # a comment may follow the command
        data = shlex.split(command)[shlex.split(command).index("--data") + 1]
        assert command == shlex.join(small_data.ablation_command(name, data)), name
        assert list(history["epoch"]) == list(range(1, len(history) + 1)), f"{name}: epochs missing or repeated"


@pytest.mark.parametrize("row", list(small_data.ABLATION_ROWS))
def test_every_row_is_a_recipe_that_builds(row):
    preset = with_text_settings(get_preset(small_data.ABLATION_BASE), small_data.ABLATION_ROWS[row])
    model = models.build_model(preset.model)
    assert models.count_parameters(model) > 0
    if row in set(RUNS["run"]):  # a recorded row trained for the epochs its recipe says
        assert RUNS.loc[RUNS["run"] == row, "epoch"].max() == preset.epochs
