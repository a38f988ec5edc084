"""The paper's ViT family: parameters and FLOPs counted by code, against the published figures."""

import pytest
from torch import nn

from vitlib import family
from vitlib.models import ModelConfig, count_parameters


def test_flops_of_a_linear_layer_are_two_per_multiply_add():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert family.count_flops(model, image_size=4) == 2 * 3 * 4 * 4 * 5
    assert family.count_flops(model, image_size=4, batch=3) == 3 * 2 * 3 * 4 * 4 * 5


@pytest.mark.parametrize("name", ["ViT-Ti/16", "ViT-S/16"])
def test_the_family_matches_its_published_parameters_and_multiply_adds(name):
    member = family.VIT_FAMILY[name]
    model = family.family_model(name)
    assert count_parameters(model) / 1e6 == pytest.approx(member.published_params_m, rel=0.01)
    assert family.count_flops(model, 224) / 2e9 == pytest.approx(member.published_gmacs, rel=0.05)


def test_the_family_table_counts_our_models_at_their_own_size():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, attention="full")
    table = family.family_table({"tiny": cfg})
    assert list(table.index) == [*family.VIT_FAMILY, "tiny"]
    assert table.loc["tiny", "tokens"] == 17 and table.loc["tiny", "image px"] == 32
    assert table.loc["ViT-B/16", "params (M)"] == pytest.approx(86.6, rel=0.01)
    assert table["GFLOPs"].tolist() == pytest.approx((2 * table["GMACs"]).tolist(), abs=2e-3)
    # the family grows in both: more parameters and more work per image, Ti to L
    assert table["params (M)"].iloc[:4].is_monotonic_increasing and table["GMACs"].iloc[:4].is_monotonic_increasing
