"""vitlib.submit: the validator's refusals, the atomic write, Kaggle errors, and predict end to end."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import requests
import torch

from vitlib import data, download, files, submit
from vitlib.cache import build_cache
from vitlib.checkpoints import save_checkpoint
from vitlib.download import KaggleError
from vitlib.models import build_model, config_dict
from vitlib.predict import predict_proba
from vitlib.presets import get_preset
from vitlib.submit import SubmissionError

IDS = np.arange(1, 13)


def good_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, "label": np.linspace(0.05, 0.95, len(IDS))})


# ---------------------------------------------------------------------------------------------
# The validator


def test_a_good_frame_comes_back_sorted_by_numeric_id():
    shuffled = good_frame().sample(frac=1, random_state=0)
    out = submit.validate_submission(shuffled.astype({"id": str}), IDS)  # "10" < "2" as text, not as numbers
    assert out["id"].tolist() == IDS.tolist()
    assert out["id"].dtype == np.int64 and out["label"].dtype == np.float64
    assert list(out.columns) == ["id", "label"]
    np.testing.assert_array_equal(out["label"], good_frame()["label"])


def _set(frame, row, column, value):
    """frame.loc[row, column] = value, widening the column's type first as a careless edit would."""
    if isinstance(value, str) or isinstance(value, float) and frame[column].dtype.kind in "iu":
        frame[column] = frame[column].astype(object if isinstance(value, str) else np.float64)
    frame.loc[row, column] = value
    return frame


BAD_FRAMES = {
    "a wrong id": (lambda f: _set(f, 11, "id", 13), r"not those of .*1 missing \(12\), 1 unexpected \(13\)"),
    "a gap": (lambda f: f.drop(index=4), r"1 missing \(5\)"),
    "an extra row": (lambda f: pd.concat([f, pd.DataFrame({"id": [99], "label": [0.5]})]), r"unexpected \(99\)"),
    "a duplicate id": (lambda f: _set(f, 1, "id", 1), r"more than once: 1\b"),
    "a fractional id": (lambda f: _set(f, 0, "id", 1.5), "whole numbers"),
    "a missing id": (lambda f: _set(f, 0, "id", np.nan), "missing or not numbers"),
    "a NaN label": (lambda f: _set(f, 2, "label", np.nan), r"1 label\(s\) are NaN \(ids 3\)"),
    "a label above 1": (lambda f: _set(f, 0, "label", 1.2), r"outside \[0, 1\] \(ids 1: 1.2\)"),
    "a negative label": (lambda f: _set(f, 0, "label", -0.1), r"outside \[0, 1\]"),
    "an infinite label": (lambda f: _set(f, 0, "label", np.inf), r"outside \[0, 1\]"),
    "a class name for a label": (lambda f: _set(f, 0, "label", "dog"), "labels are numbers"),
    "a renamed column": (lambda f: f.rename(columns={"label": "p_dog"}), "exactly the columns id and label"),
    "an extra column": (lambda f: f.assign(file="x.jpg"), "exactly the columns id and label"),
    "a missing column": (lambda f: f[["label"]], "exactly the columns id and label"),
}


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_the_validator_refuses(case):
    spoil, message = BAD_FRAMES[case]
    with pytest.raises(SubmissionError, match=message):
        submit.validate_submission(spoil(good_frame()), IDS)


def test_the_error_is_a_value_error_that_names_the_source():
    with pytest.raises(ValueError, match="sample_submission.csv"):
        submit.validate_submission(good_frame().iloc[1:], IDS, "sample_submission.csv")


# ---------------------------------------------------------------------------------------------
# The atomic write


def test_written_file_reads_back_exactly(tmp_path):
    frame = good_frame()
    frame.loc[0, "label"], frame.loc[1, "label"] = 1e-9, 1 - 1e-12  # would round to 0 and 1 at 6 decimals
    path = tmp_path / "new folder" / "submission.csv"
    submit.write_submission(frame.iloc[::-1], path, IDS)
    text = path.read_text().splitlines()
    assert text[0] == "id,label"
    assert [int(line.split(",")[0]) for line in text[1:]] == IDS.tolist()
    back = submit.read_submission(path, IDS)
    np.testing.assert_array_equal(back["label"], frame["label"])


