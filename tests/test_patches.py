import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from vitlib import patches
from vitlib.data import DogsVsCats
from vitlib.models import ModelConfig, build_model, pos_embedding
from vitlib.presets import get_preset

TINY = ModelConfig(image_size=32, patch_size=8, dim=16, depth=1, heads=2, k=8)


def test_patchify_round_trip_and_order():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    seq = patches.patchify(images, 8)
    assert seq.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(patches.unpatchify(seq, 8), images)
    # row-major over the grid: patch 5 is row 1, column 1; inside a patch pixels row by row, colours last
    assert torch.equal(seq[1, 5], rearrange(images[1, :, 8:16, 8:16], "c h w -> (h w c)"))
    assert torch.equal(seq[0, 3, :3], images[0, :, 0, 24])


def test_unpatchify_needs_a_square_grid():
    with pytest.raises(ValueError, match="square"):
        patches.unpatchify(torch.zeros(1, 6, 12), 2)


@pytest.mark.parametrize("bias", [True, False])
def test_rearrange_and_linear_equal_a_strided_conv(bias):
    torch.manual_seed(0)
    model = build_model(TINY)
    rearrange_layer = model.to_patch_embedding[0]
    linear = torch.nn.Linear(TINY.patch_dim, TINY.dim, bias=bias)
    conv = patches.linear_to_conv(linear, TINY.patch_size)
    assert (conv.kernel_size, conv.stride) == ((8, 8), (8, 8))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(patches.conv_tokens(conv, x), linear(rearrange_layer(x)))


def test_the_sequence_length_labels_stay_inside_the_axes():
    table = patches.sequence_costs(224, patch_sizes=(32, 16, 8, 4), dim=128, k=64)
    ax = patches.plot_sequence_costs(table).axes[0]
    low, high = ax.get_ylim()
    assert high > 1.3 * table["tokens"].max() and low < table["tokens"].min()  # room above the top label
    plt.close("all")


def test_sequence_costs_follow_the_formulas():
    table = patches.sequence_costs(224, patch_sizes=(32, 16, 8), dim=128, k=64)
    assert table["patches"].tolist() == [49, 196, 784]
    assert (table["tokens"] == table["patches"] + 1).all()
    assert (table["values_per_patch"] == 3 * table.index**2).all()
    n = table["tokens"]
    # full attention outgrows the linear parts exactly when n > 6 d, Linformer's beats full when n > 2 k
    assert ((table["MMAC_full_attention"] > table["MMAC_linear"]) == (n > 6 * 128)).all()
    assert ((table["MMAC_linformer_attention"] < table["MMAC_full_attention"]) == (n > 2 * 64)).all()


