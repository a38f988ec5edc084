"""Notebook 05's helpers: receptive fields, SPT's views, LSA's view of attention, the ablation table, speed."""

import math
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import same_color

from vitlib import models, small_data
from vitlib.presets import get_preset, with_text_settings

CFG = models.ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=4, k=16)


@pytest.mark.parametrize(("stem", "extent"), [("patch", (8, 8)), ("spt", (10, 10)), ("conv", (15, 15))])
def test_a_token_sees_its_patch_its_rim_or_its_overlapping_filters(stem, extent):
    torch.manual_seed(0)
    model = models.build_model(CFG.replace(stem=stem))
    field = small_data.receptive_field(model, CFG.image_size, 1, 2)
    assert field.shape == (32, 32) and field.max() == 1
    assert small_data.field_extent(field) == extent
    assert (field[8:16, 16:24] > 0).all()  # it sees all of its own patch (row 1, column 2)
    if stem != "conv":  # centred on it (the strided convs' padding shifts theirs up and left)
        rows, cols = torch.nonzero(field > 0, as_tuple=True)
        assert ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2) == (1 * 8 + 3.5, 2 * 8 + 3.5)
    assert model.training  # the model is handed back in the mode it came in


def test_spt_views_are_the_image_and_its_four_one_pixel_shifts():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    views = small_data.spt_views(image)
    assert views.shape == (5, 2, 4, 4)
    torch.testing.assert_close(views[0], image)
    torch.testing.assert_close(views[1][..., 1:], image[..., :-1])  # right
    torch.testing.assert_close(views[2][..., :-1], image[..., 1:])  # left
    torch.testing.assert_close(views[3][..., 1:, :], image[..., :-1, :])  # down
    torch.testing.assert_close(views[4][..., :-1, :], image[..., 1:, :])  # up
    assert views[1][..., 0].eq(0).all() and views[3][..., 0, :].eq(0).all()  # uncovered border: zeros


def test_spt_views_match_what_vit_pytorchs_spt_feeds_its_patches():
    """The same five images SPT concatenates, in its order: the picture shows what the model really sees."""
    torch.manual_seed(0)
    model = models.build_model(CFG.replace(stem="spt"))
    x = torch.randn(1, 3, 32, 32)
    seen = {}
    rearrange = model.to_patch_embedding.to_patch_tokens[0]
    rearrange.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    model.to_patch_embedding(x)
    torch.testing.assert_close(seen["x"], small_data.spt_views(x[0]).reshape(1, 15, 32, 32))


def test_lsa_view_masks_each_token_and_sharpens_without_losing_the_order():
    torch.manual_seed(0)
    weights = torch.randn(7, 7).softmax(-1)
    masked = small_data.lsa_view(weights)
    assert small_data.self_attention_share(masked) == 0
    torch.testing.assert_close(masked.sum(-1), torch.ones(7))
    off = ~torch.eye(7, dtype=torch.bool)  # off the diagonal: the same weights, renormalised
    torch.testing.assert_close(masked[off].reshape(7, 6), (weights[off].reshape(7, 6)
                                                            / weights[off].reshape(7, 6).sum(-1, keepdim=True)))
    sharp = small_data.lsa_view(weights, sharpen=3.0)
    assert small_data.peak_share(sharp) > small_data.peak_share(masked)
    assert torch.equal(sharp.argmax(-1), masked.argmax(-1))
    flat = torch.full((5, 5), 0.2)
    assert small_data.peak_share(flat) == pytest.approx(0.2) and small_data.self_attention_share(flat) == \
        pytest.approx(0.2)


def _history(run, accs, losses, minutes_per_epoch=1.0, changes=None):
    n = len(accs)
    return pd.DataFrame({"run": run, "device": "cpu (test)", "data": "test", "epoch": range(1, n + 1),
                         "train_loss": 0.5, "train_acc": 0.5, "val_acc": accs, "val_loss": losses,
                         "epoch_s": 50.0, "images_per_s": [300.0] * n,
                         "elapsed_s": [60 * minutes_per_epoch * (i + 1) for i in range(n)], "command": "python ..."})


