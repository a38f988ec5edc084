"""The data layer: labels, the split, the layouts users bring, the counts (extraction: test_extract.py).

Every dataset here is a few tiny JPEGs zipped in tmp_path: nothing touches the network or the repo's data/.
"""

import io
import os
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
from helpers import jpeg, listing, make_zip, train_files

from vitlib import data, download, sample
from vitlib.data import DataError, DataWarning


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
# What counts as an image


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
