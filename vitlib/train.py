"""Training: the data it needs, the optimiser and schedule, one step, one epoch, and `fit`.

`fit` reads as its phases: claim the run folder (one writer at a time), see what it holds already,
build the model and optimiser, resume, run the epochs (saving after each), and return the run.
Every epoch draws its randomness (shuffle, crops, flips, mixes) from generators seeded by
(seed, epoch), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
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

from . import device as devices
from . import distill, distributed, metrics
from .augment import BatchAugment
from .cache import ImageCache, build_cache
from .checkpoints import load_checkpoint, load_model, restore, save_checkpoint, training_state
from .data import DataError, DogsVsCats, nested_subset, validation_split
from .distributed import SINGLE, World
from .files import (
    exclusive,
    progress_bars,
    remove_stale_temporaries,
    runs_dir,
    uninterrupted,
    writable_folder,
    write_atomic,
)
from .models import build_model
from .predict import predict_split
from .presets import PRESETS, Preset, PresetError, check_fits, flat_settings

RUN_FILES = ("last.pt", "best.pt", "history.csv")  # what fit writes into a run folder


class RunExistsError(FileExistsError):
    """The run folder holds a run that this call must not continue or overwrite."""


class DivergedError(FloatingPointError):
    """The training loss stopped being a number; the message says which epoch and what to change."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainData:
    """The fixed split of one data set, cached at one resolution, on the device training will use.

    Under torchrun each process holds only its shard of both parts (`world.shard`)."""

    train: ImageCache
    val: ImageCache
    data_id: dict  # DogsVsCats.identity: what code compares
    source: str  # DogsVsCats.describe(): what people read
    device: torch.device
    setup_s: float  # seconds it took to build or load the cache
    world: World = SINGLE  # this process among the run's processes (one, without torchrun)


def prepare_training_data(ds: DogsVsCats, preset: Preset, device=None, cache_dir: Path | None = None) -> TrainData:
    """The validation split of `ds` for `preset`, cached at its resolution (in `cache_dir`, default
    data/cache), on `device` (default: the best there is) when it fits there.

    Started by torchrun, this process joins the run's process group and keeps its own shard of each part
    (on its own GPU)."""
    check_fits(preset)  # the model and a batch, against this machine's memory, before anything is cached
    world, device = distributed.start(devices.pick_device(device))
    start = time.perf_counter()
    index = validation_split(ds, preset)
    cache = build_cache(ds, index, preset.model.image_size, cache_dir=cache_dir)
    # a larger cache for the training photos (preset.cache_size): the whole split, so that it is the same file a
    # preset training at that size uses
    large = cache if preset.train_size == cache.size else build_cache(ds, index, preset.train_size, cache_dir=cache_dir)
    index = nested_subset(index, preset.train_images, preset.split_seed)  # the caches hold all: one file per size
    on = device if _fits(cache, device, world) and _fits(large, device, world) else torch.device("cpu")
    parts = [world.shard(list(index.loc[index["split"] == part, "file"])) for part in ("train", "val")]
    train, val = large.select(parts[0]), cache.select(parts[1])
    for name, part in (("training", train), ("validation", val)):
        if len(part) == 0:
            raise DataError(f"no readable {name} photos in {ds.name} ({len(index):,} labelled files, "
                            f"val_fraction {preset.val_fraction}): check the photos, or choose a val_fraction that "
                            "leaves some on both sides")
    del cache, large  # the two parts are copies: free the wholes before moving them
    return TrainData(train.to(on), val.to(on), ds.identity, ds.describe(), device, time.perf_counter() - start, world)


def _fits(cache: ImageCache, device: torch.device, world: World = SINGLE) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return cache.nbytes // world.size * 2 < free


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
# One epoch


def epoch_seed(preset: Preset, epoch: int, rank: int = 0) -> int:
    """The seed of epoch `epoch`'s randomness in process `rank` (each of torchrun's processes crops its own)."""
    return preset.seed * 1_000_003 + epoch + 100_000 * rank