def test_position_similarity_of_a_smooth_embedding_falls_with_distance():
    grid, dim = 6, 32
    rc = torch.cartesian_prod(torch.arange(grid), torch.arange(grid)).float() / grid
    freqs = torch.linspace(0.2, 0.8, dim // 4)
    angles = torch.cat([rc[:, :1] * freqs, rc[:, 1:] * freqs], dim=1) * torch.pi
    pos = torch.cat([torch.randn(1, dim), torch.cat([angles.sin(), angles.cos()], dim=1)])  # CLS first
    sim = patches.position_similarity(pos, grid)
    assert sim.shape == (grid,) * 4
    flat = sim.reshape(grid * grid, grid * grid)
    torch.testing.assert_close(flat.diagonal(), torch.ones(grid * grid))
    torch.testing.assert_close(flat, flat.T)
    by_distance = patches.similarity_by_distance(sim)
    assert by_distance.index.min() == 1
    assert by_distance["mean cosine"].is_monotonic_decreasing
    assert by_distance["pairs"].sum() == grid * grid * (grid * grid - 1) // 2  # every pair once
    assert by_distance.loc[1.0, "pairs"] == 2 * grid * (grid - 1) + 2 * (grid - 1) ** 2  # diagonals: 1.41 -> 1


def test_mean_similarity_counts_every_pair_once():
    grid = 3  # distances: 1 (12 pairs), 1.41 -> 1 (8), 2 (6), 2.24 -> 2 (8), 2.83 -> 3 (2)
    rc = torch.cartesian_prod(torch.arange(grid), torch.arange(grid)).float()
    dist = torch.cdist(rc, rc).round()
    sim = torch.where(dist >= 3, 1.0, torch.where(dist == 0, 1.0, 0.0)).reshape(grid, grid, grid, grid)
    assert patches.similarity_by_distance(sim).loc[3.0, "pairs"] == 2
    assert patches.mean_similarity(sim, 2) == 2 / (6 + 8 + 2)  # not the mean of per-distance means (1/2)
    assert patches.mean_similarity(sim, 1, 1) == 0.0


def test_position_similarity_reads_the_models_embedding():
    model = build_model(TINY)
    sim = patches.position_similarity(pos_embedding(model), TINY.grid)
    assert sim.shape == (TINY.grid,) * 4


def test_patch_filters_find_the_dominant_pattern():
    torch.manual_seed(0)
    model = build_model(TINY)
    pattern = torch.randn(TINY.patch_dim)
    noise = 1e-3 * torch.randn(TINY.dim, TINY.patch_dim)
    with torch.no_grad():  # every filter a multiple of one pattern, plus a little noise
        model.to_patch_embedding[2].weight.copy_(torch.randn(TINY.dim, 1) * pattern + noise)
    comps, share = patches.patch_filters(model, count=5)
    assert comps.shape == (5, 3, 8, 8)
    assert share[0] > 0.99 and torch.all(share[:-1] >= share[1:])
    first = rearrange(comps[0], "c p1 p2 -> (p1 p2 c)")
    cosine = torch.nn.functional.cosine_similarity(first, pattern, dim=0)
    assert abs(cosine) > 0.99  # up to sign


def _fake_data(tmp_path, per_class=5):
    train = tmp_path / "train"
    train.mkdir()
    for label, colour in (("cat", (200, 50, 50)), ("dog", (50, 50, 200))):
        for i in range(per_class):
            Image.new("RGB", (40 + i, 30), colour).save(train / f"{label}.{i}.jpg")
    return DogsVsCats("fake", "local", tmp_path, train, None, None)


def test_pick_photos_is_seeded_and_alternates_classes(tmp_path):
    ds = _fake_data(tmp_path)
    picked = patches.pick_photos(ds, 6, seed=1)
    assert picked["file"].is_unique and len(picked) == 6
    assert picked["class"].tolist()[::2] == [picked["class"][0]] * 3
    assert set(picked["class"][:2]) == {"cat", "dog"}
    assert picked.equals(patches.pick_photos(ds, 6, seed=1))
    draws = {tuple(patches.pick_photos(ds, 4, seed=s)["file"]) for s in range(5)}
    assert len(draws) > 1


def test_load_photo_is_a_square_uint8_tensor(tmp_path):
    ds = _fake_data(tmp_path, per_class=1)
    image = patches.load_photo(ds, "train/dog.0.jpg", 24)
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    assert image[2].float().mean() > image[0].float().mean()  # the blue dog, channels first


def test_plots_draw_what_they_say():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    ax = patches.draw_patch_grid(image, 8)
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(16)]
    assert len(ax.lines) == 2 * 3  # 3 inner lines each way
    fig = patches.plot_patch_sequence(patches.patchify(image[None], 8)[0], 8)
    assert sum(len(ax.images) for ax in fig.axes) == 16 + 1  # 16 tiles and the matrix
    sim = torch.eye(16).reshape(4, 4, 4, 4)
    ax = patches.plot_position_similarity(sim).axes[0]
    shown = ax.images[0].get_array()
    assert np.isfinite(shown).sum() == 16 * 16 - 16  # each map's own position is left out of the colours
    assert np.nanmax(shown) == 0
    assert ax.images[1].get_array()[..., 3].sum() == 16  # and drawn black on top, one pixel per map
    assert ax.images[0].get_cmap().name == "RdBu_r"  # a signed cosine: a diverging map centred at 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]  # rows and columns from 0
    fig = patches.plot_position_similarity({"a": sim, "b": sim.neg()})
    assert len(fig.axes) == 3  # two panels and the colour bar
    plt.close("all")


def test_sequence_costs_count_a_cls_token_only_where_the_model_has_one():
    """The cpu model answers from its tokens' mean and has none: 36 tokens at 96 px in 16-pixel patches, not 37."""
    cfg = get_preset("cpu").model
    table = patches.sequence_costs(cfg.image_size, (16, 8), cfg.dim, cfg.k, cls_tokens=cfg.cls_tokens)
    assert list(table["tokens"]) == [cfg.seq_len, 144] == [36, 144]
    assert table.loc[8, "MMAC_full_attention"] / table.loc[16, "MMAC_full_attention"] == 16
    assert patches.sequence_costs(96, (16,)).loc[16, "tokens"] == 37  # the default: a CLS token
