"""Files and folders: where vitlib keeps things, the environment variables that move them, atomic
writes, locks, checking a place can be written before the work, and the progress-bar switch.

An atomic write goes to a temporary file beside its target and is renamed onto it when complete,
so a reader sees the old file or the new one, never half of one. A full disk is reported in one
line that names the folder, and the earlier file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from filelock import FileLock, Timeout

DATA_ENV = "VITLIB_DATA"  # "auto" (default), "sample", "kaggle", or a path to a folder or zip
DATA_DIR_ENV = "VITLIB_DATA_DIR"  # where downloads, extracted folders and caches go (default: the repo's data/)
RUNS_ENV = "VITLIB_RUNS_DIR"  # where training runs go (default: the repo's runs/)
UNZIP_LIMIT_ENV = "VITLIB_UNZIP_LIMIT_GB"  # the most a zip may expand to (default 4 GiB, and 20x its size)
PROGRESS_ENV = "VITLIB_PROGRESS"  # "0": no progress bars (headless runs, whose saved notebooks keep only the text)

_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _checkout() -> Path | None:
    """The repository's folder when vitlib runs from a source checkout, else None (Colab, pip installs)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() and (repo / "notebooks").is_dir() else None


def project_dir(sub: str) -> Path:
    """`<repo>/<sub>` in a source checkout, else `./<sub>` (Colab, pip installs)."""
    return (_checkout() or Path.cwd()) / sub


def shown(path, home: Path | None = None) -> str:
    """`path` as a person reads it, and as saved outputs may show it: relative to the working folder when inside it
    ("." for that folder), else to the repository of a source checkout (a notebook runs in notebooks/, its runs are
    in runs/), else `~/...` under the home folder (`home`, default the user's), else the absolute path.

    The one way messages and outputs name a file. Links are not followed, except to find that a path reached
    through one lies in one of those folders."""
    home = Path.home() if home is None else Path(home)
    given = Path(os.path.abspath(Path(path).expanduser()))
    places = [(Path.cwd(), ""), (home, "~/")]
    if _checkout():
        places.insert(1, (_checkout(), ""))
    for base, prefix in places:
        for inside in (given, _resolved(given)):
            for folder in (Path(os.path.abspath(base)), _resolved(base)):
                if inside.is_relative_to(folder):
                    rest = inside.relative_to(folder).as_posix()
                    return prefix + rest if rest != "." else prefix.rstrip("/") or "."
    return str(given)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return path


def data_dir() -> Path:
    return _folder(DATA_DIR_ENV, "data")


def runs_dir() -> Path:
    return _folder(RUNS_ENV, "runs")


def _folder(variable: str, default: str) -> Path:
    """The folder `variable` names (default: the project's `default`); a PlaceError naming the variable if it is a
    file."""
    folder = Path(os.environ.get(variable) or project_dir(default)).expanduser()
    if folder.exists() and not folder.is_dir():
        where = f"{variable}={os.environ[variable]}" if os.environ.get(variable) else f"the {default} folder"
        raise PlaceError(errno.ENOTDIR, f"{where}: {folder} is a file, not a folder; set {variable} to a folder")
    return folder


DRIVE_MOUNT = Path("/content/drive")  # where Colab mounts Google Drive; "My Drive" is MyDrive/ inside it


def keep_in(folder) -> dict[str, Path]:
    """Keep the data and the runs in `folder` (its data/ and runs/) from now on, in this process and the ones it
    starts: sets VITLIB_DATA_DIR and VITLIB_RUNS_DIR, so every notebook pointed at the same folder finds what the
    others left there (01's download and caches, 04's runs). Returns the two folders, by variable."""
    folder = writable_folder(Path(folder).expanduser(), "the folder to keep data and runs in")
    places = {DATA_DIR_ENV: folder / "data", RUNS_ENV: folder / "runs"}
    for variable, place in places.items():
        os.environ[variable] = str(place)
    return places


def use_drive(folder: str = "vitlib", mount=None) -> dict[str, Path]:
    """In Colab, keep the data and the runs in Google Drive (My Drive/`folder`, via keep_in), where the next
    notebook's fresh Colab machine finds them. Mounts Drive first, which asks you to allow it. `mount`: the
    function that mounts a folder (default: google.colab's drive.mount; the tests pass their own)."""
    if mount is None:
        if "google.colab" not in sys.modules:
            raise PlaceError(errno.ENOENT, "use_drive works in Colab only; elsewhere use files.keep_in(folder), or set "
                                           f"{DATA_DIR_ENV} and {RUNS_ENV}")
        from google.colab import drive  # type: ignore[import-not-found]

        mount = drive.mount
    mount(str(DRIVE_MOUNT))
    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        raise PlaceError(errno.ENOENT, f"Google Drive is not mounted at {DRIVE_MOUNT}: allow access when Colab asks, "
                                       "then run the cell again")
    return keep_in(DRIVE_MOUNT / "MyDrive" / folder)


def progress_bars() -> bool:
    return os.environ.get(PROGRESS_ENV, "1") != "0"


# ---------------------------------------------------------------------------------------------
# Where vitlib may write: checked before the work, not after it


