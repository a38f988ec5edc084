"""The models: geometry, initialisation and checkpoint loading."""

import os
import re
import time

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from vitlib import checkpoints, files, models
from vitlib.attention import attention_layers
from vitlib.presets import Preset, get_preset


@pytest.mark.parametrize("attention", ["linformer", "full"])
def test_geometry_and_output(attention):
    cfg = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, k=8, attention=attention)
    model = models.build_model(cfg)
    assert (cfg.grid, cfg.num_patches, cfg.seq_len, cfg.patch_dim) == (4, 16, 17, 192)
    assert models.pos_embedding(model).shape == (17, 32)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 2)


def test_seed_geometry_is_the_seed_notebooks():
    seed = models.SEED_NOTEBOOK_MODEL
    assert (seed.image_size, seed.patch_size, seed.seq_len, seed.k) == (224, 32, 50, 64)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        models.build_model(models.ModelConfig(image_size=30, patch_size=8))
    with pytest.raises(ValueError, match="attention must be"):
        models.build_model(models.ModelConfig(image_size=32, patch_size=8, attention="sparse"))
    with pytest.raises(ValueError, match="kv_init must be"):
        models.build_model(models.ModelConfig(image_size=32, patch_size=8, kv_init="zeros"))


BAD_CONFIGS = [
    ("image_size", 0), ("patch_size", -8), ("dim", 64.0), ("depth", True), ("heads", "8"), ("k", 0),
    ("num_classes", 0), ("pool", "max"), ("dropout", 1.0), ("dropout", -0.1), ("dropout", float("nan")),
    ("dropout", "0.1"), ("pos_init_std", 0.0), ("pos_init_std", float("nan")), ("pos_init_std", float("inf")),
    ("pos_init_std", "0.02"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v in BAD_CONFIGS])
def test_each_bad_setting_is_refused_with_a_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field) as e:
        models.ModelConfig(**{"image_size": 32, "patch_size": 8, field: value})
    assert "\n" not in str(e.value)


def test_pos_init_std_sets_a_small_position_embedding():
    torch.manual_seed(0)
    default = models.build_model(models.ModelConfig(image_size=32, patch_size=8, dim=64))
    small = models.build_model(models.ModelConfig(image_size=32, patch_size=8, dim=64, pos_init_std=0.02))
    assert models.pos_embedding(default).std() > 0.5  # vit-pytorch's N(0, 1)
    assert models.pos_embedding(small).std() < 0.03


