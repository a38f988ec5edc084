"""Notebook 01's exploration: what the files are (sizes, modes, bytes), simple statistics of the
pixels, the odd ones out, and their plots. Nothing here is needed to train; it is how we look first.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from . import plots
from .cache import UNREADABLE, ImageCache, load_image
from .data import DogsVsCats
from .plots import show_images


def image_info(ds: DogsVsCats, index: pd.DataFrame, workers: int = 8) -> pd.DataFrame:
    """`index` plus width, height, mode and bytes from each file's header (no full decode)."""

    def info(rel):
        p = ds.path(rel)
        try:
            with Image.open(p) as im:
                return im.width, im.height, im.mode, p.stat().st_size
        except UNREADABLE:  # as the cache skips it (a decompression bomb included)
            return 0, 0, "unreadable", p.stat().st_size

    with ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(info, index["file"]))
    out = index.copy()
    out[["width", "height", "mode", "bytes"]] = pd.DataFrame(got, index=out.index)
    out["aspect"] = out["width"] / out["height"].where(out["height"] > 0)
    return out


def image_stats(cache: ImageCache, chunk: int = 1000) -> pd.DataFrame:
    """Per image: brightness (mean grey level), contrast (its std) and colourfulness (mean channel spread)."""
    rows = []
    for i in range(0, len(cache), chunk):
        x = cache.images[i : i + chunk].cpu().float() / 255
        grey = x.mean(1)
        rows.append(
            pd.DataFrame(
                {
                    "brightness": grey.mean((1, 2)).numpy(),
                    "contrast": grey.std((1, 2)).numpy(),
                    "colourfulness": (x.amax(1) - x.amin(1)).mean((1, 2)).numpy(),
                }
            )
        )
    stats = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["brightness", "contrast", "colourfulness"])
    )
    stats.insert(0, "file", cache.files)
    return stats


# ---------------------------------------------------------------------------------------------
# Looking at the files


def show_files(ds, files, titles=None, cols: int = 6, size: float = 2.0, source: str | None = None,
               colors=None) -> plt.Figure:
    """Images read from disk as they are (each in its own shape, not squashed), titled with the data's source.

    An image that cannot be read is shown as a grey square.
    """
    return show_images([_read_or_grey(ds.path(f)) for f in files], titles, source=source or ds.describe(), cols=cols,
                       size=size, colors=colors)


def _read_or_grey(path) -> np.ndarray:
    try:
        return load_image(path)
    except UNREADABLE:
        return np.full((8, 8, 3), 128, np.uint8)


# what makes an image odd: (why, column of odd_ones_out's frame, lowest first?)
ODD_CRITERIA = (("darkest", "brightness", True), ("brightest", "brightness", False),
                ("lowest contrast", "contrast", True), ("least colourful", "colourfulness", True),
                ("smallest file", "bytes", True), ("fewest pixels", "area", True),
                ("most elongated", "elongation", False))


def odd_ones_out(stats: pd.DataFrame, per: int = 4, criteria=ODD_CRITERIA) -> pd.DataFrame:
    """The `per` most extreme images by each criterion, in the order of `criteria`, with a `why` column.

    `stats`: one row per image with data.image_info's width, height, aspect and bytes and
    cache.image_stats' brightness, contrast and colourfulness. Looking at the extremes of a few cheap
    numbers finds the damaged, empty and mislabelled images without looking at every one. A criterion on
    which all images tie (the size ones when every image is 200x200) is skipped: its "extremes" would
    be arbitrary. Every image appears once: one extreme in two ways is shown for the first criterion, and the
    later one takes its next most extreme image instead, so a grid of `per` columns has no gaps or repeats.
    """
    stats = stats.assign(area=stats["width"] * stats["height"],
                         elongation=np.abs(np.log(stats["aspect"])))  # 0 for a square, the same for 2:1 and 1:2
    picks, taken = [], set()
    for why, column, lowest in criteria:
        if stats[column].nunique() > 1:
            ranked = stats.sort_values(column, ascending=lowest, kind="stable")
            pick = ranked[~ranked["file"].isin(taken)].head(per).assign(why=why)
            taken.update(pick["file"])
            picks.append(pick)
    return pd.concat(picks, ignore_index=True) if picks else stats.head(0).assign(why="")


def _hist_panel(ax, frame: pd.DataFrame, column: str, by: str, bins: int) -> None:
    """One histogram per group on shared bins, in fractions of each group so groups of any size compare.

    A column holding a single value (a copy resized to one size) says so in words instead of a lone bar.
    The test photos are drawn as an outline over the filled classes, so all three stay readable where they
    overlap.
    """
    values = frame[column].dropna()
    edges = np.histogram_bin_edges(values, bins=bins)
    for name, group in frame.groupby(by, sort=True):
        v = group[column].dropna()
        style = {"histtype": "step", "linewidth": 1.8} if str(name) == "test" else {"alpha": 0.55}
        ax.hist(v, bins=edges, weights=np.full(len(v), 1 / max(len(v), 1)), label=str(name),
                **style, **plots.group_color(name))
    if values.nunique() == 1:
        ax.text(0.5, 0.6, f"every image: {values.iloc[0]:g}", transform=ax.transAxes, ha="center",
                bbox={"facecolor": "white", "alpha": 0.8})
    ax.set(xlabel=column, ylabel="fraction of the group")
    ax.legend(fontsize=8)  # overlapping bars: say which colour is which group
    ax.grid(alpha=0.3)


def plot_by_class(frame: pd.DataFrame, columns, by: str = "class", source: str | None = None,
                  bins: int = 40) -> plt.Figure:
    """A histogram per column, one colour per class (or any `by` group): do the groups differ?"""
    columns = list(columns)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=True):
        _hist_panel(ax, frame, column, by, bins)
    axes.flat[0].legend(fontsize=8)
    if source:
        fig.suptitle(source, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_sizes(info: pd.DataFrame, by: str = "class", source: str | None = None) -> plt.Figure:
    """Width against height, aspect ratio and file size per group (from `data.image_info`).

    The model sees squares: the farther an aspect ratio is from the dashed line at 1, the more
    resizing squashes the animal.
    """
    fig, (ax_wh, ax_aspect, ax_kb) = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, group in info.groupby(by, sort=True):
        ax_wh.scatter(group["width"], group["height"], s=4, alpha=0.25, label=str(name),
                      **plots.group_color(name))
    ax_wh.set(xlabel="width (px)", ylabel="height (px)", title="image sizes")
    if info[["width", "height"]].drop_duplicates().shape[0] == 1:
        ax_wh.text(0.5, 0.6, f"every image: {info['width'].iloc[0]}×{info['height'].iloc[0]}",
                   transform=ax_wh.transAxes, ha="center", bbox={"facecolor": "white", "alpha": 0.8})
    ax_wh.grid(alpha=0.3)
    ax_wh.legend(fontsize=8, markerscale=3)
    _hist_panel(ax_aspect, info, "aspect", by, bins=40)
    ax_aspect.axvline(1, ls="--", color="black", lw=1)
    ax_aspect.set(xlabel="aspect ratio (width / height)", title="aspect ratios")
    _hist_panel(ax_kb, info.assign(kB=info["bytes"] / 1000), "kB", by, bins=40)
    ax_kb.set(xlabel="file size (kB)", title="file sizes")
    if source:
        fig.suptitle(source, fontsize=10)
    fig.tight_layout()
    return fig
