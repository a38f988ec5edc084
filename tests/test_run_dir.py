"""vitlib.run_dir: the run folder's one owner. Its place and name, the checks before any work (in the words of the
setting that chose the place), the lock, the resume point read once, and an epoch saved best first."""

import pandas as pd
import pytest

from vitlib import checkpoints, cli, files
from vitlib import run_dir as folders
from vitlib.presets import get_preset
from vitlib.run_dir import RunDir, RunExistsError

PRESET = get_preset("sample", epochs=2)
DATA = {"kind": "sample", "name": "sample"}


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Data and runs in temporary folders, as a user's environment variables put them."""
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("VITLIB_PROGRESS", "0")
    return tmp_path


def test_the_default_folder_s_problems_name_the_environment_variable_that_chose_it(places):
    """Once said "choose another run_dir (--run-dir)" for a place VITLIB_RUNS_DIR had chosen."""
    link = folders.default_path(PRESET, DATA)  # runs/sample-2ep-sample
    link.parent.mkdir()
    link.symlink_to(places / "nowhere")
    with pytest.raises(RunExistsError, match=r"link to .*nowhere.*choose another VITLIB_RUNS_DIR"):
        RunDir.for_run(PRESET, DATA).check()
    with pytest.raises(RunExistsError, match=r"choose another run_dir \(--run-dir\)"):
        RunDir.for_run(PRESET, DATA, link).check()


def test_the_command_line_reads_last_pt_once_when_it_resumes(places, monkeypatch, capsys):
    """The CLI opened the folder and read last.pt to refuse early, then fit read it again."""
    argv = ["train", "--preset", "sample", "--data", "sample", "--epochs", "2", "--run-dir", str(places / "run"),
            "--no-progress"]
    assert cli.main(argv) == 0
    reads = []
    real = folders.load_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folders, "load_checkpoint", counted)
    assert cli.main(argv) == 0
    assert "already trained: 2 epochs" in capsys.readouterr().out
    assert [p.name for p in reads] == ["last.pt"]


def test_an_epoch_is_saved_best_first_and_best_only_when_it_is_the_best(tmp_path):
    folder = RunDir(tmp_path / "run")
    written = []
    state = lambda: {"epoch": len(written)}  # noqa: E731 - the checkpoint's maker, called once per save
    rows = [{"epoch": 1, "val_loss": 0.5}]
    best = folder.save(state, rows, float("inf"))
    written.append(1)
    assert best == 0.5 and folder.best.is_file() and folder.last.is_file()
    before = folder.best.read_bytes()
    rows.append({"epoch": 2, "val_loss": 0.6})
    assert folder.save(state, rows, best) == 0.5
    assert folder.best.read_bytes() == before  # not the best: best.pt stays
    assert list(pd.read_csv(folder.history)["epoch"]) == [1, 2]
    assert checkpoints.load_checkpoint(folder.last)["epoch"] == 1


def test_an_open_folder_is_held_until_closed_and_opening_twice_reads_once(tmp_path, monkeypatch):
    folder = RunDir(tmp_path / "run")
    with folder.open(PRESET, DATA) as opened:
        assert opened is folder and folder.is_open and folder.resume_from is None
        assert folder.open(PRESET, DATA) is folder  # already open: as it is
        with pytest.raises(files.BusyError, match="another process is training into run/"):
            _held_elsewhere(folder.path)
    assert not folder.is_open


def _held_elsewhere(path):
    """Claim `path` from another process, as a second training would."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from vitlib.run_dir import RunDir\n"
            "with RunDir(Path(sys.argv[1])).claim(): pass")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise files.BusyError(out.stderr.strip().splitlines()[-1].split(": ", 1)[-1])