def test_identity_init_makes_linformer_full_attention_when_k_equals_n():
    """E = F = I (no noise) with k = n: Linformer's attention is exactly softmax attention over all tokens."""
    torch.manual_seed(0)
    cfg = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=4, k=17, kv_init="identity")
    assert cfg.k == cfg.seq_len
    layer = attention_layers(models.build_model(cfg))[0]
    models.init_identity_projections(layer, noise=0.0)
    x = torch.randn(2, cfg.seq_len, cfg.dim)
    q, k, v = (rearrange(lin(x), "b n (h d) -> b h n d", h=cfg.heads) for lin in (layer.to_q, layer.to_k, layer.to_v))
    full = layer.to_out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))
    torch.testing.assert_close(layer(x), full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # linformer's own random init is not full attention
        layer.proj_k.uniform_(-0.25, 0.25)
    assert not torch.allclose(layer(x), full, atol=1e-3)


def test_identity_init_is_near_identity_with_noise():
    torch.manual_seed(0)
    cfg = models.ModelConfig(image_size=64, patch_size=8, kv_init="identity")
    for layer in attention_layers(models.build_model(cfg)):
        for proj in (layer.proj_k, layer.proj_v):
            assert proj.shape == (cfg.seq_len, cfg.k)
            assert (proj - torch.eye(cfg.seq_len, cfg.k)).abs().max() < 0.15


def test_load_model_round_trips_a_training_checkpoint(tmp_path):
    preset = get_preset("sample")
    model = models.build_model(preset.model)
    path = tmp_path / "ckpt.pt"
    checkpoints.save_checkpoint(path, {"model_config": models.config_dict(preset.model), "model": model.state_dict(),
                                 "preset": preset.to_dict(), "data": "test"})
    loaded, meta = checkpoints.load_model(path)
    assert not loaded.training and meta["data"] == "test" and "model" not in meta
    x = torch.randn(2, 3, preset.model.image_size, preset.model.image_size)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_committed_checkpoints_load_with_their_provenance():
    for kind, path in checkpoints.PRETRAINED.items():
        model, meta = checkpoints.load_trained(path, kind=kind)
        assert {"command", "data", "val_acc", "val_log_loss"} <= set(meta["provenance"])
        assert meta["data"].startswith("real photos") and meta["source"] == "committed checkpoint"
        if kind in ("cpu", "cpu-long"):  # the preset's own model, trained by its own recipe
            # (a setting added since it was saved reads as its default: Preset.from_dict)
            assert model.config == get_preset(kind).model and Preset.from_dict(meta["preset"]) == get_preset(kind)
        elif kind == "cnn":  # the reference CNN (ablation row cnn-96px-36ep-seed1), notebook 05's DeiT teacher
            assert model.config.family == "cnn" and meta["preset"]["epochs"] == 36
            assert model.config.image_size == get_preset("cpu").model.image_size  # it sees the student's batch
        else:  # the plain ViTs notebooks 02 and 03 look inside
            assert (model.config.attention, model.config.stem) == (kind, "patch")
            assert meta["preset"]["name"] == {"linformer": "cpu-plain", "full": "cpu-full"}[kind]
            assert models.config_dict(model.config) == models.config_dict(get_preset(meta["preset"]["name"]).model)


def _save_run(runs, name, cfg, data_kind="local", mtime=None):
    """A run folder `name` with a best.pt of `cfg`; `mtime` (seconds since the epoch) sets when it was saved."""
    (runs / name).mkdir()
    model = models.build_model(cfg)
    checkpoints.save_checkpoint(runs / name / "best.pt", {
        "model_config": models.config_dict(cfg), "model": model.state_dict(), "preset": {"name": name},
        "data_id": {"kind": data_kind, "name": "photos"}, "data": "real photos: test"})
    if mtime is not None:
        os.utime(runs / name / "best.pt", (mtime, mtime))


def test_load_trained_takes_your_newest_run_of_the_kind_asked_for(tmp_path, monkeypatch):
    """A conv-stem run is never handed to a notebook that looks at patch filters, nor a plain one as `cpu`."""
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path))
    saved = time.time() - 3600  # an hour ago, a second apart: the order is set, not left to the clock's resolution
    _save_run(tmp_path, "plain", get_preset("cpu-plain").model, mtime=saved)
    _save_run(tmp_path, "cpu", get_preset("cpu").model, mtime=saved + 1)
    _save_run(tmp_path, "sample-cpu", get_preset("cpu").model, data_kind="sample", mtime=saved + 2)  # newest, sample
    assert checkpoints.load_trained(kind="linformer")[1]["source"] == "your run plain"
    assert checkpoints.load_trained(kind="cpu")[1]["source"] == "your run cpu"
    assert checkpoints.load_trained(kind="full")[1]["source"] == "committed checkpoint"
    # cpu-long is the cpu model trained by the cpu-long preset: a cpu run is not one, a cpu-long run is
    assert checkpoints.load_trained(kind="cpu-long")[1]["source"] == "committed checkpoint"
    _save_run(tmp_path, "cpu-long", get_preset("cpu-long").model, mtime=saved - 1)
    assert checkpoints.load_trained(kind="cpu-long")[1]["source"] == "your run cpu-long"
    assert checkpoints.load_trained(kind="cpu")[1]["source"] == "your run cpu"  # the newer of the two
    kinds = "'linformer', 'full', 'cpu', 'cpu-long', 'cnn'"
    with pytest.raises(ValueError, match=f"kind must be one of {kinds}, not 'conv'"):
        checkpoints.load_trained(kind="conv")


def test_kv_init_is_ignored_by_full_attention():
    """Full attention has no E and F: kv_init="identity" builds exactly the weights "uniform" does."""
    weights = {}
    for kv_init in ("uniform", "identity"):
        torch.manual_seed(0)
        model = models.build_model(models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4,
                                                      attention="full", kv_init=kv_init))
        assert not any(hasattr(m, "proj_k") for m in model.modules())
        weights[kv_init] = model.state_dict()
    assert weights["identity"].keys() == weights["uniform"].keys()
    for name, w in weights["uniform"].items():
        assert torch.equal(weights["identity"][name], w), name


def test_kv_init_identity_changes_only_linformers_projections():
    """The control for the test above: with Linformer the same seed gives other E and F, and nothing else."""
    weights = {}
    for kv_init in ("uniform", "identity"):
        torch.manual_seed(0)
        weights[kv_init] = models.build_model(models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=2,
                                                                 heads=4, k=8, kv_init=kv_init)).state_dict()
    differ = sorted(n for n, w in weights["uniform"].items() if not torch.equal(weights["identity"][n], w))
    assert differ and all(n.endswith(("proj_k", "proj_v")) for n in differ)


def test_load_trained_skips_an_unreadable_run_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=r"Skipped Cannot read best\.pt in .*/broken/"):
        model, meta = checkpoints.load_trained()
    assert meta["source"] == "committed checkpoint"


