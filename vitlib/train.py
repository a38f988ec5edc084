"""Training: device and precision, the loop, history, atomic checkpoints and resume.

Every epoch draws its randomness (shuffle, crops, flips, mixes) from generators seeded by
(seed, epoch), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__, metrics
from .augment import BatchAugment, normalize
from .cache import ImageCache, build_cache, progress_bars
from .data import DogsVsCats, atomic_path, index_images, prepare_data, project_dir, split_train_val, write_atomic
from .models import build_model, checkpoint_epoch, config_dict, load_model
from .presets import Preset

RUNS_ENV = "VITLIB_RUNS_DIR"


class RunExistsError(FileExistsError):
    """The run folder holds a run that this call must not continue or overwrite."""


CHECKPOINT_FORMAT = 1


def runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV) or project_dir("runs")).expanduser()


# ---------------------------------------------------------------------------------------------
# Device and precision


def pick_device(name: str | None = None) -> torch.device:
    """The given device, else CUDA, else Apple's MPS, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_supports_bf16() -> bool:
    """bf16 is fast on CPUs with AVX512-BF16 or AMX (Xeon since Cooper/Sapphire Rapids); slow elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on Ampere-or-later GPUs and bf16-capable CPUs, fp16 (with a grad scaler) on older GPUs.

    The GPU test is the compute capability (8.0 = Ampere): `torch.cuda.is_bf16_supported()` also
    says yes on a T4, where bf16 is emulated and slow.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device):
    """The device's mixed-precision context, or none at all (older torch has no MPS autocast, even disabled)."""
    amp = autocast_dtype(device)
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (CUDA and MPS are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device, threads: int | None = None) -> str:
    """The device in words; for a CPU with its thread count (torch's current one unless given)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = threads or torch.get_num_threads()
        name = f"{cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"
    else:
        name = device.type
    return f"{device.type} ({name})"


def describe_device(device: torch.device) -> str:
    """The device in words and the precision training uses on it."""
    amp = autocast_dtype(device)
    return f"{device_name(device)}, {str(amp).removeprefix('torch.') + ' autocast' if amp else 'fp32'}"


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainData:
    train: ImageCache
    val: ImageCache
    source: str
    setup_s: float


def prepare_training_data(ds: DogsVsCats, preset: Preset, device: torch.device,
                          cache_dir: Path | None = None) -> TrainData:
    """The fixed split of `ds`, cached at the preset's resolution (in `cache_dir`, default data/cache),
    on `device` when it fits."""
    start = time.perf_counter()
    index = split_train_val(index_images(ds), preset.val_fraction, preset.split_seed)
    cache = build_cache(ds, index, preset.model.image_size, cache_dir=cache_dir)
    on = device if _fits(cache, device) else torch.device("cpu")
    train = cache.select(index.loc[index["split"] == "train", "file"])
    val = cache.select(index.loc[index["split"] == "val", "file"])
    del cache  # the two parts are copies: free the whole before moving them
    return TrainData(train.to(on), val.to(on), ds.describe(), time.perf_counter() - start)


def _fits(cache: ImageCache, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return cache.nbytes * 2 < free


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule


def make_optimizer(model: nn.Module, preset: Preset) -> torch.optim.Optimizer:
    if preset.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    # no weight decay on biases, norms, the CLS token and the position embedding
    decay = [
        p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embedding" not in n and "cls_token" not in n
    ]
    keep = [
        p
        for n, p in model.named_parameters()
        if not (p.ndim >= 2 and "pos_embedding" not in n and "cls_token" not in n)
    ]
    groups = [{"params": decay, "weight_decay": preset.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=preset.lr)


def make_scheduler(opt: torch.optim.Optimizer, preset: Preset, steps_per_epoch: int):
    """Stepped once per batch: linear warm-up, then cosine decay to zero; or constant."""
    sched = torch.optim.lr_scheduler
    if preset.schedule == "constant":
        return sched.ConstantLR(opt, factor=1.0, total_iters=0)
    total = preset.epochs * steps_per_epoch
    warm = min(round(preset.warmup_epochs * steps_per_epoch), total - 1)
    cosine = sched.CosineAnnealingLR(opt, T_max=total - warm)
    if warm <= 0:
        return cosine
    warmup = sched.LinearLR(opt, start_factor=1 / warm, total_iters=warm)
    return sched.SequentialLR(opt, [warmup, cosine], milestones=[warm])


def lr_curve(preset: Preset, steps_per_epoch: int) -> np.ndarray:
    """The learning rate at every step of a run, from the very scheduler `fit` uses."""
    opt = make_optimizer(nn.Linear(2, 2), preset)
    sched = make_scheduler(opt, preset, steps_per_epoch)
    lrs = []
    for _ in range(preset.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


# ---------------------------------------------------------------------------------------------
# Prediction and one epoch


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, tta: bool = True, device: torch.device | None = None
) -> np.ndarray:
    """P(dog) for uint8 images (N, 3, S, S), in batches; with `tta`, averaged with the mirror image."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True))
        with autocast(device):
            p = model(x).float().softmax(-1)[:, 1]
            if tta:
                p = (p + model(x.flip(-1)).float().softmax(-1)[:, 1]) / 2
        out.append(p)
    model.train(was_training)
    return torch.cat(out).cpu().numpy() if out else np.empty(0, np.float32)


