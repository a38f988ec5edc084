"""The models: vit-pytorch's efficient ViT with a Linformer (the seed's), and the standard ViT.

Both cut the image into patches, project each to `dim`, prepend a CLS token, add a learned
position embedding, run a transformer and classify from the CLS token (or the mean token). They
differ in the attention: full softmax attention over all n tokens, or Linformer's, whose keys and
values are first projected along the sequence from n to k.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
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
    num_classes: int = 2

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


SEED = ModelConfig()  # the seed notebook's model: 224 px, patch 32, dim 128, depth 12, heads 8, k 64


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
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
    elif cfg.attention == "full":
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
    else:
        raise ValueError(f"attention must be 'linformer' or 'full', not {cfg.attention!r}")
    if cfg.kv_init not in ("uniform", "identity"):
        raise ValueError(f"kv_init must be 'uniform' or 'identity', not {cfg.kv_init!r}")
    if cfg.attention == "linformer" and cfg.kv_init == "identity":  # full attention has no E and F
        init_identity_projections(model)
    if cfg.pos_init_std is not None:
        nn.init.trunc_normal_(model.pos_embedding, std=cfg.pos_init_std)
        nn.init.trunc_normal_(model.cls_token, std=cfg.pos_init_std)
    model.config = cfg
    return model


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


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """A model from a vitlib checkpoint (trusted or not: weights_only=True), and its metadata."""
    from .train import load_checkpoint

    return _from_checkpoint(load_checkpoint(path, device), device)


def _from_checkpoint(ckpt: dict, device) -> tuple[nn.Module, dict]:
    model = build_model(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    return model.to(device).eval(), meta


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)


PRETRAINED = {
    "linformer": Path(__file__).parent / "pretrained" / "vit-linformer-cpu.pt",
    "full": Path(__file__).parent / "pretrained" / "vit-full-cpu.pt",
}


def load_trained(path=None, attention: str = "linformer", device="cpu") -> tuple[nn.Module, dict]:
    """A trained model to look at: `path`, else your own best real-photo run, else the committed one.

    Your own: the newest `runs/*/best.pt` of that attention kind trained on real photos (notebook
    04 writes one). The committed checkpoints (vitlib/pretrained/) were written by vitlib's own
    training code; meta["provenance"] says with what command, data and result.
    """
    from .train import CheckpointError, load_checkpoint, runs_dir

    ckpt = None
    if path is None:
        path = PRETRAINED[attention]
        for own in sorted(runs_dir().glob("*/best.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                candidate = load_checkpoint(own)
            except CheckpointError as e:
                warnings.warn(f"Skipped {e}", stacklevel=2)
                continue
            if candidate["model_config"]["attention"] == attention and not candidate["data"].startswith("SYNTHETIC"):
                path, ckpt = own, candidate
                break
    model, meta = _from_checkpoint(ckpt, device) if ckpt else load_model(path, device)
    meta["source"] = (
        "committed checkpoint" if Path(path) in PRETRAINED.values() else f"your run {Path(path).parent.name}"
    )
    return model, meta


def describe(model: nn.Module, meta: dict | None = None) -> str:
    """The architecture, its geometry and size; given a checkpoint's meta, also where its weights come from."""
    cfg = model.config
    kind = (
        f"efficient ViT + Linformer (k = {cfg.k})" if cfg.attention == "linformer" else "standard ViT (full attention)"
    )
    line = (
        f"{kind}: {cfg.image_size} px, patch {cfg.patch_size} -> {cfg.grid}x{cfg.grid} patches + CLS = "
        f"{cfg.seq_len} tokens, dim {cfg.dim} = {cfg.heads} heads x {cfg.dim // cfg.heads}, depth {cfg.depth}, "
        f"{count_parameters(model) / 1e6:.2f}M parameters"
    )
    if meta:
        row = checkpoint_epoch(meta)
        line += f"\n{meta.get('source', 'checkpoint')}: trained on {meta['data']}"
        if row is not None:
            line += (
                f"; weights of epoch {int(row['epoch'])} of {len(meta['history']['epoch'])}: validation accuracy "
                f"{row['val_acc']:.4f}, log loss {row['val_loss']:.4f}"
            )
    return line


def checkpoint_epoch(meta: dict) -> dict | None:
    """The history row of the epoch a checkpoint's weights come from (None if it has no history)."""
    if not meta.get("history"):
        return None
    history = pd.DataFrame(meta["history"])
    row = history[history["epoch"] == meta.get("epoch", history["epoch"].iloc[-1])]
    return row.iloc[0].to_dict() if len(row) else None