class PlaceError(OSError):
    """A place vitlib was asked to write to is a file, or cannot be written; the message names the setting."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def writable_folder(folder: Path, setting: str) -> Path:
    """`folder`, once this process can create files in it, or in the nearest folder above it that exists (where
    it will be made); a PlaceError naming `setting` (e.g. "--run-dir", or VITLIB_DATA_DIR) where it cannot:
    a file on the way, no permission, a read-only disk. Nothing is left behind by the check."""
    folder = Path(folder).expanduser()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise PlaceError(errno.ENOTDIR, f"{setting}: {existing} is a file, not a folder; choose a folder for {folder}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise PlaceError(e.errno, f"{setting}: cannot write in {existing} ({e.strerror or e}); choose a folder you "
                                  "can write to") from None
    return folder


# ---------------------------------------------------------------------------------------------
# A full disk, said in one line


class DiskFullError(OSError):
    """No space left on a folder; nothing was written there, and earlier files are intact."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def out_of_files(folder: Path) -> bool:
    """Whether the file system of `folder` (or of the nearest folder above it) has no free inodes left: "No space
    left on device" with bytes to spare, because it cannot hold one more file (many small files, a small disk)."""
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), Path("/"))
    try:
        stats = os.statvfs(existing)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False
    return stats.f_files > 0 and stats.f_favail == 0


def no_space(folder: Path) -> str:
    """The words for a full `folder`: no space, or no room for one more file (no free inodes)."""
    where = Path(folder).resolve()
    if out_of_files(folder):
        return f"no room for more files on {where} (its file system has no free inodes, however many bytes are free)"
    return f"no space left on {where}"


def disk_full(folder: Path, what: str) -> DiskFullError:
    """The one-line error for a write that ran out of space (or of inodes) in `folder`."""
    return DiskFullError(errno.ENOSPC, f"{no_space(folder)}: {what} was not written; earlier files there are intact. "
                                       "Free some space and run again")


# ---------------------------------------------------------------------------------------------
# Atomic writes

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.vitlib\.tmp$")  # what temporary_name writes, and only that


def temporary_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file an atomic write of `path` goes to in process `pid` (default: this one):
    `.<name>.<pid>.vitlib.tmp` beside it. The marker and the pid are how vitlib knows a file is its own."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.vitlib.tmp")


def process_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (this one is; one that cannot be asked counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave its file alone
    return True


def remove_stale_temporaries(folder: Path, names=None) -> list[Path]:
    """Delete the temporary files of atomic writes (temporary_name) that killed processes left in `folder`: of
    the files `names` (a name or several; None: of any file). Nothing vitlib did not write is touched: a file
    counts as vitlib's only by temporary_name's pattern, and only once the process in its name has ended."""
    names = {names} if isinstance(names, str) else None if names is None else set(names)
    removed = []
    for tmp in Path(folder).glob(".*.vitlib.tmp"):
        m = _TMP.match(tmp.name)
        if m and (names is None or m["name"] in names) and not process_alive(int(m["pid"])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path` to write to; renamed onto `path` if the block succeeds, removed if not.

    The rename is atomic, so readers see the old file or the new one, never half of one, and a failed
    write leaves neither half a file nor a stray temporary one. Temporary files of `path` left by a
    killed process are removed first; a full disk raises DiskFullError.
    """
    path = Path(path)
    if path.parent.is_dir():
        remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full(path.parent, path.name) from None
        raise
    except RuntimeError:  # a writer that hides the OSError (torch's stream writer: "unexpected pos ...")
        if _nearly_full(path.parent):
            raise disk_full(path.parent, path.name) from None
        raise  # not a full disk: the writer's own error, as it is
    finally:
        tmp.unlink(missing_ok=True)


def _nearly_full(folder: Path, margin: int = 16 * 2**20) -> bool:
    """Whether `folder`'s file system has (almost) no space left: after a failed write, what tells a full disk
    from another failure when the writer did not say."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path) -> dict | None:
    """The JSON object a small file of vitlib's holds, or None for one that is empty, damaged or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------
# Locks: one process at a time in a folder


class BusyError(RuntimeError):
    """Another process holds the lock of what this one wanted to write."""


def lock(path: Path) -> FileLock:
    """The process-wide lock of `path` (a file beside what it guards).

    Reentrant within a process (the same object for the same path); held by the operating system for
    the owning process only, so a killed process never leaves a lock that blocks the next run.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), is_singleton=True)


@contextlib.contextmanager
def exclusive(path: Path, busy: str):
    """Hold the lock at `path` for the block, or raise BusyError(`busy`) at once if another process holds it."""

    def refuse(_):
        raise BusyError(busy) from None

    with _holding(path, refuse) as held:
        yield held


@contextlib.contextmanager
def uninterrupted():
    """Hold Ctrl-C (SIGINT, also Jupyter's interrupt) until the block ends, then raise it: a checkpoint being
    written is finished, not cut in half (torch.save interrupted mid-file raises its own unreadable error).
    Only the main thread receives signals; elsewhere the block just runs, as it does where Ctrl-C is ignored
    (a run started by `nohup ... &`): an ignored Ctrl-C stays ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def waiting(path: Path, waiting_for: str):
    """Hold the lock at `path` for the block; while another process holds it, say so once and wait."""

    def wait(held):
        print(f"waiting for {waiting_for} (another process holds {Path(path).name}) ...", flush=True)
        held.acquire()

    with _holding(path, wait) as held:
        yield held


@contextlib.contextmanager
def _holding(path: Path, when_busy):
    held = lock(path)
    try:
        held.acquire(timeout=0)
    except Timeout:
        when_busy(held)  # acquires, or raises
    try:
        yield held
    finally:
        held.release()
