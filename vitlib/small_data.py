"""Why a ViT needs data, and what helps it on 20,000 photos: notebook 05's pictures and its ablation table.

A convolution looks at a few neighbouring pixels and does the same everywhere (locality, translation
equivariance): a CNN starts out knowing that images are made of local patterns. A ViT's patch projection
sees one patch at a time, and attention lets every token look at every other one from the start; what a
CNN is built to assume, a ViT has to learn from data. Each small-data technique gives some of it back:
shifted patch tokenization (SPT) widens what a token sees, locality self-attention (LSA) keeps a token
from attending mostly to itself, a conv stem builds every token from small overlapping filters.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .augment import normalize
from .bench import make_step, throughput, vitlib_batches
from .cache import ImageCache
from .checkpoints import reference_runs
from .metrics import run_summary
from .models import build_model, count_parameters
from .plots import as_image, finish
from .presets import PRESETS, Preset, get_preset, with_text_settings

# ---------------------------------------------------------------------------------------------
# What a token sees


def receptive_field(model: nn.Module, image_size: int, row: int, col: int) -> torch.Tensor:
    """(H, W): how much each input pixel moves token (row, col) of the model's stem, |d token / d pixel| summed
    over the token's numbers and the colours, scaled to a maximum of 1. Zero where the token cannot see."""
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    was_training = model.training
    model.eval()  # BatchNorm on its running statistics: one image is not a batch
    tokens = model.to_patch_embedding(x)  # (1, grid * grid, dim)
    grid = model.config.grid
    tokens[0, row * grid + col].pow(2).sum().backward()
    model.train(was_training)
    field = x.grad[0].abs().sum(0)
    return field / field.max()


def field_extent(field: torch.Tensor) -> tuple[int, int]:
    """Height and width (pixels) of the box around the non-zero part of a receptive field."""
    rows, cols = torch.nonzero(field > 0, as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def plot_receptive_fields(fields: dict[str, torch.Tensor], patch_size: int, row: int, col: int) -> plt.Figure:
    """One panel per stem: the pixels token (row, col) depends on, its own patch outlined."""
    fig, axes = plt.subplots(1, len(fields), figsize=(3.3 * len(fields), 3.5))
    for ax, (name, field) in zip(np.atleast_1d(axes), fields.items(), strict=True):
        ax.imshow(field.pow(0.5), cmap="magma", vmin=0, vmax=1)  # square root: the faint edges stay visible
        ax.add_patch(plt.Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                                   fill=False, ec="cyan", lw=1.2))
        h, w = field_extent(field)
        ax.set_title(f"{name}\nsees {h}x{w} px", fontsize=9)
        ax.set(xticks=[], yticks=[])
    fig.suptitle(f"which pixels token ({row}, {col}) depends on (its own {patch_size}x{patch_size} patch in cyan)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def spt_views(image: torch.Tensor) -> torch.Tensor:
    """The five images vit-pytorch's SPT stacks before cutting patches: the image and its 1-pixel shifts
    right, left, down and up (zero where a shift uncovers the border). (5, 3, H, W)."""
    shifts = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))  # as vit_for_small_dataset.SPT pads
    return torch.stack([image, *(F.pad(image, shift) for shift in shifts)])


def plot_spt_views(image: torch.Tensor, source: str | None = None) -> plt.Figure:
    """The image, then each shifted copy minus the image: what SPT adds to a token is mostly its edges."""
    views = spt_views(normalize(image[None])[0])
    titles = ["the image", "shifted right", "shifted left", "shifted down", "shifted up"]
    fig, axes = plt.subplots(1, 5, figsize=(13, 3))
    axes[0].imshow(as_image(views[0]))
    for ax, view in zip(axes[1:], views[1:], strict=True):
        diff = (view - views[0]).abs().mean(0)
        ax.imshow(diff, cmap="gray_r", vmin=0, vmax=float(diff.quantile(0.99)))
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title if title == "the image" else f"{title} - image", fontsize=9)
        ax.set(xticks=[], yticks=[])
    return finish(fig, (), source)


