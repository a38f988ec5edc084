"""vitlib.extract: safe, atomic extraction of a zip (zip slip, zip bombs, links, interruptions, a changed zip, a
full disk), and the data's warnings it defines.

Every zip here is a few tiny files written in tmp_path. Two processes extracting at once: test_concurrency.py.
"""

import os
import stat
import types
import warnings
import zipfile
from pathlib import Path

import pytest
from helpers import jpeg, listing, make_zip, no_space, temporaries, train_files

from vitlib import extract, files
from vitlib.extract import DataError, DataWarning, UnsafeArchiveError
from vitlib.files import UNZIP_LIMIT_ENV

# ---------------------------------------------------------------------------------------------
# Unsafe zips: refused before anything is written


@pytest.mark.parametrize("evil", ["../evil.txt", "train/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt",
                                  "C:/evil.txt", "c:\\evil.txt"])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, evil):
    archive = make_zip(tmp_path / "in" / "train.zip", {"train/cat.0.jpg": jpeg(), evil: b"pwned"})
    dest = tmp_path / "out" / "deep"
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        extract.extract_zip(archive, dest)
    assert not dest.exists()
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))


def test_a_zip_listing_a_name_twice_is_refused_and_not_retried(tmp_path):
    """Once extracted, counted short, and answered "Run again", which failed the same way every time."""
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        zf.writestr("train/cat.0.jpg", jpeg())
        zf.writestr("train/cat.0.jpg", jpeg((1, 2, 3)))
    with pytest.raises(UnsafeArchiveError, match="lists 'train/cat.0.jpg' twice.*Download it again") as e:
        extract.extract_zip(archive, tmp_path / "out")
    assert "Run again" not in str(e.value) and not (tmp_path / "out").exists()


