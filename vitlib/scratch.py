"""The ViT of the paper and a training loop, written from scratch as notebook 07 builds them, for code that needs them
without notebook 07 beside it (its solutions, in Colab).

The learner writes these in notebook 07 (cells tagged `your-vit`); this module is the same code, checked equal to
those cells by the tests (the same weights from the same seed, the same logits, the same training history). Only
`device` differs: the notebook uses its global, here it is the model's.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import augment, metrics
from .device import autocast


class PatchEmbedding(nn.Module):
    """(b, 3, H, W) -> (b, N, dim): one token per patch, x_p E as a strided convolution."""

    def __init__(self, patch_size, dim, channels=3):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return rearrange(self.proj(x), "b d h w -> b (h w) d")  # the grid read row by row


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # W_Q, W_K, W_V side by side
        self.out = nn.Linear(dim, dim)  # mixes the heads

    def forward(self, z):
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.qkv(z).chunk(3, dim=-1))
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (b, h, n, n): each row sums to 1
        self.weights = weights.detach()  # the attention maps, kept for looking inside
        return self.out(rearrange(weights @ v, "b h n d -> b n (h d)"))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, z):
        z = z + self.attn(self.norm1(z))  # equation 2
        return z + self.mlp(self.norm2(z))  # equation 3


class ViT(nn.Module):
    def __init__(self, image_size=64, patch_size=8, dim=128, depth=6, heads=8, mlp_dim=512, num_classes=2):
        super().__init__()
        n = (image_size // patch_size) ** 2
        self.patches = PatchEmbedding(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)  # one per token, the class token's included
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        z = self.patches(x)
        z = torch.cat([self.cls_token.expand(len(z), -1, -1), z], dim=1) + self.pos  # equation 1
        z = self.blocks(z)  # equations 2 and 3, depth times
        return self.head(self.norm(z[:, 0]))  # equation 4, then the head


def evaluate(model, images, labels, batch=256):
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), autocast(device):
        logits = torch.cat([model(augment.normalize(images[i:i + batch].to(device))).float()
                            for i in range(0, len(images), batch)])
    model.train()
    p_dog = logits.softmax(-1)[:, 1].cpu()
    return metrics.accuracy(labels.cpu(), p_dog), metrics.log_loss(labels.cpu(), p_dog)


def train_by_hand(model, train_part, val_part, epochs, batch=128, lr=1e-3, weight_decay=0.05, seed=0):
    """Train `model` on train_part (cached uint8 photos and labels), evaluating on val_part after every epoch."""
    device = next(model.parameters()).device
    images, labels = train_part.images, train_part.labels
    torch.manual_seed(seed)
    decays = {n: p.ndim >= 2 and n not in ("cls_token", "pos") for n, p in model.named_parameters()}  # matrices
    decay = [p for n, p in model.named_parameters() if decays[n]]
    rest = [p for n, p in model.named_parameters() if not decays[n]]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=lr)
    steps = max(1, len(images) // batch)  # whole batches (at least one)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / steps, total_iters=steps),  # warm-up: 1 epoch
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, (epochs - 1) * steps))], milestones=[steps])
    history, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(images)).split(batch)[:steps]:  # a new order every epoch; whole batches
            x, y = augment.normalize(images[idx].to(device)), labels[idx].to(device)
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)  # random mirror
            with autocast(device):
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        acc, val_loss = evaluate(model, val_part.images, val_part.labels)
        history.append({"epoch": epoch, "val acc": acc, "val log loss": val_loss,
                        "minutes": (time.perf_counter() - start) / 60})
        print(f"epoch {epoch}: validation accuracy {acc:.4f}, log loss {val_loss:.4f}")
    return pd.DataFrame(history).set_index("epoch")