def lsa_view(weights: torch.Tensor, sharpen: float = 1.0) -> torch.Tensor:
    """Attention weights (..., n, n) as locality self-attention would mix the same scores: each token's own score
    masked out (the diagonal set to -inf) and the scores multiplied by `sharpen` (LSA learns this temperature;
    > 1 is sharper), softmaxed again. Scores are log(weights) up to a constant per row, which softmax ignores."""
    scores = weights.clamp_min(1e-12).log() * sharpen
    eye = torch.eye(weights.shape[-1], dtype=torch.bool, device=weights.device)
    return scores.masked_fill(eye, -torch.inf).softmax(-1)


def self_attention_share(weights: torch.Tensor) -> float:
    """The mean weight a token gives itself (the diagonal of (..., n, n) attention weights)."""
    return float(weights.diagonal(dim1=-2, dim2=-1).mean())


def peak_share(weights: torch.Tensor) -> float:
    """The mean over tokens of the largest weight a token gives any token: 1/n for perfectly flat attention."""
    return float(weights.amax(-1).mean())


def plot_lsa(weights: dict[str, torch.Tensor], title: str) -> plt.Figure:
    """Attention matrices (one head, one photo) side by side, each titled with its self and peak weights."""
    fig, axes = plt.subplots(1, len(weights), figsize=(4 * len(weights), 4.2))
    for ax, (name, w) in zip(np.atleast_1d(axes), weights.items(), strict=True):
        ax.imshow(w, cmap="viridis", vmin=0, vmax=float(w.max()))
        ax.set_title(f"{name}\non itself {self_attention_share(w):.3f}, peak {peak_share(w):.3f} "
                     f"(flat: {1 / w.shape[-1]:.3f})", fontsize=9)
        ax.set(xlabel="key token", ylabel="query token")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The ablation: recorded runs, one row each

