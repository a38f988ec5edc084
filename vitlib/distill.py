"""Distillation as DeiT does it: a CNN teacher labels every training batch, and a ViT student learns from both.

The student (models.DistilledViT) has two heads: the class head learns the true labels, the distillation head
learns the teacher's. DeiT (Touvron et al., 2021) found *hard* distillation best: the distillation head's target
is the teacher's top class (its argmax), not its probabilities, and the loss is the mean of the two cross-entropies.
The teacher runs, without gradients, on the very batch the student sees, crop and flip included (Beyer et al.,
2022: logits computed once per photo, without the crop, teach less). A CNN teacher beat a transformer teacher in
DeiT: it hands the student what a convolution assumes (locality) through its labels.

vit-pytorch's DistillWrapper (vit_pytorch/distill.py) computes the same hard loss but without label smoothing on
the class head and predicts from the class head alone; here the class head keeps the recipe's label smoothing,
and prediction averages the two heads, as DeiT does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import PRETRAINED, CheckpointError, load_model

ALPHA = 0.5  # the distillation head's share of the loss (DeiT's hard distillation: an even mean)


def deit_loss(logits: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor, teacher_logits: torch.Tensor,
              label_smoothing: float = 0.0, alpha: float = ALPHA) -> torch.Tensor:
    """(1 - alpha) x cross-entropy of the class head against `target` (labels or MixUp probabilities, with label
    smoothing) + alpha x cross-entropy of the distillation head against the teacher's top class."""
    cls_logits, dist_logits = logits
    true = F.cross_entropy(cls_logits.float(), target, label_smoothing=label_smoothing)
    teacher = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(-1))
    return (1 - alpha) * true + alpha * teacher


def teacher_path(teacher: str) -> Path:
    """Where a preset's `teacher` is: a committed model by its kind (checkpoints.PRETRAINED, e.g. "cnn"), or the path
    of a vitlib checkpoint (a run's best.pt)."""
    return PRETRAINED[teacher] if teacher in PRETRAINED else Path(teacher).expanduser()


def load_teacher(teacher: str, image_size: int, device="cpu") -> nn.Module:
    """The teacher model (eval mode, no gradients) on `device`; a CheckpointError in one line when it is not there,
    cannot be read, or sees photos of another size than the student's `image_size`."""
    path = teacher_path(teacher)
    if not path.is_file():
        kinds = ", ".join(map(repr, PRETRAINED))
        raise CheckpointError(f"teacher {teacher!r}: no such checkpoint ({path.name} is not there); give a committed "
                              f"model's kind ({kinds}) or the path of a vitlib checkpoint such as a run's best.pt")
    model, _ = load_model(path, device)  # refuses NaN or infinite weights too
    if model.config.num_classes != 2:  # its top class would be a label cross_entropy cannot take
        raise CheckpointError(f"teacher {teacher!r} answers {model.config.num_classes} classes, not the 2 of Dogs "
                              "vs Cats: give a teacher trained on this task (a committed model's kind, or a run's "
                              "best.pt)")
    if model.config.image_size != image_size:
        raise CheckpointError(f"teacher {teacher!r} sees {model.config.image_size} px photos and the student "
                              f"{image_size} px: both must see the same batch; train a teacher at {image_size} px")
    return model.eval().requires_grad_(False)


def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the teacher says of the student's batch, in eval mode (BatchNorm on its running statistics), no grad."""
    with torch.no_grad():
        return teacher(x)


def deit_loss_fn(teacher: nn.Module, label_smoothing: float = 0.0, alpha: float = ALPHA):
    """The loss a student trains with (train.make_loss's form): loss(x, logits, target) -> (deit_loss, the mean of
    the two heads' logits, which is what the student predicts), the teacher asked about the very batch `x`."""

    def loss(x: torch.Tensor, logits, target: torch.Tensor):
        said = teacher_logits(teacher, x)
        return deit_loss(logits, target, said, label_smoothing, alpha), (logits[0] + logits[1]) / 2

    return loss
