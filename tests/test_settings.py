"""settings.configure: the notebooks' configuration cell (an edit wins, the environment fills defaults, Drive)."""

import sys
import types
from pathlib import Path

import pytest

from vitlib import data, files, settings


@pytest.fixture
def clean_env(monkeypatch):
    for variable in (*settings.ENVIRONMENT.values(), files.DATA_DIR_ENV, files.RUNS_ENV):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_an_edit_in_the_cell_wins_over_the_environment_and_says_so(clean_env, capsys):
    clean_env.setenv("VITLIB_DATA", "sample")
    clean_env.setenv("VITLIB_PRESET", "cpu-long")
    assert settings.configure(DATA="/my/photos", PRESET="cpu") == ("/my/photos", "cpu")
    out = capsys.readouterr().out.splitlines()
    assert out == ["DATA = '/my/photos'  # set in this cell; VITLIB_DATA=sample ignored",
                   "PRESET = 'cpu'  # set in this cell; VITLIB_PRESET=cpu-long ignored"]


def test_the_environment_fills_only_values_left_at_their_default(clean_env, capsys):
    clean_env.setenv("VITLIB_DATA", "sample")
    clean_env.setenv("VITLIB_EPOCHS", "6")
    got = settings.configure(DATA="auto", STORAGE="local", PRESET="auto", EPOCHS=None)
    assert got == ("sample", "local", "auto", 6)  # EPOCHS read as a number, the others untouched
    out = capsys.readouterr().out
    assert "DATA = 'sample'  # from VITLIB_DATA (the cell left its default, 'auto')" in out
    assert "STORAGE = 'local'  # the default" in out


def test_a_notebooks_own_default_is_what_the_environment_may_fill(clean_env):
    clean_env.setenv("VITLIB_EPOCHS", "1")
    assert settings.configure(EPOCHS=3, defaults={"EPOCHS": 3}, verbose=False) == (1,)  # 07's 3 is its default
    assert settings.configure(EPOCHS=2, defaults={"EPOCHS": 3}, verbose=False) == (2,)  # an edit still wins


@pytest.mark.parametrize(("values", "message"), [
    ({"STORAGE": "gdrive"}, r"STORAGE = 'gdrive': write \"local\".*or \"drive\""),
    ({"EPOCHS": 0}, "EPOCHS = 0: write a whole number of epochs of at least 1"),
    ({"EPOCHS": 2.5}, "EPOCHS = 2.5: write a whole number"),
    ({"DATAS": "auto"}, "no setting DATAS: the settings are DATA, STORAGE, PRESET, EPOCHS"),
])
def test_a_value_that_cannot_work_is_one_line_naming_it(clean_env, values, message):
    with pytest.raises(settings.SettingError, match=message):
        settings.configure(verbose=False, **values)


def test_a_bad_environment_value_names_the_variable(clean_env):
    clean_env.setenv("VITLIB_EPOCHS", "six")
    with pytest.raises(settings.SettingError, match="VITLIB_EPOCHS='six': EPOCHS is a whole number"):
        settings.configure(EPOCHS=None, verbose=False)


def test_drive_outside_colab_is_one_clear_line_and_moves_nothing(clean_env):
    clean_env.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(files.PlaceError, match="Colab only"):
        settings.configure(DATA="auto", STORAGE="drive", verbose=False)
    assert files.RUNS_ENV not in __import__("os").environ


def test_drive_in_colab_keeps_data_and_runs_where_the_next_notebook_finds_them(clean_env, tmp_path, capsys):
    """The Colab path itself, without Colab: a fake google.colab.drive whose mount makes a local folder stand in
    for Google Drive. Two notebooks (two configure calls, as on two fresh machines sharing Drive) see one folder."""
    clean_env.setattr(files, "DRIVE_MOUNT", tmp_path / "content" / "drive")
    mounted = []

    def mount(where):  # what google.colab.drive.mount leaves behind: My Drive under the mount point
        mounted.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True, exist_ok=True)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    clean_env.setitem(sys.modules, "google.colab", colab)
    clean_env.setitem(sys.modules, "google.colab.drive", colab.drive)

    settings.configure(DATA="sample", STORAGE="drive")
    kept = tmp_path / "content" / "drive" / "MyDrive" / "vitlib"
    assert mounted == [str(tmp_path / "content" / "drive")]
    assert files.data_dir() == kept / "data" and files.runs_dir() == kept / "runs"
    assert "data and runs kept in Google Drive" in capsys.readouterr().out
    first = data.prepare_data("sample", verbose=False)  # notebook 01 downloads into Drive
    clean_env.delenv(files.DATA_DIR_ENV)  # a fresh machine: nothing set
    clean_env.delenv(files.RUNS_ENV)
    settings.configure(DATA="sample", STORAGE="drive", verbose=False)  # notebook 02, the same cell
    assert data.prepare_data("sample", verbose=False).root == first.root  # finds 01's data, not a new copy
    assert first.root.is_relative_to(kept / "data")
