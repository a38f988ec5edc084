"""The checkpoint: its layout, saving and loading it, the model in it, and where trained ones are found.

A checkpoint is a dict saved with torch.save and read with `weights_only=True` (no code in the
file runs). Its keys:

    format        CHECKPOINT_FORMAT of the vitlib that wrote it
    vitlib        that vitlib's version
    epoch         the epoch the weights come from
    preset        Preset.to_dict(): the recipe, which also fixes the validation split
    model_config  ModelConfig as a dict: what build_model needs to rebuild the network
    model         the weights (state_dict)
    optimizer, scheduler, scaler, rng      training state, for an exact resume (absent when exported)
    trained, averaged    with a preset's `ema` only: the weights as trained (`model` then holds their moving
                  average) and how many steps the average holds (absent when exported)
    history       every epoch's metrics so far, as {column: [values]}
    data_id       {"kind", "name"}: the data it was trained on (DogsVsCats.identity); what code compares
    data          the same in words (DogsVsCats.describe()): what people read
    device        the device and precision it was trained on, in words
    provenance    exported checkpoints only: the command, data and result that produced it

Every failure to read one is a CheckpointError whose one-line message says which file and what to do.
"""

from __future__ import annotations

import json
import math
import numbers
import pickle
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import __version__
from .files import atomic_path, runs_dir, shown, write_atomic
from .models import ModelConfig, build_model, config_dict, count_parameters
from .models import describe as describe_model
from .presets import PRESETS, Preset, get_preset

