"""The seed notebook's data pipeline against vitlib's, on whatever device is here.

The seed decoded every JPEG with PIL, in the training process, on every epoch: a DataLoader with
no workers over a Dataset whose `__getitem__` opens, resizes, crops and flips one image. vitlib
decodes each image once into a uint8 cache and augments whole batches on the device. Measured:
images per second for the data alone and for full training steps, and the time from the zip to the
seed's final validation accuracy (0.683).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from . import metrics
from .augment import AugmentConfig, BatchAugment
from .cache import build_cache
from .data import DogsVsCats, index_images, parse_label, prepare_data
from .models import SEED, build_model
from .presets import get_preset
from .train import autocast_dtype, describe_device, fit, pick_device

SEED_ACCURACY = 0.683  # the seed notebook's final validation accuracy


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
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if step:
            step(x, y)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def training_step(model, device):
    """One optimiser step of `model` with the device's mixed precision, for timing."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = autocast_dtype(device)

    def step(x, y):
        if x.dtype == torch.uint8:
            x = x.float() / 255
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y if y.ndim == 1 else y.argmax(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_to_accuracy(source, target: float = SEED_ACCURACY, preset: str = "cpu", device=None) -> dict:
    """Seconds from the zip (fresh extraction and cache) to `target` validation accuracy with `preset`."""
    with tempfile.TemporaryDirectory(prefix="vitlib-bench-") as tmp:
        start = time.perf_counter()
        ds = prepare_data(source, dest=Path(tmp), verbose=False)
        extract_s = time.perf_counter() - start
        os.environ["VITLIB_DATA_DIR"] = tmp  # the cache is built afresh, inside tmp
        try:
            run = fit(
                get_preset(preset),
                ds,
                run_dir=Path(tmp) / "run",
                device=device,
                progress=False,
                stop_when=lambda row: row["val_acc"] >= target,
            )
        finally:
            os.environ.pop("VITLIB_DATA_DIR")
    reached = metrics.time_to_accuracy(run.history, target)
    return {
        "preset": preset,
        "target": target,
        "extract_s": round(extract_s, 1),
        "seconds": None if reached is None else round(extract_s + reached, 1),
        "epochs": int(run.history["epoch"].iloc[-1]),
        "val_acc": float(run.history["val_acc"].iloc[-1]),
    }


def run_benchmark(
    data=None, seconds: float = 20, out=None, time_to_target: bool = False, subset: int = 2048
) -> pd.DataFrame:
    """Measure both pipelines (data alone, then full training steps) and print a table with the ratios."""
    device = pick_device()
    ds = prepare_data(data, verbose=False)
    files = index_images(ds).sample(n=min(subset, len(index_images(ds))), random_state=0)
    cpu = get_preset("cpu")
    print(f"benchmark on {describe_device(device)}; data: {ds.describe()}; {len(files)} images")
    caches = {
        size: build_cache(ds, files, size, part=f"bench{len(files)}")
        for size in (SEED.image_size, cpu.model.image_size)
    }
    rows = []

    def add(what, pipeline, size, ips):
        rows.append({"measure": what, "pipeline": pipeline, "px": size, "images_per_s": round(ips, 1)})
        print(f"  {what:10s} {pipeline:28s} {size:4d} px {ips:9.1f} img/s", flush=True)

    add("data", "seed (PIL per image)", 224, throughput(seed_batches(ds, files.file, 224), seconds))
    add(
        "data",
        "vitlib (cache + batch aug)",
        224,
        throughput(vitlib_batches(caches[224], device), seconds, device=device),
    )
    add(
        "data",
        "vitlib (cache + batch aug)",
        cpu.model.image_size,
        throughput(vitlib_batches(caches[cpu.model.image_size], device, 128, cpu.augment), seconds, device=device),
    )
    seed_model = build_model(SEED).to(device)
    step_s = seconds * 1.5
    add(
        "train",
        "seed model, seed data",
        224,
        throughput(seed_batches(ds, files.file, 224), step_s, training_step(seed_model, device), device),
    )
    add(
        "train",
        "seed model, vitlib data",
        224,
        throughput(vitlib_batches(caches[224], device), step_s, training_step(seed_model, device), device),
    )
    cpu_model = build_model(cpu.model).to(device)
    add(
        "train",
        "cpu preset, vitlib data",
        cpu.model.image_size,
        throughput(
            vitlib_batches(caches[cpu.model.image_size], device, cpu.batch_size, cpu.augment),
            step_s,
            training_step(cpu_model, device),
            device,
        ),
    )
    table = pd.DataFrame(rows)
    base = table.groupby("measure")["images_per_s"].transform("first")
    table["vs_seed"] = (table["images_per_s"] / base).round(1)
    result = {
        "device": describe_device(device),
        "data": ds.describe(),
        "images": len(files),
        "table": table.to_dict("records"),
    }
    if time_to_target:
        result["time_to_0.683"] = time_to_accuracy(data, device=device)
        print(f"  time from the zip to {SEED_ACCURACY} validation accuracy: {result['time_to_0.683']}")
    print(table.to_string(index=False))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return table
