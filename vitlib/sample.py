"""The built-in sample: drawn "cats" and "dogs" in exactly the Kaggle layout, made offline.

Cats get pointed ears and whiskers, dogs floppy ears and a tongue, on noisy backgrounds of varying
size and aspect ratio. Every image says SYNTHETIC in a corner. Deterministic: the same version
writes the same bytes. It lets every notebook and test run offline in seconds; it teaches nothing
about real photos.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .files import atomic_path, write_atomic

SAMPLE_STAMP = "sample.json"  # written by write_sample: marks a folder as the synthetic sample, however reached
VERSION = 1
N_TRAIN = 500  # 250 cats, 250 dogs
N_TEST = 100
_DATE = (2020, 1, 1, 0, 0, 0)


def draw(label: int, seed: int) -> Image.Image:
    """One synthetic image: label 0 is a cat, 1 a dog."""
    rng = np.random.default_rng([seed, label])
    w, h = int(rng.integers(150, 320)), int(rng.integers(120, 280))
    top, bottom = rng.integers(60, 230, size=(2, 3))
    ramp = np.linspace(0, 1, h)[:, None, None]
    bg = top * (1 - ramp) + bottom * ramp + rng.normal(0, 12, size=(h, w, 3))
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.2, 0.28) * min(w, h)
    cx, cy = rng.uniform(r * 1.4, w - r * 1.4), rng.uniform(r * 1.5, h - r * 1.4)
    fur = tuple(int(v) for v in rng.integers(40, 220, size=3))
    dark = tuple(max(0, v - 60) for v in fur)
    if label == 0:  # pointed ears on top
        for side in (-1, 1):
            base = cx + side * r * 0.55
            d.polygon([(base - r * 0.4, cy - r * 0.7), (base + r * 0.4, cy - r * 0.7),
                       (base + side * r * 0.15, cy - r * 1.55)], fill=dark)
    else:  # floppy ears hanging at the sides
        for side in (-1, 1):
            ex = cx + side * r * 0.95
            d.ellipse([ex - r * 0.35, cy - r * 0.6, ex + r * 0.35, cy + r * 0.9], fill=dark)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur)
    for side in (-1, 1):
        d.ellipse([cx + side * r * 0.4 - r * 0.12, cy - r * 0.3, cx + side * r * 0.4 + r * 0.12,
                   cy - r * 0.06], fill=(20, 20, 20))
    d.ellipse([cx - r * 0.12, cy + r * 0.1, cx + r * 0.12, cy + r * 0.28], fill=(30, 20, 20))
    if label == 0:  # whiskers
        for side in (-1, 1):
            for dy in (-0.1, 0.05, 0.2):
                d.line([(cx + side * r * 0.2, cy + r * 0.25), (cx + side * r * 1.25, cy + r * (0.25 + dy * 2))],
                       fill=(240, 240, 240), width=max(1, int(r / 25)))
    else:  # tongue
        d.ellipse([cx - r * 0.18, cy + r * 0.45, cx + r * 0.18, cy + r * 0.95], fill=(230, 90, 110))
    d.text((4, h - 14), "SYNTHETIC", fill=(255, 255, 255))
    return im


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        folder = next(iter(files)).split("/")[0] + "/"
        zf.writestr(zipfile.ZipInfo(folder, _DATE), b"")
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, _DATE), data)


def _stamped(stamp: Path):
    """What a sample's stamp says (None for an empty or damaged one: that sample is written again)."""
    try:
        return json.loads(stamp.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def write_sample(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> Path:
    """Write train.zip, test.zip and sample_submission.csv into `folder` (a no-op when current)."""
    folder = Path(folder)
    meta = {"version": VERSION, "n_train": n_train, "n_test": n_test, "seed": seed}
    stamp = folder / SAMPLE_STAMP
    if stamp.is_file() and _stamped(stamp) == meta:
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # an older sample: everything in it is ours
    folder.mkdir(parents=True)
    train = {}
    for label, name in enumerate(("cat", "dog")):
        for i in range(n_train // 2):
            train[f"train/{name}.{i}.jpg"] = _jpeg(draw(label, seed * 1_000_003 + i))
    test_labels = np.random.default_rng(seed).integers(0, 2, n_test)
    test = {f"test/{i + 1}.jpg": _jpeg(draw(int(lab), seed * 1_000_003 + 500_000 + i))
            for i, lab in enumerate(test_labels)}
    _write_zip(folder / "train.zip", train)
    _write_zip(folder / "test.zip", test)
    rows = "".join(f"{i + 1},0.5\n" for i in range(n_test))
    write_atomic(folder / "sample_submission.csv", "id,label\n" + rows)
    labels = "".join(f"{i + 1},{lab}\n" for i, lab in enumerate(test_labels))
    write_atomic(folder / "test_labels.csv", "id,label\n" + labels)
    write_atomic(stamp, json.dumps(meta))  # last: only a complete sample is stamped
    return folder
