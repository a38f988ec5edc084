"""The seed notebook's data pipeline against vitlib's, on whatever device is here.

The seed decoded every JPEG with PIL, in the training process, on every epoch: a DataLoader with
no workers over a Dataset whose `__getitem__` opens, resizes, crops and flips one image. vitlib
decodes each image once into a uint8 cache and augments whole batches on the device. Measured:
images per second for the data alone and for full training steps, and the time from the zip to the
seed's final validation accuracy (metrics.SEED_ACCURACY).
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from . import metrics
from .augment import AugmentConfig, BatchAugment
from .cache import ImageCache, build_cache
from .data import DogsVsCats, index_images, parse_label, prepare_data
from .device import Precision, describe_device, pick_device, synchronize
from .distill import load_teacher
from .metrics import SEED_ACCURACY
from .models import SEED_NOTEBOOK_MODEL, build_model
from .presets import Preset, get_preset
from .train import TrainingState, fit, make_loss, make_optimizer, moving_average, prepare_training_data, train_step


class SeedDataset(Dataset):
    """The seed notebook's Dataset: one PIL decode and transform per image, per epoch."""

    def __init__(self, paths, size: int = 224):
        self.paths = list(paths)
        self.transform = transforms.Compose(
            [  # the seed's train_transforms
                transforms.Resize((size, size)),
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i])
        return self.transform(img), parse_label(self.paths[i])


def seed_batches(ds: DogsVsCats, files, size: int, batch_size: int = 64):
    """Batches as the seed made them: DataLoader(shuffle=True), no worker processes."""
    loader = DataLoader(SeedDataset([ds.path(f) for f in files], size), batch_size=batch_size, shuffle=True)
    while True:
        yield from loader


def vitlib_batches(cache, device, batch_size: int = 64, augment: AugmentConfig | None = None):
    """Batches as vitlib makes them: index the uint8 cache on the device, augment the batch there."""
    images, labels = cache.images.to(device), cache.labels.to(device)
    aug = BatchAugment(augment or AugmentConfig(scale=(0.08, 1.0)))
    batch_size = min(batch_size, len(images))  # fewer images than a batch: smaller batches, never an endless loop
    if batch_size == 0:
        raise ValueError("no images to make batches of")
    while True:
        order = torch.randperm(len(images), device=device)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield aug(images[idx], labels[idx])


def throughput(batches, seconds: float, step=None, device=None, warmup: int = 2) -> float:
    """Images per second pulled from `batches` (and put through `step`, if given) for about `seconds`."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        x, y = next(batches)
        if step:
            step(x.to(device), y.to(device))
    synchronize(device)
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:  # at least one batch: never 0 images (then NaN ratios)
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if step:
            step(x, y)
        n += len(x)
    synchronize(device)
    return n / (time.perf_counter() - start)


def make_step(model, preset: Preset, device, mixed_precision: bool = True):
    """For timing: the optimiser step `fit` takes with `preset` (its optimiser, loss, clipping, and its teacher's
    forward pass when it distils), on `model`, in the device's mixed precision or in fp32."""
    precision = Precision.of(device, mixed_precision)
    opt = make_optimizer(model, preset)
    state = TrainingState(model, opt, None, precision.scaler(), preset.grad_clip,  # no schedule: the rate stays
                          average=moving_average(model, preset.ema))
    teacher = load_teacher(preset.teacher, preset.model.image_size, device) if preset.teacher else None
    loss_fn = make_loss(preset, teacher)

    def step(x, y):
        train_step(state, x, y, precision, loss_fn)

    return step