def test_the_conv_stem_gives_the_patch_stems_token_grid_from_strided_convolutions():
    torch.manual_seed(0)
    cfg = models.ModelConfig(image_size=64, patch_size=8, dim=64, depth=1, heads=4, k=16, stem="conv")
    model = models.build_model(cfg)
    convs = [m for m in model.to_patch_embedding if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 16, (2, 2)), (16, 32, (2, 2)),
                                                                           (32, 64, (2, 2))]
    tokens = model.to_patch_embedding(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, cfg.num_patches, cfg.dim)
    patch = models.build_model(cfg.replace(stem="patch"))
    assert model(torch.randn(2, 3, 64, 64)).shape == patch(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_a_token_sees_only_its_own_patch_and_the_pixels_around_it():
    """Locality: changing one corner pixel moves the corner token and its neighbour, never the far ones."""
    torch.manual_seed(0)
    model = models.build_model(models.ModelConfig(image_size=64, patch_size=8, dim=32, depth=1, heads=4, k=16,
                                                  stem="conv")).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., 0, 0] += 10
    with torch.no_grad():
        moved = (model.to_patch_embedding(y) - model.to_patch_embedding(x)).abs().amax(-1)[0].reshape(8, 8)
    assert moved[0, 0] > 0
    assert (moved[2:, :] == 0).all() and (moved[:, 2:] == 0).all()


def test_a_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ValueError, match="power of 2"):
        models.ModelConfig(image_size=60, patch_size=6, stem="conv")


# The small-data ViT (vit-pytorch's SPT and LSA) and the reference CNN


def test_spt_tokens_see_the_patch_and_its_four_one_pixel_shifts():
    cfg = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=4, stem="spt", attention="full")
    model = models.build_model(cfg)
    linear = [m for m in model.to_patch_embedding.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.in_features for lin in linear] == [5 * cfg.patch_dim]  # the patch and 4 shifted copies of it
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_lsa_never_lets_a_token_attend_to_itself():
    torch.manual_seed(0)
    cfg = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=4, attention="lsa")
    model = models.build_model(cfg)
    lsa = model.transformer.layers[0][0]
    seen = {}
    lsa.attend.register_forward_hook(lambda m, i, out: seen.update(attn=out))
    model(torch.randn(2, 3, 32, 32))
    attn = seen["attn"]  # (batch, heads, n, n)
    assert attn.shape == (2, 4, cfg.seq_len, cfg.seq_len)
    assert torch.all(attn.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, cfg.seq_len))
    assert lsa.temperature.requires_grad  # the softmax temperature is learned


def test_lsa_with_the_patch_stem_uses_the_plain_patch_embedding():
    cfg = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=4, attention="lsa", stem="patch")
    model = models.build_model(cfg)
    plain = models.build_model(cfg.replace(attention="full")).to_patch_embedding  # vit-pytorch's standard ViT's
    shapes = {name: w.shape for name, w in plain.state_dict().items()}
    assert {name: w.shape for name, w in model.to_patch_embedding.state_dict().items()} == shapes
    model.to_patch_embedding.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.to_patch_embedding(x), plain(x))
    assert "small-data ViT" in models.describe(model) and "shifted" not in models.describe(model)


