"""The data layer: labels, the split, safe and atomic extraction, the layouts users bring, the counts.

Every dataset here is a few tiny JPEGs zipped in tmp_path: nothing touches the network or the repo's data/.
"""

import io
import os
import stat
import subprocess
import sys
import types
import warnings
import zipfile
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import requests
from PIL import Image

from vitlib import data, download, extract, sample
from vitlib.data import DataError, DataWarning
from vitlib.extract import UnsafeArchiveError
from vitlib.files import UNZIP_LIMIT_ENV


def jpeg(color=(200, 80, 40), size=(12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, files: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return path


def train_files(n_per_class=3, folder="train") -> dict:
    return {f"{folder}/{name}.{i}.jpg": jpeg((40 + 60 * label, 90, 120)) for label, name in enumerate(("cat", "dog"))
            for i in range(n_per_class)}


def unlabelled_files(n=3, folder="test") -> dict:
    return {f"{folder}/{i}.jpg": jpeg() for i in range(1, n + 1)}


def redux_folder(folder, test_folder="test", csv="sample_submission.csv"):
    """What a user who downloaded the competition's files by hand has: train.zip, test.zip and the csv."""
    make_zip(folder / "train.zip", train_files())
    make_zip(folder / f"{test_folder}.zip", unlabelled_files(folder=test_folder))
    (folder / csv).write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n")
    return folder


def wrapper_zip(path):
    """What Kaggle's API downloads: <competition>.zip holding train.zip, test.zip and the csv."""
    inner = {}
    for name, files in (("train.zip", train_files()), ("test.zip", unlabelled_files())):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, c in files.items():
                zf.writestr(n, c)
        inner[name] = buf.getvalue()
    inner["sample_submission.csv"] = b"id,label\n1,0.5\n"
    return make_zip(path, inner)


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Labels, index, split


@pytest.mark.parametrize(("name", "label"), [
    ("cat.12.jpg", 0), ("dog.7.jpg", 1), ("train/dog.3.jpg", 1), ("/abs/train/cat.0.jpeg", 0),
    ("DOG.5.JPG", 1), ("C:\\data\\train\\dog.3.jpg", 1), ("train\\cat.4.jpg", 0),
])
def test_parse_label_reads_only_the_file_name(name, label):
    assert data.parse_label(name) == label


@pytest.mark.parametrize("name", ["cat1.jpg", "bird.1.jpg", "cat.x.jpg", "cat.1.png", "dogs/1.jpg", "cat.1.jpg.tmp"])
def test_parse_label_refuses_other_names(name):
    with pytest.raises(ValueError, match="cat.N.jpg"):
        data.parse_label(name)


def extracted(tmp_path, names, test_names=()):
    """A DogsVsCats over a folder holding exactly these (empty-named-JPEG) files."""
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    for n in names:
        (root / "train" / n).write_bytes(jpeg())
    test = None
    if test_names:
        test = root / "test"
        test.mkdir()
        for n in test_names:
            (test / n).write_bytes(jpeg())
    return data.DogsVsCats("ds", "local", root, root / "train", test, None)


def test_index_sorts_by_label_then_numeric_id_and_reports_odd_files(tmp_path):
    ds = extracted(tmp_path, ["dog.1.jpg", "cat.10.jpg", "cat.2.jpg", "notes.txt", ".DS_Store"])
    with pytest.warns(DataWarning, match=r"Left out 1 file.*notes\.txt") as record:
        index = data.index_images(ds)
    assert ".DS_Store" not in str(record[0].message)
    assert list(index["file"]) == ["train/cat.2.jpg", "train/cat.10.jpg", "train/dog.1.jpg"]
    assert list(index["id"]) == [2, 10, 1]
    assert list(index["label"]) == [0, 0, 1]
    assert list(index["class"]) == ["cat", "cat", "dog"]


def test_index_of_the_test_folder_and_of_a_missing_one(tmp_path):
    ds = extracted(tmp_path, ["cat.1.jpg"], test_names=["10.jpg", "2.jpg", "1.jpg"])
    index = data.index_images(ds, "test")
    assert list(index.columns) == ["file", "id"]
    assert list(index["id"]) == [1, 2, 10]
    assert list(index["file"]) == ["test/1.jpg", "test/2.jpg", "test/10.jpg"]
    no_test = data.DogsVsCats("ds", "local", ds.root, ds.train_dir, None, None)
    with pytest.raises(DataError, match="no test folder"):
        data.index_images(no_test, "test")


def fake_index(n_cats=50, n_dogs=30) -> pd.DataFrame:
    rows = [{"file": f"train/{c}.{i}.jpg", "id": i, "label": label, "class": c}
            for label, (c, n) in enumerate((("cat", n_cats), ("dog", n_dogs))) for i in range(n)]
    return pd.DataFrame(rows)


def val_files(split: pd.DataFrame) -> set:
    return set(split.loc[split["split"] == "val", "file"])


def test_split_is_stratified_and_complete():
    index = fake_index(50, 30)
    split = data.split_train_val(index, val_fraction=0.2, seed=42)
    assert len(split) == len(index) and set(split["file"]) == set(index["file"])
    counts = split.groupby(["label", "split"]).size()
    assert counts[(0, "val")] == 10 and counts[(0, "train")] == 40
    assert counts[(1, "val")] == 6 and counts[(1, "train")] == 24
    assert "split" not in index.columns  # the input is left as it was


def test_split_is_deterministic_whatever_the_listing_order():
    index = fake_index()
    first = data.split_train_val(index, seed=7)
    again = data.split_train_val(index, seed=7)
    shuffled = data.split_train_val(index.sample(frac=1, random_state=3), seed=7)
    assert val_files(first) == val_files(again) == val_files(shuffled)
    assert val_files(data.split_train_val(index, seed=8)) != val_files(first)


# ---------------------------------------------------------------------------------------------
# Safe extraction


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


def test_only_regular_files_are_images_a_pipe_or_a_broken_link_is_left_out(tmp_path):
    """A FIFO named like a photo used to hang the cache (opening it blocks); links to nothing and link loops used to
    end in a traceback. Each is left out with a warning naming it."""
    folder = tmp_path / "ds"
    (folder / "train").mkdir(parents=True)
    for name, content in train_files(2).items():
        (folder / name).write_bytes(content)
    os.mkfifo(folder / "train" / "cat.10.jpg")
    (folder / "train" / "dog.11.jpg").symlink_to(folder / "train" / "nowhere.jpg")
    (folder / "train" / "dog.12.jpg").symlink_to(folder / "train" / "dog.12.jpg")  # a link loop
    ds = data.DogsVsCats("ds", "local", folder, folder / "train", None, None)
    with pytest.warns(DataWarning, match=r"Left out 3 name\(s\) in train/ that are not regular files.*cat\.10\.jpg"):
        index = data.index_images(ds)
    assert sorted(index["file"]) == sorted(f"train/{n}.{i}.jpg" for n in ("cat", "dog") for i in range(2))
    assert data.count_images(folder / "train") == 4


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


# ---------------------------------------------------------------------------------------------
# prepare_data: the layouts users bring


def quiet_prepare(*args, **kwargs):
    """prepare_data on a toy copy, which is of course not 25,000 images: that warning is expected here."""
    with pytest.warns(DataWarning, match="expected 25,000"):
        return data.prepare_data(*args, verbose=False, **kwargs)


def test_a_folder_of_zips_downloaded_by_hand(tmp_path):
    src = redux_folder(tmp_path / "downloads" / "dogs-vs-cats-redux")
    before = listing(src)
    ds = quiet_prepare(src, dest=tmp_path / "data")
    assert ds.kind == "local" and ds.name == "dogs-vs-cats-redux" and not ds.synthetic
    assert ds.root == tmp_path / "data" / "dogs-vs-cats-redux"
    assert ds.train_dir == ds.root / "train" and ds.test_dir == ds.root / "test"
    assert ds.sample_submission == ds.root / "sample_submission.csv" and ds.sample_submission.is_file()
    assert data.count_images(ds.train_dir) == 6 and data.count_images(ds.test_dir) == 3
    assert listing(src) == before  # the user's folder is only read
    assert "real photos" in ds.describe() and "dogs-vs-cats-redux" in ds.describe()


def test_the_original_competition_layout_with_test1(tmp_path):
    src = redux_folder(tmp_path / "dogs-vs-cats", test_folder="test1", csv="sampleSubmission.csv")
    ds = quiet_prepare(src, dest=tmp_path / "data")
    assert ds.test_dir.name == "test1"
    assert ds.sample_submission.name == "sampleSubmission.csv"
    assert list(data.index_images(ds, "test")["file"]) == ["test1/1.jpg", "test1/2.jpg", "test1/3.jpg"]


def test_the_competition_zip_itself(tmp_path):
    archive = wrapper_zip(tmp_path / "downloads" / "dogs-vs-cats-redux-kernels-edition.zip")
    ds = quiet_prepare(archive, dest=tmp_path / "data")
    assert ds.root == tmp_path / "data" / "dogs-vs-cats-redux-kernels-edition"
    assert data.count_images(ds.train_dir) == 6 and data.count_images(ds.test_dir) == 3
    assert ds.sample_submission is not None


def test_a_folder_holding_the_competition_zip(tmp_path):
    wrapper_zip(tmp_path / "downloads" / "dogs-vs-cats-redux-kernels-edition.zip")
    ds = quiet_prepare(tmp_path / "downloads", dest=tmp_path / "data")
    assert ds.root == tmp_path / "data" / "downloads"
    assert data.count_images(ds.train_dir) == 6 and data.count_images(ds.test_dir) == 3


def test_a_folder_extracted_by_hand_is_used_in_place(tmp_path):
    src = tmp_path / "extracted"
    for files in (train_files(), unlabelled_files()):
        for name, content in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(content)
    ds = quiet_prepare(src, dest=tmp_path / "data")
    assert ds.root == src and ds.test_dir == src / "test"
    assert not (tmp_path / "data").exists()


def test_a_second_prepare_is_a_no_op(tmp_path, monkeypatch):
    src = redux_folder(tmp_path / "downloads")
    first = quiet_prepare(src, dest=tmp_path / "data")
    stamps = {p: p.stat().st_mtime_ns for p in first.root.rglob("*")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", must_not_run)
    again = quiet_prepare(src, dest=tmp_path / "data")
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*")} == stamps


def test_a_wrong_path_is_a_clear_data_error(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*train\.zip"):
        data.prepare_data(tmp_path / "no-such-folder", dest=tmp_path / "data", verbose=False)
    assert not (tmp_path / "data").exists()


def test_a_file_that_is_not_a_zip_is_a_clear_data_error(tmp_path):
    bogus = tmp_path / "train.zip"
    bogus.write_bytes(b"<html>login page</html>")
    with pytest.raises(DataError, match="not a zip file"):
        data.prepare_data(bogus, dest=tmp_path / "data", verbose=False)


def test_a_folder_without_train_images_is_a_clear_data_error(tmp_path):
    src = tmp_path / "wrong"
    make_zip(src / "test.zip", unlabelled_files())
    with pytest.raises(DataError, match=r"No train/ folder"):
        data.prepare_data(src, dest=tmp_path / "data", verbose=False)


def test_counts_are_checked_against_what_the_competition_ships(tmp_path, monkeypatch):
    src = redux_folder(tmp_path / "downloads")
    with pytest.warns(DataWarning, match=r"train: 6 \(expected 25,000\), test: 3 \(expected 12,500\)"):
        ds = data.prepare_data(src, dest=tmp_path / "data", verbose=False)
    table = data.check_counts(ds)
    assert table[["folder", "images", "expected", "ok"]].values.tolist() == [
        ["train", 6, 25_000, False], ["test", 3, 12_500, False]]
    monkeypatch.setitem(data.SHIPPED, "train", 6)
    monkeypatch.setitem(data.SHIPPED, "test", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.check_counts(ds, warn=True)["ok"].all()
    (ds.test_dir / "3.jpg").unlink()
    with pytest.warns(DataWarning, match=r"test: 2 \(expected 3\)"):
        data.check_counts(ds, warn=True)


def test_data_warnings_name_no_file_path():
    text = warnings.formatwarning("a partial copy", DataWarning, "/home/someone/vitlib/data.py", 12)
    assert text == "DataWarning: a partial copy\n"
    assert "/home/someone" in warnings.formatwarning("other", UserWarning, "/home/someone/x.py", 1)


# ---------------------------------------------------------------------------------------------
# "auto" and "kaggle": which source, without the network


class FakeApi:
    """Stands in for kaggle's KaggleApi: writes the competition zip, or fails as the real one does."""

    def __init__(self, error=None):
        self.error, self.calls = error, 0

    def competition_download_files(self, competition, path, quiet=True):
        self.calls += 1
        if self.error is not None:
            raise self.error
        wrapper_zip(Path(path) / f"{competition}.zip")


def no_credentials(monkeypatch, home):
    """Empty (so monkeypatch restores them, even when vitlib copies Colab secrets into os.environ) is unset."""
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("HOME", str(home))


def test_auto_without_data_or_credentials_uses_the_sample_and_says_so(tmp_path, monkeypatch, capsys):
    no_credentials(monkeypatch, tmp_path / "home")
    monkeypatch.setattr(sample, "write_sample", partial(sample.write_sample, n_train=4, n_test=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the sample is checked against what it was made with
        ds = data.prepare_data("auto", dest=tmp_path / "data")
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "Kaggle credentials" in out
    assert ds.synthetic and ds.kind == "sample" and ds.root == tmp_path / "data" / "sample"
    assert "SYNTHETIC" in ds.describe()
    assert str(tmp_path) not in out and str(tmp_path) not in repr(ds)  # notebook outputs name no machine's folders


def test_auto_in_colab_uses_the_secrets(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path / "home")
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get={"KAGGLE_API_TOKEN": "secret"}.__getitem__)  # KeyError if absent
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    api = FakeApi()
    monkeypatch.setattr(download, "kaggle_api", lambda: api)
    ds = quiet_prepare("auto", dest=tmp_path / "data")
    assert ds.kind == "kaggle" and api.calls == 1


def test_auto_in_colab_without_secrets_says_how_to_add_them_before_the_sample(tmp_path, monkeypatch, capsys):
    no_credentials(monkeypatch, tmp_path / "home")
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get={}.__getitem__)  # no secret added: KeyError for every name
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(sample, "write_sample", partial(sample.write_sample, n_train=4, n_test=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = data.prepare_data("auto", dest=tmp_path / "data")
    out = capsys.readouterr().out
    assert ds.synthetic and "SYNTHETIC" in out
    assert "Colab: no Kaggle secrets: add KAGGLE_USERNAME and KAGGLE_KEY" in out  # the fix, before the sample is used


def test_the_sample_reached_by_its_path_is_still_called_synthetic(tmp_path):
    """VITLIB_DATA=data/sample must not turn drawn shapes into "real photos" (--require-real, submit rely on it)."""
    src = sample.write_sample(tmp_path / "src" / "mysample", n_train=6, n_test=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        by_zips = data.prepare_data(src, dest=tmp_path / "data", verbose=False)
        in_place = data.prepare_data(by_zips.root, dest=tmp_path / "data", verbose=False)
    for ds in (by_zips, in_place):
        assert ds.synthetic and "SYNTHETIC" in ds.describe()
        assert data.check_counts(ds)["expected"].tolist() == [6, 3]


def test_auto_finds_kaggle_data_already_on_disk_without_asking_kaggle(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "kaggle_api", lambda: pytest.fail("asked Kaggle"))
    wrapper_zip(tmp_path / "data" / download.COMPETITION / f"{download.COMPETITION}.zip")
    ds = quiet_prepare("auto", dest=tmp_path / "data")
    assert ds.kind == "kaggle" and ds.name == download.COMPETITION
    assert data.count_images(ds.train_dir) == 6
    assert "Kaggle download" in ds.describe()


def test_auto_with_credentials_downloads(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "fake-token")
    api = FakeApi()
    monkeypatch.setattr(download, "kaggle_api", lambda: api)
    ds = quiet_prepare("auto", dest=tmp_path / "data")
    assert api.calls == 1 and ds.kind == "kaggle"
    assert data.count_images(ds.test_dir) == 3
    quiet_prepare("kaggle", dest=tmp_path / "data")
    assert api.calls == 1  # downloaded once


def test_a_refused_download_says_what_to_do_and_changes_nothing(tmp_path, monkeypatch):
    response = requests.Response()
    response.status_code = 403
    monkeypatch.setattr(download, "kaggle_api", lambda: FakeApi(requests.HTTPError("403", response=response)))
    dest = tmp_path / "data"
    (dest / download.COMPETITION).mkdir(parents=True)
    (dest / download.COMPETITION / "notes.txt").write_text("mine")
    with pytest.raises(download.KaggleError, match=r"accept.*rules.*kaggle\.com/c/dogs-vs-cats-redux"):
        data.prepare_data("kaggle", dest=dest, verbose=False)
    lock = f".{download.COMPETITION}.download.lock"  # one download at a time (torchrun's processes): its lock file
    assert listing(dest) == [lock, download.COMPETITION, f"{download.COMPETITION}/notes.txt"]


@pytest.mark.slow
def test_importing_vitlib_does_not_import_kaggle(tmp_path):
    """kaggle's import authenticates, prints and creates ~/.config/kaggle: vitlib must not trigger it."""
    code = ("import sys, vitlib, vitlib.data, vitlib.download, vitlib.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kaggle'))")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
    assert list(home.iterdir()) == []


def test_a_truncated_competition_zip_in_a_folder_is_a_clear_data_error(tmp_path):
    """_is_wrapper opens every zip of the folder first: a truncated one must not give a raw BadZipFile."""
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "dogs-vs-cats-redux-kernels-edition.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 96)
    with pytest.raises(data.DataError, match="not a readable zip.*download it again"):
        data.prepare_data(folder, dest=tmp_path / "data", verbose=False)


def test_training_subsets_are_nested_balanced_and_leave_validation_alone():
    """The data curve's subsets: 4 photos are part of the 8, half of each class; every validation photo stays."""
    index = data.split_train_val(pd.DataFrame({"file": [f"f{i}" for i in range(40)], "id": range(40),
                                               "label": [i % 2 for i in range(40)]}))
    small, large = data.nested_subset(index, 4), data.nested_subset(index, 8)
    train = {name: set(part.loc[part["split"] == "train", "file"]) for name, part in (("4", small), ("8", large))}
    assert len(train["4"]) == 4 and len(train["8"]) == 8 and train["4"] < train["8"]
    assert small.loc[small["split"] == "train", "label"].value_counts().tolist() == [2, 2]
    assert (small[small["split"] == "val"]).equals(index[index["split"] == "val"])
    assert data.nested_subset(index, None) is index
    with pytest.raises(DataError, match="train_images 100 is more than the 32 training photos"):
        data.nested_subset(index, 100)


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