CHECKPOINT_FORMAT = 2  # 2: data_id added
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
PRETRAINED = {  # the committed trained models, by kind (see load_trained)
    "linformer": PRETRAINED_DIR / "vit-linformer-cpu.pt",  # the plain ViT (patch embedding, Linformer): cpu-plain
    "full": PRETRAINED_DIR / "vit-full-cpu.pt",  # the same with full attention: cpu-full
    "cpu": PRETRAINED_DIR / "vit-cpu.pt",  # the `cpu` preset's model: the best a 2-core CPU trains in 15 minutes
    "cpu-long": PRETRAINED_DIR / "vit-cpu-long.pt",  # the same model trained for an hour (`cpu-long`): the best ViT
    "cnn": PRETRAINED_DIR / "cnn-cpu.pt",  # the reference CNN of notebook 05, and the teacher distillation learns from
}
REFERENCE_RUNS = PRETRAINED_DIR / "reference-runs.csv"
_TRAINING_STATE = ("model", "optimizer", "scheduler", "scaler", "rng", "trained", "averaged")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or used; the message says which file and what to do."""


def _shown(path: Path) -> str:
    """A checkpoint as its messages name it: the file first ("last.pt in runs/cpu/"), its folder as files.shown says
    it."""
    path = Path(path)
    folder = shown(path.parent)
    return path.name if folder == "." else f"{path.name} in {folder.rstrip('/')}/"


# ---------------------------------------------------------------------------------------------
# Writing


def training_state(*, preset, model, optimizer, scheduler, scaler, epoch: int, history: list[dict], data_id: dict,
                   data: str, device: str, processes: int = 1, average=None) -> dict:
    """The checkpoint `fit` writes after each epoch (see the module's docstring for the keys). With a moving average
    of the weights (`average`, a preset's `ema`), `model` holds the average, what is predicted with, and `trained`
    and `averaged` the weights as trained and the number of steps averaged, to resume exactly."""
    rng = {"torch": torch.get_rng_state()}
    averaged = {} if average is None else {"model": average.module.state_dict(), "trained": model.state_dict(),
                                           "averaged": int(average.n_averaged)}
    return {
        "format": CHECKPOINT_FORMAT,
        "vitlib": __version__,
        "epoch": epoch,
        "preset": preset.to_dict(),
        "model_config": config_dict(preset.model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "history": pd.DataFrame(history).to_dict("list"),
        "data_id": dict(data_id),
        "data": data,
        "device": device,
        "processes": processes,  # torchrun's N (a run resumes with the same N)
        **averaged,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash or a full disk never leaves half a checkpoint.

    Through a Python file: given a path, torch.save's C++ writer reports a full disk as a RuntimeError
    ("unexpected pos ..."); a file object raises the OSError that says why, which atomic_path turns
    into one line naming the folder.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


# ---------------------------------------------------------------------------------------------
# Reading


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (module.name) a checkpoint's pickle asks for beyond what weights_only builds; [] when it
    asks for none, or cannot be read that far (damaged)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 (a damaged file: the caller says so)
        return []


ANOTHER = "use another: a checkpoint vitlib wrote (a run's best.pt or last.pt, or an export)"  # what to do, by default
RESUMING = "move it away (or choose another run_dir) and train again"  # what to do when it is a run's last.pt


def load_checkpoint(path: Path, device="cpu", fix: str = ANOTHER) -> dict:
    """A vitlib checkpoint, loaded with weights_only=True (no code from the file runs), or a CheckpointError whose
    one line ends with `fix`, what to do (resuming a run: RESUMING)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        instead = "" if path.name == "last.pt" else " (or resume from last.pt)"
        raise CheckpointError(f"{_shown(path)} is empty (0 bytes): a run killed while writing it, or a full disk. "
                              f"Delete it and train again{instead}.")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)  # asked of the file itself, not read from torch's wording (which changes)
        if not unsafe:
            first = next(iter(str(e).splitlines()), "").strip()[:200]
            raise CheckpointError(f"Cannot read {_shown(path)} (it is damaged or not a vitlib checkpoint: {first}); "
                                  f"{fix}.") from None
        raise CheckpointError(
            f"Refused {_shown(path)}: besides weights it holds Python objects ({', '.join(unsafe[:3])}), and loading "
            "those could run code from the file, so vitlib did not load it. Use a checkpoint vitlib wrote (best.pt, "
            "last.pt, an export)."
        ) from None
    except Exception as e:  # truncated, or not a checkpoint
        first = next(iter(str(e).splitlines()), "").strip()[:200]
        raise CheckpointError(
            f"Cannot read {_shown(path)} ({type(e).__name__}{': ' + first if first else ''}). It is damaged or "
            f"not a vitlib checkpoint; {fix}."
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{_shown(path)} is not a vitlib checkpoint (it holds a {type(ckpt).__name__}).")
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{_shown(path)} holds bare weights (a state_dict of {len(ckpt)} tensors) without the model_config "
            "vitlib needs to rebuild the model: load it into a model you build yourself, or use a checkpoint "
            "written by vitlib (best.pt, last.pt, or export_checkpoint)."
        )
    version = ckpt.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:37] + "..."  # not 5 MB of it
        raise CheckpointError(f"{_shown(path)} is not a vitlib checkpoint (its format is {shown}, not a number "
                              "vitlib writes); move it away or use a checkpoint vitlib wrote.")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{_shown(path)} was written by a newer vitlib (format {ckpt['format']}); upgrade vitlib to read it."
        )
    if "data_id" not in ckpt:
        ckpt["data_id"] = _legacy_data_id(ckpt.get("data"))
    if not isinstance(ckpt["data_id"], Mapping):
        raise CheckpointError(f"{_shown(path)} is not a vitlib checkpoint (its data_id is a "
                              f"{type(ckpt['data_id']).__name__}); move it away or use a checkpoint vitlib wrote.")
    return ckpt


HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "lr", "epoch_s", "images_per_s", "val_loss", "val_acc", "eval_s",
                   "elapsed_s")  # what fit records for every epoch; resuming reads them


