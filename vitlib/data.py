"""The data on disk: where it comes from, its layout once extracted (`extract` unzips), an index of the files, and
the split.

Kaggle (or a folder/zip you downloaded by hand, or the built-in synthetic sample) ends up as one
folder holding `train/` (`cat.N.jpg`, `dog.N.jpg`), a test folder (`test/` for the redux
competition, `test1/` for the original) and the sample submission. `prepare_data()` gets you there
and returns a `DogsVsCats` that says where everything is and what it is.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from . import download, sample
from .extract import DataError, DataWarning, extract_zip, unreadable_zip
from .files import DATA_DIR_ENV, DATA_ENV, data_dir, read_json, waiting, writable_folder
from .sample import SAMPLE_STAMP

# What the competitions ship; a different count is reported.
SHIPPED = {"train": 25_000, "test": 12_500}
TEST_FOLDERS = ("test", "test1")  # redux, original
SUBMISSION_FILES = ("sample_submission.csv", "sampleSubmission.csv")
CLASSES = ("cat", "dog")  # label 0, label 1: the competition scores P(dog)
VAL_FRACTION = 0.2  # the share of each class held out for validation
SPLIT_SEED = 42  # the seed that fixes which images those are, whatever the training seed
_LABELLED = re.compile(rf"^({'|'.join(CLASSES)})\.(\d+)\.jpe?g$", re.IGNORECASE)
_UNLABELLED = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


@dataclass(frozen=True)
class DogsVsCats:
    """One prepared copy of the data."""

    name: str  # "dogs-vs-cats-redux-kernels-edition", "dogs-vs-cats-dev", "sample", ...
    kind: str  # "kaggle", "local" or "sample"
    root: Path
    train_dir: Path
    test_dir: Path | None
    sample_submission: Path | None

    @property
    def synthetic(self) -> bool:
        return self.kind == "sample"

    @property
    def identity(self) -> dict:
        """What this data is, for code to compare (checkpoints store it): its kind and name, never its words."""
        return {"kind": self.kind, "name": self.name}

    def describe(self) -> str:
        """How every plot and summary names this data, so the sample is never taken for photos."""
        if self.synthetic:
            return "SYNTHETIC sample (drawn shapes, not photos)"
        where = "Kaggle download" if self.kind == "kaggle" else "local copy"
        return f"real photos: {where} '{self.name}'"

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:  # no absolute paths: notebook outputs must not name a machine's folders
        return f"DogsVsCats({self.describe()})"

    def path(self, relative: str) -> Path:
        """The absolute path of a file named relative to `root` (as in the index)."""
        return self.root / relative


# ---------------------------------------------------------------------------------------------
# Preparing a source


def prepare_data(source: str | os.PathLike | None = None, dest: Path | None = None, verbose: bool = True) -> DogsVsCats:
    """Get the data onto disk, extracted and checked; a second call is a fast no-op.

    source: "auto" (default; also read from $VITLIB_DATA): the Kaggle data already in `dest`,
    else a download when Kaggle credentials exist, else the synthetic sample (said loudly).
    "kaggle": download. "sample": the built-in sample. A path: a folder holding train.zip and
    test.zip (or train/ and test/ already extracted), or the competition zip itself.
    """
    source = str(source if source is not None else os.environ.get(DATA_ENV) or "auto")
    dest = writable_folder(dest if dest is not None else data_dir(), f"the data folder ({DATA_DIR_ENV})")
    if source == "auto":
        ds = _auto(dest)
    elif source == "sample":
        ds = _sample(dest)
    elif source == "kaggle":
        ds = _kaggle(dest)
    else:
        ds = _local(Path(source).expanduser(), dest)
    if verbose:
        print(f"vitlib data: {ds.describe()}")
    check_counts(ds, warn=True)
    return ds


def _auto(dest: Path) -> DogsVsCats:
    download.load_colab_secrets()
    for name in (download.COMPETITION, download.ORIGINAL_COMPETITION):
        folder = dest / name
        if _has_images(folder / "train") or any(folder.glob("*.zip")):
            return _layout(folder, name, "kaggle")
    if download.credential_source() is not None:
        return _kaggle(dest)
    banner = (
        "No Kaggle data in data/ and no Kaggle credentials: using the built-in SYNTHETIC sample "
        "(drawn shapes, not photos). For the real photos add Kaggle credentials, or set "
        "VITLIB_DATA to a folder holding train.zip and test.zip."
    )
    hint = download.colab_secrets_hint()
    print("!" * 100 + "\n" + banner + ("\n" + hint if hint else "") + "\n" + "!" * 100)
    return _sample(dest)


def _sample(dest: Path) -> DogsVsCats:
    folder = dest / "sample"
    with waiting(dest / ".sample.lock", "another process writing the sample"):  # one writer: the zips stay as made
        sample.write_sample(folder)
    return _layout(folder, "sample", "sample")


def _kaggle(dest: Path, competition: str = download.COMPETITION) -> DogsVsCats:
    folder = dest / competition
    folder.parent.mkdir(parents=True, exist_ok=True)
    # one download at a time (torchrun's processes, two notebooks): the others wait, then find it done
    with waiting(dest / f".{competition}.download.lock", f"another process downloading {competition}"):
        download.download_competition(folder, competition)
    return _layout(folder, competition, "kaggle")


def _local(source: Path, dest: Path) -> DogsVsCats:
    if not source.exists():
        raise DataError(
            f"{source} does not exist. Point VITLIB_DATA (or prepare_data) at a folder holding "
            "train.zip and test.zip from https://www.kaggle.com/c/dogs-vs-cats-redux-kernels-edition/data, "
            "at that folder once extracted (train/ and test/), or at the competition zip itself."
        )
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise DataError(f"{source} is not a zip file (a truncated download?). Download it again.")
        folder = dest / source.stem
        extract_zip(source, folder)
        return _layout(folder, source.stem, "local")
    if _within(source, dest) or not any(source.glob("*.zip")):
        return _layout(source, source.name, "local")  # extracted by hand, or already ours
    folder = dest / source.name
    return _layout(folder, source.name, "local", zips_from=source)


def _layout(folder: Path, name: str, kind: str, zips_from: Path | None = None) -> DogsVsCats:
    """Extract whatever zips `folder` (or `zips_from`) holds into `folder`, then find the parts."""
    zips_from = zips_from or folder
    folder.mkdir(parents=True, exist_ok=True)
    for outer in sorted(zips_from.glob("*.zip")):  # a competition zip wraps train.zip, test.zip, csv
        if _is_wrapper(outer):
            extract_zip(outer, folder)
    for csv_name in (*SUBMISSION_FILES, SAMPLE_STAMP):
        src = zips_from / csv_name
        if src.is_file() and not (folder / csv_name).is_file():
            shutil.copyfile(src, folder / csv_name)
    if (folder / SAMPLE_STAMP).is_file():
        kind = "sample"  # the synthetic sample, however it was reached (e.g. VITLIB_DATA=data/sample): never "photos"
    for part in ("train", *TEST_FOLDERS):
        for where in dict.fromkeys((zips_from, folder)):
            if (where / f"{part}.zip").is_file():
                extract_zip(where / f"{part}.zip", folder)
                break
    train = folder / "train"
    if not _has_images(train):
        raise DataError(
            f"No train/ folder with images in '{folder.name}' (looked for train/ and train.zip). "
            "Expected the Kaggle layout: train.zip (train/cat.N.jpg, train/dog.N.jpg), test.zip, "
            "sample_submission.csv."
        )
    test = next((folder / t for t in TEST_FOLDERS if (folder / t).is_dir()), None)
    csv = next((folder / c for c in SUBMISSION_FILES if (folder / c).is_file()), None)
    return DogsVsCats(name, kind, folder, train, test, csv)


def _is_wrapper(zip_path: Path) -> bool:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return any(PurePosixPath(n).name == "train.zip" for n in zf.namelist())
    except zipfile.BadZipFile as e:
        raise unreadable_zip(zip_path, e) from None


def _jpegs(folder: Path):
    return (p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and _regular(p))


def _regular(path: Path) -> bool:
    """A regular file, or a link to one: only those can be images. A FIFO would block whoever opens it, a link
    to nothing or a link loop cannot be read (Path.is_file is False for all three, and raises for none)."""
    return path.is_file()


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and next(_jpegs(folder), None) is not None


def _within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False



# ---------------------------------------------------------------------------------------------
# Integrity, index, split


def count_images(folder: Path | None) -> int:
    return 0 if folder is None or not folder.is_dir() else sum(1 for _ in _jpegs(folder))


def check_counts(ds: DogsVsCats, warn: bool = False) -> pd.DataFrame:
    """Images found against what the competition ships (the sample against what it was made with)."""
    if ds.synthetic:
        made = {"n_train": sample.N_TRAIN, "n_test": sample.N_TEST}
        stamp = read_json(ds.root / SAMPLE_STAMP) if (ds.root / SAMPLE_STAMP).is_file() else None
        made.update({k: v for k, v in (stamp or {}).items() if k in made and isinstance(v, int)})
        expected = {"train": made["n_train"], "test": made["n_test"]}
    else:
        expected = SHIPPED
    rows = []
    for part, folder in (("train", ds.train_dir), ("test", ds.test_dir)):
        found = count_images(folder)
        rows.append(
            {
                "folder": folder.name if folder else f"({part} missing)",
                "images": found,
                "expected": expected[part],
                "ok": found == expected[part],
            }
        )
    table = pd.DataFrame(rows)
    if warn and not table["ok"].all():
        parts = ", ".join(f"{r.folder}: {r.images:,} (expected {r.expected:,})" for r in table.itertuples() if not r.ok)
        warnings.warn(
            f"{ds.name}: {parts}. Fine for a partial copy such as a dev subset; for the "
            "competition itself, download again.",
            DataWarning,
            stacklevel=2,
        )
    return table


def parse_label(filename: str) -> int:
    """`cat.12.jpg` -> 0, `dog.7.jpg` -> 1 (any folder, any OS: only the file name counts)."""
    m = _LABELLED.match(PureWindowsPath(filename).name)  # splits at both / and \
    if m is None:
        raise ValueError(f"{filename!r} is not named cat.N.jpg or dog.N.jpg")
    return CLASSES.index(m.group(1).lower())


def index_images(ds: DogsVsCats, part: str = "train") -> pd.DataFrame:
    """One row per image: `file` (relative to ds.root), `id`, and for train `label` and `class`.

    Files that do not follow the competition's names are reported and left out.
    """
    folder = ds.train_dir if part == "train" else ds.test_dir
    if folder is None:
        raise DataError(f"{ds.name} has no test folder (looked for {', '.join(TEST_FOLDERS)}).")
    pattern = _LABELLED if part == "train" else _UNLABELLED
    rows, odd, unreadable = [], [], []
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m is None:
            if not p.name.startswith("."):
                odd.append(p.name)
            continue
        if not _regular(p):
            unreadable.append(p.name)
            continue
        row = {"file": p.relative_to(ds.root).as_posix(), "id": int(m.group(m.lastindex))}
        if part == "train":
            row["label"] = CLASSES.index(m.group(1).lower())
            row["class"] = CLASSES[row["label"]]
        rows.append(row)
    if odd:
        warnings.warn(
            f"Left out {len(odd)} file(s) in {folder.name}/ not named like the competition's: "
            f"{', '.join(sorted(odd)[:5])}",
            DataWarning,
            stacklevel=2,
        )
    if unreadable:
        warnings.warn(
            f"Left out {len(unreadable)} name(s) in {folder.name}/ that are not regular files (a pipe, a link to "
            f"nothing, a link loop): {', '.join(sorted(unreadable)[:5])}",
            DataWarning,
            stacklevel=2,
        )
    keys = ["label", "id"] if part == "train" else ["id"]
    cols = ["file", "id", "label", "class"] if part == "train" else ["file", "id"]
    return pd.DataFrame(rows, columns=cols).sort_values(keys, ignore_index=True)


def split_train_val(index: pd.DataFrame, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """A copy of `index` with a `split` column: a seeded split, stratified by label.

    The same files and seed always give the same split, whatever order the files were listed in.
    """
    out = index.sort_values(["label", "id"], ignore_index=True)
    split = np.full(len(out), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for label in sorted(out["label"].unique()):
        rows = np.flatnonzero(out["label"].to_numpy() == label)
        take = rng.permutation(rows)[: round(len(rows) * val_fraction)]
        split[take] = "val"
    out["split"] = split
    return out


def nested_subset(index: pd.DataFrame, n: int | None, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """`index` with only `n` of its training rows kept (half of each class; all of them for None), validation rows
    untouched: each class's training rows in one seeded order, the first n/2 taken, so that a smaller subset is
    always part of a larger one (the photos of a data curve are nested)."""
    if n is None:
        return index
    train = index[index["split"] == "train"]
    if n > len(train):
        raise DataError(f"train_images {n:,} is more than the {len(train):,} training photos of the split")
    rng = np.random.default_rng(seed)
    keep = []
    for label in sorted(train["label"].unique()):
        rows = train.index[train["label"] == label].sort_values()
        keep.extend(rng.permutation(rows)[: n // 2])
    return index[(index["split"] != "train") | index.index.isin(keep)]


def validation_split(ds: DogsVsCats, preset=None) -> pd.DataFrame:
    """The labelled images of `ds` with a `split` column ("train" or "val"): the one split everything uses.

    Training, prediction and the notebooks all ask here. `preset` (anything with `val_fraction` and
    `split_seed`, such as a vitlib Preset) chooses the fraction and the seed; None means the defaults,
    VAL_FRACTION and SPLIT_SEED, which every shipped preset uses.
    """
    fraction = VAL_FRACTION if preset is None else preset.val_fraction
    seed = SPLIT_SEED if preset is None else preset.split_seed
    return split_train_val(index_images(ds), fraction, seed)
