"""The GPU check's whole path (pack, unpack, both measurements, the JSON) on the synthetic sample, on the CPU.

The real check runs on a GPU machine without network; this dry run is how CI knows it still works there.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(gpu_check, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("gpu-check") / "gpu-check.json"
        returned = gpu_check.dry_run(out)
    finally:
        torch.set_num_threads(threads)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))  # what it returns is what it wrote
    return written


def test_the_dry_run_packs_every_photo_and_keeps_the_sample_synthetic(result):
    assert result["dry_run"] is True
    assert result["pack"]["photos"] == 130 and result["pack"]["size"] == 64
    assert result["pack"]["data_id"] == {"kind": "sample", "name": "sample-zips"}
    assert result["device"].startswith("cpu")


def test_the_seed_recipe_is_timed_on_its_second_epoch(result):
    seed = result["seed_recipe"]
    assert seed["preset"] == "seed" and seed["epoch_s"] > 0 and seed["images_per_s"] > 0
    assert 0 <= seed["val_acc"] <= 1


def test_the_fresh_run_goes_from_the_zips_to_the_end_of_the_preset(result):
    run = result["gpu_preset"]
    assert run["epochs_run"] == run["epochs_planned"] == 3 and not run["stopped_by_budget"]
    assert run["history"]["epoch"] == [1, 2, 3]
    assert run["final_val_acc"] == pytest.approx(run["history"]["val_acc"][-1], abs=1e-4)
    assert run["best_val_log_loss"] == pytest.approx(min(run["history"]["val_loss"]), abs=1e-4)
    assert run["seconds_in_all"] >= run["extract_s"] + run["cache_s"]
    reached = run["seconds_to_0.683"]
    first = next((i for i, acc in enumerate(run["history"]["val_acc"]) if acc >= 0.683), None)
    assert (reached is None) == (first is None)
    if reached is not None:
        assert reached == pytest.approx(run["extract_s"] + run["history"]["elapsed_s"][first], abs=0.05)
    assert result["seconds_in_all"] >= run["seconds_in_all"]


def test_the_compiled_step_is_measured_against_the_eager_one(result, inductor_compiler):
    step = result["compiled_step"]
    assert step["preset"] == "sample" and step["eager_images_per_s"] > 0
    if inductor_compiler is None:
        assert step["compile_error"]  # the check goes on without it, the error recorded in the JSON
        pytest.skip("no C++ compiler for torch.compile's CPU backend ($CXX, else g++): the compiled step is not "
                    "measured here (its error is recorded, checked above)")
    assert "compile_error" not in step, step.get("compile_error")
    assert step["compiled_images_per_s"] > 0 and step["compile_s"] >= 0
    assert step["speedup"] == pytest.approx(step["compiled_images_per_s"] / step["eager_images_per_s"], abs=1e-3)
