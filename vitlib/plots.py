"""The matplotlib helpers the notebooks share. Each returns its figure; every data plot names its source."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator


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
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for name, h in histories.items():
        line = ax_loss.plot(h["epoch"], h["val_loss"], label=f"{name} validation")[0]
        ax_loss.plot(h["epoch"], h["train_loss"], ls="--", color=line.get_color(), label=f"{name} train")
        ax_acc.plot(h["epoch"], h["val_acc"], color=line.get_color(), label=f"{name} validation")
        ax_acc.plot(h["epoch"], h["train_acc"], ls="--", color=line.get_color(), label=f"{name} train")
    ax_loss.set(xlabel="epoch", ylabel="loss (validation: competition log loss)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: ticks 5, 10, not 2.5, 5.0
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()  # one legend for both, below them: it covers no curve
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    if source:
        fig.suptitle(source, fontsize=10)
    return fig


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


GROUP_COLORS = {"cat": "tab:orange", "dog": "tab:blue", "test": "tab:gray"}  # the same in every notebook


def group_color(name) -> dict:
    """The group's fixed colour as a keyword argument, or none (matplotlib's cycle) for other groups."""
    return {"color": GROUP_COLORS[str(name)]} if str(name) in GROUP_COLORS else {}
