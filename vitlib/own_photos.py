"""Your own photos: P(dog) for any image file, folder of them, or upload, and where a ViT looks in it.

    python -m vitlib predict my_cat.jpg holiday/      # one line per photo: P(dog) and the answer

A photo is read as training reads the dev photos (squashed to the model's square, notebook 01) and predicted
with the mirror image averaged in (flip TTA). A file that is not a readable image is named with the reason, in one
line, and the others are still predicted.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from PIL import Image

from . import attention
from .augment import normalize
from .cache import UNREADABLE, load_image
from .predict import predict_proba


class PhotoError(ValueError):
    """A path that is missing, or a file that is not an image vitlib can read; the message says which and why."""


def photo_files(paths) -> list[Path]:
    """The files named by `paths`: a file itself, a folder's files (sorted, hidden ones left out, not recursive)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            found.append(path)
        elif path.is_symlink():
            raise PhotoError(f"{path}: a link to {os.readlink(path)}, which does not exist")
        elif path.exists():  # a FIFO, a socket, a device: reading one could wait for ever
            raise PhotoError(f"{path}: not a file or a folder (a pipe, socket or device): give a photo's file")
        else:
            raise PhotoError(f"{path}: no such file or folder")
    return found


def read_photo(source, size: int, name: str | None = None) -> torch.Tensor:
    """A photo as the model reads it, uint8 (3, size, size): from a path, or the bytes of an upload.

    A PhotoError names the file and says why when it is not a readable image (text, a truncated JPEG, ...)."""
    name = name or (Path(source).name if not isinstance(source, bytes) else "the upload")
    try:
        array = load_image(io.BytesIO(source) if isinstance(source, bytes) else Path(source), size)
    except UNREADABLE as e:
        why = "not an image" if isinstance(e, Image.UnidentifiedImageError) else f"unreadable: {e}"
        raise PhotoError(f"{name}: {why} (vitlib reads JPEG, PNG, WebP, GIF, BMP and the other formats of Pillow)") \
            from None
    return torch.from_numpy(array).permute(2, 0, 1)


def predict_photos(model, sources: dict, tta: bool = True, device=None) -> pd.DataFrame:
    """P(dog) for each photo of `sources` (name -> path or bytes): columns photo, p_dog, answer, problem. A photo
    that cannot be read gets no P(dog) and its reason in `problem`; the others are predicted all the same."""
    size = model.config.image_size
    rows, images = [], []
    for name, source in sources.items():
        try:
            images.append(read_photo(source, size, name))
            rows.append({"photo": name, "problem": None})
        except PhotoError as e:
            rows.append({"photo": name, "problem": str(e)})
    frame = pd.DataFrame(rows, columns=["photo", "problem"])
    read = frame["problem"].isna().to_numpy()
    frame["p_dog"] = float("nan")
    if images:
        frame.loc[read, "p_dog"] = predict_proba(model, torch.stack(images), tta=tta, device=device)
    frame["answer"] = frame["p_dog"].map(lambda p: "" if p != p else "dog" if p > 0.5 else "cat")
    return frame[["photo", "p_dog", "answer", "problem"]]


def photo_chooser(upload: bool):
    """What lets you choose photos of your own, only when `upload` is True (so Run All never stops to wait): in Colab
    its upload dialog, which waits for your choice; in Jupyter an upload button (ipywidgets), shown at once: choose,
    then run the next cell. Returns what `chosen_photos` reads (None when not asked, or no way to upload here)."""
    if not upload:
        return None
    if "google.colab" in sys.modules:
        from google.colab import files as colab_files  # type: ignore[import-not-found]

        return dict(colab_files.upload())  # name -> bytes, once you have chosen
    try:
        import ipywidgets
        from IPython.display import display
    except ImportError:
        print("no upload button here (ipywidgets is not installed): set PHOTO to the path of a photo instead")
        return None
    button = ipywidgets.FileUpload(accept="image/*", multiple=True, description="your photos")
    display(button)
    return button


def chosen_photos(chooser) -> dict:
    """name -> bytes of the photos chosen with `photo_chooser`'s dialog or button (empty when none were)."""
    if chooser is None:
        return {}
    if isinstance(chooser, dict):  # Colab's dialog: already name -> bytes
        return {name: bytes(content) for name, content in chooser.items()}
    return uploaded_photos(chooser)


def uploaded_photos(upload) -> dict:
    """name -> bytes of the files in an ipywidgets FileUpload (its value: a tuple of dicts in ipywidgets 8)."""
    if upload is None:
        return {}
    value = upload.value
    items = value.values() if isinstance(value, dict) else value  # ipywidgets 7 kept a dict by name
    return {item.get("name", f"upload {i}"): bytes(item["content"]) for i, item in enumerate(items)}


def show_look(source, p_dog: float, full_model, title: str, size: int = 224) -> plt.Figure:
    """The photo (a path or bytes) beside the attention rollout of the standard ViT (`full_model`: full attention,
    so its maps are over tokens and can be laid on the photo), titled with the P(dog) given."""
    cfg = full_model.config
    _, maps = attention.full_maps(full_model, normalize(read_photo(source, cfg.image_size)[None]))
    heat = attention.cls_to_grid(attention.rollout(maps)[:, 0], cfg.grid)
    answer = "dog" if p_dog > 0.5 else "cat"
    return attention.plot_overlays(read_photo(source, size)[None], heat, [f"P(dog) = {p_dog:.2f}: a {answer}"],
                                   f"{title}\nrollout of the standard ViT ({cfg.image_size} px)",
                                   label="rollout weight",
                                   baseline=1 / cfg.seq_len)
