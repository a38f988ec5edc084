"""From a trained model to a validated submission.csv: test predictions, calibration, checks, atomic write.

The competition scores the mean log loss of P(dog) over its test images. Besides the model, three
things decide that number: test-time augmentation (average an image and its mirror image), the
calibration of the probabilities (a temperature fitted on the validation split, or clipping,
whichever measures better there), and a file Kaggle accepts (every id once, numbers in [0, 1]).
The file is validated before it is written and written atomically: a bad frame never replaces a
good submission.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import download
from .cache import build_cache
from .calibration import Calibration, choose_calibration, compare_calibrations
from .checkpoints import load_model
from .data import CLASSES, SHIPPED, DataWarning, DogsVsCats, index_images, validation_split
from .device import pick_device
from .explore import show_files
from .files import atomic_path, shown
from .metrics import image_losses, log_loss
from .plots import GROUP_COLORS
from .predict import predict_split
from .presets import Preset

COLUMNS = ["id", "label"]  # Kaggle's sample submission: id (the N of test/N.jpg), label = P(dog)
UNREADABLE_P = 0.5  # P(dog) given to a test image that cannot be decoded: costs log 2 whatever it shows


class SubmissionError(ValueError):
    """A submission that Kaggle would reject or score badly; the message says what is wrong and what to do."""


class SubmissionWarning(DataWarning):
    """The submission is complete but something in it deserves a look (an unreadable test image, say)."""


# ---------------------------------------------------------------------------------------------
# Predictions


def predict_test(model, ds: DogsVsCats, tta: bool = True, device=None, batch_size: int = 512) -> pd.DataFrame:
    """P(dog) for every image of the test folder: columns id, file, p_raw, unreadable; sorted by id.

    The images are decoded once at the model's resolution (vitlib.cache). An unreadable one cannot
    be left out, because Kaggle needs every id: it gets P(dog) = 0.5, which costs log 2 = 0.69
    whatever it shows (a guess could cost 34.5), and a SubmissionWarning names it.
    """
    index = index_images(ds, "test")
    cache = build_cache(ds, index, model.config.image_size, part="test")
    p = predict_split(model, cache, batch_size, tta, device).set_index("file")["p_raw"]
    out = index.assign(p_raw=index["file"].map(p))
    out["unreadable"] = out["p_raw"].isna()
    if out["unreadable"].any():
        bad = out.loc[out["unreadable"], "id"].tolist()
        out.loc[out["unreadable"], "p_raw"] = UNREADABLE_P
        warnings.warn(f"{len(bad)} test image(s) could not be read (ids {_few(bad)}); each gets P(dog) = "
                      f"{UNREADABLE_P}, costing log 2 = 0.69 on the leaderboard. Kaggle needs every id, so they "
                      "stay in the file: re-extract test.zip to predict them properly.", SubmissionWarning,
                      stacklevel=2)
    return out


def predict_val(model, preset: Preset, ds: DogsVsCats, tta: bool = True, device=None,
                batch_size: int = 512) -> pd.DataFrame:
    """P(dog) for the validation split the preset trained with (same fraction and split seed).

    Reuses the training cache, so nothing is decoded again. Columns: file, id, label, p_raw.
    """
    device = pick_device(device)
    index = validation_split(ds, preset)
    val = build_cache(ds, index, preset.model.image_size).select(index.loc[index["split"] == "val", "file"])
    return predict_split(model, val, batch_size, tta, device)


@dataclass
class Predictions:
    """Test and validation predictions, raw (p_raw) and calibrated (p_dog), and how they were calibrated."""

    test: pd.DataFrame  # id, file, p_raw, unreadable, p_dog
    val: pd.DataFrame  # file, id, label, p_raw, p_dog
    calibration: Calibration
    table: pd.DataFrame | None  # compare_calibrations on the validation split, when calibrated
    tta: bool
    data: str  # ds.describe()

    @property
    def submission(self) -> pd.DataFrame:
        """The frame to write: id and label (the calibrated P(dog))."""
        return pd.DataFrame({"id": self.test["id"].to_numpy(), "label": self.test["p_dog"].to_numpy()})

    @property
    def raw_log_loss(self) -> float:
        return log_loss(self.val["label"], self.val["p_raw"])

    @property
    def expected_log_loss(self) -> float:
        """The validation log loss the submission should score: held out from the calibration fit."""
        return self.raw_log_loss if self.table is None else float(self.table["held_out_log_loss"].min())

    def summary(self) -> str:
        unreadable = int(self.test["unreadable"].sum())
        how = "with" if self.tta else "without"
        lines = [f"test: {len(self.test):,} images predicted {how} flip TTA"
                 + (f", {unreadable} unreadable (P = {UNREADABLE_P})" if unreadable else ""),
                 f"validation: {len(self.val):,} images, log loss {self.raw_log_loss:.4f} raw",
                 f"calibration: {self.calibration.describe()}"
                 + (" (lowest held-out validation log loss)" if self.table is not None else " (not calibrated)"),
                 f"expected log loss: {self.expected_log_loss:.4f} (the validation split's; data: {self.data})"]
        return "\n".join(lines)


def make_predictions(model, meta: dict, ds: DogsVsCats, tta: bool = True, calibrate: bool = True,
                     device=None) -> Predictions:
    """Predict the validation split and the test folder; with `calibrate`, fit and apply the best calibration.

    `meta` is the checkpoint's metadata (load_model, load_trained): its preset says which images
    were held out for validation.
    """
    device = pick_device(device)
    model = model.to(device).eval()
    if "preset" not in meta:
        raise SubmissionError("This checkpoint has no preset, so its validation split is unknown. Use one "
                              "written by vitlib's training (best.pt, last.pt) or export_checkpoint.")
    _check_same_data(meta, ds)
    val = predict_val(model, Preset.from_dict(meta["preset"]), ds, tta, device)
    table = compare_calibrations(val["label"], val["p_raw"]) if calibrate else None
    cal = choose_calibration(table) if calibrate else Calibration()
    test = predict_test(model, ds, tta, device)
    val["p_dog"], test["p_dog"] = cal.apply(val["p_raw"]), cal.apply(test["p_raw"])
    return Predictions(test, val, cal, table, tta, ds.describe())


def _check_same_data(meta: dict, ds: DogsVsCats) -> None:
    trained_on = meta.get("data_id")
    if trained_on and trained_on != ds.identity:
        warnings.warn(f"The model was trained on {meta.get('data', trained_on)}, and is applied to "
                      f"{ds.describe()}: the validation split here is not the one it was validated on. It "
                      "may hold images the model trained on (an optimistic log loss and temperature) or other "
                      "kinds of images.",
                      SubmissionWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Validation and the atomic write


def expected_ids(ds: DogsVsCats) -> tuple[np.ndarray, str]:
    """The ids a submission must have, and where they come from: the sample submission, else the test folder."""
    if ds.sample_submission is not None:
        name = ds.sample_submission.name
        damaged = (f"{name} is not Kaggle's sample submission (a CSV of id,label); download or extract it again, or "
                   "delete it to check against the test folder instead.")
        try:
            sample = pd.read_csv(ds.sample_submission)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise SubmissionError(f"{damaged} ({type(e).__name__})") from None
        if "id" not in sample.columns:
            raise SubmissionError(f"{name} has no id column (columns {list(sample.columns)[:5]}): {damaged}")
        try:
            return np.sort(sample["id"].to_numpy(dtype=np.int64)), name
        except (ValueError, TypeError, OverflowError):
            raise SubmissionError(f"{name} has ids that are not whole numbers: {damaged}") from None
    ids = index_images(ds, "test")["id"].to_numpy(dtype=np.int64)
    return ids, f"the images of {ds.test_dir.name}/ (no sample submission in the data to check against)"


def validate_submission(frame: pd.DataFrame, ids, source: str = "the expected ids") -> pd.DataFrame:
    """`frame` as Kaggle needs it (integer ids sorted, float labels), or a SubmissionError saying what is wrong.

    Refused: columns other than exactly id and label; ids that are missing, not whole numbers,
    repeated, or not those of `source`; labels that are NaN, not numbers, or outside [0, 1].
    """
    if not isinstance(frame, pd.DataFrame):
        raise SubmissionError(f"A submission is a pandas DataFrame with columns id, label, not {type(frame)}.")
    if sorted(map(str, frame.columns)) != COLUMNS or frame.columns.duplicated().any():
        raise SubmissionError(f"A submission has exactly the columns id and label (P(dog)); this one has "
                              f"{list(frame.columns)}. Select or rename them, e.g. "
                              "frame.rename(columns={'p_dog': 'label'})[['id', 'label']].")
    id_col = _check_ids(frame["id"], ids, source)
    labels = _check_labels(frame["label"], id_col)
    return pd.DataFrame({"id": id_col, "label": labels}).sort_values("id", ignore_index=True)


def _check_ids(column: pd.Series, ids, source: str) -> np.ndarray:
    number = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(number).any():
        raise SubmissionError(f"{np.isnan(number).sum()} id(s) are missing or not numbers (e.g. "
                              f"{column[np.isnan(number)].iloc[0]!r}): every row needs the N of test/N.jpg.")
    if (number % 1 != 0).any():
        raise SubmissionError(f"ids are whole numbers (the N of test/N.jpg); found {_few(number[number % 1 != 0])}.")
    got = number.astype(np.int64)
    repeated = np.unique(got[pd.Series(got).duplicated().to_numpy()])
    if len(repeated):
        raise SubmissionError(f"{len(repeated)} id(s) appear more than once: {_few(repeated)}. Each test image "
                              "gets exactly one row: find out where the duplicates came from before dropping any.")
    want = np.asarray(ids, dtype=np.int64)
    missing, extra = np.setdiff1d(want, got), np.setdiff1d(got, want)
    if len(missing) or len(extra):
        raise SubmissionError(f"The ids are not those of {source}: {len(missing)} missing ({_few(missing)}), "
                              f"{len(extra)} unexpected ({_few(extra)}). Kaggle needs one prediction for every "
                              "test image and no others: predict the whole test folder of the same data.")
    return got


def _check_labels(column: pd.Series, ids: np.ndarray) -> np.ndarray:
    p = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = np.isnan(p) & column.notna().to_numpy()
    if text.any():
        raise SubmissionError(f"labels are numbers, P(dog); ids {_few(ids[text])} have "
                              f"{column[text].iloc[0]!r}. Write the probability, not a class name.")
    if np.isnan(p).any():
        raise SubmissionError(f"{np.isnan(p).sum()} label(s) are NaN (ids {_few(ids[np.isnan(p)])}). A NaN comes "
                              "from a diverged model or a 0/0; fix the predictions rather than filling in a constant.")
    outside = (p < 0) | (p > 1)
    if outside.any():
        raise SubmissionError(f"{outside.sum()} label(s) lie outside [0, 1] (ids {_few(ids[outside])}: "
                              f"{_few(p[outside])}). A label is the probability P(dog): were these logits "
                              "(apply a sigmoid) or percentages (divide by 100)?")
    return p


def _few(values, n: int = 5) -> str:
    values = list(values)
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:n])
    return shown + (", ..." if len(values) > n else "") if values else "none"


def read_submission(path: Path, ids, source: str = "the expected ids") -> pd.DataFrame:
    """A submission file read as Kaggle reads it, and validated."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{Path(path).name} is not a readable CSV ({e}). Write it again.") from None
    return validate_submission(frame, ids, source)


