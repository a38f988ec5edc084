import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from vitlib import attention, attention_cost
from vitlib.models import ModelConfig, build_model

LIN = ModelConfig(image_size=32, patch_size=8, dim=32, depth=3, heads=4, k=8)  # 17 tokens
FULL = LIN.replace(attention="full")


@pytest.fixture
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def test_linformer_by_hand_matches_the_module(images):
    model = _model(LIN)
    layer = attention.attention_layers(model)[1]
    with attention.capture_io(layer) as got, torch.no_grad():
        model(images)
        steps = attention.linformer_by_hand(layer, got["input"])
    assert steps.q.shape == (2, LIN.heads, LIN.seq_len, LIN.dim // LIN.heads)
    assert steps.k.shape == steps.v.shape == (2, LIN.heads, LIN.k, LIN.dim // LIN.heads)
    assert steps.weights.shape == (2, LIN.heads, LIN.seq_len, LIN.k)
    torch.testing.assert_close(steps.out, got["output"])
    assert not layer._forward_hooks  # capture_io cleaned up


def test_full_by_hand_matches_the_module(images):
    model = _model(FULL)
    layer = attention.attention_layers(model)[0]
    with attention.capture_io(layer) as got, torch.no_grad():
        model(images)
        steps = attention.full_by_hand(layer, got["input"])
    assert steps.weights.shape == (2, FULL.heads, FULL.seq_len, FULL.seq_len)
    torch.testing.assert_close(steps.weights.sum(-1), torch.ones(2, FULL.heads, FULL.seq_len))
    torch.testing.assert_close(steps.out, got["output"])


def test_linformer_hooks_capture_the_weights_that_mix_the_values(images):
    model = _model(LIN)
    logits, maps = attention.linformer_maps(model, images)
    torch.testing.assert_close(logits, model(images))  # recording changes nothing
    assert maps.shape == (2, LIN.depth, LIN.heads, LIN.seq_len, LIN.k)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    assert all(not layer.dropout._forward_hooks for layer in attention.attention_layers(model))
    first = attention.attention_layers(model)[0]
    with attention.capture_io(first) as got, torch.no_grad():
        model(images)
    torch.testing.assert_close(maps[:, 0], attention.linformer_by_hand(first, got["input"]).weights)


def test_full_maps_use_recorder_and_leave_the_model_as_it_was(images):
    model = _model(FULL)
    expected = model(images)
    model.train()
    logits, maps = attention.full_maps(model, images)
    assert model.training  # put back as it was
    torch.testing.assert_close(logits, expected)
    assert maps.shape == (2, FULL.depth, FULL.heads, FULL.seq_len, FULL.seq_len)
    assert all(not layer.attend._forward_hooks for layer in attention.attention_layers(model))


def test_token_mix_reproduces_the_linformer_output(images):
    model = _model(LIN)
    layer = attention.attention_layers(model)[0]
    _, maps = attention.linformer_maps(model, images)
    mix = attention.linformer_token_mix(maps, model)
    assert mix.shape == (2, LIN.depth, LIN.heads, LIN.seq_len, LIN.seq_len)
    with attention.capture_io(layer) as got, torch.no_grad():
        model(images)
        steps = attention.linformer_by_hand(layer, got["input"])
        v_tokens = einsum(got["input"], layer.to_v.weight, "b n d, e d -> b n e")
    v_tokens = v_tokens.reshape(2, LIN.seq_len, LIN.heads, -1).transpose(1, 2)
    # weights over the k projected values == (weights F^T) over the n token values
    torch.testing.assert_close(mix[:, 0] @ v_tokens, steps.weights @ steps.v)


def test_rollout_rows_sum_to_one_and_reduce_to_known_cases():
    maps = torch.rand(2, 4, 3, 5, 5).softmax(-1)
    out = attention.rollout(maps)
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 5))
    eye = torch.eye(5).expand(1, 3, 2, 5, 5)
    torch.testing.assert_close(attention.rollout(eye), torch.eye(5)[None])
    one_layer = maps[:, :1]
    torch.testing.assert_close(attention.rollout(one_layer, residual=0.0), one_layer.mean(2)[:, 0])
    two = attention.rollout(maps[:, :2], residual=0.0)
    torch.testing.assert_close(two, maps[:, 1].mean(1) @ maps[:, 0].mean(1))  # later layers on the left


def test_cls_to_grid_drops_cls_and_keeps_reading_order():
    row = torch.arange(1 + 9.0)
    grid = attention.cls_to_grid(row, 3)
    assert grid.shape == (3, 3)
    assert grid[1, 2] == 1 + 1 * 3 + 2


