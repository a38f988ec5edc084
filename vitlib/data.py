"""The data on disk: where it comes from, safe extraction, an index of the files, and the split.

Kaggle (or a folder/zip you downloaded by hand, or the built-in synthetic sample) ends up as one
folder holding `train/` (`cat.N.jpg`, `dog.N.jpg`), a test folder (`test/` for the redux
competition, `test1/` for the original) and the sample submission. `prepare_data()` gets you there
and returns a `DogsVsCats` that says where everything is and what it is.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from . import download, sample
from .files import (
    DATA_DIR_ENV,
    DATA_ENV,
    UNZIP_LIMIT_ENV,
    data_dir,
    is_disk_full,
    process_alive,
    waiting,
    writable_folder,
    write_atomic,
)
from .sample import SAMPLE_STAMP

# What the competitions ship; a different count is reported.
SHIPPED = {"train": 25_000, "test": 12_500}
TEST_FOLDERS = ("test", "test1")  # redux, original
SUBMISSION_FILES = ("sample_submission.csv", "sampleSubmission.csv")
CLASSES = ("cat", "dog")  # label 0, label 1: the competition scores P(dog)
VAL_FRACTION = 0.2  # the share of each class held out for validation
SPLIT_SEED = 42  # the seed that fixes which images those are, whatever the training seed
# No Kaggle zip expands past 1 GiB, nor more than about 1.1x its size (JPEGs barely compress): a zip that would is
# refused before anything is written (a "zip bomb" fills the disk), unless VITLIB_UNZIP_LIMIT_GB allows it
UNZIP_LIMIT_GB = 4
UNZIP_MAX_RATIO = 20  # checked for zips that expand past UNZIP_RATIO_FROM bytes (small text files compress well)
UNZIP_RATIO_FROM = 64 * 2**20
_LABELLED = re.compile(rf"^({'|'.join(CLASSES)})\.(\d+)\.jpe?g$", re.IGNORECASE)
_UNLABELLED = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


class DataError(RuntimeError):
    """The data on disk is not what it should be; the message says what to do."""


class UnsafeArchiveError(DataError):
    """A zip entry would land outside the folder it is extracted to."""


class DataWarning(UserWarning):
    """The data is usable but not what the competition ships (a partial copy, say)."""


_formatwarning = warnings.formatwarning


def _format(message, category, filename, lineno, line=None):
    """vitlib's own warnings without a file path, so notebook outputs name no machine's folders."""
    if issubclass(category, DataWarning):
        return f"{category.__name__}: {message}\n"
    return _formatwarning(message, category, filename, lineno, line)


warnings.formatwarning = _format


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
        raise DataError(
            f"{zip_path.name} is not a readable zip ({e}): probably a truncated download. "
            "Delete it and download it again."
        ) from None


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
# Safe, atomic extraction


def check_archive(zf: zipfile.ZipFile) -> list[str]:
    """The top-level names of a zip whose every entry stays inside the folder it is extracted to.

    Refuses (UnsafeArchiveError) absolute paths, drive letters, `..` and symbolic links: a crafted
    zip could otherwise write anywhere on disk ("zip slip").
    """
    tops, seen = [], set()
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if name in seen:
            raise UnsafeArchiveError(f"Refusing to extract {zf.filename}: it lists {info.filename!r} twice, which no "
                                     "Kaggle zip does (damaged or crafted). Download it again.")
        seen.add(name)
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise UnsafeArchiveError(
                f"Refusing to extract {zf.filename}: entry {info.filename!r} would land outside the target folder."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"Refusing to extract {zf.filename}: entry {info.filename!r} is a symbolic link.")
        if parts and parts[0] not in tops:
            tops.append(parts[0])
    return tops


def check_expansion(zip_path: Path, entries: list[zipfile.ZipInfo], dest: Path) -> None:
    """Refuse (DataError, before anything is written) a zip that would expand to more than this machine has free
    in `dest`, or to a size or compression ratio no Kaggle zip has. zipfile never writes more than an entry
    declares, so the declared sizes are what extraction can cost."""
    total = sum(info.file_size for info in entries)
    packed = max(1, sum(info.compress_size for info in entries))
    limit_text = os.environ.get(UNZIP_LIMIT_ENV)
    try:
        limit = float(limit_text) if limit_text else UNZIP_LIMIT_GB
    except ValueError:
        limit = math.nan
    if not 0 < limit < math.inf:  # nan and inf would switch both limits off
        raise DataError(f"{UNZIP_LIMIT_ENV} must be a number of GiB above 0 (e.g. 20), not {limit_text!r}")
    gib = total / 2**30
    override = f"if you trust it, set {UNZIP_LIMIT_ENV}={math.ceil(gib) + 1} and run again"
    if gib > limit:
        raise DataError(f"Refusing to extract {zip_path.name}: it would expand to {gib:.1f} GiB, more than the "
                        f"{limit:g} GiB allowed (no Kaggle zip of this competition is over 1 GiB); {override}.")
    if not limit_text and total > UNZIP_RATIO_FROM and total / packed > UNZIP_MAX_RATIO:
        raise DataError(f"Refusing to extract {zip_path.name}: {packed / 2**20:.1f} MiB would expand "
                        f"{total / packed:.0f}x to {gib:.1f} GiB, which photos never do (a zip bomb?); {override}.")
    free = shutil.disk_usage(next(p for p in (dest, *dest.parents) if p.exists())).free
    if total > free:
        raise DataError(f"no space for {zip_path.name} on {dest.resolve()}: it expands to {gib:.1f} GiB and "
                        f"{free / 2**30:.1f} GiB is free. Nothing was changed; free some space and run again.")


def extract_zip(zip_path: Path, dest: Path) -> list[Path]:
    """Extract `zip_path` into `dest`, safely, atomically and one process at a time; return the top-level paths.

    Everything is extracted into a staging folder of this process first, counted against the zip,
    and renamed into place; then a completion marker is written. A second process extracting the
    same zip waits for the first and then finds its marker. An interrupted run leaves no marker and is
    redone; with the marker present (and the zip unchanged) this is a fast no-op. A folder already in
    the way is kept, renamed `<name>.old-N`, never deleted.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    st = zip_path.stat()
    stamp = {"zip": zip_path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = dest / f".{zip_path.name}.complete"
    done, why = _extracted(marker, stamp, dest)
    if done is not None:
        return done
    # the lock sits beside `dest`, not in it: the extracted folder holds only what the zip and vitlib put there
    with waiting(dest.parent / f".{dest.name}.{zip_path.name}.lock", f"another process extracting {zip_path.name}"):
        done, why = _extracted(marker, stamp, dest)  # the other process may have finished it meanwhile
        if done is not None:
            return done
        return _extract(zip_path, dest, marker, stamp, why)


def _stale_staging(dest: Path, zip_name: str) -> list[Path]:
    """The staging folders of earlier extractions of `zip_name` that may be deleted (the caller holds the lock): only
    names vitlib gives them (`.<zip>.partial.<pid>`) whose process has ended, or is this one. Anything else that
    merely looks alike (`.train.zip.partial-mine`) is not vitlib's, and stays."""
    pattern = re.compile(rf"\.{re.escape(zip_name)}\.partial\.(\d+)")
    stale = []
    for path in dest.glob(f".{glob.escape(zip_name)}.partial.*"):
        m = pattern.fullmatch(path.name)
        ours = m is not None and path.is_dir() and not path.is_symlink()
        if ours and (int(m[1]) == os.getpid() or not process_alive(int(m[1]))):
            stale.append(path)
    return stale


def _extracted(marker: Path, stamp: dict, dest: Path) -> tuple[list[Path] | None, str]:
    """The top-level paths a completed extraction left (None if there is none), and why not."""
    if not marker.is_file():
        return None, "no completion marker: an earlier extraction stopped halfway, or the folder came from elsewhere"
    done = _read_json(marker)
    if done is None or not isinstance(done.get("tops"), list):
        return None, f"its completion marker {marker.name} is unreadable"
    if {k: done.get(k) for k in stamp} == stamp and all((dest / str(t)).exists() for t in done["tops"]):
        return [dest / t for t in done["tops"]], ""
    return None, f"{stamp['zip']} has changed (size or modification time) since that folder was extracted from it"


def _extract(zip_path: Path, dest: Path, marker: Path, stamp: dict, why: str) -> list[Path]:
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DataError(
            f"{zip_path.name} is not a readable zip ({e}): probably a truncated download. "
            "Delete it and download it again."
        ) from None
    for stale in _stale_staging(dest, zip_path.name):  # left by a killed process (or this one, interrupted)
        shutil.rmtree(stale, ignore_errors=True)
    staging = dest / f".{zip_path.name}.partial.{os.getpid()}"
    with zf:
        tops = check_archive(zf)
        entries = [info for info in zf.infolist() if not info.is_dir()]
        check_expansion(zip_path, entries, dest)
        try:
            zf.extractall(staging)
            found = sum(1 for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            if is_disk_full(e):
                need = sum(info.file_size for info in entries) / 2**30
                raise DataError(
                    f"no space left on {dest.resolve()} while extracting {zip_path.name} (it needs about "
                    f"{need:.1f} GiB). Nothing was changed and the zip is fine: free some space and run again."
                ) from None
            raise DataError(
                f"Extracting {zip_path.name} failed ({e}): the zip is damaged. Nothing was changed; "
                "delete the zip and download it again."
            ) from None
    if found != len(entries):
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"Extracting {zip_path.name} gave {found:,} files where the zip lists {len(entries):,}; "
                        "nothing was changed. Run again; if it happens again, download the zip again.")
    marker.unlink(missing_ok=True)
    for top in tops:
        final = dest / top
        if final.exists():
            aside = _free_name(final)
            os.replace(final, aside)
            warnings.warn(
                f"{final.name} was in the way of a fresh extraction of {zip_path.name} ({why}); "
                f"kept it as {aside.name}, which you may delete.",
                DataWarning,
                stacklevel=4,
            )
        os.replace(staging / top, final)
    shutil.rmtree(staging, ignore_errors=True)
    write_atomic(marker, json.dumps({**stamp, "tops": tops}))
    return [dest / t for t in tops]


def _read_json(path: Path) -> dict | None:
    """The JSON object a small file of vitlib's holds, or None for one that is empty, damaged or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _free_name(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.old-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.old-{n}")


# ---------------------------------------------------------------------------------------------
# Integrity, index, split


def count_images(folder: Path | None) -> int:
    return 0 if folder is None or not folder.is_dir() else sum(1 for _ in _jpegs(folder))


def check_counts(ds: DogsVsCats, warn: bool = False) -> pd.DataFrame:
    """Images found against what the competition ships (the sample against what it was made with)."""
    if ds.synthetic:
        made = {"n_train": sample.N_TRAIN, "n_test": sample.N_TEST}
        stamp = _read_json(ds.root / SAMPLE_STAMP) if (ds.root / SAMPLE_STAMP).is_file() else None
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
