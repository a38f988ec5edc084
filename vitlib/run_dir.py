"""The run folder: where a training run lives, who may write to it, what it holds already, and how each epoch is
saved into it.

    runs/<preset>-<data>/            history.csv, last.pt (the latest epoch), best.pt (the lowest validation loss)

`RunDir` is its one owner. `open` refuses, in one line and before anything is trained or written, a folder that
cannot hold a run (a file, a folder of other things, a link to nothing, a place this process cannot write), a
folder another process is training into (a lock beside it, dropped by the operating system when that process
ends), and a run this call must not continue (another recipe's, another data set's, another number of processes,
or any run when `resume` is off). It reads `last.pt` once: `resume_from` then holds the checkpoint to continue from
(None for a fresh run). `save` writes best.pt (when the epoch is the best yet), then last.pt, then history.csv,
each atomically, so that a crash between two files only repeats an epoch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd

from .checkpoints import RESUMING, load_checkpoint, restore, save_checkpoint
from .files import RUNS_ENV, exclusive, remove_stale_temporaries, runs_dir, writable_folder, write_atomic
from .presets import PRESETS, Preset, flat_settings

RUN_FILES = ("last.pt", "best.pt", "history.csv")  # what a run writes into its folder


class RunExistsError(FileExistsError):
    """The run folder holds a run that this call must not continue or overwrite."""


def default_path(preset: Preset, data_id: dict) -> Path:
    """runs/<preset>-<data name>; runs/<preset>-<N>ep-<data name> for a shipped preset trained for N epochs instead of
    its own (`--epochs N`, notebook 04's EPOCHS), so that a short run and the full one never claim one folder, and the
    command line and the notebook name the same run alike."""
    shipped = PRESETS.get(preset.name)
    epochs = f"-{preset.epochs}ep" if shipped is not None and preset.epochs != shipped.epochs else ""
    return runs_dir() / f"{preset.name}{epochs}-{data_id['name']}"


def _default_setting() -> str:
    """Where a default run folder's place comes from, as the person set it."""
    return RUNS_ENV if os.environ.get(RUNS_ENV) else "run_dir (--run-dir)"


class RunDir:
    """One run's folder. `RunDir(path)` only names it; `open` checks it, holds it and reads what it holds; `close`
    (or leaving `with run_dir.open(...)`) lets it go. `setting` is what the messages tell a person to change."""

    def __init__(self, path: Path | str, setting: str = "run_dir (--run-dir)"):
        self.path = Path(path).expanduser()
        self.setting = setting
        self.resume_from: dict | None = None  # the checkpoint to continue from, once open
        self._held: contextlib.ExitStack | None = None

    @classmethod
    def for_run(cls, preset: Preset, data_id: dict, path: Path | str | None = None) -> RunDir:
        """The folder `path` names, or the default one for `preset` on `data_id` (see default_path)."""
        if path is not None:
            return cls(path)
        return cls(default_path(preset, data_id), _default_setting())

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def is_open(self) -> bool:
        return self._held is not None

    # -----------------------------------------------------------------------------------------
    # Opening: the checks, the lock, the resume point

    def check(self) -> RunDir:
        """Itself, if a run may live there: a new folder, an empty one, or one holding a vitlib run (RUN_FILES); a
        RunExistsError in one line, before anything is trained or written, for a file, a link to nothing, or a
        folder of other things (`/`, your home, a project); hidden files (a killed run's temporaries,
        .ipynb_checkpoints) do not count."""
        path, setting = self.path, self.setting
        if path.is_symlink() and not path.exists():  # a link to nothing: mkdir would fail only after an epoch
            raise RunExistsError(f"the run folder {path} is a link to {os.readlink(path)}, which does not exist: "
                                 f"create that folder, or choose another {setting}. Nothing was written.")
        if path.exists() and not path.is_dir():
            raise RunExistsError(f"the run folder {path} is a file, not a folder: choose another {setting}. "
                                 "Nothing was written.")
        self.path = writable_folder(path, f"the run folder ({setting})")
        if self.path.is_dir() and not any((self.path / name).exists() for name in RUN_FILES):
            other = [p.name for p in self.path.iterdir() if not p.name.startswith(".")]  # .DS_Store, .ipynb_checkpoints
            if other:
                shown = ", ".join(sorted(other)[:3]) + (", ..." if len(other) > 3 else "")
                raise RunExistsError(f"the run folder {self.path} holds {len(other)} other thing(s) ({shown}) and no "
                                     f"vitlib run: choose a new or empty folder ({setting}). Nothing was written.")
        return self

    def claim(self):
        """Hold the folder for this process while the block runs; refused at once (BusyError) if another holds it.

        The lock sits beside the folder (`.<name>.lock`); the operating system drops it when its process ends,
        however it ends, so a killed run never blocks the next one. Reentrant within a process."""
        self.check()
        return exclusive(self.path.parent / f".{self.path.name}.lock",
                         f"another process is training into {self.path.name}/ right now; wait for it to finish, or "
                         "choose another run folder. Nothing was written.")

    def open(self, preset: Preset, data_id: dict, resume: bool = True, processes: int = 1) -> RunDir:
        """Check and claim the folder, and read what it holds (once): `resume_from` is then its last checkpoint, to
        continue from, or None for a fresh run. A RunExistsError when the folder holds a run this call must not
        touch: any run when `resume` is off, another recipe's, one trained on other data, or by another number of
        processes. Temporary files of RUN_FILES that a killed run left there are removed (nothing else). Opening an
        open RunDir again returns it as it is."""
        if self.is_open:
            return self
        held = contextlib.ExitStack()
        try:
            held.enter_context(self.claim())
            self.resume_from = self._resume_point(preset, data_id, resume, processes)
        except BaseException:
            held.close()
            raise
        self._held = held
        return self

    def close(self) -> None:
        """Let the folder go (the lock)."""
        if self._held is not None:
            self._held.close()
            self._held = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resume_point(self, preset: Preset, data_id: dict, resume: bool, processes: int) -> dict | None:
        if self.path.is_dir():
            remove_stale_temporaries(self.path, RUN_FILES)
        if not self.last.is_file():
            return None
        ckpt = load_checkpoint(self.last, "cpu", fix=RESUMING.replace("run_dir", self.setting))
        where, other = self.path, f"choose another {self.setting}. Nothing was overwritten."
        if not resume:
            raise RunExistsError(f"{where} already holds a run; resume it (without --fresh; resume=True in fit) or "
                                 f"{other}")
        recipe = _recipe(ckpt)
        if recipe != preset:
            raise RunExistsError(f"{where} holds a run of a different recipe ({recipe_difference(recipe, preset)}); "
                                 f"{other}")
        if ckpt["data_id"] != dict(data_id):
            raise RunExistsError(f"{where} holds a run trained on other data ({ckpt['data']}); {other}")
        if ckpt.get("processes", 1) != processes:  # another N draws other crops and may take other steps per epoch
            raise RunExistsError(f"{where} holds a run trained by {ckpt.get('processes', 1)} process(es); resume it "
                                 f"with as many (torchrun --nproc_per_node), or {other}")
        return ckpt

    # -----------------------------------------------------------------------------------------
    # Resuming and saving

    def restore(self, ckpt: dict, *, model, optimizer, scheduler, scaler, average=None) -> list[dict]:
        """Load checkpoint `ckpt` (this folder's last.pt, as `open` read it) into freshly built training parts (and
        the weights' moving average, with a preset's `ema`), for an exact resume; return its history rows."""
        _, rows = restore(ckpt, self.last, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                          average=average)
        return rows

    def save(self, state, rows: list[dict], best: float) -> float:
        """best.pt (when the last of `rows` has the lowest validation loss yet, below `best`), last.pt and
        history.csv; `state()` makes the checkpoint. Returns the best validation loss."""
        self.path.mkdir(parents=True, exist_ok=True)
        state = state()
        if rows[-1]["val_loss"] < best:  # best.pt first: a crash before last.pt only repeats this epoch
            best = rows[-1]["val_loss"]
            save_checkpoint(self.best, state)
        save_checkpoint(self.last, state)
        write_atomic(self.history, pd.DataFrame(rows).to_csv(index=False))
        return best


def recipe_difference(theirs: Preset | None, ours: Preset) -> str:
    """How the recipe of a run on disk differs from this one, in a few words: the settings that differ, not only
    the preset's name (which is the same when only the epochs or the teacher differ)."""
    if theirs is None:
        return "one this vitlib cannot read"
    a, b = flat_settings(theirs), flat_settings(ours)
    flat = {k: (a.get(k), b.get(k)) for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)}
    shown = "; ".join(f"{k} {x!r} there, {y!r} here" for k, (x, y) in list(flat.items())[:3])
    return f"{theirs.name}: {shown}" if shown else theirs.name


def _recipe(ckpt: dict) -> Preset | None:
    """The preset a checkpoint was trained with, settings added since then at their defaults (None if unreadable)."""
    try:
        return Preset.from_dict(ckpt["preset"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
