"""vitlib.predict: P(dog) with and without flip TTA, in eval mode, and a split's predictions as one table."""

import numpy as np
import pytest
import torch

from vitlib import device as devices
from vitlib import predict
from vitlib.augment import normalize
from vitlib.cache import ImageCache
from vitlib.models import build_model
from vitlib.presets import get_preset

MODEL = get_preset("sample").model


def test_predict_proba_is_the_softmax_in_eval_mode_and_tta_averages_the_mirror():
    torch.manual_seed(0)
    model = build_model(MODEL.replace(dropout=0.5)).train()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    plain = predict.predict_proba(model, x, batch_size=2, tta=False, device=torch.device("cpu"))
    assert model.training  # left as it was found
    model.eval()
    with torch.no_grad():
        expected = model(normalize(x)).softmax(-1)[:, 1].numpy()
        mirrored = model(normalize(x).flip(-1)).softmax(-1)[:, 1].numpy()
    amp = devices.autocast_dtype(torch.device("cpu"))  # bf16 autocast on CPUs that have it: looser
    tol = 2e-2 if amp else 1e-5
    np.testing.assert_allclose(plain, expected, atol=tol)
    tta = predict.predict_proba(model, x, tta=True, device=torch.device("cpu"))
    np.testing.assert_allclose(tta, (expected + mirrored) / 2, atol=tol)
    assert plain.shape == (5,) and ((plain >= 0) & (plain <= 1)).all()
    assert predict.predict_proba(model, x[:0]).shape == (0,)


def test_without_mixed_precision_the_probabilities_are_fp32_exact():
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    p = predict.predict_proba(model, x, tta=False, device=torch.device("cpu"), mixed_precision=False)
    with torch.no_grad():
        np.testing.assert_allclose(p, model(normalize(x)).softmax(-1)[:, 1].numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tta", [False, True])
def test_a_split_s_table_names_each_image_with_its_id_label_and_raw_probability(tta):
    torch.manual_seed(0)
    model = build_model(MODEL)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    cache = ImageCache(images, torch.tensor([1, 0, -1]), torch.tensor([7, 3, 9]), ["dog.7.jpg", "cat.3.jpg", "9.jpg"])
    table = predict.predict_split(model, cache, batch_size=2, tta=tta, device=torch.device("cpu"))
    assert list(table.columns) == ["file", "id", "label", "p_raw"]
    assert list(table["file"]) == cache.files and list(table["id"]) == [7, 3, 9] and list(table["label"]) == [1, 0, -1]
    assert table["p_raw"].dtype == np.float64
    np.testing.assert_array_equal(table["p_raw"], predict.predict_proba(model, images, tta=tta).astype(np.float64))