ABLATION_RECORD = Path(__file__).parent / "pretrained" / "ablation-cpu.csv"  # what benchmarks/ablation.py recorded
# the second round (issue 31's search for a steadier cpu recipe, and the presets it changed) is recorded apart: notebook
# 05 draws the first round from ABLATION_RECORD and the second from SEARCH_RECORD
SEARCH_RECORD = ABLATION_RECORD.with_name("search-cpu.csv")
ABLATION_BASE = "cpu-plain"  # the plain ViT every row starts from
CPU_ROW = ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=21", "model.heads=4"]  # cpu
# the second round's changes to it: the tokens' mean, full attention, a depthwise convolution in every MLP
SECOND_ROUND = ["model.pool=mean", "model.attention=full", "model.kv_init=uniform", "model.mlp=local"]
DATA_CURVE = (2000, 4000, 8000)  # training photos of the data curve's smaller points (16,000: the whole split)
ABLATION_ROWS = {  # name: the settings changed from the base preset (python -m vitlib train --set KEY=VALUE)
    "cpu-plain": [],
    "conv-stem": ["model.stem=conv"],
    "conv-stem-full": ["model.stem=conv", "model.attention=full", "model.kv_init=uniform"],
    "conv-stem-mix": ["model.stem=conv", "augment.mixup=0.2", "augment.cutmix=1.0"],
    "spt-lsa": ["model.stem=spt", "model.attention=lsa"],  # vit-pytorch's small-data ViT (vit_for_small_dataset)
    # higher resolution for the same token count: patch 16 is a 4-layer conv stem; fewer epochs to fit ~15 min
    "conv-112px-p16-14ep": ["model.stem=conv", "model.image_size=112", "model.patch_size=16", "epochs=14"],
    "conv-96px-p16-18ep": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18"],
    "conv-96px-p16-18ep-b64": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18",
                               "batch_size=64"],  # twice the optimiser steps in the same time
    "conv-80px-p16-22ep": ["model.stem=conv", "model.image_size=80", "model.patch_size=16", "epochs=22"],
    # the reference CNN: the same stem, 6 residual conv blocks instead of the transformer, the same budget
    "cnn-96px-18ep": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                      "epochs=18"],
    "cnn-96px-36ep": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                      "epochs=36"],  # twice as fast per image as the ViT: the same 15 minutes is twice the epochs
    # the hour-long CPU budget: the then 15-minute winner (18 epochs, eight heads), four times the epochs
    "conv-96px-p16-72ep": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=72"],
    # the cache at 112 px: crops are resampled down to 96 px instead of blown up from a 96 px cache
    "conv-96px-p16-18ep-cache112": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18",
                                    "cache_size=112"],
    # twice the learning rate: the 18-epoch run is still learning when the schedule ends (train acc 0.90)
    "conv-96px-p16-18ep-lr2e-3": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18",
                                  "lr=2e-3"],
    "conv-96px-p16-18ep-lr5e-4": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18",
                                  "lr=5e-4"],  # and half of it
    # four heads of 32 dimensions instead of eight of 16 (the usual head width of small ViTs)
    "conv-96px-p16-18ep-heads4": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=18",
                                  "model.heads=4"],
    "conv-96px-p16-22ep-heads4": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=22",
                                  "model.heads=4"],  # four heads train faster: more epochs in 15 minutes
    "conv-96px-p16-21ep-heads4": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=21",
                                  "model.heads=4"],  # one epoch fewer: inside 15 minutes on a slow run too
    # full attention where n = 37 < k = 64 (Linformer compresses nothing): do its learned E and F pay? (heads4 22 ep)
    "conv-96px-p16-22ep-heads4-full": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=22",
                                       "model.heads=4", "model.attention=full", "model.kv_init=uniform"],
    # the hour-long recipe overfits under 70-100 % crops (train acc 0.98): crops of 35-100 % of the area
    "conv-96px-p16-72ep-crop35": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=72",
                                  "augment.scale=[0.35, 1.0]"],
    # the same hour with the cpu preset's four heads (about 1.1x as fast): 80 epochs instead of 72
    "conv-96px-p16-80ep-heads4-crop35": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=80",
                                         "model.heads=4", "augment.scale=[0.35, 1.0]"],
    # training seeds 1 and 2 of the rows notebook 05 draws conclusions from (the split stays fixed): the seed spread
    "cnn-96px-36ep-seed1": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                            "epochs=36", "seed=1"],
    "cnn-96px-36ep-seed2": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                            "epochs=36", "seed=2"],
    "conv-96px-p16-21ep-heads4-seed1": ["model.stem=conv", "model.image_size=96", "model.patch_size=16",
                                        "epochs=21", "model.heads=4", "seed=1"],
    "conv-96px-p16-21ep-heads4-seed2": ["model.stem=conv", "model.image_size=96", "model.patch_size=16",
                                        "epochs=21", "model.heads=4", "seed=2"],
    # DeiT: the cpu recipe with a distillation token, taught by the shipped reference CNN (vitlib/pretrained/cnn-cpu.pt,
    # row cnn-96px-36ep-seed1) on every batch; the teacher's forward pass costs about a fifth of the speed, so 16 epochs
    # fit the 15 minutes where 21 did
    "deit-96px-p16-16ep-heads4": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=16",
                                  "model.heads=4", "model.distill=true", "teacher=cnn"],
    "deit-96px-p16-16ep-heads4-seed1": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=16",
                                        "model.heads=4", "model.distill=true", "teacher=cnn", "seed=1"],
    "deit-96px-p16-16ep-heads4-seed2": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=16",
                                        "model.heads=4", "model.distill=true", "teacher=cnn", "seed=2"],
    # DeiT for the hour: cpu-long (80 epochs, crops of 35-100 %) with the teacher; its forward pass leaves 68 epochs
    "deit-96px-p16-68ep-heads4-crop35": ["model.stem=conv", "model.image_size=96", "model.patch_size=16",
                                         "epochs=68", "model.heads=4", "augment.scale=[0.35, 1.0]",
                                         "model.distill=true", "teacher=cnn"],
    # issue 31's search for a steadier cpu recipe: the cpu preset (row conv-96px-p16-21ep-heads4) with one change.
    # The tokens' mean instead of the class token (the "better plain ViT" recipe, CCT's pooling, the DeiT III head)
    "cpu-meanpool": [*CPU_ROW, "model.pool=mean"],  # (recorded in SEARCH_RECORD, as every row named SEARCH_ROWS)
    # and full attention beside it: Linformer's k = 64 projects 37 keys up to 64, it compresses nothing here
    "cpu-full-meanpool": [*CPU_ROW, "model.pool=mean", "model.attention=full", "model.kv_init=uniform"],
    # locality in every block's MLP: a 3x3 depthwise convolution between its two layers (LocalViT), on cpu-full-meanpool
    "cpu-full-meanpool-local": [*CPU_ROW, *SECOND_ROUND],
    # an exponential moving average of the weights (decay 0.998: about the last 4 of 21 epochs' 2,625 steps), validated
    # and saved as the model: against the end-of-run noise behind the seed spread; on the ViT and on the reference CNN
    "cpu-full-meanpool-local-ema": [*CPU_ROW, *SECOND_ROUND, "ema=0.998"],
    "cnn-96px-36ep-ema": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                          "epochs=36", "ema=0.998"],
    # training seeds 1 and 2 of the search's best single run (0.9002 / 0.2575), the split fixed: does it hold?
    **{f"cpu-full-meanpool-local-seed{seed}": [*CPU_ROW, *SECOND_ROUND, f"seed={seed}"] for seed in (1, 2)},
    # the hour-long recipe (cpu-long: 80 epochs, crops of 35-100 %, row conv-96px-p16-80ep-heads4-crop35) with the
    # search's changes (mean pooling, full attention, the depthwise convolution in every MLP): the ViT to ship
    "cpu-long-full-meanpool-local": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=80",
                                     "model.heads=4", "augment.scale=[0.35, 1.0]", *SECOND_ROUND],
    # the data curve: the cpu recipe (21 epochs) and the reference CNN (36 epochs) on nested subsets of the 16,000
    # training photos, validated on the same 4,000; at 16,000 they are conv-96px-p16-21ep-heads4 and cnn-96px-36ep
    **{f"data-{n}-vit": ["model.stem=conv", "model.image_size=96", "model.patch_size=16", "epochs=21",
                         "model.heads=4", f"train_images={n}"] for n in DATA_CURVE},
    **{f"data-{n}-cnn": ["model.family=cnn", "model.stem=conv", "model.image_size=96", "model.patch_size=16",
                         "epochs=36", f"train_images={n}"] for n in DATA_CURVE},
}
SEARCH_ROWS = ("cpu-meanpool", "cpu-full-meanpool", "cpu-full-meanpool-local", "cpu-full-meanpool-local-ema",
               "cnn-96px-36ep-ema", "cpu-full-meanpool-local-seed1", "cpu-full-meanpool-local-seed2",
               "cpu-long-full-meanpool-local")  # SEARCH_RECORD


