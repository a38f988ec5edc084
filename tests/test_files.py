"""Writes on a full disk, temporary files left by killed processes, and a path as a person reads it.

A full disk is said in one line that names the folder; the earlier file stays byte for byte, and no
temporary file is left. It is simulated two ways: a writer that writes part of the file and then
raises ENOSPC, and (Linux) a temporary file that is a link to /dev/full, where the real writer meets
the kernel's own "No space left on device".
"""

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import no_space, temporaries

from vitlib import data, files, sample, submit

HAS_DEV_FULL = os.path.exists("/dev/full")
IDS = np.arange(1, 6)


def assert_one_line_naming(error: BaseException, folder: Path, what: str) -> None:
    """The message is one line that starts by naming the folder and names the file."""
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(f"no space left on {Path(folder).resolve()}"), message
    assert what in message, message


def link_temporary_to_dev_full(path: Path) -> Path:
    """Make the temporary file an atomic write of `path` goes to (this process's) a link to /dev/full."""
    tmp = files.temporary_name(path)
    tmp.symlink_to("/dev/full")
    return tmp


# ---------------------------------------------------------------------------------------------
# write_atomic


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_write_atomic_on_a_full_disk_says_so_in_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch, code):
    path = tmp_path / "history.csv"
    files.write_atomic(path, "epoch\n1\n")

    def half_then_full(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise no_space(code)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", half_then_full)
        with pytest.raises(OSError) as error:
            files.write_atomic(path, "epoch\n1\n2\n")
    assert_one_line_naming(error.value, tmp_path, "history.csv")
    assert path.read_text() == "epoch\n1\n"
    assert temporaries(tmp_path) == []


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_write_atomic_onto_a_really_full_device_says_so_in_one_line(tmp_path):
    path = tmp_path / "history.csv"
    files.write_atomic(path, "epoch\n1\n")
    link_temporary_to_dev_full(path)
    with pytest.raises(OSError) as error:
        files.write_atomic(path, "epoch\n1\n2\n")
    assert_one_line_naming(error.value, tmp_path, "history.csv")
    assert path.read_text() == "epoch\n1\n"
    assert temporaries(tmp_path) == []


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"

    def broken(self, text, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError, match="Input/output error") as error:
        files.write_atomic(path, "epoch\n")
    assert error.value.errno == errno.EIO and "no space" not in str(error.value)
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# submission.csv


def frame(label: float) -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, "label": np.full(len(IDS), label)})


def test_submission_on_a_full_disk_says_so_in_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    submit.write_submission(frame(0.25), path, IDS)
    before = path.read_bytes()

    def half_then_full(self, target, *args, **kwargs):
        with open(target, "w") as f:
            f.write("id,label\n1,0.")
        raise no_space()

    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", half_then_full)
        with pytest.raises(OSError) as error:
            submit.write_submission(frame(0.75), path, IDS)
    assert_one_line_naming(error.value, tmp_path, "submission.csv")
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_submission_onto_a_really_full_device_says_so_in_one_line(tmp_path):
    path = tmp_path / "submission.csv"
    submit.write_submission(frame(0.25), path, IDS)
    before = path.read_bytes()
    link_temporary_to_dev_full(path)
    with pytest.raises(OSError) as error:
        submit.write_submission(frame(0.75), path, IDS)
    assert_one_line_naming(error.value, tmp_path, "submission.csv")
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# The sample


SMALL = {"n_train": 8, "n_test": 4}


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def reference_sample(tmp_path_factory) -> dict:
    """The digests of a small sample written without trouble."""
    return digests(sample.write_sample(tmp_path_factory.mktemp("reference") / "sample", **SMALL))


def test_a_full_disk_while_writing_the_sample_says_so_and_the_next_call_completes_it(tmp_path, monkeypatch,
                                                                                     reference_sample):
    folder = tmp_path / "sample"
    real = Path.write_text

    def full_at_the_csv(self, text, *args, **kwargs):
        if "sample_submission.csv" in self.name:  # the file, or its temporary one
            with open(self, "w") as f:
                f.write(text[:10])
            raise no_space()
        return real(self, text, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full_at_the_csv)
        with pytest.raises(OSError) as error:
            sample.write_sample(folder, **SMALL)
    assert_one_line_naming(error.value, folder, "sample_submission.csv")
    written = digests(folder)
    assert written == {name: reference_sample[name] for name in ("test.zip", "train.zip")}  # intact, no debris
    assert not (folder / sample.SAMPLE_STAMP).exists()  # so the next call writes it again

    sample.write_sample(folder, **SMALL)
    assert digests(folder) == reference_sample


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_a_really_full_device_while_zipping_the_sample_says_so_in_one_line(tmp_path, monkeypatch, reference_sample):
    folder = tmp_path / "sample"
    real = sample._write_zip

    def zip_test_onto_dev_full(path, entries):
        if path.name == "test.zip":
            link_temporary_to_dev_full(path)
        return real(path, entries)

    monkeypatch.setattr(sample, "_write_zip", zip_test_onto_dev_full)
    with pytest.raises(OSError) as error:
        sample.write_sample(folder, **SMALL)
    assert_one_line_naming(error.value, folder, "test.zip")
    assert digests(folder) == {"train.zip": reference_sample["train.zip"]}