def test_the_ablation_table_reads_each_runs_best_checkpoint_and_its_changes():
    base = get_preset("cpu-plain")
    runs = pd.concat([_history("plain", [0.7, 0.8, 0.79], [0.6, 0.45, 0.46]),
                      _history("conv", [0.75, 0.85], [0.5, 0.35], minutes_per_epoch=1.5)])
    table = small_data.ablation_table(runs, base, {"plain": [], "conv": ["model.stem=conv"]})
    assert list(table.index) == ["plain", "conv"]
    assert table.loc["plain", "changes"] == "(none)" and table.loc["conv", "changes"] == "model.stem=conv"
    assert table.loc["plain", "val acc"] == 0.8 and table.loc["plain", "best epoch"] == 2  # lowest log loss
    assert table.loc["conv", "minutes"] == 3.0 and table.loc["conv", "img/s"] == 300
    assert table.loc["conv", "params (M)"] != table.loc["plain", "params (M)"]  # each row's own model
    assert set(table["model"]) == {"ViT"}
    cnn = small_data.ablation_table(_history("cnn", [0.9], [0.3]), base,
                                    {"cnn": ["model.family=cnn", "model.stem=conv"]})
    assert cnn.loc["cnn", "model"] == "CNN"
    fig = small_data.plot_ablation(runs, cnn=("conv",), source="test")
    curves = [line for line in fig.axes[0].lines if line.get_label() in ("plain", "conv")]
    assert [c.get_linestyle() for c in curves] == ["-", "--"]  # the runs named as CNNs dashed
    assert len(fig.axes[0].lines) == len(fig.axes[1].lines) == 2 + 1  # a curve per run, and the 15-minute mark


def test_the_second_rounds_table_counts_each_rows_changes_from_the_first_cpu_recipe():
    """What the table names as a row's changes, applied to the first round's cpu recipe, is the row's recipe."""
    names = ["cpu-meanpool", "cpu-full-meanpool-local", "cpu-long-full-meanpool-local"]
    table = small_data.search_table(pd.concat([_history(name, [0.8, 0.85], [0.4, 0.35]) for name in names]))
    assert table.loc["cpu-meanpool", "changes"] == "model.pool=mean"  # nothing of the first cpu recipe repeated
    assert "epochs=80" in table.loc["cpu-long-full-meanpool-local", "changes"]
    first = small_data.row_recipe(small_data.FIRST_CPU_ROW)
    for name in names:
        changed = with_text_settings(first, re.split(r", (?=[\w.]+=)", table.loc[name, "changes"]))
        assert changed == small_data.row_recipe(name), name


def test_the_ablation_plot_draws_more_runs_than_it_has_colours():
    runs = pd.concat([_history(f"run{i}", [0.7, 0.8], [0.6, 0.5]) for i in range(23)])
    fig = small_data.plot_ablation(runs)
    curves = [line for line in fig.axes[0].lines if line.get_label().startswith("run")]
    assert len(curves) == 23
    assert len({tuple(c.get_color()) for c in curves}) == len(small_data.RUN_COLORS)  # every colour, then again ...
    assert len({(tuple(c.get_color()), c.get_marker()) for c in curves}) == 23  # ... with another marker: no two alike


def test_the_ablation_plot_colours_the_runs_it_highlights_and_greys_the_rest():
    runs = pd.concat([_history(f"run{i}", [0.7, 0.8], [0.6, 0.5]) for i in range(6)])
    fig = small_data.plot_ablation(runs, highlight=("run1", "run4"))
    labelled = [line.get_label() for line in fig.axes[0].lines if line.get_label().startswith("run")]
    grey = [line for line in fig.axes[0].lines if same_color(line.get_color(), "0.75")]
    assert labelled == ["run1", "run4"] and len(grey) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["run1", "run4", "the 4 other runs"]