def test_a_refused_frame_leaves_the_earlier_file_as_it_was(tmp_path):
    path = tmp_path / "submission.csv"
    submit.write_submission(good_frame(), path, IDS)
    before = path.read_bytes()
    for case, (spoil, _) in BAD_FRAMES.items():
        with pytest.raises(SubmissionError):
            submit.write_submission(spoil(good_frame()), path, IDS)
        assert path.read_bytes() == before, case
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_a_write_that_fails_halfway_leaves_the_earlier_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    submit.write_submission(good_frame(), path, IDS)
    before = path.read_bytes()

    def half_then_fail(self, target, **kwargs):
        with open(target, "w") as f:
            f.write("id,label\n1,0.")
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    better = good_frame().assign(label=0.5)
    with pytest.raises(OSError, match="No space"):
        submit.write_submission(better, path, IDS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_an_unreadable_file_is_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SubmissionError, match="not a readable CSV"):
        submit.read_submission(tmp_path / "empty.csv", IDS)


# ---------------------------------------------------------------------------------------------
# Prediction on the sample, with a tiny untrained model


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    """The synthetic sample, and every cache, in a folder of this module's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(files.DATA_DIR_ENV, str(tmp_path_factory.mktemp("data")))
        yield data.prepare_data("sample", verbose=False)


@pytest.fixture(scope="module")
def checkpoint(sample_ds, tmp_path_factory):
    preset = get_preset("sample")
    torch.manual_seed(0)
    model = build_model(preset.model)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"model_config": config_dict(preset.model), "model": model.state_dict(),
                           "preset": preset.to_dict(), "data": sample_ds.describe()})
    return path


def test_predict_to_csv_writes_a_checked_submission(sample_ds, checkpoint, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    frame = submit.predict_to_csv(checkpoint, sample_ds, out, device="cpu")
    ids = pd.read_csv(sample_ds.sample_submission)["id"]
    back = pd.read_csv(out)
    assert back["id"].tolist() == sorted(ids)
    assert back["label"].between(0, 1).all() and back["label"].notna().all()
    pd.testing.assert_frame_equal(back, frame)
    printed = capsys.readouterr().out
    assert "expected log loss" in printed and "sample_submission.csv" in printed


def test_without_tta_or_calibration_the_file_holds_the_model_s_own_probabilities(sample_ds, checkpoint, tmp_path):
    frame = submit.predict_to_csv(checkpoint, sample_ds, tmp_path / "s.csv", tta=False, calibrate=False, device="cpu")
    model, _ = submit.load_model(checkpoint)
    test = data.index_images(sample_ds, "test")
    p = predict_proba(model, build_cache(sample_ds, test, model.config.image_size, part="test").images, tta=False)
    np.testing.assert_allclose(frame["label"], p[np.argsort(test["id"].to_numpy())], rtol=1e-6)


def test_without_a_sample_submission_the_ids_come_from_the_test_folder(sample_ds):
    ids, source = submit.expected_ids(dataclasses.replace(sample_ds, sample_submission=None))
    assert sorted(ids) == sorted(data.index_images(sample_ds, "test")["id"])
    assert "no sample submission" in source


@pytest.mark.filterwarnings("ignore:Skipped 1 unreadable image")  # the cache's own report of it
def test_an_unreadable_test_image_gets_one_half_and_a_warning(sample_ds, checkpoint, tmp_path):
    shutil.copytree(sample_ds.test_dir, tmp_path / "test")
    (tmp_path / "test" / "7.jpg").write_bytes(b"not a jpeg")
    ds = dataclasses.replace(sample_ds, name="damaged", root=tmp_path, test_dir=tmp_path / "test")
    model, _ = submit.load_model(checkpoint)
    with pytest.warns(submit.SubmissionWarning, match=r"could not be read \(ids 7\)"):
        test = submit.predict_test(model, ds)
    assert test.loc[test["id"] == 7, "p_raw"].item() == submit.UNREADABLE_P
    assert test["unreadable"].sum() == 1 and len(test) == len(data.index_images(sample_ds, "test"))


def test_submitting_synthetic_predictions_is_refused_before_predicting(sample_ds, checkpoint, tmp_path):
    with pytest.raises(SubmissionError, match="SYNTHETIC"):
        submit.predict_to_csv(checkpoint, sample_ds, tmp_path / "s.csv", submit_message="try", device="cpu")
    assert not (tmp_path / "s.csv").exists()


def test_submitting_a_partial_copy_is_refused_before_anything_is_written(sample_ds, checkpoint, tmp_path):
    """Before, --submit on a partial copy wrote the CSV, and only then refused (exit 2 after writing)."""
    real = dataclasses.replace(sample_ds, name="dev-copy", kind="local")  # photos, but not the 12,500 test ids
    with pytest.raises(SubmissionError, match=r"Kaggle scores 12,500 test predictions; this file has \d+"):
        submit.predict_to_csv(checkpoint, real, tmp_path / "s.csv", submit_message="try", device="cpu")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(("content", "says"), [
    (b"", r"EmptyDataError"), (b"id,label\nabc,0.5\n", "not whole numbers"), (b"\xff\xfe\x00\x81\x90", "")])
def test_a_damaged_sample_submission_is_one_line_before_predicting(sample_ds, tmp_path, content, says):
    """Before: EmptyDataError, ValueError or UnicodeDecodeError, each only after all the predicting."""
    broken = tmp_path / "sample_submission.csv"
    broken.write_bytes(content)
    ds = dataclasses.replace(sample_ds, sample_submission=broken)
    with pytest.raises(SubmissionError, match=rf"not Kaggle's sample submission.*{says}|{says}.*not Kaggle's"):
        submit.expected_ids(ds)


# ---------------------------------------------------------------------------------------------
# Submitting to Kaggle, with a fake api


class FakeApi:
    def __init__(self, error=None):
        self.error, self.calls = error, []

    def competition_submit(self, path, message, competition, quiet=False):
        self.calls.append((path, message, competition))
        if self.error is not None:
            raise self.error
        return "ok"


def _http_error(status):
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.fixture
def competition(tmp_path):
    """A stand-in for the competition's data: only its sample submission (12,500 ids) matters here."""
    ids = np.arange(1, data.SHIPPED["test"] + 1)
    pd.DataFrame({"id": ids, "label": 0.5}).to_csv(tmp_path / "sample_submission.csv", index=False)
    ds = data.DogsVsCats(download.COMPETITION, "kaggle", tmp_path, tmp_path / "train", None,
                         tmp_path / "sample_submission.csv")
    path = tmp_path / "submission.csv"
    submit.write_submission(pd.DataFrame({"id": ids, "label": 0.7}), path, ids)
    return ds, path