# ---------------------------------------------------------------------------------------------
# Temporary files of killed processes


def test_an_atomic_write_removes_the_temporary_files_of_dead_processes_only(tmp_path, dead_pid, live_pid):
    path = tmp_path / "history.csv"
    dead = files.temporary_name(path, dead_pid)
    live = files.temporary_name(path, live_pid)
    users = tmp_path / ".history.csv.backup.tmp"  # not a pid: not ours
    for tmp in (dead, live, users):
        tmp.write_text("half a fi")
    files.write_atomic(path, "epoch\n1\n")
    assert path.read_text() == "epoch\n1\n"
    assert not dead.exists()
    assert live.read_text() == users.read_text() == "half a fi"


def test_remove_stale_temporaries_clears_a_folder_of_dead_processes_files(tmp_path, dead_pid, live_pid):
    dead = [files.temporary_name(tmp_path / name, dead_pid) for name in ("last.pt", "best.pt", "history.csv")]
    kept = [files.temporary_name(tmp_path / "last.pt", live_pid), files.temporary_name(tmp_path / "last.pt"),
            tmp_path / "last.pt", tmp_path / f"last.pt.{dead_pid}.tmp",
            tmp_path / f".last.pt.{dead_pid}.tmp"]  # the pattern without vitlib's marker: not provably ours
    for path in dead + kept:
        path.write_bytes(b"x")
    assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted(dead)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


# ---------------------------------------------------------------------------------------------
# One folder for data and runs across notebooks (Colab's Google Drive, or any folder)


def test_keep_in_sends_the_data_and_the_runs_to_one_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(files.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(files.RUNS_ENV, raising=False)
    kept = tmp_path / "My Drive" / "vitlib"
    places = files.keep_in(kept)
    assert places == {files.DATA_DIR_ENV: kept / "data", files.RUNS_ENV: kept / "runs"}
    assert files.data_dir() == kept / "data" and files.runs_dir() == kept / "runs"
    ds = data.prepare_data("sample", verbose=False)  # what a notebook does next: it lands in the kept folder
    assert ds.root.is_relative_to(kept / "data")
    again = data.prepare_data("sample", verbose=False)  # the next notebook, pointed at the same folder, finds it
    assert again.root == ds.root


def test_keep_in_refuses_a_file_in_one_line_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path / "runs-before"))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(files.PlaceError, match="is a file, not a folder"):
        files.keep_in(tmp_path / "notes.txt")
    assert os.environ[files.RUNS_ENV] == str(tmp_path / "runs-before")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_use_drive_mounts_drive_then_keeps_data_and_runs_in_my_drive(tmp_path, monkeypatch):
    monkeypatch.delenv(files.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(files.RUNS_ENV, raising=False)
    monkeypatch.setattr(files, "DRIVE_MOUNT", tmp_path / "drive")
    mounted = []

    def mount(where):  # what google.colab.drive.mount leaves: My Drive under the mount point
        mounted.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True)

    places = files.use_drive(mount=mount)
    assert mounted == [str(tmp_path / "drive")]
    assert files.runs_dir() == places[files.RUNS_ENV] == tmp_path / "drive" / "MyDrive" / "vitlib" / "runs"


def test_use_drive_says_what_to_do_when_drive_is_not_mounted_or_not_colab(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "DRIVE_MOUNT", tmp_path / "drive")
    monkeypatch.delenv(files.RUNS_ENV, raising=False)
    with pytest.raises(files.PlaceError, match="allow access when Colab asks"):
        files.use_drive(mount=lambda where: None)  # the learner declined: nothing mounted
    assert files.RUNS_ENV not in os.environ
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    with pytest.raises(files.PlaceError, match="Colab only; elsewhere use files.keep_in"):
        files.use_drive()


# ---------------------------------------------------------------------------------------------
# shown: a path as a person reads it


def test_shown_names_a_path_from_the_working_folder_else_the_repository_else_home_else_in_full(tmp_path, monkeypatch):
    work, home, elsewhere = tmp_path / "work", tmp_path / "home", tmp_path / "elsewhere"
    for folder in (work, home, elsewhere):
        folder.mkdir()
    monkeypatch.chdir(work)
    assert files.shown(work / "runs" / "x" / "best.pt", home) == "runs/x/best.pt"
    assert files.shown("runs/x/../y/last.pt", home) == "runs/y/last.pt"
    assert files.shown(work, home) == "."
    assert files.shown(home / ".kaggle" / "kaggle.json", home) == "~/.kaggle/kaggle.json"
    assert files.shown(home, home) == "~"
    assert files.shown(elsewhere / "a.csv", home) == str(elsewhere / "a.csv")
    (work / "drive").symlink_to(elsewhere)  # a link is not followed: the path stays as given
    assert files.shown(work / "drive" / "a.csv", home) == "drive/a.csv"
    if files._checkout():  # a notebook runs in notebooks/, and names the repository's runs from its root
        assert files.shown(files._checkout() / "runs" / "cpu" / "best.pt", home) == "runs/cpu/best.pt"
