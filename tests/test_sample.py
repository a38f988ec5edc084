"""The built-in synthetic sample: the Kaggle layout, deterministic to the byte, and learnable."""

import hashlib
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from vitlib import data, files, sample
from vitlib.presets import get_preset
from vitlib.train import fit, prepare_training_data


def digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_same_arguments_write_the_same_bytes(tmp_path):
    a = sample.write_sample(tmp_path / "a", n_train=6, n_test=3)
    b = sample.write_sample(tmp_path / "b", n_train=6, n_test=3)
    assert digests(a) == digests(b)
    c = sample.write_sample(tmp_path / "c", n_train=6, n_test=3, seed=1)
    assert digests(c)["train.zip"] != digests(a)["train.zip"]


def test_the_kaggle_layout(tmp_path):
    folder = sample.write_sample(tmp_path / "s", n_train=6, n_test=3)
    assert sorted(p.name for p in folder.iterdir()) == [
        "sample.json", "sample_submission.csv", "test.zip", "test_labels.csv", "train.zip"]
    with zipfile.ZipFile(folder / "train.zip") as zf:
        images = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert images == [f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)]
    with zipfile.ZipFile(folder / "test.zip") as zf:
        assert sorted(n for n in zf.namelist() if not n.endswith("/")) == ["test/1.jpg", "test/2.jpg", "test/3.jpg"]
    submission = pd.read_csv(folder / "sample_submission.csv")
    assert list(submission.columns) == ["id", "label"] and list(submission["id"]) == [1, 2, 3]
    labels = pd.read_csv(folder / "test_labels.csv")
    assert list(labels["id"]) == [1, 2, 3] and set(labels["label"]) <= {0, 1}


def test_a_current_sample_is_not_rewritten_and_an_outdated_one_is(tmp_path):
    folder = sample.write_sample(tmp_path / "s", n_train=4, n_test=2)
    mtime = (folder / "train.zip").stat().st_mtime_ns
    sample.write_sample(folder, n_train=4, n_test=2)
    assert (folder / "train.zip").stat().st_mtime_ns == mtime
    sample.write_sample(folder, n_train=6, n_test=2)
    with zipfile.ZipFile(folder / "train.zip") as zf:
        assert sum(not n.endswith("/") for n in zf.namelist()) == 6
    assert json.loads((folder / "sample.json").read_text())["n_train"] == 6


def test_draw_is_deterministic_and_the_classes_differ():
    cat, again, dog = (np.asarray(sample.draw(label, seed=5)) for label in (0, 0, 1))
    np.testing.assert_array_equal(cat, again)
    assert not np.array_equal(cat, dog)
    assert not np.array_equal(cat, np.asarray(sample.draw(0, seed=6)))


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    """The sample exactly as `prepare_data("sample")` makes it, in a temporary data folder."""
    dest = tmp_path_factory.mktemp("data")
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.DataWarning)  # the sample has the counts it was made with
        return data.prepare_data("sample", dest=dest, verbose=False)


def test_prepare_sample_is_labelled_synthetic_and_complete(sample_ds):
    assert sample_ds.synthetic and sample_ds.kind == "sample" and sample_ds.name == "sample"
    assert "SYNTHETIC" in sample_ds.describe() and "SYNTHETIC" in str(sample_ds)
    assert data.check_counts(sample_ds)["ok"].all()
    index = data.index_images(sample_ds)
    assert len(index) == sample.N_TRAIN and index["label"].value_counts().tolist() == [sample.N_TRAIN // 2] * 2
    assert list(data.index_images(sample_ds, "test")["id"]) == list(range(1, sample.N_TEST + 1))
    assert sample_ds.sample_submission.name == "sample_submission.csv"


def test_prepare_sample_again_is_a_no_op(sample_ds):
    stamps = {p: p.stat().st_mtime_ns for p in sample_ds.root.rglob("*")}
    again = data.prepare_data("sample", dest=sample_ds.root.parent, verbose=False)
    assert again == sample_ds
    assert {p: p.stat().st_mtime_ns for p in sample_ds.root.rglob("*")} == stamps


@pytest.fixture
def one_thread():
    """Train on one thread: on a busy 2-core machine two threads fight each other (5x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_model_learns_the_sample_in_seconds_on_a_cpu(sample_ds, tmp_path, monkeypatch, one_thread):
    """The sample preset (10 epochs, 400 training images at 32 px) must beat chance clearly.

    Measured: final validation accuracy 0.68 (bf16 autocast) to 0.74 (fp32) on 100 validation images,
    log loss about 0.56. Chance is 0.5 accuracy and ln 2 = 0.693 log loss; 0.62 would happen by chance
    with a probability under 1%.
    """
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path))  # the image cache goes to tmp_path, not data/
    preset = get_preset("sample")
    run = fit(preset, prepare_training_data(sample_ds, preset, "cpu"), run_dir=tmp_path / "run", progress=False)
    last = run.history.iloc[-1]
    assert len(run.data.train) == 400 and len(run.data.val) == 100
    assert last["val_acc"] >= 0.62
    assert last["val_loss"] < 0.65
    assert last["train_loss"] < run.history["train_loss"].iloc[0]


@pytest.mark.parametrize("stamp", ["", "{not json", "[1, 2]"], ids=["empty", "garbage", "not-an-object"])
def test_a_damaged_stamp_is_a_sample_written_again_not_a_traceback(tmp_path, stamp):
    folder = sample.write_sample(tmp_path / "s", n_train=4, n_test=2)
    (folder / sample.SAMPLE_STAMP).write_text(stamp)
    sample.write_sample(folder, n_train=4, n_test=2)
    assert json.loads((folder / sample.SAMPLE_STAMP).read_text())["n_train"] == 4
    ds = data.prepare_data(folder, dest=tmp_path / "d", verbose=False)
    (ds.root / sample.SAMPLE_STAMP).write_text(stamp)
    assert data.check_counts(ds)["images"].tolist() == [4, 2]
