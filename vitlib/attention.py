"""Attention: Q, K and V by hand, capturing attention maps, rollout, and their plots.

Full softmax attention compares every token with every other: an n x n map per head, so time and
memory grow as n^2. Linformer (Wang et al., 2020) first projects the keys and values along the
sequence with learned n x k matrices E and F (`proj_k`, `proj_v`), so each map is n x k. That
saves work only when k is well below n: with the seed's 50 tokens and k = 64 it makes the keys
longer. This module computes both by hand from a model's own weights (to check the library),
and records the maps of trained models. What attention costs over sequence length is measured in
`attention_cost`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import einsum, rearrange
from linformer.linformer import LinformerSelfAttention
from matplotlib.colors import Normalize, PowerNorm
from torch import nn
from vit_pytorch.recorder import Recorder
from vit_pytorch.vit import Attention as FullAttention

from .plots import as_image

# ---------------------------------------------------------------------------------------------
# Q, K and V by hand


@dataclass
class AttentionSteps:
    """Every intermediate of one attention layer: per head (b, heads, tokens, d_head) unless noted."""

    q: torch.Tensor
    k: torch.Tensor  # Linformer: after projecting along the sequence, (b, heads, k, d_head)
    v: torch.Tensor  # likewise
    weights: torch.Tensor  # softmax(q k^T / sqrt(d_head)): (b, heads, n, n) or Linformer's (b, heads, n, k)
    out: torch.Tensor  # the layer's output, (b, n, dim)


def linformer_by_hand(layer: LinformerSelfAttention, x: torch.Tensor) -> AttentionSteps:
    """What `layer(x)` computes, step by step with einops, from its own weights (x: its input, already normed)."""
    n, heads = x.shape[1], layer.heads
    q = einsum(x, layer.to_q.weight, "b n d, e d -> b n e")
    k = einsum(x, layer.to_k.weight, "b n d, e d -> b n e")
    v = einsum(x, layer.to_v.weight, "b n d, e d -> b n e")
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    k = einsum(k, layer.proj_k[:n], "b h n d, n k -> b h k d")  # E: n keys -> k mixtures of keys
    v = einsum(v, layer.proj_v[:n], "b h n d, n k -> b h k d")  # F: n values -> k mixtures of values
    scores = einsum(q, k, "b h n d, b h k d -> b h n k") / math.sqrt(q.shape[-1])
    weights = scores.softmax(dim=-1)
    mixed = einsum(weights, v, "b h n k, b h k d -> b h n d")
    out = layer.to_out(rearrange(mixed, "b h n d -> b n (h d)"))
    return AttentionSteps(q, k, v, weights, out)


def full_by_hand(layer: FullAttention, x: torch.Tensor) -> AttentionSteps:
    """What vit-pytorch's `Attention(x)` computes (its LayerNorm included), from its own weights."""
    q, k, v = layer.to_qkv(layer.norm(x)).chunk(3, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=layer.heads) for t in (q, k, v))
    weights = (einsum(q, k, "b h i d, b h j d -> b h i j") / math.sqrt(q.shape[-1])).softmax(dim=-1)
    out = layer.to_out(rearrange(einsum(weights, v, "b h i j, b h j d -> b h i d"), "b h n d -> b n (h d)"))
    return AttentionSteps(q, k, v, weights, out)


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention modules of either model, first layer first."""
    kinds = (LinformerSelfAttention, FullAttention)
    return [m for m in model.modules() if isinstance(m, kinds)]


@contextmanager
def capture_io(module: nn.Module):
    """Within the block, `got["input"]` and `got["output"]` are the module's (first) input and output."""
    got = {}

    def hook(_, args, output):
        got["input"], got["output"] = args[0].detach(), output.detach()

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Recording attention maps


@torch.no_grad()
def linformer_maps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and every layer's attention weights (b, layers, heads, n, k) of the efficient ViT.

    vit-pytorch's Recorder looks for its own `Attention` class and finds nothing here. Linformer
    passes its softmaxed map through `self.dropout` (an nn.Dropout, identity in eval mode, which
    this sets for the call), so a forward hook on that module sees exactly the weights that mix
    the values.
    """
    maps, handles = [], []
    was_training = model.training
    model.eval()  # dropout off: the hooked module passes the weights through unchanged
    for layer in attention_layers(model):
        handles.append(layer.dropout.register_forward_hook(lambda _, __, out: maps.append(out.detach())))
    try:
        logits = model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return logits, torch.stack(maps, dim=1)


@torch.no_grad()
def full_maps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and every layer's attention weights (b, layers, heads, n, n) of a standard ViT, via Recorder."""
    recorder = Recorder(model)
    was_training = model.training
    model.eval()
    try:
        logits, maps = recorder(images)
    finally:
        recorder.eject()  # removes the hooks and hands back the model unchanged
        model.train(was_training)
    return logits, maps


