"""Augmentation of whole batches on the device the model runs on.

torchvision's v2 transforms draw one set of random parameters per call, so applied to a batch they
give every image the same crop. A random resized crop and flip per image is one affine sampling
grid per image instead: `affine_grid` + `grid_sample`, one call for the batch on any device. The
batch-level mixes (MixUp, CutMix) come from torchvision v2 as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .models import finite_number

MEAN, STD = 0.5, 0.5  # inputs in [-1, 1]; the patch LayerNorm makes finer statistics moot


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.35, 1.0)  # area of the crop, as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop
    flip: bool = True
    saturation: float = 0.0  # +- fraction; brightness/contrast would be undone by the patch LayerNorm
    mixup: float = 0.0  # MixUp alpha; 0 = off
    cutmix: float = 0.0  # CutMix alpha; 0 = off

    def __post_init__(self):
        """Refuse, in one line, a setting the augmentation could not honour."""
        for name, (lo, hi) in (("scale", (0, 1)), ("ratio", (0, math.inf))):
            pair = getattr(self, name)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(finite_number, pair))):
                raise ValueError(f"augment {name} must be two numbers (low, high), e.g. [0.35, 1.0], not {pair!r}")
            a, b = pair
            if not (lo < a <= b and b <= hi and math.isfinite(a)):
                raise ValueError(f"augment {name} must be (low, high) with {lo} < low <= high"
                                 f"{' <= 1' if hi == 1 else ''}, not {getattr(self, name)!r}")
        for name in ("saturation", "mixup", "cutmix"):
            value = getattr(self, name)
            if not (finite_number(value) and value >= 0):
                raise ValueError(f"augment {name} must be a number >= 0, not {value!r}")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return (images.float() / 255 - MEAN) / STD


def crop_flip_grid(batch: int, scale, ratio, flip: bool, out_size: int, device,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sampling grids for a random resized crop (and flip) per image, as RandomResizedCrop draws them."""

    def uniform(lo, hi):
        return torch.rand(batch, device=device, generator=generator) * (hi - lo) + lo

    area = uniform(*scale)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # as fractions of the image side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * uniform(-1, 1)  # centre, in grid coordinates [-1, 1]
    cy = (1 - h) * uniform(-1, 1)
    sign = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(batch, device=device)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return F.affine_grid(theta, [batch, 3, out_size, out_size], align_corners=False)


class BatchAugment(torch.nn.Module):
    """uint8 images (B, 3, S, S) and labels -> augmented float images (B, 3, size, size) and (soft) targets.

    `size` None keeps S; a smaller size resamples every crop down to it (a cache larger than the model's input)."""

    def __init__(self, cfg: AugmentConfig, num_classes: int = 2, size: int | None = None):
        super().__init__()
        self.cfg, self.size = cfg, size
        mixes = [m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, cfg.mixup), (v2.CutMix, cfg.cutmix))
                 if a > 0]
        self.mix = v2.RandomChoice(mixes) if mixes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        cfg, x = self.cfg, normalize(images)
        grid = crop_flip_grid(len(x), cfg.scale, cfg.ratio, cfg.flip, self.size or x.shape[-1], x.device,
                              generator)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if cfg.saturation:
            s = 1 + (torch.rand(len(x), 1, 1, 1, device=x.device, generator=generator) * 2 - 1) * cfg.saturation
            grey = x.mean(1, keepdim=True)
            x = (grey + (x - grey) * s).clamp(-1, 1)
        if self.mix is not None:
            x, labels = self.mix(x, labels)  # labels become (B, num_classes) probabilities
        return x, labels