def test_the_reference_cnn_has_the_conv_stem_and_no_attention():
    torch.manual_seed(0)
    cfg = models.ModelConfig(image_size=64, patch_size=16, dim=32, depth=3, family="cnn", stem="conv")
    model = models.build_model(cfg)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) or hasattr(m, "to_qkv") for m in model.modules())
    assert len(model.blocks) == 3 and model.stem(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    assert models.describe(model).startswith("small CNN: 64 px")
    with pytest.raises(ValueError, match="cnn family is built on the conv stem"):
        models.ModelConfig(image_size=64, patch_size=16, family="cnn")
    with pytest.raises(ValueError, match="family must be"):
        models.ModelConfig(image_size=64, patch_size=16, family="resnet")


# ---------------------------------------------------------------------------------------------
# What this machine can hold, refused before anything is allocated

ROWS = [get_preset(name).model for name in ("sample", "cpu-plain", "cpu", "cpu-full", "seed", "gpu")] + [
    get_preset("cpu").model.replace(family="cnn", mlp="linear"),
    get_preset("cpu-plain").model.replace(attention="lsa", stem="spt")]


@pytest.mark.parametrize("cfg", ROWS, ids=lambda cfg: f"{cfg.family}-{cfg.attention}-{cfg.stem}-{cfg.image_size}px")
def test_the_parameter_estimate_is_within_five_percent_of_the_built_model(cfg):
    assert models.estimated_parameters(cfg) == pytest.approx(models.count_parameters(models.build_model(cfg)), rel=0.05)


@pytest.mark.parametrize("changes", [{"dim": 100_000_000, "heads": 1}, {"depth": 100_000_000}],
                         ids=["dim", "depth"])
def test_a_model_larger_than_this_machine_is_refused_at_once(changes):
    """Once an allocation traceback (dim), or memory growing until the machine died (depth)."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"parameters, [\d,]+ GiB to train: more than this machine's \d+ GiB"):
        models.ModelConfig(**changes)
    assert time.perf_counter() - start < 5  # refused from the config, nothing built (a generous bound, not a timing)


@pytest.mark.parametrize(("changes", "names"), [
    ({"num_classes": 10**11}, "model.num_classes"), ({"k": 10**9}, "model.k"),
    ({"depth": 10**8}, "model.dim or model.depth")])
def test_a_model_too_large_names_the_setting_that_makes_it_so(changes, names):
    """Before, a huge num_classes or k was blamed on "model.dim or model.depth"."""
    with pytest.raises(ValueError, match=rf"more than this machine's \d+ GiB\. Choose a smaller {re.escape(names)}"):
        models.ModelConfig(**changes)


def test_an_image_size_beyond_any_photo_is_refused():
    with pytest.raises(ValueError, match="image_size must be at most 4096 px, not 80000"):
        models.ModelConfig(image_size=80_000, patch_size=16)


def test_a_tampered_checkpoint_with_a_huge_model_is_one_line(tmp_path):
    cfg = get_preset("sample").model
    path = tmp_path / "best.pt"
    checkpoints.save_checkpoint(path, {"format": 2, "model_config": {**cfg.__dict__, "dim": 4_000_000, "heads": 1},
                                       "model": {}, "data": "x", "data_id": {}})
    with pytest.raises(checkpoints.CheckpointError, match="cannot build .*more than this machine's") as e:
        checkpoints.load_model(path)
    assert "\n" not in str(e.value)


def test_a_local_mlp_mixes_each_patch_token_with_its_eight_neighbours_only():
    """LocalViT's MLP: a patch token's change reaches its own and its neighbours' outputs, never the class token's,
    a distillation token's, or a patch two steps away."""
    torch.manual_seed(0)
    ff = models.LocalFeedForward(8, 32, grid=4, first=1).eval()
    x = torch.randn(1, 1 + 16 + 1, 8)
    moved = x.clone()
    moved[0, 1 + 5] += torch.randn(8)  # patch 5: row 1, column 1 of the 4 x 4 grid
    with torch.no_grad():
        changed = ((ff(moved) - ff(x)).abs().sum(-1) > 1e-6)[0].nonzero().flatten().tolist()
    assert changed == [1 + p for p in (0, 1, 2, 4, 5, 6, 8, 9, 10)]


@pytest.mark.parametrize("attention", ["linformer", "full"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_every_block_of_a_local_vit_has_a_local_mlp_whatever_its_tokens(attention, pool):
    cfg = get_preset("cpu").model.replace(attention=attention, kv_init="uniform", pool=pool, mlp="local")
    for distill in (False, True):
        model = models.build_model(cfg.replace(distill=distill))
        locals_ = [m for m in model.modules() if isinstance(m, models.LocalFeedForward)]
        assert len(locals_) == cfg.depth
        out = model.eval()(torch.randn(2, 3, cfg.image_size, cfg.image_size))
        assert out.shape == (2, 2)
        assert models.estimated_parameters(cfg.replace(distill=distill)) == pytest.approx(
            models.count_parameters(model), rel=0.02)


@pytest.mark.parametrize("change", [{"attention": "lsa"}, {"family": "cnn", "stem": "conv"}])
def test_a_local_mlp_is_refused_where_there_is_no_vit_block_to_put_it_in(change):
    with pytest.raises(ValueError, match="local MLP"):
        get_preset("cpu").model.replace(mlp="local", **change)


@pytest.mark.parametrize("attention", ["linformer", "full", "lsa"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_seq_len_and_describe_count_the_tokens_the_model_has(attention, pool):
    """vit-pytorch's standard ViT drops its CLS token when it pools the mean (the `cpu` preset's 36 tokens, not 37);
    the efficient and small-data ViTs keep theirs. The positions the model learns say how many tokens it sees."""
    cfg = get_preset("cpu-plain").model.replace(attention=attention, pool=pool, kv_init="uniform")
    model = models.build_model(cfg)
    assert model.pos_embedding.numel() // cfg.dim == cfg.seq_len == cfg.num_patches + model.cls_token.numel() // cfg.dim
    text = models.describe(model)
    assert f"= {cfg.seq_len} tokens" in text and ("+ CLS" in text) == (model.cls_token.numel() > 0)
    assert ("the tokens' mean" in text) == (pool == "mean")
