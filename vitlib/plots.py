"""The matplotlib helpers the notebooks share. Each returns its figure; every data plot names its source."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch


def as_image(x) -> np.ndarray:
    """(3, H, W) or (H, W, 3), uint8 or float in [-1, 1] or [0, 1] -> (H, W, 3) float in [0, 1] for imshow."""
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.max() > 1.5:
        a = a / 255
    elif a.min() < 0:
        a = (a + 1) / 2
    return np.clip(a, 0, 1)


def show_images(images, titles=None, source: str | None = None, cols: int = 6, size: float = 2.0,
                colors=None) -> plt.Figure:
    """A grid of images with optional per-image titles (and title colours); `source` titles the figure."""
    n = len(images)
    cols = min(cols, n)
    rows = -(-n // cols)
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * (1 + 0.12 * lines)), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(as_image(images[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=9, **({} if colors is None else {"color": colors[i]}))
    if source:
        fig.suptitle(source, fontsize=10)
    return fig


def plot_history(histories: dict[str, pd.DataFrame], source: str | None = None) -> plt.Figure:
    """Loss and accuracy per epoch for one or more runs (name -> history.csv frame)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, h in histories.items():
        line = ax_loss.plot(h["epoch"], h["val_loss"], label=f"{name} validation")[0]
        ax_loss.plot(h["epoch"], h["train_loss"], ls="--", color=line.get_color(), label=f"{name} train")
        ax_acc.plot(h["epoch"], h["val_acc"], color=line.get_color(), label=f"{name} validation")
        ax_acc.plot(h["epoch"], h["train_acc"], ls="--", color=line.get_color(), label=f"{name} train")
    ax_loss.set(xlabel="epoch", ylabel="loss (validation: competition log loss)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    return finish(fig, (ax_loss, ax_acc), source)


def finish(fig: plt.Figure, axes=(), source: str | None = None) -> plt.Figure:
    """A light grid and a legend on each of `axes`, `source` as the figure's title, a tight layout."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if source:
        fig.suptitle(source, fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion(table: pd.DataFrame, source: str | None = None) -> plt.Figure:
    """A 2x2 confusion matrix (rows true, columns predicted) with counts and row percentages."""
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    m = table.to_numpy()
    ax.imshow(m / m.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        share = v / max(m[i].sum(), 1)
        ax.text(j, i, f"{v:,}\n{share:.1%}", ha="center", va="center", color="white" if share > 0.5 else "black")
    ax.set(xticks=range(len(table.columns)), xticklabels=table.columns, yticks=range(len(table.index)),
           yticklabels=table.index, xlabel="predicted", ylabel="true")
    ax.set_title(source or "confusion matrix", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Exploring the files (notebook 01)

GROUP_COLORS = {"cat": "tab:orange", "dog": "tab:blue", "test": "tab:gray"}


def _color(name) -> dict:
    """The group's fixed colour as a keyword argument, or none (matplotlib's cycle) for other groups."""
    return {"color": GROUP_COLORS[str(name)]} if str(name) in GROUP_COLORS else {}


def show_files(ds, files, titles=None, cols: int = 6, size: float = 2.0, source: str | None = None,
               colors=None) -> plt.Figure:
    """Images read from disk as they are (each in its own shape, not squashed), titled with the data's source.

    An image that cannot be read is shown as a grey square.
    """
    return show_images([_read_or_grey(ds.path(f)) for f in files], titles, source=source or ds.describe(), cols=cols,
                       size=size, colors=colors)


def _read_or_grey(path) -> np.ndarray:
    from .cache import load_image

    try:
        return load_image(path)
    except (OSError, ValueError):
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
    be arbitrary. An image extreme in two ways appears twice.
    """
    stats = stats.assign(area=stats["width"] * stats["height"],
                         elongation=np.abs(np.log(stats["aspect"])))  # 0 for a square, the same for 2:1 and 1:2
    picks = [stats.sort_values(column, ascending=lowest, kind="stable").head(per).assign(why=why)
             for why, column, lowest in criteria if stats[column].nunique() > 1]
    return pd.concat(picks, ignore_index=True) if picks else stats.head(0).assign(why="")


def _hist_panel(ax, frame: pd.DataFrame, column: str, by: str, bins: int) -> None:
    """One histogram per group on shared bins, in fractions of each group so groups of any size compare.

    A column holding a single value (a copy resized to one size) says so in words instead of a lone bar.
    """
    values = frame[column].dropna()
    edges = np.histogram_bin_edges(values, bins=bins)
    for name, group in frame.groupby(by, sort=True):
        v = group[column].dropna()
        ax.hist(v, bins=edges, weights=np.full(len(v), 1 / max(len(v), 1)), alpha=0.55, label=str(name), **_color(name))
    if values.nunique() == 1:
        ax.text(0.5, 0.6, f"every image: {values.iloc[0]:g}", transform=ax.transAxes, ha="center",
                bbox={"facecolor": "white", "alpha": 0.8})
    ax.set(xlabel=column, ylabel="fraction of the group")
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
                      **_color(name))
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
