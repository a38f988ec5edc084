"""The parts of vit-pytorch and linformer that vitlib reaches into, checked against the installed versions.

vitlib builds its models from vit-pytorch's classes and then looks inside them (the patch projection, Linformer's E
and F, each block's attention). pyproject.toml pins the range it was run with; when a new release moves one of
these parts, this test names the part, instead of a notebook failing somewhere far from the cause.
"""

import importlib.metadata
import re
from pathlib import Path

import pytest
import torch
from linformer.linformer import LinformerSelfAttention
from torch import nn
from vit_pytorch.vit import Attention, FeedForward

from vitlib import attention, patches
from vitlib.models import ModelConfig, build_model

VERSION = importlib.metadata.version("vit-pytorch")
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def needs(ok: bool, what: str) -> None:
    if not ok:
        pytest.fail(f"vit-pytorch {VERSION} moved what vitlib uses: {what}. vitlib is tested with the range "
                    f"pyproject.toml pins; install it (pip install -e .) or adapt vitlib to this release")


def test_the_installed_vit_pytorch_is_inside_the_tested_range():
    """The upper bound is a version someone ran the whole suite and the notebooks with; raise it deliberately."""
    spec = re.search(r'"vit-pytorch>=([\d.]+),<([\d.]+)"', PYPROJECT.read_text())
    assert spec, "pyproject.toml must pin vit-pytorch to a tested range: >=LOW,<HIGH"
    low, high = (tuple(map(int, v.split("."))) for v in spec.groups())
    installed = tuple(map(int, VERSION.split(".")[:3]))
    assert low <= installed < high, f"vit-pytorch {VERSION} is outside the tested range {spec.groups()}"


def test_the_efficient_vit_keeps_its_patch_projection_tokens_and_head():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, k=8)
    model = build_model(cfg)
    stem = model.to_patch_embedding
    needs(isinstance(stem, nn.Sequential) and isinstance(stem[1], nn.LayerNorm) and isinstance(stem[2], nn.Linear),
          "efficient.ViT.to_patch_embedding as (Rearrange, LayerNorm, Linear, LayerNorm) (patches.patch_filters)")
    needs(tuple(model.cls_token.shape) == (1, 1, cfg.dim), "efficient.ViT.cls_token of shape (1, 1, dim)")
    needs(tuple(model.pos_embedding.shape) == (1, cfg.seq_len, cfg.dim), "efficient.ViT.pos_embedding (1, n + 1, dim)")
    needs(all(hasattr(model, a) for a in ("mlp_head", "to_latent", "pool", "transformer")),
          "efficient.ViT's mlp_head, to_latent, pool and transformer (models.DistilledViT)")
    components, _ = patches.patch_filters(model)  # what notebook 02 draws from that projection
    assert components.shape[1:] == (3, cfg.patch_size, cfg.patch_size)


def test_linformer_keeps_e_f_and_the_dropout_that_sees_the_attention_weights():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, k=8)
    layers = attention.attention_layers(build_model(cfg))
    needs(len(layers) == cfg.depth and all(isinstance(m, LinformerSelfAttention) for m in layers),
          "linformer's LinformerSelfAttention, one per block")
    needs(all(tuple(m.proj_k.shape) == (cfg.seq_len, cfg.k) for m in layers), "LinformerSelfAttention.proj_k (n, k)")
    needs(all(isinstance(m.dropout, nn.Dropout) and hasattr(m, "to_q") for m in layers),
          "LinformerSelfAttention.to_q and .dropout (attention.linformer_maps hooks it)")
    model = build_model(cfg)
    needs(hasattr(model.transformer, "net") and hasattr(model.transformer.net.layers[0][0], "fn"),
          "Linformer.net.layers[i][0] as PreNorm(fn=attention) (notebook 03)")


def test_the_standard_vit_keeps_its_tokens_blocks_and_attention():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, attention="full")
    model = build_model(cfg)
    needs(tuple(model.cls_token.reshape(-1, cfg.dim).shape) == (1, cfg.dim), "vit.ViT.cls_token, one token of dim")
    needs(tuple(model.pos_embedding.reshape(-1, cfg.dim).shape) == (cfg.seq_len, cfg.dim),
          "vit.ViT.pos_embedding, n + 1 positions")
    attn, ff = model.transformer.layers[0]
    needs(isinstance(attn, Attention) and isinstance(ff, FeedForward),
          "vit.Transformer.layers[i] as (Attention, FeedForward) (notebook 03)")
    needs(all(hasattr(attn, a) for a in ("to_qkv", "norm", "heads", "to_out")),
          "vit.Attention's to_qkv, norm, heads and to_out (attention.full_by_hand)")
    x = torch.randn(2, cfg.seq_len, cfg.dim)
    torch.testing.assert_close(attention.full_by_hand(attn.eval(), x).out, attn(x))


def test_the_small_data_vit_keeps_its_learned_temperature():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, attention="lsa", stem="spt")
    lsa = build_model(cfg).transformer.layers[0][0]
    needs(hasattr(lsa, "temperature"), "vit_for_small_dataset.LSA.temperature (notebook 05)")