def _finite_weights(state: Mapping) -> bool:
    """Whether every floating-point tensor of a state_dict holds finite numbers (no NaN, no inf)."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if isinstance(v, torch.Tensor)
               and v.is_floating_point())


def _finite(value) -> bool:
    """models.finite_number, widened to numbers.Real: a history may hold numpy numbers (np.float32, np.int64), which
    are not int or float. Kept apart on purpose: a preset setting must stay a plain int or float, because a numpy
    number in a preset would make its checkpoint unreadable under weights_only."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def restore(ckpt: dict, path: Path, *, model, optimizer, scheduler, scaler, average=None) -> tuple[int, list[dict]]:
    """Load a training checkpoint (last.pt at `path`) into freshly built training parts, for an exact resume; return
    its epoch and its history rows. Every part is checked before any is loaded: a CheckpointError in one line
    names the first that is missing, of the wrong type, or does not fit the model."""
    where = _shown(path)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{where} cannot be resumed: {what}. It was edited or damaged; move it away (or "
                                  "choose another run_dir) and train again.")

    epoch = ckpt.get("epoch")
    need(isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0, f"its epoch is {epoch!r}")
    for key in ("model", "optimizer", "scheduler"):
        need(isinstance(ckpt.get(key), Mapping), f"it has no {key} state")
    need(isinstance(ckpt["optimizer"].get("param_groups"), list), "its optimizer state has no param_groups")
    need(ckpt.get("scaler") is None or isinstance(ckpt["scaler"], Mapping), "its scaler state is not a dict")
    rng = ckpt.get("rng", {}).get("torch") if isinstance(ckpt.get("rng"), Mapping) else None
    need(isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.ndim == 1,
         "its random-number state is not the byte tensor torch saves")
    history = ckpt.get("history")
    need(isinstance(history, Mapping) and all(isinstance(v, list) for v in history.values()),
         "its history is not columns of values")
    missing = [c for c in HISTORY_COLUMNS if c not in history]
    need(not missing, f"its history lacks {', '.join(missing)}")
    need(all(len(history[c]) == epoch for c in HISTORY_COLUMNS), f"its history does not hold its {epoch} epochs")
    need(all(_finite(v) for c in HISTORY_COLUMNS for v in history[c]), "its history holds values that are not numbers")
    need(_finite_weights(ckpt["model"]), "its weights are not all finite numbers (NaN or inf)")
    if average is not None:  # `model` holds the moving average; the weights as trained are `trained`
        need(isinstance(ckpt.get("trained"), Mapping), "it has no trained weights beside their moving average")
        need(_finite_weights(ckpt["trained"]), "its trained weights are not all finite numbers (NaN or inf)")
        steps = ckpt.get("averaged")
        need(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0,
             f"its number of averaged steps is {steps!r}")
    try:
        model.load_state_dict(ckpt["model"] if average is None else ckpt["trained"])
        if average is not None:
            average.module.load_state_dict(ckpt["model"])
            average.n_averaged.fill_(ckpt["averaged"])
    except RuntimeError as e:
        need(False, f"its weights do not fit its recipe's model ({_first_mismatch(e)})")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] and scaler.is_enabled():  # a run may resume on a device of another precision
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(rng.cpu())
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else ""
        need(False, f"its training state does not fit ({type(e).__name__}: {first})")
    return epoch, pd.DataFrame(history).to_dict("records")


