"""Safe, atomic extraction of a zip: one process at a time, through a staging folder, marked complete when done.

A crafted zip cannot write outside its folder ("zip slip"), nor fill the disk ("zip bomb": the sizes the zip
declares are checked against limits and the free space before anything is written). An interrupted extraction
leaves only its staging folder, which the next one removes; a folder already in the way is kept as `<name>.old-N`.
The data's errors (DataError, DataWarning) are defined here, the first module that raises them; code outside
imports them from `data`, as before.
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
from pathlib import Path, PurePosixPath

from .files import (
    UNZIP_LIMIT_ENV,
    is_disk_full,
    no_space,
    out_of_files,
    process_alive,
    read_json,
    waiting,
    write_atomic,
)

# No Kaggle zip expands past 1 GiB, nor more than about 1.1x its size (JPEGs barely compress): a zip that would is
# refused before anything is written (a "zip bomb" fills the disk), unless VITLIB_UNZIP_LIMIT_GB allows it
UNZIP_LIMIT_GB = 4
UNZIP_MAX_RATIO = 20  # checked for zips that expand past UNZIP_RATIO_FROM bytes (small text files compress well)
UNZIP_RATIO_FROM = 64 * 2**20


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


def unreadable_zip(zip_path: Path, error: Exception) -> DataError:
    """The one message for a zip that zipfile cannot open (BadZipFile): what it is and what to do."""
    return DataError(
        f"{zip_path.name} is not a readable zip ({error}): probably a truncated download. "
        "Delete it and download it again."
    )


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
    done = read_json(marker)
    if done is None or not isinstance(done.get("tops"), list):
        return None, f"its completion marker {marker.name} is unreadable"
    if {k: done.get(k) for k in stamp} == stamp and all((dest / str(t)).exists() for t in done["tops"]):
        return [dest / t for t in done["tops"]], ""
    return None, f"{stamp['zip']} has changed (size or modification time) since that folder was extracted from it"


def _extract(zip_path: Path, dest: Path, marker: Path, stamp: dict, why: str) -> list[Path]:
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise unreadable_zip(zip_path, e) from None
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
                size = f"{len(entries):,} files" if out_of_files(dest) else \
                    f"about {sum(info.file_size for info in entries) / 2**30:.1f} GiB"
                raise DataError(
                    f"{no_space(dest)} while extracting {zip_path.name} (it needs {size}). Nothing was changed and "
                    "the zip is fine: free some space and run again."
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


def _free_name(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.old-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.old-{n}")
