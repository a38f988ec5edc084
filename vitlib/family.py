"""The paper's ViT family (ViT-Ti/16 to L/16 at 224 px) beside this series' models: parameters and FLOPs counted by
code, and what a training step costs on this machine.

Dosovitskiy et al. (2021, "An Image is Worth 16x16 Words", Table 1) define ViT-Base, Large and Huge; DeiT (Touvron
et al., 2021, Table 1) adds Tiny and Small. The papers round their parameter counts (86 M); the published figures
here are timm's model cards for the same models, which count a multiply-add as one operation (GMACs, what papers
call "GFLOPs"). `count_flops` counts PyTorch's way (a multiply-add is two), and `family_table` gives both.
"""

from __future__ import annotations

import time
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
    "ViT-Ti/16": FamilyMember(192, 12, 3, 768, 5.7, 1.3, "DeiT Table 1 (5 M); timm's vit_tiny_patch16_224 card"),
    "ViT-S/16": FamilyMember(384, 12, 6, 1536, 22.1, 4.6, "DeiT Table 1 (22 M); timm's vit_small_patch16_224 card"),
    "ViT-B/16": FamilyMember(768, 12, 12, 3072, 86.6, 17.6, "ViT Table 1 (86 M); timm's vit_base_patch16_224 card"),
    "ViT-L/16": FamilyMember(1024, 24, 16, 4096, 304.3, 61.6, "ViT Table 1 (307 M); timm's vit_large_patch16_224 card"),
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


def step_seconds(model: nn.Module, image_size: int, batch: int = 8, steps: int = 3, device="cpu",
                 autocast: bool = True) -> float:
    """Median seconds of one training step (forward, backward, AdamW) of `model` on `batch` random images, after one
    warm-up step; bf16 autocast on the CPU when `autocast`. A measurement of this machine."""
    device = torch.device(device)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 2, (batch,), device=device) % model(x[:1]).shape[-1]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return float(sorted(times[1:])[len(times[1:]) // 2])