def test_seed_repeats_are_summarised_with_their_spread():
    table = pd.DataFrame({"model": ["ViT"] * 4, "val acc": [0.88, 0.86, 0.87, 0.90],
                          "val log loss": [0.30, 0.32, 0.31, 0.25], "minutes": [15.0, 14.0, 16.0, 50.0]},
                         index=["vit", "vit-seed1", "vit-seed2", "long"])
    summary = small_data.seed_summary(table)
    assert list(summary.index) == ["vit", "long"] and list(summary["seeds"]) == [3, 1]
    assert summary.loc["vit", "val acc"] == 0.87 and summary.loc["vit", "acc sd"] == 0.01
    assert summary.loc["vit", "minutes"] == 15.0 and math.isnan(summary.loc["long", "acc sd"])  # one seed: no spread
    assert small_data.recipe_name("a-b-seed12") == "a-b" and small_data.recipe_name("seed-run") == "seed-run"


def test_the_distinct_recipes_leave_out_seed_repeats_and_data_curve_rows():
    table = pd.DataFrame({"val acc": [0.88, 0.95, 0.70, 0.90]},
                         index=["vit", "vit-seed1", "data-2000-vit", "seedling"])
    assert list(small_data.distinct_recipes(table).index) == ["vit", "seedling"]


def test_a_distilled_row_stands_beside_the_run_that_trained_its_teacher():
    teacher = small_data.TEACHER_ROWS["cnn"]
    assert small_data.row_recipe(teacher).model.family == "cnn"
    table = pd.DataFrame({"model": ["CNN", "DeiT", "ViT"], "val acc": [0.91, 0.85, 0.88],
                          "val log loss": [0.23, 0.35, 0.29], "minutes": [16.2, 13.4, 14.9]},
                         index=[teacher, "deit-96px-p16-16ep-heads4", "vit"])
    pairs = small_data.distillation_table(table)
    assert list(pairs.index) == ["deit-96px-p16-16ep-heads4"]
    assert pairs.iloc[0][["student acc", "teacher acc", "teacher minutes"]].tolist() == [0.85, 0.91, 16.2]
    with pytest.raises(ValueError, match="has no recorded run"):
        small_data.distillation_table(table.drop(index=teacher))


def test_the_best_run_has_the_highest_accuracy_and_among_equals_the_lower_log_loss():
    table = pd.DataFrame({"val acc": [0.80, 0.85, 0.85, 0.84], "val log loss": [0.30, 0.36, 0.33, 0.20]},
                         index=["a", "b", "c", "d"])
    assert small_data.best_run(table) == "c"
    assert small_data.best_run(table.drop(index="c")) == "b"


def test_a_rows_recipe_is_the_base_preset_with_the_rows_settings():
    recipe = small_data.row_recipe("conv-96px-p16-18ep-cache112")
    base = get_preset(small_data.ABLATION_BASE)
    assert (recipe.model.stem, recipe.model.image_size, recipe.epochs, recipe.cache_size) == ("conv", 96, 18, 112)
    assert recipe.replace(model=base.model, epochs=base.epochs, cache_size=None) == base


def test_training_speed_is_images_per_second_of_real_steps(monkeypatch):
    preset = get_preset("sample", batch_size=8)
    stepped = []  # the shape of every batch put through the training step
    real_make_step = small_data.make_step

    def counting_make_step(model, recipe, device):
        step = real_make_step(model, recipe, device)

        def counted(x, y):
            stepped.append(tuple(x.shape))
            step(x, y)

        return counted

    monkeypatch.setattr(small_data, "make_step", counting_make_step)
    start = time.perf_counter()
    speed = small_data.training_speed(preset, seconds=0.2, device="cpu")
    wall = time.perf_counter() - start
    size = preset.model.image_size
    assert set(stepped) == {(8, 3, size, size)}  # full batches of the preset, each through its training step
    timed = (len(stepped) - 2) * 8  # images of the timed steps: the two warm-up steps are left out
    assert 0.2 <= timed / speed <= wall  # those images over the seconds they took: at least the 0.2 s asked for