def epoch_generator(preset: Preset, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(preset.seed * 1_000_003 + epoch)


def train_step(model, x, target, opt, scaler, preset: Preset, device: torch.device, mixed_precision: bool = True):
    """One optimiser step as training takes it: the forward pass in the device's mixed precision,
    cross-entropy with label smoothing, a (scaled) backward pass, gradient clipping, the step.
    Returns the logits and the loss."""
    with autocast(device) if mixed_precision else contextlib.nullcontext():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), target, label_smoothing=preset.label_smoothing)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if preset.grad_clip:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
    scaler.step(opt)
    scaler.update()
    return logits, loss


def make_scaler(device: torch.device, mixed_precision: bool = True) -> torch.amp.GradScaler:
    """fp16 needs its gradients scaled (small ones would underflow); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=mixed_precision and autocast_dtype(device) == torch.float16)


def train_one_epoch(
    model,
    data: ImageCache,
    opt,
    sched,
    scaler,
    augment: BatchAugment,
    preset: Preset,
    epoch: int,
    device: torch.device,
    progress: bool = True,
) -> dict:
    model.train()
    torch.manual_seed(preset.seed * 1_000_003 + epoch)  # MixUp/CutMix and dropout use the global RNG
    gen = epoch_generator(preset, epoch, device)
    # the order is drawn on the CPU (the same on every device), then moved once, not once a step
    order = torch.randperm(len(data), generator=epoch_generator(preset, epoch, torch.device("cpu")))
    order = order.to(data.images.device)
    steps = len(data) // preset.batch_size
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"epoch {epoch}", leave=False, disable=not progress):
        idx = order[step * preset.batch_size : (step + 1) * preset.batch_size]
        x = data.images[idx].to(device, non_blocking=True)
        y = data.labels[idx].to(device, non_blocking=True)
        x, target = augment(x, y, gen)
        logits, loss = train_step(model, x, target, opt, scaler, preset, device)
        lr = opt.param_groups[0]["lr"]  # the rate this step used
        with warnings.catch_warnings():  # fp16: a step the scaler skips (inf gradients) still advances the schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            sched.step()
        loss_sum += loss.detach() * len(y)
        hard = target.argmax(-1) if target.ndim == 2 else target
        correct += (logits.argmax(-1) == hard).sum()
    synchronize(device)
    seconds = time.perf_counter() - start
    seen = steps * preset.batch_size
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"Training diverged in epoch {epoch} (the loss is {train_loss}). The checkpoints of "
            "the epochs before are intact; lower the learning rate or keep grad_clip on."
        )
    return {
        "train_loss": train_loss,
        "train_acc": correct.item() / seen,
        "lr": lr,
        "epoch_s": seconds,
        "images_per_s": seen / seconds,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says which and what to do."""


