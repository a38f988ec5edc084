"""Training: the data it needs, the optimiser and schedule, one step, one epoch, and `fit`.

`fit` reads top to bottom: the precision and the run folder, the model and its optimiser (one TrainingState),
the loss, then the epochs: train, validate, save. Every epoch draws its randomness (shuffle, crops, flips, mixes)
from generators seeded by (seed, epoch), so a run resumed from a checkpoint continues exactly as if never
interrupted. The run folder (what it holds, who writes it, how an epoch is saved) is `vitlib.run_dir`'s; the
precision (autocast, the gradient scaler) is `device.Precision`; prediction is `vitlib.predict`'s.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import device as devices
from . import distill
from .augment import BatchAugment
from .cache import ImageCache, build_cache
from .checkpoints import load_model, training_state
from .data import DataError, DogsVsCats, nested_subset, validation_split
from .device import Precision
from .distributed import SINGLE, DistributedError, World, lost, reason, same_buffers, wrap
from .files import progress_bars, uninterrupted
from .metrics import accuracy, log_loss
from .models import build_model
from .predict import predict_split
from .presets import Preset, PresetError, check_fits
from .run_dir import RunDir


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


def prepare_training_data(ds: DogsVsCats, preset: Preset, device=None, cache_dir: Path | None = None,
                          world: World = SINGLE) -> TrainData:
    """The validation split of `ds` for `preset`, cached at its resolution (in `cache_dir`, default
    data/cache), on `device` (default: the best there is) when it fits there.

    Among torchrun's processes (`world`, from distributed.start in the entry point), this one keeps its own shard of
    each part."""
    check_fits(preset)  # the model and a batch, against this machine's memory, before anything is cached
    device = devices.pick_device(device)
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
# Optimiser, schedule, loss: the training state


NO_DECAY = ("cls_token", "pos_embedding", "dist_token", "dist_pos")  # tokens and positions: DeiT's and timm's rule


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW decays this parameter: the weight matrices and convolution kernels; not the biases, the norms,
    the class and distillation tokens or the position embeddings."""
    return param.ndim >= 2 and not any(token in name for token in NO_DECAY)


def make_optimizer(model: nn.Module, preset: Preset) -> torch.optim.Optimizer:
    if preset.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": preset.weight_decay},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
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