def test_the_data_curve_pairs_both_models_at_each_size_the_full_split_included():
    names = [*(f"data-{n}-{k}" for n in small_data.DATA_CURVE for k in ("vit", "cnn")),
             *small_data.DATA_CURVE_FULL.values()]
    table = pd.DataFrame({"val acc": np.linspace(0.6, 0.9, len(names)), "val log loss": 0.3, "minutes": 1.0},
                         index=names)
    curve = small_data.data_curve(table.drop(index="data-4000-cnn"))  # a size only one model has is left out
    assert list(curve.index) == [2000, 8000, 16000]
    assert curve.loc[16000, ("val acc", "vit")] == table.loc["conv-96px-p16-21ep-heads4", "val acc"]
    assert curve.loc[2000, ("val acc", "cnn")] == table.loc["data-2000-cnn", "val acc"]
    fig = small_data.plot_data_curve(curve)
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [3, 3]


def test_the_data_curve_rows_are_the_cpu_recipe_and_the_cnn_on_fewer_photos():
    for kind, full in small_data.DATA_CURVE_FULL.items():
        recipe = small_data.row_recipe(f"data-2000-{kind}")
        assert recipe.train_images == 2000 and recipe.replace(train_images=None) == small_data.row_recipe(full)


def test_a_recorded_command_is_printed_for_the_reader_s_own_data_folder():
    recorded = "python -m vitlib train --preset cpu-plain --data ../shared/data/dev --run-dir runs/x --no-progress"
    assert small_data.command_for_you(recorded) == ("python -m vitlib train --preset cpu-plain --data <your folder> "
                                                    "--run-dir runs/x --no-progress")
    quoted = "python -m vitlib train --data '/my photos/dogs' --no-progress"
    assert small_data.command_for_you(quoted) == "python -m vitlib train --data <your folder> --no-progress"


def test_a_run_keeps_its_colour_from_one_ablation_plot_to_the_next_and_is_never_grey():
    """Before, the `cpu` preset's run was tab10's grey among "the other runs" in one figure, and blue in the next."""
    names = list(small_data.ABLATION_ROWS)[:12]
    runs = pd.concat([_history(name, [0.7, 0.8], [0.6, 0.5]) for name in names])
    colour = {}
    for highlight in (tuple(names[:8]), (names[7], names[2])):
        fig = small_data.plot_ablation(runs, highlight=highlight)
        for line in fig.axes[0].lines:
            name = line.get_label().split(" (")[0]
            if name in highlight:
                assert not same_color(line.get_color(), "0.75") and line.get_color() not in (plt.cm.tab20.colors[14],
                                                                                              plt.cm.tab20.colors[15])
                assert colour.setdefault(name, tuple(line.get_color())) == tuple(line.get_color()), name
        plt.close(fig)


def test_the_ablation_legend_names_the_preset_a_run_became():
    """The second round's rows are the presets now; the first round's winners (the first cpu and cpu-long) are not."""
    assert small_data.preset_of_row("cpu-full-meanpool-local") == "cpu"
    assert small_data.preset_of_row("cpu-long-full-meanpool-local") == "cpu-long"
    assert small_data.preset_of_row(small_data.FIRST_CPU_ROW) is None
    assert small_data.preset_of_row("conv-stem") is None and small_data.preset_of_row("not-a-row") is None
    runs = _history("cpu-full-meanpool-local", [0.7, 0.8], [0.6, 0.5])
    labels = [t.get_text() for t in small_data.plot_ablation(runs).legends[0].get_texts()]
    assert labels == ["cpu-full-meanpool-local (the `cpu` preset)"]