def record_of(name: str) -> Path:
    """The CSV row `name`'s run is recorded in: SEARCH_RECORD for the search's rows, else ABLATION_RECORD."""
    return SEARCH_RECORD if name in SEARCH_ROWS else ABLATION_RECORD


DATA_CURVE_FULL = {"vit": "conv-96px-p16-21ep-heads4", "cnn": "cnn-96px-36ep"}  # the curve's points at all 16,000


def ablation_command(name: str, data: str) -> list[str]:
    """The command line that trains ablation row `name` on `data` into runs/ablation/<name>/."""
    sets = [arg for setting in ABLATION_ROWS[name] for arg in ("--set", setting)]
    return ["python", "-m", "vitlib", "train", "--preset", ABLATION_BASE, *sets, "--data", data,
            "--run-dir", f"runs/ablation/{name}", "--no-progress"]


def command_for_you(command: str) -> str:
    """A recorded command as a reader runs it: its `--data` path (the recording machine's) becomes `<your folder>`."""
    return re.sub(r"--data (\"[^\"]*\"|'[^']*'|\S+)", "--data <your folder>", command)


def row_recipe(name: str) -> Preset:
    """The recipe ablation row `name` trains: the ABLATION_BASE preset with the row's settings."""
    return with_text_settings(get_preset(ABLATION_BASE), ABLATION_ROWS[name])