def test_submit_sends_the_checked_file_to_the_competition(competition):
    ds, path = competition
    api = FakeApi()
    assert submit.submit_file(path, ds, "first try", api=api) == "ok"
    assert api.calls == [(str(path), "first try", download.COMPETITION)]


@pytest.mark.parametrize("error, message", [
    (_http_error(403), "accept this competition's rules"),
    (_http_error(401), "rejected the credentials"),
    (SystemExit(1), "rejected the credentials"),  # what the kaggle package raises when it finds none
    (requests.ConnectionError("Name or service not known"), "no network"),
])
def test_submit_errors_say_what_to_do(competition, error, message):
    ds, path = competition
    with pytest.raises(KaggleError, match=message):
        submit.submit_file(path, ds, "try", api=FakeApi(error))


def test_submit_without_credentials_says_how_to_add_them(competition, tmp_path, monkeypatch):
    ds, path = competition
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(KaggleError, match="No Kaggle credentials found"):
        submit.submit_file(path, ds, "try")


def test_a_partial_or_damaged_file_is_never_uploaded(competition):
    ds, path = competition
    api = FakeApi()
    partial = dataclasses.replace(ds, name="dogs-vs-cats-dev", sample_submission=None)
    small = pd.DataFrame({"id": [1, 2], "label": [0.1, 0.9]})
    with pytest.raises(SubmissionError, match="12,500 test predictions; this file has 2"):
        submit.check_submittable(partial, len(small))
    path.write_text(path.read_text().replace("\n7,0.7\n", "\n7,nan\n"))
    with pytest.raises(SubmissionError, match=r"NaN \(ids 7\)"):
        submit.submit_file(path, ds, "try", api=api)
    assert api.calls == []


def test_prediction_titles_are_coloured_by_the_true_class_when_it_is_known(sample_ds):
    import matplotlib

    matplotlib.use("Agg")
    from vitlib.plots import GROUP_COLORS

    index = data.index_images(sample_ds).groupby("label").head(2)  # two cats, two dogs
    val = index.assign(p_dog=np.where(index["label"] == 1, 0.2, 0.1))  # the dogs wrong, the cats right
    titles = [ax.title for ax in submit.show_predictions(sample_ds, val, n=4).axes if ax.get_title()]
    for row, title in zip(val.itertuples(), titles, strict=True):
        assert title.get_color() == GROUP_COLORS[data.CLASSES[row.label]]
        assert title.get_text().split("\n")[0].endswith("✓" if row.label == 0 else "✗")
    test = data.index_images(sample_ds, "test").head(2).assign(p_dog=[0.9, 0.55], unreadable=False)
    colors = [ax.title.get_color() for ax in submit.show_predictions(sample_ds, test).axes if ax.get_title()]
    assert colors == [GROUP_COLORS["dog"], "grey"]  # the truth unknown: the class predicted, grey when unsure
    fig = submit.show_predictions(sample_ds, test, source="the two least sure")
    assert fig._suptitle.get_text().split("\n")[1:] == ["the two least sure"]  # its own line, not run into the first
