"""The paper's ViT family (ViT-Ti/16 to L/16 at 224 px) beside this series' models: parameters and FLOPs counted by
code (`bench.step_seconds` times a training step of any of them on this machine).

Dosovitskiy et al. (2021, "An Image is Worth 16x16 Words", Table 1) define ViT-Base, Large and Huge; DeiT (Touvron
et al., 2021, Table 1) adds Tiny and Small. The papers round their parameter counts (86 M); the published parameters
here are timm's model cards for the same models, the published work per image DeiT's cards in timm and torchvision's
model table, which count a multiply-add as one operation (GMACs, what papers call "GFLOPs"; timm's cards for the
vit_* models give somewhat lower figures, counted another way). `count_flops` counts PyTorch's way (a multiply-add
is two), and `family_table` gives both. The names Ti/16 and S/16 for DeiT's Tiny and Small are those of Steiner et
al. (2021, "How to train your ViT?") and timm.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from vit_pytorch import ViT

from .models import ModelConfig, build_model, count_parameters


@dataclass(frozen=True)
class FamilyMember:
    """One ViT of the papers: width, depth, heads (64 dimensions each), the MLP's width, and the published figures
    (parameters in millions; GMACs, billions of multiply-adds, the "GFLOPs" of the papers; at 224 px, patch 16)."""

    dim: int
    depth: int
    heads: int
    mlp_dim: int
    published_params_m: float
    published_gmacs: float
    source: str


VIT_FAMILY = {  # name: the configuration and the published figures, at 224 px, patch 16, 1,000 classes
    "ViT-Ti/16": FamilyMember(192, 12, 3, 768, 5.7, 1.3, "params: timm's vit_tiny_patch16_224 card (DeiT Table 1: "
                              "5 M); GMACs: timm's deit_tiny_patch16_224 card"),
    "ViT-S/16": FamilyMember(384, 12, 6, 1536, 22.1, 4.6, "params: timm's vit_small_patch16_224 card (DeiT Table 1: "
                             "22 M); GMACs: timm's deit_small_patch16_224 card"),
    "ViT-B/16": FamilyMember(768, 12, 12, 3072, 86.6, 17.6, "params: timm's vit_base_patch16_224 card (ViT Table 1: "
                             "86 M); GMACs: torchvision's vit_b_16 (17.56) and timm's deit_base_patch16_224 card"),
    "ViT-L/16": FamilyMember(1024, 24, 16, 4096, 304.3, 61.6, "params: timm's vit_large_patch16_224 card (ViT Table 1: "
                             "307 M); GMACs: torchvision's vit_l_16 (61.55)"),
}


def family_model(name: str, image_size: int = 224, patch_size: int = 16, num_classes: int = 1000) -> nn.Module:
    """vit-pytorch's ViT with the papers' configuration `name` (a key of VIT_FAMILY), freshly initialised."""
    m = VIT_FAMILY[name]
    return ViT(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=m.dim, depth=m.depth,
               heads=m.heads, dim_head=m.dim // m.heads, mlp_dim=m.mlp_dim)


def count_flops(model: nn.Module, image_size: int, batch: int = 1) -> int:
    """Floating-point operations of one forward pass over `batch` images, as torch's FlopCounterMode counts them
    (matrix products and convolutions; a multiply-add is 2). Elementwise work (softmax, norms, GELU) is not
    counted, as in the papers."""
    x = torch.zeros(batch, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops()


def family_table(ours: dict[str, ModelConfig] | None = None) -> pd.DataFrame:
    """One line per model: the papers' family at 224 px and `ours` (name: ModelConfig) at their own sizes.
    Parameters and GFLOPs per image counted by code, beside the published figures where there are some."""
    lines = []
    for name, m in VIT_FAMILY.items():
        model = family_model(name)
        flops = count_flops(model, 224)
        lines.append({"model": name, "image px": 224, "tokens": (224 // 16) ** 2 + 1,
                      "params (M)": count_parameters(model) / 1e6, "published params (M)": m.published_params_m,
                      "GFLOPs": flops / 1e9, "GMACs": flops / 2e9, "published GMACs": m.published_gmacs})
        del model
    for name, cfg in (ours or {}).items():
        model = build_model(cfg)
        flops = count_flops(model, cfg.image_size)
        lines.append({"model": name, "image px": cfg.image_size, "tokens": cfg.seq_len,
                      "params (M)": count_parameters(model) / 1e6, "published params (M)": None,
                      "GFLOPs": flops / 1e9, "GMACs": flops / 2e9, "published GMACs": None})
    return pd.DataFrame(lines).set_index("model").round(3)
