"""The benchmark: both pipelines measured on the same photos, and the time to a target from the zips."""

import pytest
import torch

from vitlib import bench, data, files, sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = sample.write_sample(tmp_path_factory.mktemp("src") / "tiny", n_train=64, n_test=4)
    return folder, data.prepare_data(folder, dest=tmp_path_factory.mktemp("data"), verbose=False)


@pytest.fixture(autouse=True)
def _quiet(tmp_path, monkeypatch):
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_seed_dataset_decodes_one_photo_at_224_px_with_its_label(tiny):
    _, ds = tiny
    files = sorted(p for p in ds.train_dir.iterdir())
    x, y = bench.SeedDataset(files, 224)[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y == data.parse_label(files[0].name)


def test_measure_reports_both_pipelines_with_ratios_to_the_seed(tiny):
    _, ds = tiny
    table = bench.measure(ds, seconds=0.2, subset=32, device=torch.device("cpu"))
    assert list(table["measure"]) == ["data"] * 3 + ["train"] * 3
    assert (table["images_per_s"] > 0).all()
    seed_rows = table.groupby("measure").head(1)  # each measure opens with the seed's own pipeline
    assert seed_rows["pipeline"].str.startswith("seed").all()
    for what, rows in table.groupby("measure"):  # each ratio is to the seed row of its own measure, to 0.1
        expected = rows["images_per_s"] / rows["images_per_s"].iloc[0]
        assert (rows["vs_seed"] - expected).abs().max() <= 0.05 + 1e-9, (what, rows.to_dict("records"))


def test_time_to_accuracy_starts_from_the_zips_and_stops_at_the_target(tiny, monkeypatch, tmp_path):
    folder, _ = tiny
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "user-data"))
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path / "user-runs"))
    got = bench.zip_to_accuracy(folder, target=0.0, preset="sample")
    assert got["epochs"] == 1 and got["seconds"] > 0 and got["seconds"] >= got["extract_s"] >= 0
    # extraction, cache and run all went to a temporary folder: nothing in the user's data or runs folders
    assert not (tmp_path / "user-data").exists() and not (tmp_path / "user-runs").exists()


def test_time_to_accuracy_refuses_a_folder_without_zips(tiny):
    _, ds = tiny
    with pytest.raises(ValueError, match="starts from the zips"):
        bench.zip_to_accuracy(ds.train_dir)


def test_step_seconds_times_the_training_step_fit_takes_on_any_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    before = model[1].weight.detach().clone()
    seconds = bench.step_seconds(model, image_size=8, batch=4, seconds=0.05, device="cpu", mixed_precision=False)
    assert seconds > 0 and not torch.equal(before, model[1].weight)  # it took optimiser steps: the weights moved
    with pytest.raises(ValueError):  # a recipe that does not exist is refused, as everywhere
        bench.step_seconds(model, image_size=8, preset="no-such-preset", seconds=0.05, device="cpu")


def test_throughput_measures_at_least_one_batch_however_short_the_time():
    """Before, --seconds 1e-9 measured nothing: 0 images a second, and NaN in the ratios of the JSON."""
    batches = iter([(torch.zeros(4, 1), torch.zeros(4))] * 3)
    rate = bench.throughput(batches, 1e-9, warmup=0)
    assert rate > 0 and rate == rate