def preset_of_row(name: str) -> str | None:
    """The shipped preset whose recipe ablation row `name` is (e.g. "cpu"), or None."""
    if name not in ABLATION_ROWS:
        return None
    recipe = row_recipe(name)
    return next((p.name for p in PRESETS.values() if recipe.replace(name=p.name, about=p.about) == p), None)


# Colours of the ablation plots: tab20 without its two greys (grey means "the other runs"), each run keeping its own
# colour in every plot (by its place in ABLATION_ROWS), so a run is the same line from one figure to the next.
RUN_COLORS = [c for i, c in enumerate(plt.cm.tab20.colors) if i not in (14, 15)]


def run_colors(names) -> dict:
    """A colour for each of `names`: its own (by its place in ABLATION_ROWS), unless another of `names` has it."""
    order = {name: i for i, name in enumerate(ABLATION_ROWS)}
    colors, used = {}, set()
    for k, name in enumerate(names):
        i = order.get(name, len(order) + k) % len(RUN_COLORS)
        while i in used and len(used) < len(RUN_COLORS):
            i = (i + 1) % len(RUN_COLORS)
        used.add(i)
        colors[name] = RUN_COLORS[i]
    return colors


def best_run(table: pd.DataFrame) -> str:
    """The row of an ablation_table with the highest validation accuracy (ties: the lower log loss)."""
    return table.sort_values(["val acc", "val log loss"], ascending=[False, True]).index[0]


SEED_SUFFIX = re.compile(r"-seed(\d+)$")  # rows that repeat another row's recipe with another training seed


def recipe_name(run: str) -> str:
    """The row a seed repeat repeats (`conv-96px-p16-21ep-heads4-seed1` -> `conv-96px-p16-21ep-heads4`)."""
    return SEED_SUFFIX.sub("", run)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per recipe of an ablation_table: how many training seeds ran it (the split stays fixed), and the mean
    and standard deviation over them of the validation accuracy and log loss, and of the minutes. A difference
    between two recipes is real only where it exceeds these spreads."""
    groups = table.groupby(table.index.map(recipe_name), sort=False)
    out = pd.DataFrame({
        "model": groups["model"].first(),
        "seeds": groups.size(),
        "val acc": groups["val acc"].mean(), "acc sd": groups["val acc"].std(ddof=1),
        "val log loss": groups["val log loss"].mean(), "loss sd": groups["val log loss"].std(ddof=1),
        "minutes": groups["minutes"].mean(),
    })
    return out.rename_axis("recipe").round({"val acc": 4, "acc sd": 4, "val log loss": 4, "loss sd": 4, "minutes": 1})


def distinct_recipes(table: pd.DataFrame) -> pd.DataFrame:
    """An ablation_table without its seed repeats and its data-curve rows: one line per recipe trained on all the
    training photos with the first seed, the lines the ablation's conclusions compare."""
    repeat = table.index.map(lambda name: bool(SEED_SUFFIX.search(name))) | table.index.str.startswith("data-")
    return table[~repeat]


# The ablation row that trained each shipped teacher (checkpoints.PRETRAINED).
TEACHER_ROWS = {"cnn": "cnn-96px-36ep-seed1"}