def _first_mismatch(error: RuntimeError) -> str:
    """The one line of load_state_dict's many that says what does not fit."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line or "Missing key" in line
                   or "Unexpected key" in line), lines[-1] if lines else "")
    return detail[:160]


def _legacy_data_id(text: str | None) -> dict:
    """The data identity of a format-1 checkpoint, which stored only the words of DogsVsCats.describe()."""
    if not text:
        return {"kind": "unknown", "name": "unknown"}
    if text.startswith("SYNTHETIC"):
        return {"kind": "sample", "name": "sample"}
    kind = "kaggle" if "Kaggle download" in text else "local"
    return {"kind": kind, "name": text.rsplit("'", 2)[-2] if text.count("'") >= 2 else text}


def model_from_checkpoint(ckpt: dict, device="cpu", path: Path | None = None) -> tuple[nn.Module, dict]:
    """The model a loaded checkpoint holds (in eval mode, on `device`), and the rest of it as metadata."""
    where = _shown(path) if path else "the checkpoint"
    missing = [key for key in ("model_config", "model") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{where} is not a vitlib model checkpoint: it has no {' and no '.join(missing)} "
                              f"(its keys: {', '.join(map(str, list(ckpt)[:8]))}).")
    try:
        cfg = ModelConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has a model_config this vitlib cannot build ({e}).") from None
    if not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"{where} is not a vitlib model checkpoint: its model is a "
                              f"{type(ckpt['model']).__name__}, not weights (a state_dict of tensors).")
    if not _finite_weights(ckpt["model"]):
        raise CheckpointError(f"{where} holds weights that are not finite numbers (NaN or inf): a diverged or damaged "
                              "run. Use another checkpoint (an earlier best.pt, or the committed one).")
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{where}: its weights do not fit its model_config (the config builds a "
            f"{count_parameters(model):,}-parameter {cfg.attention} ViT at {cfg.image_size} px, patch "
            f"{cfg.patch_size}; {_first_mismatch(e)}). The file was edited or mixed up: use the checkpoint as "
            "training wrote it."
        ) from None
    meta = {k: v for k, v in ckpt.items() if k not in _TRAINING_STATE}
    return model.to(device).eval(), meta


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """A model from a vitlib checkpoint (trusted or not: weights_only=True), and its metadata."""
    return model_from_checkpoint(load_checkpoint(path, device), device, Path(path))


def load_trained(path=None, kind: str = "linformer", device="cpu") -> tuple[nn.Module, dict]:
    """A trained model to look at: `path`, else your own best real-photo run of that `kind`, else the committed one.

    kind: "linformer" or "full", the plain ViT with that attention (one linear map per patch: notebooks 02 and
    03 look inside it); "cpu", the `cpu` preset's model (notebooks 04, 05 and 07); "cpu-long", the same model
    trained by the `cpu-long` preset for an hour, the best ViT (06); "cnn", the reference CNN (05). Your own: the
    newest `runs/*/best.pt` of that kind trained on real photos (notebook 04 writes one; for "cpu-long", a run of
    that preset); one that cannot be read or built is skipped with a warning. The committed checkpoints
    (vitlib/pretrained/) were written by vitlib's own training code; meta["provenance"] says with what command,
    data and result.
    """
    if kind not in PRETRAINED:
        raise ValueError(f"kind must be one of {', '.join(map(repr, PRETRAINED))}, not {kind!r}")
    found = None
    if path is None:
        path = PRETRAINED[kind]
        for own in sorted(runs_dir().glob("*/best.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                candidate = load_checkpoint(own)
                if not _is_kind(candidate.get("model_config"), kind, _preset_name(candidate)) or (
                        candidate["data_id"].get("kind") == "sample"):
                    continue  # another kind of model, or the sample: not what was asked for
                found = model_from_checkpoint(candidate, device, own)  # a CheckpointError if it cannot be used
            except CheckpointError as e:
                warnings.warn(f"Skipped {e}", stacklevel=2)
                continue
            path = own
            break
    model, meta = found or load_model(path, device)
    meta["source"] = (
        "committed checkpoint" if Path(path) in PRETRAINED.values() else f"your run {Path(path).parent.name}"
    )
    return model, meta


def _preset_name(ckpt: dict) -> str | None:
    """The name of the preset a checkpoint was trained with (None where it does not say)."""
    preset = ckpt.get("preset")
    return preset.get("name") if isinstance(preset, dict) else None


def _is_kind(config, kind: str, preset: str | None = None) -> bool:
    """Whether a checkpoint's model_config is a model of `kind` (a config that cannot be built is let through, for
    model_from_checkpoint to report); "cpu-long" is the cpu model trained by the preset of that name (`preset`)."""
    if not isinstance(config, dict):
        return True
    try:
        cfg = ModelConfig(**config)
    except (TypeError, ValueError):
        return True
    if kind == "cpu-long":  # the cpu model, trained by the preset of that name
        return cfg == PRESETS["cpu-long"].model and preset == "cpu-long"
    if kind == "cpu":
        return cfg == PRESETS["cpu"].model
    if kind == "cnn":
        return cfg.family == "cnn"
    return cfg.family == "vit" and cfg.stem == "patch" and cfg.attention == kind


def checkpoint_epoch(meta: dict) -> dict | None:
    """The history row of the epoch a checkpoint's weights come from (None if it has no history)."""
    if not meta.get("history"):
        return None
    history = pd.DataFrame(meta["history"])
    row = history[history["epoch"] == meta.get("epoch", history["epoch"].iloc[-1])]
    return row.iloc[0].to_dict() if len(row) else None


def describe(model: nn.Module, meta: dict | None = None) -> str:
    """The architecture, its geometry and size; given a checkpoint's meta, also where its weights come from."""
    line = describe_model(model)
    if meta:
        row = checkpoint_epoch(meta)
        line += f"\n{meta.get('source', 'checkpoint')}: trained on {meta['data']}"
        if row is not None:
            line += (
                f"; weights of epoch {int(row['epoch'])} of {len(meta['history']['epoch'])}: validation accuracy "
                f"{row['val_acc']:.4f}, log loss {row['val_loss']:.4f}"
            )
    return line