def step_seconds(model, image_size: int, batch: int = 8, preset: Preset | str = "cpu", seconds: float = 5.0,
                 device=None, mixed_precision: bool = True) -> float:
    """Seconds per training step of any `model` on `batch` random images of `image_size` px: the step `fit` takes
    with `preset`'s optimiser, loss and clipping (`make_step`), in the device's mixed precision unless
    `mixed_precision` is False, averaged over about `seconds` after one warm-up step. A measurement of this machine:
    notebook 07 times ViT-B/16 with it."""
    device = pick_device(device)
    recipe = get_preset(preset) if isinstance(preset, str) else preset
    model = model.to(device).train()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.arange(batch, device=device) % 2  # dogs and cats: any labels time the same
    step = make_step(model, recipe, device, mixed_precision)
    return batch / throughput(itertools.repeat((x, y)), seconds, step, device, warmup=1)


def compile_speed(preset: Preset | str = "cpu", device=None, seconds: float = 20, warmup_steps: int = 3) -> dict:
    """torch.compile's bargain for `preset`'s training step on `device`: the seconds its first steps spend
    compiling, against the images per second it then gains over the eager step (steady state, random images:
    speed does not depend on what the photos show), and after how many seconds of training it has paid. Where
    torch.compile fails here (no C++ compiler for the CPU backend, say), `compile_error` says why instead."""
    device = pick_device(device)
    recipe = get_preset(preset) if isinstance(preset, str) else preset
    size, batch = recipe.model.image_size, recipe.batch_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * batch, 3, size, size), dtype=torch.uint8, generator=gen)
    cache = ImageCache(images, torch.arange(4 * batch) % 2, torch.arange(4 * batch), [str(i) for i in range(4 * batch)])
    result = {"preset": recipe.name, "device": describe_device(device), "torch": torch.__version__}
    for name in ("eager", "compiled"):
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model).to(device)
        step = make_step(torch.compile(model) if name == "compiled" else model, recipe, device)
        batches = vitlib_batches(cache, device, batch, recipe.augment)
        start = time.perf_counter()
        try:
            for _ in range(warmup_steps):  # eager: warm-up; compiled: the compilation (forward and backward)
                x, y = next(batches)
                step(x, y)
        except Exception as e:  # noqa: BLE001 - no C++ compiler, an unsupported op: say so, keep the eager numbers
            if name == "eager":
                raise
            result["compile_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            return result
        synchronize(device)
        result[f"{name}_first_steps_s"] = round(time.perf_counter() - start, 2)
        result[f"{name}_images_per_s"] = round(throughput(batches, seconds, step, device, warmup=0), 1)
    eager, compiled = result["eager_images_per_s"], result["compiled_images_per_s"]
    steady = warmup_steps * batch / compiled
    result["compile_s"] = round(max(result["compiled_first_steps_s"] - steady, 0.0), 1)
    result["speedup"] = round(compiled / eager, 3)
    gain = 1 / eager - 1 / compiled  # seconds saved per image
    result["pays_after_s"] = round(result["compile_s"] / gain / eager, 1) if gain > 0 else None  # of eager training
    return result


def zip_to_accuracy(source, target: float = SEED_ACCURACY, preset: str = "cpu", device=None) -> dict:
    """Seconds from the zips (fresh extraction and cache) to `target` validation accuracy with `preset`.

    `source` is the folder holding train.zip (or the competition zip itself), as for prepare_data;
    it is extracted afresh into a temporary folder, so the time includes extraction and caching.
    """
    source = Path(source)
    if not (source.is_file() or any(source.glob("*.zip"))):
        raise ValueError(f"time to accuracy starts from the zips: {source.name} holds none")
    with tempfile.TemporaryDirectory(prefix="vitlib-bench-") as tmp:
        start = time.perf_counter()
        ds = prepare_data(source, dest=Path(tmp), verbose=False)
        extract_s = time.perf_counter() - start
        recipe = get_preset(preset)
        prepared = prepare_training_data(ds, recipe, device, cache_dir=Path(tmp) / "cache")  # built afresh
        run = fit(recipe, prepared, run_dir=Path(tmp) / "run", progress=False,
                  stop_when=lambda row: row["val_acc"] >= target)
    reached = metrics.time_to_accuracy(run.history, target)
    return {
        "preset": preset,
        "target": target,
        "extract_s": round(extract_s, 1),
        "seconds": None if reached is None else round(extract_s + reached, 1),
        "epochs": int(run.history["epoch"].iloc[-1]),
        "val_acc": float(run.history["val_acc"].iloc[-1]),
    }


def measure(ds: DogsVsCats, seconds: float = 20, subset: int = 2048, device=None) -> pd.DataFrame:
    """Images per second of both pipelines, for the data alone and for full training steps, with ratios.

    On a seeded random subset of `subset` photos. The seed's pipeline runs as in the seed notebook
    (no DataLoader workers); vitlib's rows leave out the one-off cost of building the cache.
    """
    device = device or pick_device()
    index = index_images(ds)
    files = index.sample(n=min(subset, len(index)), random_state=0)
    seed, cpu = get_preset("seed"), get_preset("cpu")
    small = cpu.model.image_size
    seed_cfg = SEED_NOTEBOOK_MODEL
    caches = {size: build_cache(ds, files, size, part=f"bench{len(files)}") for size in (seed_cfg.image_size, small)}
    seed_model, cpu_model = build_model(seed_cfg).to(device), build_model(cpu.model).to(device)
    seed_data = seed_batches(ds, files.file, 224)
    vitlib_224 = vitlib_batches(caches[224], device)
    vitlib_small = vitlib_batches(caches[small], device, cpu.batch_size, cpu.augment)
    runs = [  # measure, pipeline, px, batches, training step
        ("data", "seed: PIL per image, 0 workers", 224, seed_data, None),
        ("data", "vitlib: cache + batch augmentation", 224, vitlib_224, None),
        ("data", "vitlib: cache + batch augmentation", small, vitlib_small, None),
        ("train", "seed model, seed data", 224, seed_data, make_step(seed_model, seed, device)),
        ("train", "seed model, vitlib data", 224, vitlib_224, make_step(seed_model, seed, device)),
        ("train", "cpu preset, vitlib data", small, vitlib_small, make_step(cpu_model, cpu, device)),
    ]
    rows = []
    for what, pipeline, px, batches, step in runs:
        ips = throughput(batches, seconds * (1.5 if step else 1), step, device)
        rows.append({"measure": what, "pipeline": pipeline, "px": px, "images_per_s": round(ips, 1)})
    table = pd.DataFrame(rows)
    table["vs_seed"] = (table["images_per_s"] / table.groupby("measure")["images_per_s"].transform("first")).round(1)
    return table


def run_benchmark(
    data=None, seconds: float = 20, out=None, time_to_target: bool = False, subset: int = 2048,
    compile_preset: str | None = None,
) -> pd.DataFrame:
    """`python -m vitlib bench`: measure, print, and write the results (JSON) when `out` is given.
    With `compile_preset`, also torch.compile's bargain on that preset's training step (compile_speed)."""
    device = pick_device()
    ds = prepare_data(data, verbose=False)
    images = min(subset, len(index_images(ds)))
    print(f"benchmark on {describe_device(device)}; data: {ds.describe()}; {images} images")
    table = measure(ds, seconds, subset, device)
    print(table.to_string(index=False))
    result = {
        "device": describe_device(device),
        "data": ds.describe(),
        "images": images,
        "table": table.to_dict("records"),
    }
    if time_to_target:
        source = Path(data) if data not in (None, "auto", "kaggle", "sample") else ds.root
        if ds.synthetic:
            print(f"time to {SEED_ACCURACY}: not measured on the SYNTHETIC sample (it says nothing about photos)")
        else:
            result[f"time_to_{SEED_ACCURACY}"] = reached = zip_to_accuracy(source, device=device)
            print(f"time from the zip to {SEED_ACCURACY} validation accuracy: {reached}")
    if compile_preset:
        result["compile"] = compiled = compile_speed(compile_preset, device, seconds)
        print(f"torch.compile on the {compile_preset} preset's step: {compiled}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return table
