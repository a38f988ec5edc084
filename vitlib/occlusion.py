"""Occlusion maps: which patches a model's answer depends on, measured by taking each one away.

Grey out one patch (every pixel of it set to the photos' mean grey), ask the model again, and record how much its
confidence in the true class drops; once per patch of the grid. Confidence is measured in log-odds,
log(p / (1 - p)) of the true class: a probability near 1 (0.97 to 0.96) hardly moves where the log-odds still do
(3.5 to 3.2), and a drop of 1 is the same evidence whatever the photo's confidence. Unlike attention rollout, which
reads the model's attention maps, this asks the model's output (Zeiler & Fergus, 2014, "Visualizing and
Understanding Convolutional Networks"), so it works the same for a ViT, a CNN or a distilled student.
"""

from __future__ import annotations

import torch
from torch import nn

from .augment import normalize

GREY = 128  # the value an occluded pixel gets (uint8): about the photos' mean, 0 after normalisation


def log_odds(logits: torch.Tensor, label: int) -> torch.Tensor:
    """log(p / (1 - p)) of class `label` under softmax(logits), per row; computed from log-probabilities, so that it
    stays finite where p rounds to 1."""
    if not 0 <= label < logits.shape[-1]:  # -1 would silently read the last class, and its "others" would be wrong
        raise ValueError(f"label must be a class of the model's {logits.shape[-1]} (0 to {logits.shape[-1] - 1}), "
                         f"not {label}")
    log_p = logits.log_softmax(-1)
    others = torch.cat([log_p[:, :label], log_p[:, label + 1:]], dim=1).logsumexp(-1)  # log(1 - p)
    return log_p[:, label] - others


@torch.inference_mode()
def occlusion_map(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, patch_size: int,
                  batch_size: int = 64) -> torch.Tensor:
    """The drop in the log-odds of the true class when each patch is greyed out: (b, grid, grid) for uint8 images
    (b, 3, S, S) and their labels (b,). Positive: the patch was evidence for the true class; negative: against it.
    The model runs in eval mode wherever its weights are, without TTA."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (b, 3, S, S), not {images.dtype} {tuple(images.shape)}")
    size = images.shape[-1]
    if size % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide the image size {size}")
    grid = size // patch_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for image, label in zip(images, labels.tolist(), strict=True):
            variants = image.repeat(grid * grid + 1, 1, 1, 1)  # the last one: the photo untouched
            for i in range(grid * grid):
                r, c = divmod(i, grid)
                variants[i, :, r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size] = GREY
            odds = torch.cat([log_odds(model(normalize(chunk.to(device))).float(), label).cpu()
                              for chunk in variants.split(batch_size)])
            out.append((odds[-1] - odds[:-1]).reshape(grid, grid))
    finally:
        model.train(was_training)
    return torch.stack(out)