def linformer_token_mix(maps: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Linformer's maps (b, layers, heads, n, k) as weights over tokens: (b, layers, heads, n, n).

    Output token i is sum_j w[i, j] sum_t F[t, j] v_t, so the weight of token t's value is
    (w F^T)[i, t]. Unlike softmax weights these need not be positive or sum to 1.
    """
    n = maps.shape[-2]
    proj_v = torch.stack([layer.proj_v[:n].detach() for layer in attention_layers(model)])  # (layers, n, k)
    return einsum(maps, proj_v.to(maps), "b l h i j, l t j -> b l h i t")


def rollout(maps: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token draws on each input token, through all layers.

    maps: (b, layers, heads, n, n). Heads are averaged, the residual connection is modelled as
    `residual * I + (1 - residual) * A`, rows are renormalized, and the layers multiplied, first
    layer rightmost. Every row of the result sums to 1.
    """
    a = maps.float().mean(dim=2)
    eye = torch.eye(a.shape[-1], device=a.device)
    a = residual * eye + (1 - residual) * a
    a = a / a.sum(dim=-1, keepdim=True)
    out = a[:, 0]
    for layer in range(1, a.shape[1]):
        out = a[:, layer] @ out
    return out


def cls_to_grid(row: torch.Tensor, grid: int) -> torch.Tensor:
    """The CLS token's weights over the patches (..., n) -> (..., grid, grid); the CLS column is dropped."""
    return rearrange(row[..., 1:], "... (h w) -> ... h w", h=grid, w=grid)


# ---------------------------------------------------------------------------------------------
# Plots


def color_norm(heats: torch.Tensor, symmetric: bool = False, gamma: float = 1.0) -> Normalize:
    """One colour scale for several maps, so that they compare: [0, max], or [-max|.|, max|.|] when `symmetric`.

    `gamma` < 1 (a power scale, e.g. 0.5: square root) lets small weights show beside a single peak.
    """
    if symmetric:
        lim = float(heats.abs().max())
        return Normalize(-lim, lim)
    low, high = min(float(heats.min()), 0.0), float(heats.max())
    return PowerNorm(gamma, low, high) if gamma != 1 else Normalize(low, high)


def overlay(ax, image, heat: torch.Tensor, title: str | None = None, cmap: str = "inferno",
            alpha: float | None = None, norm: Normalize | None = None, symmetric: bool = False):
    """`heat` (grid, grid) drawn over the image as one flat block per patch; returns the heat's AxesImage.

    Not interpolated: attention has one value per patch, and a smooth upsampling would suggest
    a precision within the patch that the model does not have. With `alpha` None each block is as
    opaque as its value is strong (0.15 for the weakest, 0.85 for the strongest; for a `symmetric`
    heat, by its distance from 0), so the photo stays visible where the map says little.
    """
    img = as_image(image)
    ax.imshow(img)
    h, w = img.shape[:2]
    values = heat.float().numpy()
    if alpha is None:
        strength = (norm or Normalize(float(values.min()), float(values.max())))(values)
        strength = np.abs(2 * strength - 1) if symmetric else strength
        alpha = 0.15 + 0.7 * np.clip(np.ma.filled(strength, 0.0), 0, 1)
    im = ax.imshow(values, cmap=cmap, alpha=alpha, norm=norm, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    return im


def plot_heads(image, heads: torch.Tensor, title: str, cmap: str = "inferno", symmetric: bool = False,
               label: str = "attention weight", gamma: float = 0.5) -> plt.Figure:
    """The image, then one overlay per head (heads: (h, grid, grid)), all on one colour scale with a colour bar.

    A head often puts most of its weight on one or two patches; on a square-root scale (`gamma` 0.5;
    ignored when `symmetric`) the rest of its map still shows, and the colour bar says the scale.
    """
    n = heads.shape[0] + 1
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2 + 0.6, rows * 2.4 + 0.3), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(as_image(image))
    axes.flat[0].set_title("photo", fontsize=8)
    norm = color_norm(heads, symmetric, gamma)
    for i, heat in enumerate(heads):
        im = overlay(axes.flat[i + 1], image, heat, f"head {i}", cmap=cmap, norm=norm, symmetric=symmetric)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_overlays(images, heats, titles, suptitle: str, cmap: str = "inferno", label: str = "weight",
                  baseline: float | None = None, symmetric: bool = False) -> plt.Figure:
    """Each photo above its heat map overlay (heats: (b, grid, grid)), on one colour scale with a colour bar;
    `baseline` (e.g. 1/n, what every patch would get from uniform attention) is marked on the colour bar; a signed
    heat (`symmetric`) gets a scale centred at 0 (use a diverging `cmap`, e.g. "RdBu_r")."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(n * 2.2 + 0.8, 4.8), squeeze=False, layout="constrained")
    norm = color_norm(heats, symmetric)
    for i in range(n):
        axes[0, i].imshow(as_image(images[i]))
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].axis("off")
        im = overlay(axes[1, i], images[i], heats[i], cmap=cmap, norm=norm, symmetric=symmetric)
    bar = fig.colorbar(im, ax=axes[1].tolist(), shrink=0.9, label=label)
    if baseline is not None:
        bar.ax.axhline(baseline, color="cyan", lw=2)
        bar.ax.text(-0.3, baseline, f"uniform\n{baseline:.3f}", transform=bar.ax.get_yaxis_transform(), ha="right",
                    va="center", fontsize=8, color="black")
    fig.suptitle(suptitle, fontsize=9)
    return fig


def plot_linformer_weights(weights: torch.Tensor, title: str) -> plt.Figure:
    """One layer's (heads, n, k) weights as heat maps: row i is how token i spreads over the k projected keys."""
    h, n, k = weights.shape
    cols = min(h, 4)
    rows = -(-h // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.3 + 0.8, rows * 2.4 + 0.5), squeeze=False,
                             layout="constrained")
    norm = color_norm(weights)
    for i, ax in enumerate(axes.flat):
        if i >= h:
            ax.axis("off")
            continue
        im = ax.imshow(weights[i].numpy(), cmap="viridis", aspect="auto", interpolation="nearest", norm=norm)
        ax.set(xticks=[], yticks=[], xlabel=f"projected key (k = {k})" if i // cols == rows - 1 else None,
               ylabel=f"query token (n = {n})" if i % cols == 0 else None)
        ax.set_title(f"head {i}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_attention_shapes(n: int, k: int, d_head: int) -> plt.Figure:
    """The matrices of one head, drawn to scale, from the queries to the output: full attention's n x n map against
    Linformer's n x k. E and F as in the Linformer paper (k x n; vit-pytorch stores their transposes, proj_k and
    proj_v): the keys go through E, the values through F, and the softmax of the n x k scores mixes F V."""
    d = d_head
    rows = {"full": [("Q", n, d, "tab:blue"), "·", ("Kᵀ", d, n, "tab:orange"), "=", ("S", n, n, "tab:red"), None,
                     ("softmax(S/√d)", n, n, "tab:red"), "·", ("V", n, d, "tab:cyan"), "=", ("out", n, d, "tab:gray")],
            "Linformer\nkeys": [("E", k, n, "tab:green"), "·", ("K", n, d, "tab:orange"), "=",
                                ("K̄ = EK", k, d, "tab:olive"), None, ("Q", n, d, "tab:blue"), "·",
                                ("K̄ᵀ", d, k, "tab:olive"), "=", ("S", n, k, "tab:purple")],
            "Linformer\nvalues": [("F", k, n, "tab:green"), "·", ("V", n, d, "tab:cyan"), "=",
                                  ("V̄ = FV", k, d, "tab:olive"), None, ("softmax(S/√d)", n, k, "tab:purple"), "·",
                                  ("V̄", k, d, "tab:olive"), "=",
                                  ("out", n, d, "tab:gray")]}
    big = max(n, k, d)
    gap = 0.2 * big
    fig, ax = plt.subplots(figsize=(12, 6))
    y, right = 0.0, 0.0
    for label, items in rows.items():
        boxes = [item for item in items if isinstance(item, tuple)]
        height, low = max(b[1] for b in boxes), min(b[1] for b in boxes)
        x = 0.0
        for item in items:
            if item is None:  # a new step
                x += gap
            elif isinstance(item, str):
                ax.text(x + gap / 2, y - low / 2, item, ha="center", va="center", fontsize=16)
                x += gap
            else:
                name, r, c, color = item
                slot = max(c, 0.35 * big)  # room for the label above a narrow matrix
                left = x + (slot - c) / 2
                ax.add_patch(plt.Rectangle((left, y - r), c, r, facecolor=color, edgecolor="black", alpha=0.75))
                ax.annotate(f"{name}\n{r} x {c}", (left + c / 2, y), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)
                x += slot
        ax.text(-gap / 2, y - low / 2, label, ha="right", va="center", fontsize=10, weight="bold")
        right = max(right, x)
        y -= height + 0.45 * big
    ax.set_xlim(-2.5 * gap, right + gap / 2)
    ax.set_ylim(y + 0.4 * big, 0.3 * big)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.suptitle(f"one head, drawn to scale: n = {n} tokens, Linformer's k = {k}, d_head = {d}", fontsize=10)
    fig.tight_layout()
    return fig
