"""The models: vit-pytorch's efficient ViT with a Linformer (the seed's), and the standard ViT.

Both cut the image into patches, project each to `dim`, prepend a CLS token, add a learned
position embedding, run a transformer and classify from the CLS token (or the mean token). They
differ in the attention: full softmax attention over all n tokens, or Linformer's, whose keys and
values are first projected along the sequence from n to k.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from einops.layers.torch import Rearrange
from linformer import Linformer
from torch import nn
from vit_pytorch.efficient import ViT as EfficientViT
from vit_pytorch.vit import ViT as FullViT


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    patch_size: int = 32
    dim: int = 128
    depth: int = 12
    heads: int = 8
    attention: str = "linformer"  # or "full"
    k: int = 64  # Linformer: keys and values are projected along the sequence to this length
    pool: str = "cls"  # or "mean"
    dropout: float = 0.0
    pos_init_std: float | None = None  # None keeps vit-pytorch's N(0, 1) position embedding
    kv_init: str = "uniform"  # Linformer's E, F: "uniform" (linformer's own) or "identity" (see build_model)
    stem: str = "patch"  # tokens from "patch": one linear map per patch (vit-pytorch's); "conv": see conv_stem
    num_classes: int = 2

    def __post_init__(self):
        """Refuse, in one line, a geometry or option build_model could not honour."""
        for name in ("image_size", "patch_size", "dim", "depth", "heads", "k", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} must be a whole number >= 1, not {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        for name, allowed in (("attention", ("linformer", "full")), ("pool", ("cls", "mean")),
                              ("kv_init", ("uniform", "identity")), ("stem", ("patch", "conv"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"a conv stem halves the image per layer: patch_size must be a power of 2, not "
                             f"{self.patch_size}")
        if not (_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), not {self.dropout!r}")
        if self.pos_init_std is not None and not (_number(self.pos_init_std) and self.pos_init_std > 0):
            raise ValueError(f"pos_init_std must be None or a finite number > 0, not {self.pos_init_std!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def seq_len(self) -> int:
        """Tokens the transformer sees: the patches and the CLS token."""
        return self.num_patches + 1

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def _number(value) -> bool:
    """A finite int or float (not a bool, a string or nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SEED_NOTEBOOK_MODEL = ModelConfig()  # the seed notebook's model: 224 px, patch 32, dim 128, depth 12, heads 8, k 64


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg` describes, initialised (seed torch first for the same weights every time)."""
    if cfg.attention == "linformer":
        transformer = Linformer(
            dim=cfg.dim, seq_len=cfg.seq_len, depth=cfg.depth, heads=cfg.heads, k=cfg.k, dropout=cfg.dropout
        )
        model = EfficientViT(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=cfg.num_classes,
            dim=cfg.dim,
            transformer=transformer,
            pool=cfg.pool,
        )
    else:  # "full"
        model = FullViT(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=cfg.num_classes,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_dim=4 * cfg.dim,
            dim_head=cfg.dim // cfg.heads,
            pool=cfg.pool,
            dropout=cfg.dropout,
        )
    if cfg.stem == "conv":
        model.to_patch_embedding = conv_stem(cfg.patch_size, cfg.dim)
    if cfg.attention == "linformer" and cfg.kv_init == "identity":  # full attention has no E and F
        init_identity_projections(model)
    if cfg.pos_init_std is not None:
        nn.init.trunc_normal_(model.pos_embedding, std=cfg.pos_init_std)
        nn.init.trunc_normal_(model.cls_token, std=cfg.pos_init_std)
    model.config = cfg
    return model


def conv_stem(patch_size: int, dim: int, channels: int = 3) -> nn.Sequential:
    """Tokens from log2(patch_size) stride-2 3x3 convolutions instead of one linear map per patch.

    The token grid is the patch projection's (image_size / patch_size per side), but each token is built by
    small overlapping filters, their widths doubling up to `dim` (3 -> dim/4 -> dim/2 -> dim for patch 8), with
    BatchNorm and GELU between: locality and translation equivariance, the two biases a CNN has and a ViT must
    otherwise learn from data (Xiao et al., 2021, "Early convolutions help transformers see better").
    """
    steps = int(math.log2(patch_size))
    widths = [dim // 2 ** (steps - 1 - i) for i in range(steps)]
    layers, c = [], channels
    for i, width in enumerate(widths):
        last = i == steps - 1
        layers.append(nn.Conv2d(c, width, 3, stride=2, padding=1, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(width), nn.GELU()]
        c = width
    return nn.Sequential(*layers, Rearrange("b c h w -> b (h w) c"), nn.LayerNorm(dim))


@torch.no_grad()
def init_identity_projections(model: nn.Module, noise: float = 0.02) -> None:
    """Start Linformer's E and F (n x k) at the identity, plus a little noise.

    linformer draws them uniformly at random, so at the start every projected key is a random blend
    of all the tokens' keys, and attention has to unlearn that. With k >= n, E = F = I makes
    Linformer start out as exactly full attention; with k < n, the first k tokens pass through and
    the rest start from the noise. Training is free to move away from it.
    """
    for module in model.modules():
        if hasattr(module, "proj_k"):
            for proj in (module.proj_k, getattr(module, "proj_v", None)):
                if proj is not None:
                    proj.copy_(torch.eye(*proj.shape) + noise * torch.randn_like(proj))


def pos_embedding(model: nn.Module) -> torch.Tensor:
    """The learned position embedding as (tokens, dim), CLS first, for either model."""
    return model.pos_embedding.detach().reshape(-1, model.pos_embedding.shape[-1])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)


def describe(model: nn.Module) -> str:
    """The architecture in one line: its kind, geometry and size."""
    cfg = model.config
    kind = (
        f"efficient ViT + Linformer (k = {cfg.k})" if cfg.attention == "linformer" else "standard ViT (full attention)"
    )
    return (
        f"{kind}: {cfg.image_size} px, patch {cfg.patch_size} -> {cfg.grid}x{cfg.grid} patches + CLS = "
        f"{cfg.seq_len} tokens, dim {cfg.dim} = {cfg.heads} heads x {cfg.dim // cfg.heads}, depth {cfg.depth}, "
        f"{count_parameters(model) / 1e6:.2f}M parameters"
    )
