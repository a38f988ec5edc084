"""The GPU check: the numbers only a GPU can give, measured in one go on a bare CUDA machine with no network.

Here, on a machine with PyPI and the dev photos, pack what the GPU machine lacks (about 45 MiB):

    python benchmarks/gpu_check.py pack --data ../shared/data/dogs-vs-cats-dev      # -> build/gpu-check/

There (Python >= 3.12, torch >= 2.11 preinstalled; benchmarks/README.md has the device command):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site build/gpu-check/wheels/*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py run --pack build/gpu-check --out gpu-check.json

Anywhere, in under a minute on a CPU, the whole path on the synthetic sample (what the tests run):

    python benchmarks/gpu_check.py dry-run

`run` measures, within --budget seconds:
 1. the seed recipe's epoch time (224 px, patch 32, Adam 3e-5, batch 64) on vitlib's cached data path;
 2. from the zips to the seed's accuracy (0.683) with the gpu preset: extraction, caching and training,
    continuing the same run to the end: its cached epoch time, final accuracy and log loss, its history;
 3. torch.compile on the gpu preset's training step: compile seconds, eager and compiled images/s (bench.compile_speed),
    about a minute after the budget.
The photos travel as WebP at --size px (re-encoded once here); on the GPU machine they are written back as the
competition's JPEG zips before the clock starts, so every timed step is vitlib's own, from a Kaggle-layout zip.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's vitlib, installed or not

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vitlib import bench, data, metrics, sample  # noqa: E402
from vitlib.device import describe_device, pick_device  # noqa: E402
from vitlib.files import atomic_path, write_atomic  # noqa: E402
from vitlib.presets import Preset, get_preset  # noqa: E402
from vitlib.train import fit, prepare_training_data  # noqa: E402

WHEELS = ("vit-pytorch", "linformer", "einops")  # pure Python; the GPU machine has torch, pandas, matplotlib, PIL
PHOTOS = "photos.zip"  # train/<cat|dog>.N.webp, test/N.webp, sample_submission.csv
TREE_LIMIT = 64 * 2**20  # what travels to the device machine: the working tree and the pack together


# ---------------------------------------------------------------------------------------------
# Here: the pack


def pack(source, out: Path, size: int = 112, quality: int = 70, wheels: bool = True, dest: Path | None = None) -> dict:
    """Write `out`/photos.zip (every train and test photo of `source` squashed to size x size, WebP) and the wheels.

    `source` is extracted into `dest` (default: vitlib's data folder) as prepare_data does.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = data.prepare_data(source, dest=dest, verbose=False)
    files = list(data.index_images(ds)["file"]) + list(data.index_images(ds, "test")["file"])

    def encode(rel: str) -> tuple[str, bytes]:
        with Image.open(ds.path(rel)) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "WEBP", quality=quality, method=4)
        return str(Path(rel).with_suffix(".webp").as_posix()), buf.getvalue()

    start = time.perf_counter()
    with atomic_path(out / PHOTOS) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            for name, payload in pool.map(encode, files):
                zf.writestr(name, payload)
        if ds.sample_submission is not None:
            zf.write(ds.sample_submission, "sample_submission.csv")
        if ds.synthetic:  # the stamp travels: the sample is never taken for photos, there either
            zf.write(ds.root / sample.SAMPLE_STAMP, sample.SAMPLE_STAMP)
    if wheels:
        shutil.rmtree(out / "wheels", ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "-d", str(out / "wheels"), *WHEELS], check=True)
    packed = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tree = _tracked_bytes()
    info = {"source": ds.describe(), "data_id": ds.identity, "photos": len(files), "size": size, "quality": quality,
            "pack_MiB": round(packed / 2**20, 1), "tree_MiB": round(tree / 2**20, 1), "seconds": round(
                time.perf_counter() - start, 1)}
    write_atomic(out / "pack.json", json.dumps(info, indent=2) + "\n")
    print(f"packed {len(files):,} photos at {size} px (WebP q{quality}) into {out}: {info['pack_MiB']} MiB; with the "
          f"working tree ({info['tree_MiB']} MiB) {round((packed + tree) / 2**20, 1)} MiB of the 64 MiB that travel")
    if packed + tree > TREE_LIMIT:
        print("warning: too big to travel; use a smaller --size or --quality", file=sys.stderr)
    return info