@dataclass
class TrainingState:
    """What a step changes: the model (`trained`: itself, or wrapped by DDP or torch.compile; `model` is always the
    model itself), its optimiser, schedule and gradient scaler, the clipping norm, and with a preset's `ema` the
    moving average of its weights (`average`), which is then what is validated and saved (`evaluated`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # None: the rate stays (bench times steps)
    scaler: torch.amp.GradScaler
    grad_clip: float | None = None
    trained: nn.Module | None = None
    average: AveragedModel | None = None

    def __post_init__(self):
        self.trained = self.model if self.trained is None else self.trained

    @property
    def evaluated(self) -> nn.Module:
        """The model to validate, save and predict with: the moving average when there is one."""
        return self.model if self.average is None else self.average.module


def moving_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and buffers (BatchNorm's statistics too), or None."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def training_parts(preset: Preset, device: torch.device, steps_per_epoch: int, precision: Precision) -> TrainingState:
    """The model as `preset` builds it (seeded by its seed) on `device`, with its optimiser, schedule and scaler."""
    torch.manual_seed(preset.seed)
    model = build_model(preset.model).to(device)
    opt = make_optimizer(model, preset)
    return TrainingState(model, opt, make_scheduler(opt, preset, steps_per_epoch), precision.scaler(), preset.grad_clip,
                         average=moving_average(model, preset.ema))


def make_loss(preset: Preset, teacher: nn.Module | None = None):
    """The loss training minimises, as loss(x, logits, target) -> (loss, logits to score): cross-entropy with the
    recipe's label smoothing, or with a `teacher` DeiT's (distill.deit_loss_fn)."""
    if teacher is not None:
        return distill.deit_loss_fn(teacher, preset.label_smoothing)

    def cross_entropy(x, logits, target):
        return F.cross_entropy(logits.float(), target, label_smoothing=preset.label_smoothing), logits

    return cross_entropy


# ---------------------------------------------------------------------------------------------
# One step, one epoch


def epoch_seed(preset: Preset, epoch: int, rank: int = 0) -> int:
    """The seed of epoch `epoch`'s randomness in process `rank` (each of torchrun's processes crops its own)."""
    return preset.seed * 1_000_003 + epoch + 100_000 * rank


def epoch_generator(preset: Preset, epoch: int, device: torch.device, rank: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(epoch_seed(preset, epoch, rank))


def train_step(state: TrainingState, x: torch.Tensor, target: torch.Tensor, precision: Precision, loss_fn):
    """One optimiser step: the forward pass and the loss in `precision`, a (scaled) backward pass, gradient
    clipping, the step. Returns the logits scored for accuracy and the loss."""
    with precision.autocast():
        logits = state.trained(x)
        loss, logits = loss_fn(x, logits, target)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if state.grad_clip:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.trained.parameters(), state.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.average is not None:
        state.average.update_parameters(state.model)
    return logits, loss


def train_one_epoch(state: TrainingState, data: ImageCache, augment: BatchAugment, preset: Preset, epoch: int,
                    precision: Precision, loss_fn, steps: int | None = None, world: World = SINGLE,
                    progress: bool = True, after_step=None) -> dict:
    """One pass over `data` in `steps` steps of batch_size images (default: as many as fit). Among torchrun's
    processes, `data` is this one's shard and each step takes batch_size / world.size images from it;
    `after_step(model)`, if given, is called after every step with the model as trained (wrapped by DDP or
    torch.compile when they are on: its state_dict keys then carry their prefixes)."""
    state.trained.train()
    torch.manual_seed(epoch_seed(preset, epoch, world.rank))  # MixUp/CutMix and dropout use the global RNG
    device = precision.device
    gen = epoch_generator(preset, epoch, device, world.rank)
    # the order is drawn on the CPU (the same on every device), then moved once, not once a step
    order = torch.randperm(len(data), generator=epoch_generator(preset, epoch, torch.device("cpu")))
    order = order.to(data.images.device)
    batch = preset.batch_size // world.size
    steps = len(data) // batch if steps is None else steps
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"epoch {epoch}", leave=False, disable=not progress):
        idx = order[step * batch : (step + 1) * batch]
        x, target = augment(data.images[idx].to(device, non_blocking=True),
                            data.labels[idx].to(device, non_blocking=True), gen)
        logits, loss = train_step(state, x, target, precision, loss_fn)
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this step used
        with warnings.catch_warnings():  # fp16: a step the scaler skips (inf gradients) still advances the schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            state.scheduler.step()
        loss_sum += loss.detach() * len(target)
        hard = target.argmax(-1) if target.ndim == 2 else target
        correct += (logits.argmax(-1) == hard).sum()
        if after_step is not None:
            after_step(state.trained)
    world.sum(loss_sum)
    world.sum(correct)
    devices.synchronize(device)
    seconds = time.perf_counter() - start
    seen = steps * batch * world.size
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise DivergedError(f"Training diverged in epoch {epoch} (the loss is {train_loss}). The checkpoints of "
                            "the epochs before are intact; lower the learning rate or keep grad_clip on.")
    return {"train_loss": train_loss, "train_acc": correct.item() / seen, "lr": lr, "epoch_s": seconds,
            "images_per_s": seen / seconds}


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class Run:
    preset: Preset
    run_dir: Path
    history: pd.DataFrame
    model: nn.Module  # weights of the last epoch trained (their moving average, with the preset's `ema`)
    data: TrainData
    device: torch.device
    precision: Precision | None = None  # what it trained and validated in (None: the device's mixed precision)

    def best_model(self) -> nn.Module:
        return load_model(RunDir(self.run_dir).best, self.device)[0]

    def val_predictions(self, model: nn.Module | None = None) -> pd.DataFrame:
        """The validation split as `model` (default: the best epoch's) predicts it, in the run's precision: file, id,
        label, p_raw."""
        mixed = self.precision is None or self.precision.mixed
        return predict_split(model or self.best_model(), self.data.val, tta=self.preset.tta, device=self.device,
                             mixed_precision=mixed)


def fit(preset: Preset, data: TrainData, run_dir: RunDir | Path | None = None, resume: bool = True,
        progress: bool | None = None, stop_when=None, compile: bool = False, after_step=None,
        mixed_precision: bool = True) -> Run:
    """Train `preset` on `data` (prepare_training_data) into `run_dir` (default runs/<preset>-<data>; see run_dir for
    what resumes and what is refused) and return the run. `stop_when(row)` ends it early; `compile` trains through
    torch.compile; `after_step(model)` follows every step; `mixed_precision` off trains and validates in fp32."""
    world, device, precision = data.world, data.device, Precision.of(data.device, mixed_precision)
    steps = _steps_per_epoch(preset, data)
    folder = run_dir if isinstance(run_dir, RunDir) else RunDir.for_run(preset, data.data_id, run_dir)
    world.print(f"device: {precision.describe()}{_processes(world)}\ndata: {data.source}\n"
                f"run: {preset.name} -> {folder.path.name}/")
    with contextlib.ExitStack() as held:  # rank 0 holds the folder and reads it; a refusal ends every process
        ckpt = world.once(functools.partial(_open, folder, held, preset, data, resume))
        # the teacher first: building it draws random numbers, which the student's initialisation must not see
        teacher = distill.load_teacher(preset.teacher, preset.model.image_size, device) if preset.teacher else None
        state = training_parts(preset, device, steps, precision)
        rows = folder.restore(ckpt, model=state.model, optimizer=state.optimizer, scheduler=state.scheduler,
                              scaler=state.scaler, average=state.average) if ckpt else []
        if ckpt:
            world.print(f"resuming after epoch {len(rows)}" if len(rows) < preset.epochs
                        else f"already trained: {len(rows)} epochs")
        state.trained = wrap(state.model, world, device)
        state.trained = torch.compile(state.trained) if compile else state.trained
        loss_fn = make_loss(preset, teacher)
        augment = BatchAugment(preset.augment, preset.model.num_classes, preset.model.image_size)
        clock = _Clock(data.setup_s, rows)
        best = min((r["val_loss"] for r in rows), default=float("inf"))
        epoch = saved = len(rows)
        try:
            for epoch in range(len(rows) + 1, preset.epochs + 1):
                row = {"epoch": epoch, **train_one_epoch(state, data.train, augment, preset, epoch, precision,
                                                         loss_fn, steps, world, _progress(progress, world), after_step)}
                row.update(_validate(state, data, preset, precision), elapsed_s=clock.elapsed())
                rows.append(row)
                world.print(_epoch_line(row, preset))
                checkpoint = functools.partial(training_state, preset=preset, model=state.model,
                                               optimizer=state.optimizer, scheduler=state.scheduler,
                                               scaler=state.scaler, epoch=epoch, history=rows, data_id=data.data_id,
                                               data=data.source, processes=world.size,
                                               device=precision.describe() + _processes(world), average=state.average)
                with uninterrupted():  # a Ctrl-C waits until the checkpoint is whole and `saved` says so
                    best = world.once(functools.partial(folder.save, checkpoint, rows, best))
                    saved = epoch
                if stop_when is not None and world.once(functools.partial(stop_when, row)):
                    break
        except KeyboardInterrupt:
            when = f"after epoch {epoch}" if saved == epoch else f"during epoch {epoch}"
            world.print(f"\nInterrupted {when}; {folder.last.name} holds epoch {saved}. Run the same call again to "
                        "resume.")
            raise
        except RuntimeError as e:
            if world.size == 1 or not lost(e):
                raise
            raise DistributedError(f"process {world.rank} of {world.size} lost the other processes during epoch "
                                   f"{epoch} ({reason(e)}); {folder.last.name} holds epoch {saved}: run the same "
                                   "torchrun command to resume") from None
    return Run(preset, folder.path, pd.DataFrame(rows), state.evaluated, data, device, precision)


def _open(folder: RunDir, held: contextlib.ExitStack, preset: Preset, data: TrainData, resume: bool) -> dict | None:
    """Open `folder` for this run until `held` closes, unless the caller (the CLI) has opened it; its resume point."""
    if not folder.is_open:
        held.enter_context(folder.open(preset, data.data_id, resume, data.world.size))
    return folder.resume_from


def _steps_per_epoch(preset: Preset, data: TrainData) -> int:
    """Steps every process takes per epoch (as many as the smallest shard holds); refusals of a `data` of the wrong
    size and of a batch that does not split or does not fit, in one line each."""
    world = data.world
    if (data.train.size, data.val.size) != (preset.train_size, preset.model.image_size):
        raise ValueError(f"`data` holds images at {data.train.size} px (validation {data.val.size} px); {preset.name}"
                         f" caches at {preset.train_size} px and validates at {preset.model.image_size} px: "
                         "prepare_training_data(ds, preset)")
    if preset.batch_size % world.size:
        raise PresetError(f"batch_size {preset.batch_size} does not split over {world.size} processes: choose a "
                          f"multiple of {world.size} (each process takes an equal part of every batch)")
    steps = min(world.gather(len(data.train) // (preset.batch_size // world.size)))
    if steps == 0:
        raise PresetError(f"batch_size {preset.batch_size} is more than the {len(data.train) * world.size:,} training "
                          "images: choose a smaller batch_size (--batch-size), or more training photos (val_fraction)")
    if data.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return steps


class _Clock:
    """The run's time: from the start of this call, the cache's building or loading included, plus the time the
    epochs before a resume took."""

    def __init__(self, setup_s: float, rows: list[dict]):
        self.start = time.perf_counter() - setup_s
        self.offset = rows[-1]["elapsed_s"] if rows else 0.0

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.start


def _progress(progress: bool | None, world: World) -> bool:
    return (progress_bars() if progress is None else progress) and world.main


def _epoch_line(row: dict, preset: Preset) -> str:
    return (f"epoch {row['epoch']:3d}/{preset.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
            f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['epoch_s']:.1f}s "
            f"{row['images_per_s']:.0f} img/s")


def _processes(world: World) -> str:
    return f" x {world.size} processes" if world.size > 1 else ""


def _validate(state: TrainingState, data: TrainData, preset: Preset, precision: Precision) -> dict:
    """The validation part's log loss and accuracy (the history's val_loss, val_acc) as the evaluated model (see
    TrainingState) predicts them, and the seconds they took; under torchrun each process predicts its shard and every
    process gets all of them, so all compute the same metrics. BatchNorm's running statistics are made rank 0's first
    (each process updated its own during the epoch)."""
    t = time.perf_counter()
    for model in {id(m): m for m in (state.model, state.evaluated)}.values():
        same_buffers(model, data.world)
    val = predict_split(state.evaluated, data.val, tta=preset.tta, device=data.device, mixed_precision=precision.mixed)
    parts = data.world.gather((val["label"].to_numpy(), val["p_raw"].to_numpy()))
    y, p = np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts])
    return {"val_loss": log_loss(y, p), "val_acc": accuracy(y, p), "eval_s": time.perf_counter() - t}
