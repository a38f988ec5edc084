"""Decode every image once into a uint8 tensor at training resolution, and keep it.

The seed notebook decoded each JPEG with PIL on every epoch in one process (1.55 batches/s on a
Colab GPU). Decoding once makes an epoch a pass over one tensor: 20,000 images at 64 px are
245 MB, at 224 px 3 GB, small enough for the GPU. The cache lives in `data/cache/` and is rebuilt
when the files it was made from change (names, sizes or modification times).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import DataError, DataWarning, DogsVsCats
from .device import memory_bytes
from .files import DATA_DIR_ENV, atomic_path, data_dir, progress_bars, waiting, writable_folder

FORMAT = 1  # bump when the decoding below changes, so old caches are rebuilt
# What Pillow raises for a file that is not a readable image: the one definition (explore and own_photos use it too)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: Path, size: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3); squashed to size x size when given, as for training."""
    with Image.open(path) as im:
        if size is not None:
            im.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return np.array(im)  # writable: torch.from_numpy warns on read-only arrays


@dataclass
class ImageCache:
    """Images (N, 3, S, S) uint8, with labels (-1 when unknown), ids and file names."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    files: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def to(self, device) -> ImageCache:
        return ImageCache(self.images.to(device), self.labels.to(device), self.ids.to(device), self.files, self.skipped)

    def select(self, files) -> ImageCache:
        """The images of `files` (those that were readable), in the order given."""
        where = {f: i for i, f in enumerate(self.files)}
        rows = [where[f] for f in files if f in where]
        idx = torch.tensor(rows, dtype=torch.long)
        return ImageCache(
            self.images[idx.to(self.images.device)],
            self.labels[idx.to(self.labels.device)],
            self.ids[idx.to(self.ids.device)],
            [self.files[i] for i in rows],
            self.skipped,
        )


def fingerprint(ds: DogsVsCats, files, size: int) -> str:
    h = hashlib.sha1(f"{FORMAT}:{size}".encode())
    for f in files:
        st = os.stat(ds.path(f))
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def check_cache_fits(count: int, size: int, part: str = "train") -> None:
    """Refuse (DataError, one line naming the settings) a cache of `count` images at `size` px that would not fit in
    this machine's memory (it is held there whole, and saved, and read back, whole)."""
    need, memory = count * 3 * size * size, memory_bytes()
    if memory and need > memory / 2:  # half: training needs room for the model, a batch, and the other split
        raise DataError(f"{count:,} {part} images cached at {size} px would take {need / 2**30:,.1f} GiB, more than "
                        f"half of this machine's {memory / 2**30:.0f} GiB of memory: choose a smaller model.image_size "
                        "(or cache_size), or fewer images (train_images). Nothing was written.")


def build_cache(
    ds: DogsVsCats,
    index: pd.DataFrame,
    size: int,
    part: str = "train",
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> ImageCache:
    """The images of `index` at `size` px, from disk when an up-to-date cache exists.

    Unreadable images (corrupt or truncated JPEGs) are reported and left out, here, once: never a
    crash in the middle of an epoch.
    """
    files = list(index["file"])
    check_cache_fits(len(files), size, part)  # before anything is decoded, allocated or written
    key = fingerprint(ds, files, size)
    path = Path(cache_dir or data_dir() / "cache") / f"{ds.name}-{part}-{size}px.pt"
    writable_folder(path.parent, f"the cache folder (cache/ in the data folder, {DATA_DIR_ENV})")  # a file there, or
    path.parent.mkdir(parents=True, exist_ok=True)  # no permission: one line naming it, before any decoding
    # one process decodes, the others (torchrun's ranks, a second notebook) wait and then load what it wrote
    with waiting(path.parent / f".{path.name}.lock", f"another process caching {part} at {size}px"):
        return _load_or_build(ds, index, files, key, path, size, part, workers)


def _load_or_build(ds, index, files, key, path, size, part, workers) -> ImageCache:
    saved = {}
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:  # a damaged cache is only a cache: build it again
            saved = {}
        if saved.get("fingerprint") == key:
            return _report(ImageCache(saved["images"], saved["labels"], saved["ids"], saved["files"], saved["skipped"]))

    def decode(rel):
        try:
            return load_image(ds.path(rel), size)
        except UNREADABLE:
            return None

    # decoded straight into the final (N, 3, S, S) layout: one copy of the cache in memory, not three
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    ok = np.zeros(len(files), bool)
    with ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
        decoded = pool.map(decode, files)
        bar = tqdm(
            decoded, total=len(files), desc=f"caching {part} at {size}px", leave=False, disable=not progress_bars()
        )
        for i, arr in enumerate(bar):
            if arr is not None:
                images[i] = torch.from_numpy(arr).permute(2, 0, 1)
                ok[i] = True
    if not ok.all():
        images = images[torch.from_numpy(ok)]
    labels = index["label"].to_numpy() if "label" in index else np.full(len(files), -1)
    cache = ImageCache(
        images=images,
        labels=torch.as_tensor(labels[ok], dtype=torch.long),
        ids=torch.as_tensor(index["id"].to_numpy()[ok], dtype=torch.long),
        files=[f for f, good in zip(files, ok, strict=True) if good],
        skipped=[f for f, good in zip(files, ok, strict=True) if not good],
    )
    state = {
        "fingerprint": key,
        "images": cache.images,
        "labels": cache.labels,
        "ids": cache.ids,
        "files": cache.files,
        "skipped": cache.skipped,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: a full disk is an OSError, one line
        torch.save(state, f)
    return _report(cache)


def _report(cache: ImageCache) -> ImageCache:
    if cache.skipped:
        warnings.warn(
            f"Skipped {len(cache.skipped)} unreadable image(s) (corrupt or truncated): "
            f"{', '.join(cache.skipped[:5])}{' ...' if len(cache.skipped) > 5 else ''}",
            DataWarning,
            stacklevel=3,
        )
    return cache