def test_reference_attentions_agree():
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    torch.testing.assert_close(attention_cost.full_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    eye = torch.eye(7)  # k = n and E = F = I: Linformer is full attention
    torch.testing.assert_close(attention_cost.linformer_attention(q, k, v, eye, eye),
                               attention_cost.full_attention(q, k, v))


def test_peak_memory_follows_tensors_until_they_are_freed():
    mb = 4_000_000
    with attention_cost.PeakMemory() as mem:
        a = torch.ones(1000, 1000)
        del a
        b = torch.ones(1000, 1000)
        view = b.t()  # shares b's storage: counted once
    assert mem.peak == mb
    with attention_cost.PeakMemory() as mem:
        a, b = torch.ones(1000, 1000), torch.ones(1000, 1000)
    assert mem.peak == 2 * mb
    before = torch.ones(1000, 1000)
    with attention_cost.PeakMemory() as mem:
        before.t().mul_(2)  # a view and an in-place op on memory that already existed: nothing new
        c = before[:10] * 2  # 10 new rows
    assert mem.peak == 10 * 1000 * 4
    del a, b, c, view


def test_benchmark_returns_sensible_rows_on_tiny_sizes():
    threads = torch.get_num_threads()
    table = attention_cost.attention_benchmark(sizes=((16, 8), (32, 4)), dim=16, heads=2, k=4, device="cpu",
                                          min_run_time=0.0)
    assert torch.get_num_threads() == threads  # restored
    assert table["seq_len"].tolist() == [5] * 3 + [65] * 3
    assert set(table["method"]) == {"full (hand-written)", "full (SDPA)", "Linformer (k=4)"}
    assert (table["ms"] > 0).all() and (table["peak_MB"] > 0).all()
    big = table[table["seq_len"] == 65].set_index("method")["peak_MB"]
    assert big["full (hand-written)"] > 2 * 65 * 65 * 4 / 2**20  # the (heads, n, n) map was materialized
    assert big["full (hand-written)"] > big["Linformer (k=4)"] > 0
    assert "cpu" in table.attrs["hardware"]


def test_crossover_finds_where_a_method_wins_for_good():
    rows = []
    for n, base, lin in ((10, 1, 5), (50, 3, 2), (100, 5, 6), (200, 20, 8), (400, 80, 16)):
        rows += [{"seq_len": n, "method": "full", "ms": base}, {"seq_len": n, "method": "lin", "ms": lin}]
    table = pd.DataFrame(rows)
    assert attention_cost.crossover(table, "lin", "full") == 200  # won at 50, lost at 100, wins from 200 on
    assert attention_cost.crossover(table, "full", "lin") is None
    assert attention_cost.crossover(table[table.seq_len >= 200], "lin", "full") == 200


def test_the_benchmark_marks_k_beside_its_lines():
    table = pd.DataFrame({"seq_len": [16, 64, 256] * 2, "method": ["full"] * 3 + ["lin"] * 3,
                          "ms": [1.0, 2, 8, 1, 1.5, 2], "peak_MB": [1.0, 4, 16, 1, 2, 3]})
    ax = attention_cost.plot_benchmark(table, k=32).axes[0]
    marks = {t.get_text().strip(): t.get_position()[0] for t in ax.texts}
    assert set(marks) == {"n = k = 32", "n = 2k = 64"}
    assert marks["n = k = 32"] > 32 and marks["n = 2k = 64"] > 64  # right of the dotted line, not on it
    plt.close("all")


def test_plots_run():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    heads = torch.rand(4, 4, 4)
    fig = attention.plot_heads(image, heads, "t")
    assert len(fig.axes) == 5 + 1  # the photo, 4 heads, the colour bar
    overlays = [ax.images[1] for ax in fig.axes[1:5]]
    assert all(im.get_array().shape == (4, 4) for im in overlays)  # one block per patch, not upsampled
    assert all(im.get_interpolation() == "nearest" for im in overlays)
    assert {im.get_clim() for im in overlays} == {(0.0, float(heads.max()))}  # one scale for all heads
    assert overlays[0].norm(float(heads.max()) / 4) == pytest.approx(0.5)  # square-root scale by default
    alpha = overlays[0].get_alpha()  # each block as opaque as its weight is strong: the photo shows where it is weak
    strongest, weakest = divmod(int(heads[0].argmax()), 4), divmod(int(heads[0].argmin()), 4)
    assert alpha[strongest] == pytest.approx(0.85) and alpha[weakest] < 0.5
    signed_map = (heads - 0.5)
    near_zero = divmod(int(signed_map[0].abs().argmin()), 4)
    signed_alpha = attention.plot_heads(image, signed_map, "t", symmetric=True).axes[1].images[1].get_alpha()
    assert signed_alpha[near_zero] == signed_alpha.min()  # signed: the blocks near 0 are the clearest
    signed = attention.plot_heads(image, heads - 0.5, "t", symmetric=True).axes[1].images[1].get_clim()
    assert signed[0] == -signed[1] == -float((heads - 0.5).abs().max())
    assert len(attention.plot_overlays(image[None].expand(2, -1, -1, -1), heads[:2], ["a", "b"], "t").axes) == 4 + 1
    assert len(attention.plot_linformer_weights(torch.rand(3, 5, 4), "t").axes) == 3 + 1
    fig = attention.plot_attention_shapes(50, 64, 16)
    # full: Q, Kᵀ, S, softmax, V, out; Linformer keys: E, K, K̄, Q, K̄ᵀ, S; values: F, V, V̄, softmax, V̄, out
    assert len(fig.axes[0].patches) == 6 + 6 + 6
    labels = [t.get_text().split("\n") for t in fig.axes[0].texts]
    sizes = {tuple(parts) for parts in labels if len(parts) == 2 and " x " in parts[1]}
    assert ("softmax(S/√d)", "50 x 64") in sizes and ("V̄ = FV", "64 x 16") in sizes and ("out", "50 x 16") in sizes
    marked = attention.plot_overlays(image[None].expand(2, -1, -1, -1), heads[:2], ["a", "b"], "t", baseline=0.1)
    assert any(line.get_ydata()[0] == 0.1 for line in marked.axes[-1].lines)  # the uniform baseline on the bar
    plt.close("all")