# ---------------------------------------------------------------------------------------------
# Sharing a run: a small export, and reference histories


def export_checkpoint(run_dir: Path, out: Path, command: str, as_preset: str | None = None) -> dict:
    """Write the best weights of a run as a small fp16 checkpoint, with its provenance beside it (JSON).

    The weights come from best.pt, the history (the whole run's) from last.pt. `as_preset` names the shipped preset
    whose recipe the run trained under another name (an ablation row's `cpu-plain` with settings): the recipes must be
    the same but for name and description, and the checkpoint then carries that preset.
    """
    ckpt = load_checkpoint(Path(run_dir) / "best.pt")
    if as_preset is not None:
        shipped, ran = get_preset(as_preset), Preset.from_dict(ckpt["preset"])
        if ran.replace(name=shipped.name, about=shipped.about) != shipped:
            raise CheckpointError(f"{shown(run_dir)} trained another recipe than the {as_preset} preset: export it "
                                  "without as_preset, or train that preset")
        ckpt["preset"] = shipped.to_dict()
    history = pd.DataFrame(load_checkpoint(Path(run_dir) / "last.pt")["history"])
    best = checkpoint_epoch({"history": history.to_dict("list"), "epoch": ckpt["epoch"]})
    if best is None:
        raise CheckpointError(f"best.pt is from epoch {ckpt['epoch']}, which last.pt's history lacks: resume the run "
                              "so that last.pt catches up, then export again.")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    provenance = {
        "command": command,
        "data": ckpt["data"],
        "device": ckpt["device"],
        "preset": ckpt["preset"]["name"],
        "epoch": int(best["epoch"]),
        "epochs": int(history["epoch"].max()),
        "val_acc": round(float(best["val_acc"]), 4),
        "val_log_loss": round(float(best["val_loss"]), 4),
        "minutes_to_best": round(float(best["elapsed_s"]) / 60, 1),
        "minutes_in_all": round(float(history["elapsed_s"].iloc[-1]) / 60, 1),
        "vitlib": ckpt["vitlib"],
        "git_commit": commit,
    }
    slim = {
        "format": CHECKPOINT_FORMAT,
        "vitlib": ckpt["vitlib"],
        "epoch": ckpt["epoch"],
        "model_config": ckpt["model_config"],
        "preset": ckpt["preset"],
        "data_id": ckpt["data_id"],
        "data": ckpt["data"],
        "device": ckpt["device"],
        "history": history.to_dict("list"),
        "provenance": provenance,
        "model": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, slim)
    write_atomic(out.with_suffix(".json"), json.dumps(provenance, indent=2) + "\n")
    return provenance


def reference_runs(csv: Path | None = None) -> pd.DataFrame:
    """Histories of recorded runs (one row per epoch, `run` names the run): by default the reference runs that
    ship with vitlib; `csv` reads another record, such as an ablation's."""
    csv = Path(csv or REFERENCE_RUNS)
    if not csv.is_file():
        return pd.DataFrame(columns=["run", "device", "data", "epoch", "val_acc", "val_loss", "epoch_s", "elapsed_s"])
    return pd.read_csv(csv)


def add_reference_run(name: str, run_dir: Path, command: str | None = None, csv: Path | None = None) -> pd.DataFrame:
    """Record a finished run's history (with its device, data and, given, the command that reproduces it) as run
    `name` in `csv` (default: the reference runs that ship with vitlib); recording a name again replaces it."""
    csv = Path(csv or REFERENCE_RUNS)
    ckpt = load_checkpoint(Path(run_dir) / "last.pt")
    history = pd.DataFrame(ckpt["history"]).assign(run=name, device=ckpt["device"], data=ckpt["data"])
    if command is not None:
        history["command"] = command
    runs = reference_runs(csv)
    runs = pd.concat([runs[runs["run"] != name], history], ignore_index=True) if len(runs) else history
    first = ["run", "device", "data", "epoch"]
    runs = runs[first + [c for c in runs.columns if c not in first]]
    csv.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(csv, runs.to_csv(index=False))
    return runs
