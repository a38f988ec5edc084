"""vitlib.scratch is notebook 07's ViT and training loop: the same weights, logits and history as the cells tagged
`your-vit`, so the solutions can use it without notebook 07 beside them."""

import json
import time
import types
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitlib import augment, metrics, scratch
from vitlib.device import autocast

CHAPTER = Path(__file__).resolve().parent.parent / "notebooks" / "07_build_it_yourself.ipynb"


def notebook_07(device):
    """Notebook 07's `your-vit` cells run in a namespace of their own (the imports cell, with its %config, left out:
    its names are given here)."""
    space = {"torch": torch, "nn": nn, "F": F, "rearrange": rearrange, "pd": pd, "time": time, "augment": augment,
             "metrics": metrics, "autocast": autocast, "device": device}
    tagged = [c for c in json.loads(CHAPTER.read_text())["cells"] if "your-vit" in c["metadata"].get("tags", [])]
    for cell in tagged[1:]:
        exec("".join(cell["source"]), space)  # noqa: S102 (the project's own notebook)
    assert {"PatchEmbedding", "Attention", "Block", "ViT", "evaluate", "train_by_hand"} <= set(space)
    return types.SimpleNamespace(**space)


def tiny_split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(images=torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                                 labels=torch.arange(n) % 2)


def test_the_module_builds_the_same_vit_as_notebook_07():
    mine = notebook_07(torch.device("cpu"))
    shape = {"image_size": 16, "patch_size": 4, "dim": 32, "depth": 2, "heads": 4, "mlp_dim": 64}
    torch.manual_seed(0)
    theirs = mine.ViT(**shape)
    torch.manual_seed(0)
    ours = scratch.ViT(**shape)
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    for name, value in theirs.state_dict().items():
        assert torch.equal(value, ours.state_dict()[name]), name
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_the_module_trains_as_notebook_07_trains(capsys):
    mine = notebook_07(torch.device("cpu"))
    train, val = tiny_split(40, 1), tiny_split(20, 2)
    histories = []
    for build, loop in ((mine.ViT, mine.train_by_hand), (scratch.ViT, scratch.train_by_hand)):
        torch.manual_seed(0)
        model = build(image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64)
        histories.append(loop(model, train, val, epochs=2, batch=16)[["val acc", "val log loss"]])
    pd.testing.assert_frame_equal(histories[0], histories[1])
    assert capsys.readouterr().out.count("epoch 2: validation accuracy") == 2