def test_symbolic_links_in_a_zip_are_refused(tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/cat.0.jpg", jpeg())
        link = zipfile.ZipInfo("train/passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract.extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Zip bombs: the sizes a zip declares, against the limits and the free space


def zeros_zip(path: Path, mib: int = 8) -> Path:
    """A zip whose one entry is `mib` MiB of zeros: a few KiB on disk (the shape of a zip bomb, at a safe size)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/cat.0.jpg", bytes(mib * 2**20))
    return path


def test_a_zip_that_expands_like_no_photos_do_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "UNZIP_RATIO_FROM", 2**20)  # the 64 MiB of the real check, scaled down to the test's
    archive = zeros_zip(tmp_path / "train.zip")
    with pytest.raises(DataError, match=r"would expand \d+x to 0\.0 GiB, which photos never do") as error:
        extract.extract_zip(archive, tmp_path / "out")
    assert "\n" not in str(error.value) and UNZIP_LIMIT_ENV in str(error.value)  # says how to override
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(UNZIP_LIMIT_ENV, "1")  # the override: the user trusts this zip
    assert [p.name for p in extract.extract_zip(archive, tmp_path / "out")] == ["train"]


def test_a_zip_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "UNZIP_LIMIT_GB", 4 / 1024)  # 4 MiB
    with pytest.raises(DataError, match=r"more than the 0\.00390625 GiB allowed"):
        extract.extract_zip(zeros_zip(tmp_path / "train.zip"), tmp_path / "out")
    for text in ("a lot", "nan", "inf", "-1"):  # nan and inf switched both limits off before
        monkeypatch.setenv(UNZIP_LIMIT_ENV, text)
        with pytest.raises(DataError, match="VITLIB_UNZIP_LIMIT_GB must be a number of GiB above 0"):
            extract.extract_zip(zeros_zip(tmp_path / "train.zip"), tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()


def test_a_zip_larger_than_the_free_space_is_refused_before_it_fills_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=2**20, total=2**30))
    with pytest.raises(DataError, match=r"no space for train\.zip on .*: it expands to 0\.0 GiB and 0\.0 GiB is free"):
        extract.extract_zip(zeros_zip(tmp_path / "train.zip", mib=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Atomic: complete and marked, or redone


def test_extraction_is_complete_marked_and_a_second_call_is_a_no_op(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"
    tops = extract.extract_zip(archive, dest)
    assert tops == [dest / "train"]
    assert sorted(p.name for p in (dest / "train").iterdir()) == sorted(n.split("/")[1] for n in train_files())
    assert (dest / ".train.zip.complete").is_file()
    assert not (dest / ".train.zip.partial").exists()
    (dest / "train" / "mine.txt").write_text("the user's own file")

    def must_not_run(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", must_not_run)
    assert extract.extract_zip(archive, dest) == tops
    assert (dest / "train" / "mine.txt").read_text() == "the user's own file"


@pytest.mark.parametrize("marker", ["", "garbage{", "[]", '{"tops": 3}'], ids=["empty", "garbage", "list", "bad-tops"])
def test_a_damaged_completion_marker_means_extract_again_not_a_traceback(tmp_path, marker):
    archive = make_zip(tmp_path / "train.zip", train_files(1))
    dest = tmp_path / "out"
    extract.extract_zip(archive, dest)
    (dest / ".train.zip.complete").write_text(marker)
    says = r"completion marker \.train\.zip\.complete is unreadable.*kept it as train\.old-1"
    with pytest.warns(DataWarning, match=says):
        assert extract.extract_zip(archive, dest) == [dest / "train"]
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["cat.0.jpg", "dog.0.jpg"]


def interrupt_extraction_after_one_file(monkeypatch):
    """Extract one member into the staging folder, then stop as a Ctrl-C or a killed kernel would."""

    def extract_some(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[1], path)
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_some)


def test_an_interrupted_extraction_is_redone_never_taken_for_complete(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"
    with monkeypatch.context() as m:
        interrupt_extraction_after_one_file(m)
        with pytest.raises(KeyboardInterrupt):
            extract.extract_zip(archive, dest)
    assert not (dest / "train").exists()  # the half-extracted files are only in the staging folder
    assert not (dest / ".train.zip.complete").exists()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of ours was in the way: no "kept as .old" warning
        extract.extract_zip(archive, dest)
    assert len(list((dest / "train").iterdir())) == len(train_files())
    assert listing(dest) == [".train.zip.complete", "train", *sorted(train_files())]


def test_interrupted_before_the_marker_redoes_and_keeps_what_was_there(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"

    def stop(path, text):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(extract, "write_atomic", stop)
        with pytest.raises(KeyboardInterrupt):
            extract.extract_zip(archive, dest)
    assert (dest / "train").is_dir() and not (dest / ".train.zip.complete").exists()

    with pytest.warns(DataWarning, match=r"stopped halfway.*kept it as train\.old-1"):
        extract.extract_zip(archive, dest)
    assert len(list((dest / "train").iterdir())) == len(train_files())
    assert len(list((dest / "train.old-1").iterdir())) == len(train_files())
    assert (dest / ".train.zip.complete").is_file()


def test_a_new_zip_is_extracted_again_and_the_old_folder_kept(tmp_path):
    archive = make_zip(tmp_path / "train.zip", train_files(2))
    dest = tmp_path / "out"
    extract.extract_zip(archive, dest)
    make_zip(archive, train_files(3))  # a fresh download, with more files
    with pytest.warns(DataWarning, match=r"train\.zip has changed.*kept it as train\.old-1"):
        extract.extract_zip(archive, dest)
    assert len(list((dest / "train").iterdir())) == 6
    assert len(list((dest / "train.old-1").iterdir())) == 4
    make_zip(archive, train_files(1))
    with pytest.warns(DataWarning, match="kept it as train.old-2"):
        extract.extract_zip(archive, dest)
    assert len(list((dest / "train").iterdir())) == 2


def test_a_folder_deleted_after_extraction_is_extracted_again(tmp_path):
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"
    extract.extract_zip(archive, dest)
    for p in (dest / "train").iterdir():
        p.unlink()
    (dest / "train").rmdir()
    extract.extract_zip(archive, dest)
    assert len(list((dest / "train").iterdir())) == len(train_files())


def test_extraction_deletes_only_staging_folders_vitlib_can_prove_it_left(tmp_path):
    """Before, anything named like `.train.zip.partial*` in the data folder was deleted with everything in it."""
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"
    mine = dest / ".train.zip.partial-mine"  # the user's own folder, merely named alike
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    running = dest / ".train.zip.partial.1"  # another process's staging folder, still at work (pid 1 is alive)
    running.mkdir()
    (running / "half.jpg").write_bytes(b"x")
    dead = dest / ".train.zip.partial.999999999"  # a killed extraction's (no such process)
    (dead / "train").mkdir(parents=True)
    extract.extract_zip(archive, dest)
    assert (mine / "notes.txt").read_text() == "mine"
    assert (running / "half.jpg").read_bytes() == b"x"
    assert not dead.exists()
    assert len(list((dest / "train").iterdir())) == len(train_files())


# ---------------------------------------------------------------------------------------------
# Damaged zips and a full disk: one line, the earlier files kept


def test_a_damaged_zip_fails_clearly_and_leaves_earlier_files_as_they_were(tmp_path):
    archive = make_zip(tmp_path / "train.zip", train_files())
    dest = tmp_path / "out"
    extract.extract_zip(archive, dest)
    before = {p.name: p.read_bytes() for p in (dest / "train").iterdir()}

    payload = b"A" * 4000
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("train/cat.0.jpg", jpeg())
        zf.writestr("train/dog.0.jpg", payload)
    raw = archive.read_bytes()
    archive.write_bytes(raw.replace(payload, b"B" * len(payload)))  # the CRC no longer matches
    with pytest.raises(DataError, match="damaged"):
        extract.extract_zip(archive, dest)
    assert {p.name: p.read_bytes() for p in (dest / "train").iterdir()} == before
    assert not (dest / ".train.zip.partial").exists()
    assert not (dest / "train.old-1").exists()


def test_a_truncated_zip_is_reported(tmp_path):
    archive = make_zip(tmp_path / "train.zip", train_files())
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable zip"):
        extract.extract_zip(archive, tmp_path / "out")


def test_a_full_disk_while_extracting_says_so_keeps_the_earlier_folder_and_never_blames_the_zip(tmp_path,
                                                                                                monkeypatch):
    names = [f"train/cat.{i}.jpg" for i in range(3)] + [f"train/dog.{i}.jpg" for i in range(3)]
    archive = make_zip(tmp_path / "train.zip", dict.fromkeys(names, b"old"))
    dest = tmp_path / "out"
    extract.extract_zip(archive, dest)
    before = {p.name: p.read_bytes() for p in (dest / "train").iterdir()}
    make_zip(archive, dict.fromkeys(names, b"a newer, larger zip"))  # changed: the next call extracts it again
    zip_bytes = archive.read_bytes()

    def one_file_then_full(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[0], path)
        raise no_space()

    monkeypatch.setattr(zipfile.ZipFile, "extractall", one_file_then_full)
    with pytest.raises(DataError) as error:
        extract.extract_zip(archive, dest)
    message = str(error.value)
    assert "\n" not in message
    assert f"no space left on {dest.resolve()}" in message and "train.zip" in message
    assert "the zip is fine" in message and "delete" not in message.lower()
    assert {p.name: p.read_bytes() for p in (dest / "train").iterdir()} == before
    assert archive.read_bytes() == zip_bytes
    assert temporaries(dest) == []


def no_inodes(monkeypatch):
    """A file system with bytes to spare and no free inode: it cannot hold one more file."""
    real = os.statvfs

    def statvfs(path):
        stats = real(path)
        return os.statvfs_result((*stats[:5], 1000, 0, 0, *stats[8:]))  # f_files, f_ffree, f_favail

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_out_of_inodes_is_said_as_no_room_for_more_files_not_as_zero_gib(tmp_path, monkeypatch):
    """Extracting thousands of small files onto a file system out of inodes once said "it needs about 0.0 GiB"."""
    names = [f"train/cat.{i}.jpg" for i in range(3)] + [f"train/dog.{i}.jpg" for i in range(3)]
    archive = make_zip(tmp_path / "train.zip", dict.fromkeys(names, b"tiny"))

    def full(self, path=None, members=None, pwd=None):
        raise no_space()

    monkeypatch.setattr(zipfile.ZipFile, "extractall", full)
    no_inodes(monkeypatch)
    with pytest.raises(DataError) as error:
        extract.extract_zip(archive, tmp_path / "out")
    message = str(error.value)
    assert "no room for more files on" in message and "no free inodes" in message and "6 files" in message
    assert "GiB" not in message
    assert "no room for more files" in str(files.disk_full(tmp_path, "last.pt"))


# ---------------------------------------------------------------------------------------------
# The data's warnings


def test_data_warnings_name_no_file_path():
    text = warnings.formatwarning("a partial copy", DataWarning, "/home/someone/vitlib/data.py", 12)
    assert text == "DataWarning: a partial copy\n"
    assert "/home/someone" in warnings.formatwarning("other", UserWarning, "/home/someone/x.py", 1)