def _tracked_bytes() -> int:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((ROOT / n).stat().st_size for n in names.decode().split("\0") if n and (ROOT / n).is_file())


# ---------------------------------------------------------------------------------------------
# There: the measurements


def unpack(pack_dir: Path, dest: Path) -> Path:
    """The pack's photos as the competition ships them: train.zip and test.zip of JPEGs, and the sample submission."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(Path(pack_dir) / PHOTOS) as zf:
        names = zf.namelist()

        def jpeg(name: str) -> tuple[str, bytes]:
            buf = io.BytesIO()
            Image.open(io.BytesIO(zf.read(name))).convert("RGB").save(buf, "JPEG", quality=95)
            return name.rsplit(".", 1)[0] + ".jpg", buf.getvalue()

        photos = [n for n in names if n.endswith(".webp")]
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            converted = list(pool.map(jpeg, photos))  # zf.read is thread-safe for reading
        for part in ("train", "test"):
            with zipfile.ZipFile(dest / f"{part}.zip", "w", zipfile.ZIP_STORED) as out:
                for name, payload in converted:
                    if name.startswith(f"{part}/"):
                        out.writestr(name, payload)
        for extra in ("sample_submission.csv", sample.SAMPLE_STAMP):
            if extra in names:
                (dest / extra).write_bytes(zf.read(extra))
    return dest


def seed_epoch_time(ds, preset: Preset, device) -> dict:
    """The seed recipe for two epochs on vitlib's cached data path; the second epoch's time (the first warms up)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-seed-") as tmp:
        prepared = prepare_training_data(ds, preset, device, cache_dir=Path(tmp) / "cache")
        run = fit(preset, prepared, run_dir=Path(tmp) / "run", progress=False)
    last = run.history.iloc[-1]
    return {"preset": preset.name, "epoch_s": round(float(last["epoch_s"]), 3),
            "images_per_s": round(float(last["images_per_s"]), 1), "val_acc": round(float(last["val_acc"]), 4)}


