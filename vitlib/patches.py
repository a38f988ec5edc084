"""Patches: how a Vision Transformer turns an image into a sequence of tokens.

The image is cut into a grid of p x p patches, each flattened to p*p*3 numbers, in the order
vit-pytorch uses (`PATTERN`). A linear layer maps every flattened patch to `dim` numbers; that is
the same computation as a convolution whose kernel and stride are both p, which is how most
libraries write it. This module holds the cutting and its inverse, that equivalence, the cost
of a patch size, and the plots of notebook 02 (the grid, the sequence, the learned position
embedding and patch filters of a trained model).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from einops import rearrange
from torch import nn

from .cache import load_image
from .data import DogsVsCats, index_images
from .plots import as_image, show_images

PATTERN = "b c (h p1) (w p2) -> b (h w) (p1 p2 c)"  # vit-pytorch's patch order: rows of patches, then pixels
INVERSE = "b (h w) (p1 p2 c) -> b c (h p1) (w p2)"


def pick_photos(ds: DogsVsCats, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` training photos drawn with a seeded RNG (not the first files), cats and dogs in turn."""
    index = index_images(ds)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(index.index[index["label"] == label]) for label in sorted(index["label"].unique())]
    first = int(rng.integers(len(by_class)))
    rows = [by_class[(first + i) % len(by_class)][i // len(by_class)] for i in range(n)]
    return index.loc[rows, ["file", "class"]].reset_index(drop=True)


def load_photo(ds: DogsVsCats, file: str, size: int) -> torch.Tensor:
    """One photo as uint8 (3, size, size), squashed to a square as in training."""
    return torch.from_numpy(load_image(ds.path(file), size)).permute(2, 0, 1).contiguous()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, patches, p*p*C): row by row, each patch flattened pixel by pixel, RGB last."""
    return rearrange(images, PATTERN, p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of `patchify` for a square grid: (B, patches, p*p*C) -> (B, C, H, W)."""
    grid = math.isqrt(patches.shape[1])
    if grid * grid != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patches do not make a square grid")
    return rearrange(patches, INVERSE, h=grid, p1=patch_size, p2=patch_size, c=channels)


def linear_to_conv(linear: nn.Linear, patch_size: int, channels: int = 3) -> nn.Conv2d:
    """A Conv2d (kernel = stride = patch size) computing what `linear` computes on `patchify`d input.

    Each output channel's kernel is one row of the linear weight, whose p*p*C values `PATTERN` ordered
    (row, column, colour): rearranged to the (colour, row, column) layout of a Conv2d kernel.
    """
    conv = nn.Conv2d(channels, linear.out_features, patch_size, stride=patch_size, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(rearrange(linear.weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size,
                                    c=channels))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv.to(linear.weight.device, linear.weight.dtype)


def conv_tokens(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """The conv's output as a token sequence: (B, dim, h, w) -> (B, h*w, dim), in `PATTERN`'s order."""
    return rearrange(conv(images), "b d h w -> b (h w) d")


def sequence_costs(image_size: int = 224, patch_sizes=(32, 16, 8, 4), dim: int = 128, k: int = 64,
                   mlp_ratio: int = 4, cls_tokens: int = 1) -> pd.DataFrame:
    """What a patch size costs: tokens (the patches and `cls_tokens`, ModelConfig.cls_tokens: 0 for a model that
    answers from the tokens' mean), and multiply-adds per transformer layer for one image.

    Per layer and token the linear parts (Q, K, V and output projections: 4 d^2; the MLP:
    2 * mlp_ratio * d^2) cost the same whatever the length n; full attention adds 2 n^2 d
    (scores Q K^T and the mix of V), Linformer 4 n k d (projecting K and V to length k: 2 n k d;
    scores and mix against k keys: 2 n k d). Full attention costs more once 2 n^2 d > 4 n k d: n > 2k.
    """
    rows = []
    for p in patch_sizes:
        grid = image_size // p
        n = grid * grid + cls_tokens
        linear = n * (4 + 2 * mlp_ratio) * dim * dim
        rows.append({"patch_size": p, "grid": grid, "patches": grid * grid, "tokens": n,
                     "values_per_patch": 3 * p * p, "attention_scores": n * n,
                     "MMAC_linear": linear / 1e6, "MMAC_full_attention": 2 * n * n * dim / 1e6,
                     "MMAC_linformer_attention": 4 * n * k * dim / 1e6})
    return pd.DataFrame(rows).set_index("patch_size")


def plot_sequence_costs(table: pd.DataFrame, image_size: int = 224) -> plt.Figure:
    """Tokens and per-layer multiply-adds against patch size (log scales), from `sequence_costs`."""
    fig, (ax_n, ax_c) = plt.subplots(1, 2, figsize=(10, 3.6))
    p = table.index.to_numpy()
    ax_n.plot(p, table["tokens"], "o-")
    for x, y in zip(p, table["tokens"], strict=True):
        ax_n.annotate(f"{y:,}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax_n.margins(x=0.08, y=0.15)  # room for the labels of the first and last points inside the axes
    ax_n.set(xscale="log", yscale="log", xlabel="patch size (px)", ylabel="tokens (patches + CLS)",
             title=f"sequence length at {image_size} px")
    ax_c.plot(p, table["MMAC_linear"], "o-", label="linear parts (QKV, output, MLP): ~ n")
    ax_c.plot(p, table["MMAC_full_attention"], "o-", label="full attention: ~ n²")
    ax_c.plot(p, table["MMAC_linformer_attention"], "o--", label="Linformer attention: ~ n·k")
    ax_c.set(xscale="log", yscale="log", xlabel="patch size (px)", ylabel="million multiply-adds per layer",
             title="cost of one transformer layer, one image")
    for ax in (ax_n, ax_c):
        ax.set_xticks(p, [str(v) for v in p])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_patch_grid(image, patch_size: int, ax=None, numbers: bool = True, title: str | None = None):
    """The image with its patch grid drawn on it and each patch's index (its position in the sequence)."""
    img = as_image(image)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(img)
    size = img.shape[0]
    grid = size // patch_size
    for i in range(1, grid):
        ax.axhline(i * patch_size - 0.5, color="white", lw=1)
        ax.axvline(i * patch_size - 0.5, color="white", lw=1)
    if numbers:
        for idx in range(grid * grid):
            r, c = divmod(idx, grid)
            ax.text(c * patch_size + 2, r * patch_size + 2, str(idx), color="yellow", fontsize=max(5, 90 // grid),
                    va="top", ha="left", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    ax.set_title(title or f"{size}x{size} px: {grid}x{grid} patches of {patch_size}x{patch_size}", fontsize=10)
    ax.axis("off")
    return ax


def plot_patch_sequence(patches: torch.Tensor, patch_size: int, source: str | None = None) -> plt.Figure:
    """One image's patches (patches, p*p*3) as the transformer reads them: tiles in order, and as rows of numbers."""
    n = patches.shape[0]
    tiles = unpatchify(patches[:, None], patch_size)  # each patch as a 1-patch image: (n, 3, p, p)
    cols = min(n, 25)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(12, 0.7 * rows + 3.6))
    top, bottom = fig.subfigures(2, 1, height_ratios=[0.7 * rows + 0.7, 2.9])
    axes = top.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(as_image(tiles[i]))
            ax.set_title(str(i), fontsize=8, pad=2)
    top.suptitle(f"the sequence: {n} patches, in reading order" + (f"  ({source})" if source else ""), fontsize=10)
    top.subplots_adjust(top=1 - 0.55 / (0.7 * rows + 0.7), bottom=0.02, hspace=0.5)  # the title clear of the numbers
    ax = bottom.subplots()
    strips = rearrange(patches, "n (q c) -> n q c", c=3)  # each row: the patch's pixels, unrolled
    ax.imshow(as_image(strips), aspect="auto", interpolation="nearest")
    ax.set(xlabel=f"pixel of the patch, row by row ({patch_size}x{patch_size} = {patch_size**2:,} pixels"
                  f" x 3 colours = {patches.shape[1]:,} values)", ylabel="token (patch index)",
           title=f"the input matrix: {n} rows x {patches.shape[1]:,} values")
    return fig


def position_similarity(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other's: (grid, grid, grid, grid).

    `pos` is (tokens, dim) with CLS first (models.pos_embedding); entry [r, c] is the map of patch
    (r, c) against all patches, as in figure 7 of the ViT paper (Dosovitskiy et al., 2021).
    """
    patches = torch.nn.functional.normalize(pos[-grid * grid :].float(), dim=-1)
    return (patches @ patches.T).reshape(grid, grid, grid, grid)


def _grid_distances(grid: int) -> torch.Tensor:
    """(grid*grid, grid*grid): the distance between every two patches of the grid, in patches, rounded."""
    rc = torch.cartesian_prod(torch.arange(grid), torch.arange(grid)).float()
    return torch.cdist(rc, rc).round()


def similarity_by_distance(sim: torch.Tensor) -> pd.DataFrame:
    """Mean cosine similarity of two patches' position embeddings per grid distance (rounded), and the pairs averaged.

    Few pairs lie far apart: on an 8x8 grid only the two diagonals of opposite corners are at distance
    10, so a mean over them is noise. `pairs` says how much each row can be trusted.
    """
    grid = sim.shape[0]
    dist = _grid_distances(grid).flatten().numpy()
    values = sim.reshape(grid * grid, grid * grid).flatten().numpy()
    off = dist > 0
    by = pd.Series(values[off]).groupby(dist[off])
    return pd.DataFrame({"mean cosine": by.mean(), "pairs": by.size() // 2}).rename_axis("grid distance")


def mean_similarity(sim: torch.Tensor, min_distance: float, max_distance: float = math.inf) -> float:
    """The mean cosine similarity over all pairs of distinct patches whose grid distance is in the range.

    Every pair counts once (not a mean of per-distance means, which would give the two far-corner pairs
    as much weight as hundreds of others).
    """
    grid = sim.shape[0]
    dist = _grid_distances(grid)
    keep = (dist > 0) & (dist >= min_distance) & (dist <= max_distance)
    return float(sim.reshape(grid * grid, grid * grid)[keep].mean())


def plot_position_similarity(sims, source: str | None = None) -> plt.Figure:
    """The grid of similarity maps (one small map per patch), one panel per model; `sims`: a tensor or name -> tensor.

    Each small map draws its own patch black: a position's similarity with itself is 1 by
    definition, and drawn in colour it would be the strongest pixel of every map. The colour map
    diverges at 0 (red similar, blue opposite, white unrelated); rows and columns count from 0, so
    patch r * grid + c of `draw_patch_grid` is the map in row r, column c.
    """
    sims = sims if isinstance(sims, dict) else {"": sims}
    fig, axes = plt.subplots(1, len(sims), figsize=(5.6 * len(sims) + 0.8, 5.4), squeeze=False)
    for ax, (name, sim) in zip(axes.flat, sims.items(), strict=True):
        im = _similarity_panel(ax, sim)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.04 / len(sims), label="cosine similarity")
    fig.suptitle(source or "position embedding similarity", fontsize=9)
    return fig


def _similarity_panel(ax, sim: torch.Tensor):
    grid = sim.shape[0]
    cell = grid + 1
    canvas = np.full((grid * cell - 1, grid * cell - 1), np.nan)
    itself = np.zeros((*canvas.shape, 4))  # black where a map meets its own position, clear elsewhere
    for r in range(grid):
        for c in range(grid):
            square = sim[r, c].numpy().copy()
            square[r, c] = np.nan  # its own position
            canvas[r * cell : r * cell + grid, c * cell : c * cell + grid] = square
            itself[r * cell + r, c * cell + c, 3] = 1
    im = ax.imshow(canvas, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.imshow(itself, interpolation="nearest")
    ax.set_xticks(np.arange(grid) * cell + (grid - 1) / 2, range(grid))
    ax.set_yticks(np.arange(grid) * cell + (grid - 1) / 2, range(grid))
    ax.set(xlabel="input patch column", ylabel="input patch row")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


def patch_filters(model: nn.Module, count: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The principal components of the patch projection's filters as images (count, 3, p, p), and their variance shares.

    vit-pytorch normalizes each flattened patch (LayerNorm) before the Linear layer, so the filter
    that row i of the weight applies to the normalized patch is weight[i] * LayerNorm's gain: that
    product is what is analysed. Each component is a direction in patch space; the first few are
    what the projection is most sensitive to (ViT paper, figure 7 left).
    """
    norm, linear = model.to_patch_embedding[1], model.to_patch_embedding[2]
    w = (linear.weight * norm.weight).detach().float().cpu()  # (dim, p*p*3)
    w = w - w.mean(0)
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    count = min(count, vh.shape[0])
    p = model.config.patch_size
    comps = rearrange(vh[:count], "n (p1 p2 c) -> n c p1 p2", p1=p, p2=p, c=3)
    return comps, (s**2 / (s**2).sum())[:count]


def plot_patch_filters(comps: torch.Tensor, share: torch.Tensor, source: str | None = None,
                       cols: int = 7) -> plt.Figure:
    """Each component rescaled to [0, 1] on its own (sign and scale are arbitrary), titled with its variance share."""
    lo = comps.amin(dim=(1, 2, 3), keepdim=True)
    hi = comps.amax(dim=(1, 2, 3), keepdim=True)
    images = ((comps - lo) / (hi - lo)).permute(0, 2, 3, 1)  # (n, p, p, 3) in [0, 1]
    titles = [f"{i + 1}: {s:.0%}" for i, s in enumerate(share.tolist())]
    return show_images(images, titles, source or "principal components of the patch filters", cols=cols, size=1.2)