def epoch_generator(preset: Preset, epoch: int, device: torch.device, rank: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(epoch_seed(preset, epoch, rank))


def train_step(model, x, target, opt, scaler, preset: Preset, device: torch.device, mixed_precision: bool = True,
               teacher: nn.Module | None = None):
    """One optimiser step as training takes it: the forward pass in the device's mixed precision,
    cross-entropy with label smoothing (with a `teacher`, DeiT's loss: distill.deit_loss), a (scaled) backward
    pass, gradient clipping, the step. Returns the logits (a distilled student's: its two heads' mean) and the loss."""
    with devices.autocast(device) if mixed_precision else contextlib.nullcontext():
        logits = model(x)
        said = distill.teacher_logits(teacher, x) if teacher is not None else None
    if said is None:
        loss = F.cross_entropy(logits.float(), target, label_smoothing=preset.label_smoothing)
    else:
        loss = distill.deit_loss(logits, target, said, preset.label_smoothing)
        logits = (logits[0] + logits[1]) / 2
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
    fp16 = devices.autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=mixed_precision and fp16)


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
    world: World = SINGLE,
    steps: int | None = None,
    after_step=None,
    mixed_precision: bool = True,
    teacher: nn.Module | None = None,
) -> dict:
    """One pass over `data` in `steps` steps of batch_size images (default: as many as fit). Among torchrun's
    processes, `data` is this one's shard and each step takes batch_size / world.size images from it;
    `after_step(model)`, if given, is called after every step with `model` as trained (wrapped by DDP or
    torch.compile when they are on: its state_dict keys then carry their prefixes)."""
    model.train()
    torch.manual_seed(epoch_seed(preset, epoch, world.rank))  # MixUp/CutMix and dropout use the global RNG
    gen = epoch_generator(preset, epoch, device, world.rank)
    # the order is drawn on the CPU (the same on every device), then moved once, not once a step
    order = torch.randperm(len(data), generator=epoch_generator(preset, epoch, torch.device("cpu")))
    order = order.to(data.images.device)
    batch = preset.batch_size // world.size
    steps = len(data) // batch if steps is None else steps
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"epoch {epoch}", leave=False, disable=not progress):
        idx = order[step * batch : (step + 1) * batch]
        x = data.images[idx].to(device, non_blocking=True)
        y = data.labels[idx].to(device, non_blocking=True)
        x, target = augment(x, y, gen)
        logits, loss = train_step(model, x, target, opt, scaler, preset, device, mixed_precision, teacher)
        lr = opt.param_groups[0]["lr"]  # the rate this step used
        with warnings.catch_warnings():  # fp16: a step the scaler skips (inf gradients) still advances the schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            sched.step()
        loss_sum += loss.detach() * len(y)
        hard = target.argmax(-1) if target.ndim == 2 else target
        correct += (logits.argmax(-1) == hard).sum()
        if after_step is not None:
            after_step(model)
    distributed.total(loss_sum, world)
    distributed.total(correct, world)
    devices.synchronize(device)
    seconds = time.perf_counter() - start
    seen = steps * batch * world.size
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise DivergedError(
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
# The run folder: one writer, and what it holds already


def default_run_dir(preset: Preset, data_id: dict) -> Path:
    """runs/<preset>-<data name>; runs/<preset>-<N>ep-<data name> for a shipped preset trained for N epochs instead of
    its own (`--epochs N`, notebook 04's EPOCHS), so that a short run and the full one never claim one folder, and the
    command line and the notebook name the same run alike."""
    shipped = PRESETS.get(preset.name)
    epochs = f"-{preset.epochs}ep" if shipped is not None and preset.epochs != shipped.epochs else ""
    return runs_dir() / f"{preset.name}{epochs}-{data_id['name']}"


def check_run_dir(run_dir: Path) -> Path:
    """`run_dir`, if a run may live there: a new folder, an empty one, or one holding a vitlib run (RUN_FILES);
    a RunExistsError in one line, before anything is trained or written, for a file, or for a folder of
    other things (`/`, your home, a project); hidden files (a killed run's temporaries, .ipynb_checkpoints) do not
    count."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.is_symlink() and not run_dir.exists():  # a link to nothing: mkdir would fail only after an epoch
        raise RunExistsError(f"the run folder {run_dir} is a link to {os.readlink(run_dir)}, which does not exist: "
                             "create that folder, or choose another run_dir (--run-dir). Nothing was written.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"the run folder {run_dir} is a file, not a folder: choose another run_dir (--run-dir). "
                             "Nothing was written.")
    run_dir = writable_folder(run_dir, "the run folder (run_dir, --run-dir)")
    if run_dir.is_dir() and not any((run_dir / name).exists() for name in RUN_FILES):
        other = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]  # .DS_Store, .ipynb_checkpoints
        if other:
            shown = ", ".join(sorted(other)[:3]) + (", ..." if len(other) > 3 else "")
            raise RunExistsError(f"the run folder {run_dir} holds {len(other)} other thing(s) ({shown}) and no vitlib "
                                 "run: choose a new or empty folder (--run-dir). Nothing was written.")
    return run_dir


def claim_run(run_dir: Path):
    """Hold `run_dir` for this process while the block runs; refused at once (BusyError) if another holds it.

    The lock sits beside the folder (`.<name>.lock`); the operating system drops it when its process
    ends, however it ends, so a killed run never blocks the next one. Reentrant within a process.
    """
    run_dir = check_run_dir(run_dir)
    return exclusive(run_dir.parent / f".{run_dir.name}.lock",
                     f"another process is training into {run_dir.name}/ right now; wait for it to finish, or "
                     "choose another run folder. Nothing was written.")


def resume_point(run_dir: Path, preset: Preset, data_id: dict, resume: bool = True, device="cpu",
                 processes: int = 1) -> dict | None:
    """The last checkpoint of `run_dir` to continue from (None for a fresh run), or a RunExistsError when
    the folder holds a run this call must not touch: any run when `resume` is off, another recipe's, one
    trained on other data, or by another number of processes. Temporary files of RUN_FILES that a killed run
    left there are removed (nothing else)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        remove_stale_temporaries(run_dir, RUN_FILES)
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    ckpt = load_checkpoint(last, device)
    if not resume:
        raise RunExistsError(f"{run_dir} already holds a run; resume it (without --fresh; resume=True in fit) or "
                             "choose another run_dir. Nothing was overwritten.")
    recipe = _recipe(ckpt)
    if recipe != preset:
        raise RunExistsError(f"{run_dir} holds a run of a different recipe ({_recipe_difference(recipe, preset)}); "
                             "choose another run_dir. Nothing was overwritten.")
    if ckpt["data_id"] != dict(data_id):
        raise RunExistsError(f"{run_dir} holds a run trained on other data ({ckpt['data']}); choose another "
                             "run_dir. Nothing was overwritten.")
    if ckpt.get("processes", 1) != processes:  # another N draws other crops and may take other steps per epoch
        raise RunExistsError(f"{run_dir} holds a run trained by {ckpt.get('processes', 1)} process(es); resume it "
                             "with as many (torchrun --nproc_per_node), or choose another run_dir. Nothing was "
                             "overwritten.")
    return ckpt


def _recipe_difference(theirs: Preset | None, ours: Preset) -> str:
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
        """The validation split as `model` (default: the best epoch's) predicts it: file, id, label, p_raw."""
        return predict_split(model or self.best_model(), self.data.val, tta=self.preset.tta, device=self.device)


def fit(preset: Preset, data: TrainData, run_dir: Path | None = None, resume: bool = True,
        progress: bool | None = None, stop_when=None, compile: bool = False, after_step=None,
        mixed_precision: bool = True) -> Run:
    """Train `preset` on `data` (from prepare_training_data), writing history.csv, last.pt and best.pt
    into `run_dir` (default runs/<preset>-<data>).

    With `resume` (the default) a run_dir holding a checkpoint of the same preset and data continues
    from its last completed epoch; a finished run just returns. Another recipe's run, or a second
    process training into the same folder, is refused rather than overwritten. `stop_when(row)`,
    given each epoch's history row, can end the run early (the benchmark stops at the seed's accuracy).
    `compile` trains through torch.compile (a one-off compile, then faster steps where it pays: see
    bench.compile_speed); `after_step(model)` is called after every optimiser step. `mixed_precision` off
    trains and validates in fp32 (for a CPU whose bf16 turns out slower than fp32: measure, notebook 04).

    Under torchrun (data.world has several processes) every process calls this with its shard; they
    train one model through DistributedDataParallel, and rank 0 alone prints, holds the run folder and
    writes to it. See vitlib.distributed for the batch and learning-rate rule.
    """
    world = data.world
    say = print if world.main else _silent
    progress = (progress_bars() if progress is None else progress) and world.main
    device = data.device
    run_dir = Path(run_dir or default_run_dir(preset, data.data_id))
    if (data.train.size, data.val.size) != (preset.train_size, preset.model.image_size):
        raise ValueError(f"`data` holds images at {data.train.size} px (validation {data.val.size} px); {preset.name}"
                         f" caches at {preset.train_size} px and validates at {preset.model.image_size} px: "
                         "prepare_training_data(ds, preset)")
    if preset.batch_size % world.size:
        raise PresetError(f"batch_size {preset.batch_size} does not split over {world.size} processes: choose a "
                         f"multiple of {world.size} (each process takes an equal part of every batch)")
    # every process takes the same number of steps: as many as the smallest shard holds
    steps = min(distributed.gather(len(data.train) // (preset.batch_size // world.size), world))
    if steps == 0:
        raise PresetError(f"batch_size {preset.batch_size} is more than the {len(data.train) * world.size:,} training "
                          "images: choose a smaller batch_size (--batch-size), or more training photos (val_fraction)")
    say(f"device: {devices.describe_device(device, mixed_precision)}{_processes(world)}"
        f"\ndata: {data.source}\nrun: {preset.name} -> {run_dir.name}/")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with contextlib.ExitStack() as held:
        # rank 0 holds the folder; a refusal (busy, another recipe) ends every process, none left waiting
        distributed.from_main(functools.partial(_hold, held, run_dir), world)
        ckpt = distributed.from_main(lambda: resume_point(run_dir, preset, data.data_id, resume,
                                                          device if world.size == 1 else "cpu", world.size), world)
        # the teacher first: building it draws random numbers, which the student's initialisation must not see
        teacher = distill.load_teacher(preset.teacher, preset.model.image_size, device) if preset.teacher else None
        torch.manual_seed(preset.seed)
        model = build_model(preset.model).to(device)
        opt = make_optimizer(model, preset)
        sched = make_scheduler(opt, preset, steps)
        scaler = make_scaler(device, mixed_precision)
        rows = _restore(ckpt, run_dir, model, opt, sched, scaler, preset, say) if ckpt else []
        trained = distributed.wrap(model, world, device)
        trained = torch.compile(trained) if compile else trained
        rows = _epochs(preset, data, run_dir, model, trained, opt, sched, scaler, rows, progress, stop_when, steps,
                       after_step, mixed_precision, teacher)
    return Run(preset, run_dir, pd.DataFrame(rows), model, data, device)


def _hold(held: contextlib.ExitStack, run_dir: Path) -> None:
    """Claim `run_dir` until `held` closes (BusyError at once if another process trains into it)."""
    held.enter_context(claim_run(run_dir))


def _silent(*args, **kwargs) -> None:
    """print, for the processes other than rank 0."""


def _restore(ckpt: dict, run_dir: Path, model, opt, sched, scaler, preset: Preset, say=print) -> list[dict]:
    """Load a checkpoint's training state into the freshly built parts; return its history rows."""
    done, rows = restore(ckpt, run_dir / "last.pt", model=model, optimizer=opt, scheduler=sched, scaler=scaler)
    say(f"resuming after epoch {done}" if done < preset.epochs else f"already trained: {done} epochs")
    return rows


def _epochs(preset, data: TrainData, run_dir: Path, model, trained, opt, sched, scaler, rows: list[dict],
            progress: bool, stop_when, steps: int, after_step, mixed_precision: bool = True,
            teacher: nn.Module | None = None) -> list[dict]:
    """The epoch loop from after the last row of `rows`: train (`trained`: the model itself, or wrapped by DDP
    or torch.compile), validate (`model`), save; each epoch's row appended."""
    device, world = data.device, data.world
    say = print if world.main else _silent
    augment = BatchAugment(preset.augment, preset.model.num_classes, preset.model.image_size)
    start = time.perf_counter() - data.setup_s  # the run's clock includes building or loading the cache
    offset = rows[-1]["elapsed_s"] if rows else 0.0
    best = min((r["val_loss"] for r in rows), default=float("inf"))
    last = run_dir / "last.pt"
    first = int(rows[-1]["epoch"]) + 1 if rows else 1
    epoch = saved = first - 1
    try:
        for epoch in range(first, preset.epochs + 1):
            row = {"epoch": epoch, **train_one_epoch(trained, data.train, opt, sched, scaler, augment, preset, epoch,
                                                     device, progress, world, steps, after_step, mixed_precision,
                                                     teacher)}
            t = time.perf_counter()
            distributed.same_buffers(model, world)  # BatchNorm's statistics: rank 0's, on every process
            y, p = _validate(model, data, preset, mixed_precision)
            row.update(val_loss=metrics.log_loss(y, p), val_acc=metrics.accuracy(y, p), eval_s=time.perf_counter() - t,
                       elapsed_s=offset + time.perf_counter() - start)
            rows.append(row)
            say(f"epoch {epoch:3d}/{preset.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['epoch_s']:.1f}s "
                f"{row['images_per_s']:.0f} img/s")
            state = functools.partial(training_state, preset=preset, model=model, optimizer=opt, scheduler=sched,
                                      scaler=scaler, epoch=epoch, history=rows, data_id=data.data_id,
                                      data=data.source, processes=world.size,
                                      device=devices.describe_device(device, mixed_precision) + _processes(world))
            # rank 0 writes; every process waits for it and learns of a failure (a full disk) at once. A Ctrl-C
            # meanwhile is held until the checkpoint is whole and `saved` says so
            with uninterrupted():
                best = distributed.from_main(functools.partial(_save, run_dir, state, rows, best), world)
                saved = epoch
            # rank 0 decides, so that every process stops together
            if stop_when is not None and distributed.from_main(functools.partial(stop_when, row), world):
                break
    except KeyboardInterrupt:
        when = f"after epoch {epoch}" if saved == epoch else f"during epoch {epoch}"
        say(f"\nInterrupted {when}; {last.name} holds epoch {saved}. Run the same call again to resume.")
        raise
    except RuntimeError as e:
        if world.size == 1 or not distributed.lost(e):
            raise
        raise distributed.DistributedError(
            f"process {world.rank} of {world.size} lost the other processes during epoch {epoch} "
            f"({distributed.reason(e)}); {last.name} holds epoch {saved}: run the same torchrun command to resume"
        ) from None
    return rows


def _save(run_dir: Path, state, rows: list[dict], best: float) -> float:
    """best.pt (when this epoch is the best yet), last.pt and history.csv; returns the best validation loss."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = state()
    if rows[-1]["val_loss"] < best:  # best.pt first: a crash before last.pt only repeats this epoch
        best = rows[-1]["val_loss"]
        save_checkpoint(run_dir / "best.pt", state)
    save_checkpoint(run_dir / "last.pt", state)
    write_atomic(run_dir / "history.csv", pd.DataFrame(rows).to_csv(index=False))
    return best


def _processes(world: World) -> str:
    return f" x {world.size} processes" if world.size > 1 else ""


def _validate(model, data: TrainData, preset: Preset, mixed_precision: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(dog) of the whole validation part; under torchrun each process predicts its shard and
    every process gets all of them, so all compute the same metrics."""
    val = predict_split(model, data.val, tta=preset.tta, device=data.device, mixed_precision=mixed_precision)
    y, p = val["label"].to_numpy(), val["p_raw"].to_numpy()
    if data.world.size == 1:
        return y, p
    parts = distributed.gather((y, p), data.world)
    return np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts])
