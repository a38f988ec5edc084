"""Occlusion maps: the drop in P(true class) when each patch is greyed out."""

import pytest
import torch
from torch import nn

from vitlib import occlusion
from vitlib.augment import normalize
from vitlib.models import build_model
from vitlib.presets import get_preset


class TopLeftBrightness(nn.Module):
    """A model that looks at one patch only: the top-left 4x4's mean brightness decides 'dog'."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # so that the model has a device

    def forward(self, x):
        score = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * 5 + self.anchor
        return torch.stack([-score, score], dim=1)


def test_only_the_patch_the_model_reads_changes_its_answer():
    images = torch.full((2, 3, 12, 12), 255, dtype=torch.uint8)  # white: the model says dog
    maps = occlusion.occlusion_map(TopLeftBrightness(), images, torch.tensor([1, 0]), patch_size=4)
    assert maps.shape == (2, 3, 3)
    assert maps[0, 0, 0] > 5  # greying the top-left patch takes the dog away: evidence for the true class
    assert maps[1, 0, 0] < -5  # for a photo labelled cat, the same patch was evidence against it
    rest = maps.flatten(1)[:, 1:]
    assert torch.all(rest.abs() < 1e-6)  # every other patch: no change


def test_the_map_is_computed_in_eval_mode_and_leaves_the_mode_as_it_was():
    seen = []
    model = TopLeftBrightness()
    model.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    model.train()
    occlusion.occlusion_map(model, torch.zeros((1, 3, 8, 8), dtype=torch.uint8), torch.tensor([0]), patch_size=4)
    assert seen and not any(seen) and model.training


def test_the_untouched_photo_is_the_reference():
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    model = TopLeftBrightness()
    maps = occlusion.occlusion_map(model, images, torch.tensor([1]), patch_size=4, batch_size=2)
    grey = images.clone()
    grey[:, :, :4, :4] = occlusion.GREY
    p = [model(normalize(x)).softmax(-1)[0, 1] for x in (images, grey)]
    odds = [torch.log(q / (1 - q)) for q in p]
    torch.testing.assert_close(maps[0, 0, 0], odds[0] - odds[1])


def test_log_odds_stay_finite_where_the_probability_rounds_to_one():
    logits = torch.tensor([[0.0, 40.0], [1.0, 0.0]])
    torch.testing.assert_close(occlusion.log_odds(logits, 1), torch.tensor([40.0, -1.0]))
    three = torch.tensor([[0.0, 0.0, 0.0]])  # p = 1/3 against 2/3: log(1/2)
    torch.testing.assert_close(occlusion.log_odds(three, 0), torch.log(torch.tensor([0.5])))


@pytest.mark.parametrize("images, patch, message", [
    (torch.zeros((1, 3, 8, 8)), 4, "must be uint8"),
    (torch.zeros((1, 3, 9, 9), dtype=torch.uint8), 4, "does not divide"),
])
def test_bad_inputs_are_refused_in_one_line(images, patch, message):
    with pytest.raises(ValueError, match=message):
        occlusion.occlusion_map(TopLeftBrightness(), images, torch.tensor([0]), patch_size=patch)


@pytest.mark.parametrize("label", [-1, 2, 9])
def test_a_label_that_is_not_one_of_the_model_s_classes_is_refused_not_read_as_another(label):
    """label -1 once gave a map of the last class, silently."""
    torch.manual_seed(0)
    model = build_model(get_preset("sample").model)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"label must be a class of the model's 2 \(0 to 1\)"):
        occlusion.occlusion_map(model, images, torch.tensor([label]), 8)