def distillation_table(table: pd.DataFrame) -> pd.DataFrame:
    """One line per distilled (DeiT) row of an ablation_table, the student beside its teacher: each one's validation
    accuracy, log loss and minutes. The teacher ships in vitlib/pretrained/, so a learner's run takes the student's
    minutes; the teacher's own minutes are what it took to train once."""
    lines = []
    for name in table.index[table["model"] == "DeiT"]:
        teacher = row_recipe(name).teacher
        source = TEACHER_ROWS.get(teacher)
        if source not in table.index:
            raise ValueError(f"row {name}: its teacher {teacher!r} has no recorded run in the table (TEACHER_ROWS)")
        student, taught_by = table.loc[name], table.loc[source]
        lines.append({"run": name, "teacher": source,
                      "student acc": student["val acc"], "teacher acc": taught_by["val acc"],
                      "student log loss": student["val log loss"], "teacher log loss": taught_by["val log loss"],
                      "student minutes": student["minutes"], "teacher minutes": taught_by["minutes"]})
    return pd.DataFrame(lines).set_index("run")


def ablation_runs() -> pd.DataFrame:
    """The recorded ablation: one line per epoch of every run, with its `run`, `device`, `data` and `command`."""
    return reference_runs(ABLATION_RECORD)


def search_runs() -> pd.DataFrame:
    """The second round (SEARCH_ROWS), recorded as ablation_runs() records the first."""
    return reference_runs(SEARCH_RECORD)


FIRST_CPU_ROW = "conv-96px-p16-21ep-heads4"  # the first round's 15-minute winner, the recipe the second round changed