def write_submission(frame: pd.DataFrame, path: Path, ids, source: str = "the expected ids") -> pd.DataFrame:
    """Validate `frame`, write it to a temporary file, read that back and check it, then rename it to `path`.

    A refused frame (SubmissionError) or a failed write leaves an earlier file at `path` as it was.
    Labels are written at full precision: rounding 1e-7 to 0.000000 would make a wrong answer cost
    34.5 instead of 16. Returns the frame as written.
    """
    good = validate_submission(frame, ids, source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        good.to_csv(tmp, index=False)
        back = read_submission(tmp, ids, source)
        if not (back["id"].equals(good["id"]) and np.array_equal(back["label"], good["label"])):
            raise SubmissionError(f"{tmp.name} did not read back as written; {path.name} was left unchanged.")
    return good


# ---------------------------------------------------------------------------------------------
# Kaggle, and the whole job


def check_submittable(ds: DogsVsCats, rows: int | None = None) -> None:
    """Refuse, before any upload, what Kaggle would only score as a failure: synthetic or partial data."""
    if ds.synthetic:
        raise SubmissionError("These are predictions for the SYNTHETIC sample, which Kaggle cannot score. Run on "
                              "the competition's data (VITLIB_DATA=kaggle, or a folder with its test.zip) to submit.")
    if rows is not None and rows != SHIPPED["test"]:
        raise SubmissionError(f"Kaggle scores {SHIPPED['test']:,} test predictions; this file has {rows:,} "
                              f"(the data '{ds.name}' is a partial copy). Predict the competition's own test.zip "
                              "(VITLIB_DATA=kaggle) to submit.")


def submit_file(path: Path, ds: DogsVsCats, message: str, api=None):
    """Check a written submission again, then submit it to the competition of `ds` (the redux one by default).

    Kaggle's failures come back as a vitlib.download.KaggleError saying what to do (no credentials,
    rules not accepted, offline). `api` is anything with `competition_submit`; by default Kaggle's.
    """
    check_submittable(ds)
    ids, source = expected_ids(ds)
    rows = len(read_submission(path, ids, source))
    check_submittable(ds, rows)
    competition = ds.name if ds.name == download.ORIGINAL_COMPETITION else download.COMPETITION
    result = download.submit(Path(path), message, competition, api=api)
    print(f"submitted {Path(path).name} to {competition}: see https://www.kaggle.com/c/{competition}/submissions")
    return result


def predict_to_csv(checkpoint, ds: DogsVsCats, out: Path, tta: bool = True, calibrate: bool = True,
                   submit_message: str | None = None, device=None) -> pd.DataFrame:
    """Predict the test folder of `ds` with a checkpoint, calibrate on its validation split, write a checked CSV.

    What `python -m vitlib predict` runs. With `submit_message`, the file is also submitted to
    Kaggle (refused at once for synthetic or partial data, before any prediction, with nothing written). Returns the
    frame written.
    """
    ids, source = expected_ids(ds)
    if submit_message is not None:  # refused before any prediction, and before anything is written
        check_submittable(ds, rows=len(ids))
    device = pick_device(device)
    model, meta = load_model(checkpoint, device)
    pred = make_predictions(model, meta, ds, tta, calibrate, device)
    frame = write_submission(pred.submission, out, ids, source)
    print(f"{pred.summary()}\nwrote {shown(out)}: {len(frame):,} rows, ids checked against {source}")
    if submit_message is not None:
        submit_file(out, ds, submit_message)
    return frame


# ---------------------------------------------------------------------------------------------
# Looking at predictions


def show_predictions(ds: DogsVsCats, frame: pd.DataFrame, n: int = 12, seed: int = 0, cols: int = 6,
                     source: str | None = None) -> plt.Figure:
    """Photos titled with their P(dog): the rows of `frame` (Predictions.test or .val), `n` at random if more.

    Title colours as in notebook 01 (plots.GROUP_COLORS). With a `label` column (validation) the
    colour is the true class, and the title adds ✓ or ✗ (the prediction right or wrong) and what the
    image costs. Without (test: the truth unknown) the colour is the class predicted, grey when unsure
    (P within 0.15 of 0.5).
    """
    if len(frame) > n:
        frame = frame.sample(n, random_state=seed).sort_values("id")
    titles, colors = [], []
    for row in frame.itertuples():
        p = float(row.p_dog)
        if "label" in frame:
            mark = "✓" if int(p > 0.5) == row.label else "✗"
            titles.append(f"{CLASSES[row.label]} {row.id}: {p:.2f} {mark}\n"
                          f"costs {image_losses([row.label], [p])[0]:.2f}")
            colors.append(GROUP_COLORS[CLASSES[row.label]])
        else:
            titles.append(f"id {row.id}: {p:.2f}" + (" (unreadable)" if getattr(row, "unreadable", False) else ""))
            colors.append("grey" if abs(p - 0.5) < 0.15 else GROUP_COLORS[CLASSES[int(p > 0.5)]])
    what = ("validation images, titled true class id: P(dog), ✓ right / ✗ wrong, coloured by the true class"
            if "label" in frame else "test images, titled id: P(dog), coloured by the class predicted (grey: unsure)")
    return show_files(ds, frame["file"], titles, cols=cols, colors=colors,
                      source=what + (f"\n{source}" if source else ""))  # two lines: what is shown, then where from
