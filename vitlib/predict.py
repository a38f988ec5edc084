"""Prediction: P(dog) for a batch of images, with the mirror image averaged in (flip TTA), and a split's predictions
as one table.

Everything that predicts goes through here: validation during training (`train`), a run's validation predictions
(`train.Run.val_predictions`), the submission's validation and test predictions (`submit`) and your own photos
(`own_photos`). The table's column is `p_raw`, the model's own probability; `p_dog` is kept for a calibrated one
(`submit`, after temperature scaling) and for the answer given about a photo of your own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .augment import normalize
from .cache import ImageCache
from .device import Precision


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, tta: bool = True, device: torch.device | None = None,
    mixed_precision: bool = True,
) -> np.ndarray:
    """P(dog) for uint8 images (N, 3, S, S), in batches; with `tta`, averaged with the mirror image; in the device's
    mixed precision unless `mixed_precision` is off."""
    device = device or next(model.parameters()).device
    precision = Precision.of(device, mixed_precision)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True))
        with precision.autocast():
            p = model(x).float().softmax(-1)[:, 1]
            if tta:
                p = (p + model(x.flip(-1)).float().softmax(-1)[:, 1]) / 2
        out.append(p)
    model.train(was_training)
    return torch.cat(out).cpu().numpy() if out else np.empty(0, np.float32)


def predict_split(model: nn.Module, cache: ImageCache, batch_size: int = 256, tta: bool = True,
                  device: torch.device | None = None, mixed_precision: bool = True) -> pd.DataFrame:
    """The model's P(dog) for every image of `cache` (a split: validation, test): columns file, id, label (-1 where
    unknown) and p_raw, in the cache's order."""
    p = predict_proba(model, cache.images, batch_size, tta, device, mixed_precision)
    return pd.DataFrame({"file": cache.files, "id": cache.ids.cpu().numpy(), "label": cache.labels.cpu().numpy(),
                         "p_raw": p.astype(np.float64)})