def load_checkpoint(path: Path, device="cpu") -> dict:
    """A vitlib checkpoint, loaded with weights_only=True (no code from the file runs)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not a checkpoint, or holding objects weights_only refuses
        raise CheckpointError(
            f"Cannot read {Path(path).name} in {Path(path).parent.name}/ ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). It is damaged or not a vitlib checkpoint; move it "
            "away (or choose another run_dir) and train again."
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{Path(path).name} is not a vitlib checkpoint.")
    if ckpt.get("format", CHECKPOINT_FORMAT) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{Path(path).name} was written by a newer vitlib (format {ckpt['format']}); upgrade vitlib to read it."
        )
    return ckpt


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class Run:
    preset: Preset
    run_dir: Path
    history: pd.DataFrame
    model: nn.Module  # weights of the last epoch trained
    data: TrainData
    device: torch.device

    def best_model(self) -> nn.Module:
        return load_model(self.run_dir / "best.pt", self.device)[0]

    def val_predictions(self, model: nn.Module | None = None) -> pd.DataFrame:
        model = model or self.best_model()
        p = predict_proba(model, self.data.val.images, tta=self.preset.tta, device=self.device)
        return pd.DataFrame({"file": self.data.val.files, "label": self.data.val.labels.cpu().numpy(), "p_dog": p})


def fit(
    preset: Preset,
    ds: DogsVsCats | None = None,
    run_dir: Path | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    stop_when=None,
    cache_dir: Path | None = None,
    data: TrainData | None = None,
) -> Run:
    """Train `preset` on `ds`, writing history.csv, last.pt and best.pt into `run_dir`.

    With `resume` (the default) a run_dir holding a checkpoint of the same preset continues from
    its last completed epoch; a finished run just returns. A checkpoint of another preset is
    refused rather than overwritten. `stop_when(row)`, given each epoch's history row, can end the
    run early (the benchmark stops at the seed's accuracy). `cache_dir` says where the image cache
    lives (default data/cache); `data`, from prepare_training_data, saves preparing it again.
    """
    ds = ds or prepare_data()
    progress = progress_bars() if progress is None else progress
    device = pick_device(device)
    run_dir = Path(run_dir or runs_dir() / f"{preset.name}-{ds.name}")
    print(f"device: {describe_device(device)}\ndata: {ds.describe()}\nrun: {preset.name} -> {run_dir.name}/")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    ckpt = None
    last = run_dir / "last.pt"
    if last.is_file():  # checked before any caching: a refusal should be instant
        ckpt = load_checkpoint(last, device)
        if not resume:
            raise RunExistsError(
                f"{run_dir} already holds a run; resume it (resume=True) or choose another "
                "run_dir. Nothing was overwritten."
            )
        if ckpt["preset"] != preset.to_dict():
            raise RunExistsError(
                f"{run_dir} holds a run of a different recipe ({ckpt['preset']['name']}); "
                "choose another run_dir. Nothing was overwritten."
            )

    if data is None:
        data = prepare_training_data(ds, preset, device, cache_dir)
    elif data.source != ds.describe() or data.train.size != preset.model.image_size:
        raise ValueError(f"`data` holds {data.source} at {data.train.size} px; this run needs {ds.describe()} at "
                         f"{preset.model.image_size} px: prepare_training_data(ds, preset, device)")
    start = time.perf_counter() - data.setup_s  # the run's clock includes building or loading the cache
    steps = len(data.train) // preset.batch_size
    if steps == 0:
        raise ValueError(f"{len(data.train)} training images is less than one batch of {preset.batch_size}")
    torch.manual_seed(preset.seed)
    model = build_model(preset.model).to(device)
    opt = make_optimizer(model, preset)
    sched = make_scheduler(opt, preset, steps)
    scaler = make_scaler(device)
    augment = BatchAugment(preset.augment, preset.model.num_classes)
    rows, first = [], 1
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] and scaler.is_enabled():  # a run may resume on a device of another precision
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        rows, first = pd.DataFrame(ckpt["history"]).to_dict("records"), ckpt["epoch"] + 1
        print(
            f"resuming after epoch {ckpt['epoch']}"
            if first <= preset.epochs
            else f"already trained: {ckpt['epoch']} epochs"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    offset = rows[-1]["elapsed_s"] if rows else 0.0
    best = min((r["val_loss"] for r in rows), default=float("inf"))

    epoch = first - 1
    try:
        for epoch in range(first, preset.epochs + 1):
            row = {
                "epoch": epoch,
                **train_one_epoch(model, data.train, opt, sched, scaler, augment, preset, epoch, device, progress),
            }
            t = time.perf_counter()
            p = predict_proba(model, data.val.images, tta=preset.tta, device=device)
            y = data.val.labels.cpu().numpy()
            row.update(
                val_loss=metrics.log_loss(y, p),
                val_acc=metrics.accuracy(y, p),
                eval_s=time.perf_counter() - t,
                elapsed_s=offset + time.perf_counter() - start,
            )
            rows.append(row)
            print(
                f"epoch {epoch:3d}/{preset.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['epoch_s']:.1f}s "
                f"{row['images_per_s']:.0f} img/s"
            )
            state = _state(preset, model, opt, sched, scaler, epoch, rows, ds, device)
            if row["val_loss"] < best:  # best.pt first: a crash before last.pt only repeats this epoch
                best = row["val_loss"]
                save_checkpoint(run_dir / "best.pt", state)
            save_checkpoint(last, state)
            write_atomic(run_dir / "history.csv", pd.DataFrame(rows).to_csv(index=False))
            if stop_when is not None and stop_when(row):
                break
    except KeyboardInterrupt:
        print(
            f"\nInterrupted during epoch {epoch}; {last.name} holds epoch {epoch - 1}. "
            "Run the same call again to resume."
        )
        raise
    return Run(preset, run_dir, pd.DataFrame(rows), model, data, device)


def _state(preset, model, opt, sched, scaler, epoch, rows, ds, device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": CHECKPOINT_FORMAT,
        "vitlib": __version__,
        "epoch": epoch,
        "preset": preset.to_dict(),
        "model_config": config_dict(preset.model),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "history": pd.DataFrame(rows).to_dict("list"),
        "data": ds.describe(),
        "device": describe_device(device),
    }


def export_checkpoint(run_dir: Path, out: Path, command: str) -> dict:
    """Write the best weights of a run as a small fp16 checkpoint, with its provenance beside it (JSON).

    The weights come from best.pt, the history (the whole run's) from last.pt.
    """
    import json
    import subprocess

    ckpt = load_checkpoint(Path(run_dir) / "best.pt")
    history = pd.DataFrame(load_checkpoint(Path(run_dir) / "last.pt")["history"])
    best = checkpoint_epoch({"history": history.to_dict("list"), "epoch": ckpt["epoch"]})
    if best is None:
        raise CheckpointError(f"best.pt is from epoch {ckpt['epoch']}, which last.pt's history lacks: resume the run "
                              "so that last.pt catches up, then export again.")
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
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
        "epoch": ckpt["epoch"],
        "model_config": ckpt["model_config"],
        "preset": ckpt["preset"],
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


REFERENCE_RUNS = Path(__file__).parent / "pretrained" / "reference-runs.csv"


def reference_runs() -> pd.DataFrame:
    """Histories of the reference runs that ship with vitlib (one row per epoch, `run` names the run)."""
    if not REFERENCE_RUNS.is_file():
        return pd.DataFrame(columns=["run", "device", "data", "epoch", "val_acc", "val_loss", "epoch_s", "elapsed_s"])
    return pd.read_csv(REFERENCE_RUNS)


def add_reference_run(name: str, run_dir: Path) -> pd.DataFrame:
    """Record a finished run's history (with its device and data) as reference run `name`."""
    ckpt = load_checkpoint(Path(run_dir) / "last.pt")
    history = pd.DataFrame(ckpt["history"]).assign(run=name, device=ckpt["device"], data=ckpt["data"])
    runs = reference_runs()
    runs = pd.concat([runs[runs["run"] != name], history], ignore_index=True) if len(runs) else history
    first = ["run", "device", "data", "epoch"]
    runs = runs[first + [c for c in runs.columns if c not in first]]
    REFERENCE_RUNS.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(REFERENCE_RUNS, runs.to_csv(index=False))
    return runs