def search_table(runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The second round as an ablation_table (`runs`, by default search_runs()), each row's changes counted from the
    first round's cpu recipe (FIRST_CPU_ROW) rather than from the plain ViT."""
    rows = {name: [s for s in ABLATION_ROWS[name] if s not in CPU_ROW] for name in SEARCH_ROWS}
    return ablation_table(search_runs() if runs is None else runs, base=row_recipe(FIRST_CPU_ROW), rows=rows)


def ablation_table(runs: pd.DataFrame | None = None, base: Preset | None = None,
                   rows: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One line per recorded run (`runs`, by default ablation_runs()): what it changed from `base` (by default
    the ABLATION_BASE preset) as `rows` (by default ABLATION_ROWS) says, the model (ViT, CNN, or DeiT: a ViT taught
    by a teacher) and its parameters, and
    metrics.run_summary of its history (best epoch by validation log loss), with its speed and wall time."""
    runs = ablation_runs() if runs is None else runs
    base = get_preset(ABLATION_BASE) if base is None else base
    rows = ABLATION_ROWS if rows is None else rows
    lines = []
    for name, history in runs.groupby("run", sort=False):
        settings = rows.get(name, [])
        preset = with_text_settings(base, settings)
        summary = run_summary(history.sort_values("epoch"))
        lines.append({
            "run": name,
            "model": "CNN" if preset.model.family == "cnn" else "DeiT" if preset.teacher else "ViT",
            "changes": ", ".join(settings) or "(none)",
            "params (M)": round(count_parameters(build_model(preset.model)) / 1e6, 2),
            **{k: summary[k] for k in ("epochs", "best epoch", "val acc", "val log loss")},
            "img/s": round(float(history["images_per_s"].median())),
            "minutes": round(float(history["elapsed_s"].max()) / 60, 1),
            "device": history["device"].iloc[0],
        })
    return pd.DataFrame(lines).set_index("run")


def plot_ablation(runs: pd.DataFrame, cnn: tuple[str, ...] = (), highlight: tuple[str, ...] = (),
                  source: str | None = None) -> plt.Figure:
    """Validation accuracy (left) and log loss (right) against wall time (log scale: 15-minute and hour-long runs
    side by side). The runs named in `highlight` (default: all) each get a colour, a marker and a legend entry; the
    others are drawn thin and grey, for context. The runs named in `cnn` are dashed. A dotted line marks 15 minutes,
    the `cpu` preset's budget."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 5.4), layout="constrained")
    groups = list(runs.groupby("run", sort=False))
    shown = [name for name, _ in groups if not highlight or name in highlight]
    colors = run_colors(shown)
    markers = {name: "os^D"[i // len(RUN_COLORS) % 4] for i, name in enumerate(shown)}  # colours repeat: markers don't
    for name, h in groups:
        h = h.sort_values("epoch")
        if name in colors:
            preset = preset_of_row(name)
            label = f"{name} (the `{preset}` preset)" if preset else name
            style = dict(color=colors[name], marker=markers[name], ms=2.5, lw=1.5, label=label, zorder=3)
        else:
            style = dict(color="0.75", lw=0.8, zorder=1)
        style["ls"] = "--" if name in cnn else "-"
        ax_acc.plot(h["elapsed_s"] / 60, h["val_acc"], **style)
        ax_loss.plot(h["elapsed_s"] / 60, h["val_loss"], **style)
    for ax in (ax_acc, ax_loss):
        ax.axvline(15, color="gray", ls=":", lw=1)
        ax.set(xlabel="minutes (cache, training and validation; log scale)", xscale="log")
        ticks = [t for t in (1, 2, 5, 10, 15, 30, 60) if t <= runs["elapsed_s"].max() / 60 * 1.2]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3)
    ax_acc.set(ylabel="validation accuracy", title="accuracy against time")
    ax_loss.set(ylabel="validation log loss", title="log loss against time")
    handles, labels = ax_acc.get_legend_handles_labels()  # one legend for both, below them: it covers no curve
    if len(shown) < len(groups):
        handles.append(plt.Line2D([], [], color="0.75", lw=0.8))
        labels.append(f"the {len(groups) - len(shown)} other runs")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if source:
        fig.suptitle(source, fontsize=10)
    return fig


def data_curve(table: pd.DataFrame, full: int = 16_000) -> pd.DataFrame:
    """Validation accuracy and log loss of the ViT and the CNN against the number of training photos, from an
    ablation_table holding the data-N-vit / data-N-cnn rows (and, at `full` photos, DATA_CURVE_FULL's rows): one
    line per size that both models have, columns like ("val acc", "vit")."""
    rows = {}
    for kind, at_full in DATA_CURVE_FULL.items():
        for n in (*DATA_CURVE, full):
            name = at_full if n == full else f"data-{n}-{kind}"
            if name in table.index:
                rows[(n, kind)] = table.loc[name, ["val acc", "val log loss", "minutes"]]
    curve = pd.DataFrame(rows).T.rename_axis(["training photos", "model"]).unstack("model")
    return curve.dropna().astype(float)


def plot_data_curve(curve: pd.DataFrame, source: str | None = None) -> plt.Figure:
    """Validation accuracy (left) and log loss (right) of both models against training photos (log scale)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("val acc", "val log loss"), strict=True):
        for kind, style in (("vit", "o-"), ("cnn", "s--")):
            ax.plot(curve.index, curve[(metric, kind)], style, label="ViT (first cpu recipe)" if kind == "vit" else
                    "reference CNN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(curve.index), [f"{n:,}" for n in curve.index])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(xlabel="training photos (the same 4,000 validate)", ylabel=f"validation {metric[4:]}")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against data")
    axes[1].set_title("log loss against data")
    return finish(fig, (axes[0],), source)


# ---------------------------------------------------------------------------------------------
# Linformer against full attention where n > k


def training_speed(preset: Preset, seconds: float = 2.0, device=None) -> float:
    """Images per second of `preset`'s full training steps (bench.make_step, batch augmentation included) on random
    images, for about `seconds` after two warm-up steps: a measurement of this machine, to compare within one run."""
    device = devices.pick_device(device)
    torch.manual_seed(0)
    size, n = preset.model.image_size, 2 * preset.batch_size
    images = ImageCache(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8), torch.arange(n) % 2,
                        torch.arange(n), [f"{i}.jpg" for i in range(n)])
    step = make_step(build_model(preset.model).to(device), preset, device)
    return throughput(vitlib_batches(images, device, preset.batch_size, preset.augment), seconds, step, device)