def fresh_run(source: Path, preset: Preset, device, deadline: float, target: float = metrics.SEED_ACCURACY) -> dict:
    """From the zips: extraction, caching, and the whole `preset` run (or as much as the deadline allows)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-fresh-") as tmp:
        start = time.perf_counter()
        ds = data.prepare_data(source, dest=Path(tmp) / "data", verbose=False)
        extract_s = time.perf_counter() - start
        prepared = prepare_training_data(ds, preset, device, cache_dir=Path(tmp) / "cache")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run = fit(preset, prepared, run_dir=Path(tmp) / "run", progress=False,
                  stop_when=lambda row: time.perf_counter() > deadline)
    h = run.history
    reached = metrics.time_to_accuracy(h, target)
    best = h.loc[h["val_loss"].idxmin()]
    cached = h["epoch_s"].iloc[1:] if len(h) > 1 else h["epoch_s"]
    return {
        "preset": preset.name,
        "epochs_run": int(h["epoch"].iloc[-1]),
        "epochs_planned": preset.epochs,
        "stopped_by_budget": int(h["epoch"].iloc[-1]) < preset.epochs,
        "extract_s": round(extract_s, 2),
        "cache_s": round(prepared.setup_s, 2),
        f"seconds_to_{target}": None if reached is None else round(extract_s + reached, 2),
        "epoch_s_cached": round(float(cached.median()), 3),
        "images_per_s": round(float(h["images_per_s"].iloc[1:].median() if len(h) > 1 else h["images_per_s"].iloc[0]),
                              1),
        "final_val_acc": round(float(h["val_acc"].iloc[-1]), 4),
        "final_val_log_loss": round(float(h["val_loss"].iloc[-1]), 4),
        "best_epoch": int(best["epoch"]),
        "best_val_acc": round(float(best["val_acc"]), 4),
        "best_val_log_loss": round(float(best["val_loss"]), 4),
        "seconds_in_all": round(extract_s + float(h["elapsed_s"].iloc[-1]), 1),
        "peak_gpu_MiB": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "history": h.round(5).to_dict("list"),
    }


def run_check(pack_dir: Path, out: Path, budget: float = 320, seed: Preset | None = None,
              gpu: Preset | None = None, device=None, dry_run: bool = False, compile_seconds: float = 15) -> dict:
    """Unpack, then measure (see the module's docstring); write the results as JSON to `out` and return them."""
    start = time.perf_counter()
    deadline = start + budget
    device = pick_device(device)
    seed, gpu = seed or get_preset("seed", epochs=2), gpu or get_preset("gpu")
    info = json.loads((Path(pack_dir) / "pack.json").read_text()) if (Path(pack_dir) / "pack.json").is_file() else {}
    result = {"dry_run": dry_run, "device": describe_device(device), "torch": torch.__version__,
              "python": platform.python_version(), "pack": info, "budget_s": budget}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        source = unpack(pack_dir, Path(tmp) / "zips")
        result["unpack_s"] = round(time.perf_counter() - start, 1)
        print(f"{result['device']}; torch {result['torch']}; photos unpacked in {result['unpack_s']} s", flush=True)
        ds = data.prepare_data(source, dest=Path(tmp) / "data", verbose=False)
        result["seed_recipe"] = seed_epoch_time(ds, seed, device)
        print(f"seed recipe: {result['seed_recipe']}", flush=True)
        result["gpu_preset"] = fresh_run(source, gpu, device, deadline)
        summary = {k: v for k, v in result["gpu_preset"].items() if k != "history"}
        print(f"gpu preset from the zips: {summary}", flush=True)
        write_atomic(Path(out), json.dumps(result, indent=2) + "\n")  # kept, whatever the compile does
        try:
            result["compiled_step"] = bench.compile_speed(gpu, device, seconds=compile_seconds)
        except Exception as e:  # noqa: BLE001 - out of memory, a backend failure: recorded, the rest kept
            result["compiled_step"] = {"compile_error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(f"torch.compile on the gpu preset's step: {result['compiled_step']}", flush=True)
    result["seconds_in_all"] = round(time.perf_counter() - start, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds_in_all']} s in all)")
    return result


def dry_run(out: Path | None = None) -> dict:
    """The whole check on the synthetic sample, on this machine, in under a minute: pack, unpack, both measurements."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-dry-") as tmp:
        source = sample.write_sample(Path(tmp) / "sample-zips", n_train=120, n_test=10)
        pack(source, Path(tmp) / "pack", size=64, wheels=False, dest=Path(tmp) / "data")
        stand_in = get_preset("sample", epochs=3)  # for the gpu preset: seconds on a CPU
        seed = get_preset("seed", epochs=2, model=get_preset("seed").model.replace(image_size=64, patch_size=16))
        return run_check(Path(tmp) / "pack", Path(out or Path(tmp) / "gpu-check.json"), budget=120, seed=seed,
                         gpu=stand_in, dry_run=True, compile_seconds=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="here: the photos as WebP and the wheels, into build/gpu-check/")
    a.add_argument("--data", required=True, help="the dev photos: a folder holding train.zip and test.zip")
    a.add_argument("--out", default=str(ROOT / "build" / "gpu-check"))
    a.add_argument("--size", type=int, default=112, help="side of the re-encoded photos, px")
    a.add_argument("--quality", type=int, default=70, help="WebP quality")
    r = sub.add_parser("run", help="there: measure and write the JSON")
    r.add_argument("--pack", default=str(ROOT / "build" / "gpu-check"))
    r.add_argument("--out", default="gpu-check.json")
    r.add_argument("--budget", type=float, default=320, help="seconds for the measurements (the gpu run stops then)")
    r.add_argument("--preset", default="gpu", help="the recipe to run from the zips: gpu (the cpu-long recipe, its "
                   "accuracy measured on a CPU) or gpu-large (unmeasured)")
    d = sub.add_parser("dry-run", help="anywhere: the whole path on the synthetic sample, in under a minute")
    d.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(args.data, Path(args.out), args.size, args.quality)
    elif args.command == "run":
        run_check(Path(args.pack), Path(args.out), args.budget, gpu=get_preset(args.preset))
    else:
        dry_run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
