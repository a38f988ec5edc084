"""The training loop: optimiser and schedule, atomic checkpoints, exact resume, refusing another recipe's run dir.

Training runs on a tiny synthetic sample (64 images at 32 px, three steps an epoch) on one CPU thread.
"""

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitlib import checkpoints, data, files, metrics, sample, train
from vitlib import device as devices
from vitlib import run_dir as folders
from vitlib.models import build_model
from vitlib.presets import Preset, PresetError, get_preset
from vitlib.run_dir import RunDir, RunExistsError, default_path

EPOCHS = 4
PRESET = get_preset("sample", epochs=EPOCHS)


# ---------------------------------------------------------------------------------------------
# Optimiser, schedule, prediction


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = build_model(PRESET.model)
    opt = train.make_optimizer(model, PRESET)
    decay, keep = opt.param_groups
    assert decay["weight_decay"] == PRESET.weight_decay and keep["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    assert {"pos_embedding", "cls_token"} <= kept
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


def test_a_distilled_vit_s_token_and_position_get_no_weight_decay_as_its_class_token():
    """DeiT and timm exempt the distillation token; the predicate was once written twice and exempted only the class
    token and positions, so dist_token and dist_pos were decayed towards zero."""
    model = build_model(PRESET.model.replace(distill=True))
    _, keep = train.make_optimizer(model, PRESET).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)].rsplit(".", 1)[-1] for p in keep["params"]}
    assert {"dist_token", "dist_pos", "cls_token", "pos_embedding"} <= kept


def test_the_schedule_warms_up_then_decays_to_zero():
    preset = get_preset("sample", epochs=4, warmup_epochs=1.0, lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=preset.lr)
    sched = train.make_scheduler(opt, preset, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)  # 1/10 of the peak: ten warm-up steps
    assert max(lrs) == pytest.approx(0.1) and int(np.argmax(lrs)) == 10
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # rising
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then falling
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_constant_schedule_keeps_the_rate():
    preset = get_preset("seed")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=preset.lr)
    sched = train.make_scheduler(opt, preset, steps_per_epoch=5)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(preset.lr)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkp")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["epoch"] == 1


def test_loading_refuses_pickled_code(tmp_path):
    """weights_only=True: a checkpoint from the internet cannot run code (here: hold an arbitrary object)."""
    path = tmp_path / "evil.pt"
    torch.save({"preset": PRESET}, path)
    with pytest.raises(checkpoints.CheckpointError, match="could run code from the file, so vitlib did not") as e:
        checkpoints.load_checkpoint(path)
    assert "weights_only" not in str(e.value)  # torch's advice to switch the protection off is not passed on


# ---------------------------------------------------------------------------------------------
# Whole runs on a tiny sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """64 synthetic images (51 train, 13 validation), prepared in a temporary data folder."""
    folder = sample.write_sample(tmp_path_factory.mktemp("src") / "tiny", n_train=64, n_test=4)
    return data.prepare_data(folder, dest=tmp_path_factory.mktemp("data"), verbose=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread for every run here: two fight each other on a busy 2-core machine (5x slower measured),
    and runs compared weight for weight must use the same thread count (it changes the order of sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Image caches go to tmp_path, not the repo's data/."""
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "data"))


def run_fit(preset: Preset, ds, run_dir, data=None, **kwargs) -> train.Run:
    data = data or train.prepare_training_data(ds, preset, "cpu")
    return train.fit(preset, data, run_dir=run_dir, progress=False, **kwargs)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One uninterrupted run of EPOCHS epochs."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(files.DATA_DIR_ENV, str(tmp_path_factory.mktemp("cache")))
        return run_fit(PRESET, tiny, tmp_path_factory.mktemp("runs") / "full")


def interrupt_after(monkeypatch, epoch: int) -> None:
    """Ctrl-C at the start of epoch `epoch` + 1, as a user stopping a notebook would."""
    real = train.train_one_epoch

    def one_epoch(*args, **kwargs):
        if args[4] == epoch + 1:  # train_one_epoch(state, data, augment, preset, epoch, ...)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", one_epoch)


def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(finished, tiny, tmp_path, monkeypatch,
                                                                          capsys):
    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_fit(PRESET, tiny, run_dir)
    assert "Interrupted during epoch 3; last.pt holds epoch 2" in capsys.readouterr().out
    assert checkpoints.load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    assert len(pd.read_csv(run_dir / "history.csv")) == 2

    resumed = run_fit(PRESET, tiny, run_dir)
    assert "resuming after epoch 2" in capsys.readouterr().out
    torch.testing.assert_close(resumed.model.state_dict(), finished.model.state_dict(), rtol=0, atol=0)
    columns = ["epoch", "train_loss", "train_acc", "lr", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(resumed.history[columns], finished.history[columns])
    a, b = (checkpoints.load_checkpoint(d / "last.pt") for d in (run_dir, finished.run_dir))
    torch.testing.assert_close(a["optimizer"], b["optimizer"], rtol=0, atol=0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == EPOCHS * 3


def test_the_checkpoint_holds_everything_to_resume(finished):
    ckpt = checkpoints.load_checkpoint(finished.run_dir / "last.pt")  # weights_only=True: plain data only
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "preset", "model_config", "history"):
        assert key in ckpt
    assert ckpt["epoch"] == EPOCHS and ckpt["preset"] == PRESET.to_dict()
    assert Preset.from_dict(ckpt["preset"]) == PRESET
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    torch.testing.assert_close(ckpt["model"], finished.model.state_dict())
    assert ckpt["data"].startswith("SYNTHETIC")  # what load_trained() uses to pass over sample runs
    assert sorted(p.name for p in finished.run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]  # no .tmp


def test_fit_takes_data_prepared_once_with_the_same_weights(finished, tiny, tmp_path):
    prepared = train.prepare_training_data(tiny, PRESET, torch.device("cpu"))
    run = run_fit(PRESET, tiny, tmp_path / "prepared", data=prepared)
    torch.testing.assert_close(run.model.state_dict(), finished.model.state_dict(), rtol=0, atol=0)
    assert run.data is prepared


def test_fit_refuses_data_prepared_for_another_resolution(tiny, tmp_path):
    prepared = train.prepare_training_data(tiny, PRESET, torch.device("cpu"))
    other = PRESET.replace(model=dataclasses.replace(PRESET.model, image_size=PRESET.model.image_size * 2))
    with pytest.raises(ValueError, match="prepare_training_data"):
        run_fit(other, tiny, tmp_path / "other", data=prepared)
    assert not (tmp_path / "other").exists()


def test_a_larger_cache_holds_the_training_photos_and_validation_stays_at_the_models_size(tiny, tmp_path):
    preset = PRESET.replace(cache_size=48, epochs=1)
    prepared = train.prepare_training_data(tiny, preset, torch.device("cpu"))
    plain = train.prepare_training_data(tiny, PRESET, torch.device("cpu"))
    assert (prepared.train.size, prepared.val.size) == (48, 32)
    assert prepared.train.files == plain.train.files and prepared.val.files == plain.val.files  # the same split
    torch.testing.assert_close(prepared.val.images, plain.val.images)
    run = run_fit(preset, tiny, tmp_path / "large", data=prepared)
    assert len(run.history) == 1 and np.isfinite(run.history["val_loss"]).all()
    with pytest.raises(ValueError, match="caches at 48 px and validates at 32 px"):
        run_fit(preset, tiny, tmp_path / "plain", data=plain)  # data cached at 32 px for a 48 px cache


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkp")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_the_best_checkpoint_is_the_lowest_validation_loss(finished):
    history = pd.read_csv(finished.run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    best = checkpoints.load_checkpoint(finished.run_dir / "best.pt")
    assert best["epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    model = finished.best_model()
    assert not model.training
    torch.testing.assert_close(model.state_dict(), best["model"])
    predictions = finished.val_predictions(model)
    assert list(predictions.columns) == ["file", "id", "label", "p_raw"] and len(predictions) == len(finished.data.val)
    assert metrics.log_loss(predictions["label"], predictions["p_raw"]) == pytest.approx(
        history["val_loss"].min(), abs=1e-6)


def test_the_split_is_fixed_and_disjoint(finished, tiny):
    train_files, val_files = set(finished.data.train.files), set(finished.data.val.files)
    assert not train_files & val_files and len(train_files | val_files) == 64
    expected = data.split_train_val(data.index_images(tiny), PRESET.val_fraction, PRESET.split_seed)
    assert val_files == set(expected.loc[expected["split"] == "val", "file"])


def test_a_finished_run_is_not_trained_again(finished, tiny, monkeypatch):
    before = (finished.run_dir / "last.pt").stat().st_mtime_ns
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    again = run_fit(PRESET, tiny, finished.run_dir)
    torch.testing.assert_close(again.model.state_dict(), finished.model.state_dict())
    assert len(again.history) == EPOCHS
    assert (finished.run_dir / "last.pt").stat().st_mtime_ns == before


def test_a_run_saved_before_a_setting_existed_still_resumes(finished, tiny, tmp_path, monkeypatch):
    """A checkpoint whose preset lacks a setting added since (here model.stem) is the same recipe, not another."""
    import shutil

    run_dir = tmp_path / "older"
    shutil.copytree(finished.run_dir, run_dir)
    ckpt = checkpoints.load_checkpoint(run_dir / "last.pt")
    del ckpt["preset"]["model"]["stem"]
    checkpoints.save_checkpoint(run_dir / "last.pt", ckpt)
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    again = run_fit(PRESET, tiny, run_dir)
    assert len(again.history) == EPOCHS


OTHERS = [get_preset("sample", epochs=EPOCHS, lr=1e-3), get_preset("cpu", epochs=EPOCHS, batch_size=16)]


@pytest.mark.parametrize("other", OTHERS, ids=["other-lr", "cpu"])
def test_a_run_dir_of_another_recipe_is_refused_and_left_alone(finished, tiny, other):
    files = {p.name: p.read_bytes() for p in finished.run_dir.iterdir()}
    with pytest.raises(RunExistsError, match="different recipe.*Nothing was overwritten"):
        run_fit(other, tiny, finished.run_dir)
    assert {p.name: p.read_bytes() for p in finished.run_dir.iterdir()} == files


def test_a_fresh_run_refuses_a_run_dir_that_holds_one(finished, tiny):
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_fit(PRESET, tiny, finished.run_dir, resume=False)


def test_a_run_folder_that_is_a_file_or_holds_other_things_is_refused_before_training(tiny, tmp_path, monkeypatch):
    """Once refused only when the first epoch was saved ("[Errno 17] File exists"), or accepted (`/`)."""
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("trained"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(RunExistsError, match=r"notes\.txt is a file, not a folder.*Nothing was written"):
        run_fit(PRESET, tiny, a_file)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    with pytest.raises(RunExistsError, match=r"holds 1 other thing\(s\) \(src\) and no vitlib run"):
        run_fit(PRESET, tiny, project)
    with pytest.raises(RunExistsError, match="no vitlib run"):
        RunDir(Path("/")).check()
    jupyter = tmp_path / "fresh"
    (jupyter / ".ipynb_checkpoints").mkdir(parents=True)
    assert RunDir(jupyter).check().path == jupyter  # hidden things are not "other things"
    assert a_file.read_text() == "mine" and sorted(p.name for p in project.iterdir()) == ["src"]


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "", ".hidden"])
def test_a_preset_name_is_a_name_not_a_path(name):
    """It names the run folder: `--set name=../x` once put the run outside VITLIB_RUNS_DIR."""
    with pytest.raises(PresetError, match="name must be a plain name"):
        PRESET.replace(name=name)


def test_a_split_that_leaves_no_validation_photos_is_one_line_naming_the_setting(tiny):
    with pytest.raises(data.DataError, match="no readable validation photos.*val_fraction 0.001"):
        train.prepare_training_data(tiny, PRESET.replace(val_fraction=0.001), "cpu")


def test_a_corrupt_image_is_skipped_not_a_crash_mid_epoch(tiny, tmp_path):
    """Copy the tiny data, truncate one JPEG: training warns once and runs on the rest."""
    root = tmp_path / "copy"
    (root / "train").mkdir(parents=True)
    for p in tiny.train_dir.iterdir():
        (root / "train" / p.name).write_bytes(p.read_bytes())
    broken = root / "train" / "dog.3.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    ds = data.DogsVsCats("copy", "local", root, root / "train", None, None)
    with pytest.warns(data.DataWarning, match=r"Skipped 1 unreadable.*dog\.3\.jpg"):
        run = run_fit(PRESET.replace(epochs=1), ds, tmp_path / "run")
    assert "train/dog.3.jpg" not in run.data.train.files + run.data.val.files
    assert len(run.data.train) + len(run.data.val) == 63
    assert np.isfinite(run.history["train_loss"]).all()


def test_fewer_images_than_one_batch_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(PresetError, match=r"batch_size 1000 is more than the \d+ training images.*--batch-size"):
        run_fit(PRESET.replace(batch_size=1000), tiny, tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# A moving average of the weights (a preset's `ema`)

EMA = PRESET.replace(ema=0.9)


def test_one_step_moves_the_average_a_tenth_of_the_way_to_the_new_weights():
    torch.manual_seed(0)
    model = build_model(EMA.model)
    precision = devices.Precision.of(torch.device("cpu"), mixed=False)
    opt = train.make_optimizer(model, EMA)
    state = train.TrainingState(model, opt, None, precision.scaler(), EMA.grad_clip,
                                average=train.moving_average(model, EMA.ema))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 2
    loss = train.make_loss(EMA)
    train.train_step(state, x, y, precision, loss)  # the first step: the average starts at the weights
    before = {k: v.clone() for k, v in state.evaluated.state_dict().items()}
    train.train_step(state, x, y, precision, loss)
    after, trained = state.evaluated.state_dict(), state.model.state_dict()
    for name, value in before.items():
        if value.is_floating_point():
            torch.testing.assert_close(after[name], 0.9 * value + 0.1 * trained[name])
    assert not torch.equal(after["pos_embedding"], trained["pos_embedding"])


def test_with_ema_the_average_is_validated_saved_as_the_model_and_resumed_exactly(tiny, tmp_path, monkeypatch):
    full = run_fit(EMA, tiny, tmp_path / "full")
    last = checkpoints.load_checkpoint(tmp_path / "full" / "last.pt")
    torch.testing.assert_close(full.model.state_dict(), last["model"])  # the run's model is the average
    assert any(not torch.equal(last["model"][k], last["trained"][k]) for k in last["model"])
    assert last["averaged"] == EPOCHS * (51 // EMA.batch_size)
    model, _ = checkpoints.load_model(tmp_path / "full" / "best.pt")  # what predict loads: the average
    val = full.val_predictions(model)
    best = full.history.loc[full.history["val_loss"].idxmin()]
    assert metrics.log_loss(val["label"], val["p_raw"]) == pytest.approx(best["val_loss"], abs=1e-6)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_fit(EMA, tiny, tmp_path / "resumed")
    run_fit(EMA, tiny, tmp_path / "resumed")
    again = checkpoints.load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in ("model", "trained"):
        torch.testing.assert_close(again[key], last[key], rtol=0, atol=0)
    assert again["averaged"] == last["averaged"]
    tampered = dict(again)
    del tampered["trained"]
    checkpoints.save_checkpoint(tmp_path / "resumed" / "last.pt", tampered)
    with pytest.raises(checkpoints.CheckpointError, match="no trained weights beside their moving average"):
        run_fit(EMA, tiny, tmp_path / "resumed")


@pytest.mark.parametrize("ema", [0, 1, 1.5, -0.1, float("nan")])
def test_an_ema_decay_outside_0_to_1_is_refused_in_one_line(ema):
    with pytest.raises(PresetError, match=r"ema must be None or a decay between 0 and 1"):
        PRESET.replace(ema=ema)


# ---------------------------------------------------------------------------------------------
# Precision, divergence, exports


def as_fp16(monkeypatch):
    """Make the CPU behave like a T4: fp16 autocast and an enabled GradScaler."""
    monkeypatch.setattr(devices, "autocast_dtype", lambda device: torch.float16)


def test_the_fp16_path_trains_with_an_enabled_grad_scaler(tiny, tmp_path, monkeypatch):
    as_fp16(monkeypatch)
    run = run_fit(PRESET.replace(epochs=1), tiny, tmp_path / "run")
    assert np.isfinite(run.history["train_loss"]).all()
    assert checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]["scale"] > 0


@pytest.mark.parametrize("first_fp16", [True, False])
def test_a_run_resumes_on_a_device_of_another_precision(tiny, tmp_path, monkeypatch, first_fp16):
    """A run started on a CPU (no scaler state) resumes on a T4 (fp16 + scaler), and the other way round."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        if first_fp16:
            as_fp16(m)
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run_fit(PRESET.replace(epochs=2), tiny, run_dir)
    with monkeypatch.context() as m:
        if not first_fp16:
            as_fp16(m)
        resumed = run_fit(PRESET.replace(epochs=2), tiny, run_dir)
    assert list(resumed.history["epoch"]) == [1, 2]


def test_a_diverged_run_stops_with_a_clear_error_and_keeps_its_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = train.F.cross_entropy
    calls = {"n": 0}

    def nan_after_the_first_epoch(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss  # three steps an epoch

    monkeypatch.setattr(train.F, "cross_entropy", nan_after_the_first_epoch)
    with pytest.raises(FloatingPointError, match="diverged in epoch 2.*lower the learning rate"):
        run_fit(PRESET.replace(epochs=3), tiny, tmp_path / "run")
    assert checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoints.CheckpointError, match="Cannot read last.pt.*damaged"):
        checkpoints.load_checkpoint(path)


def test_export_keeps_the_best_weights_and_the_whole_history(finished, tmp_path, monkeypatch):
    out = tmp_path / "pretrained" / "model.pt"
    provenance = checkpoints.export_checkpoint(finished.run_dir, out, command="pytest")
    best = checkpoints.load_checkpoint(finished.run_dir / "best.pt")
    slim = checkpoints.load_checkpoint(out)
    assert slim["epoch"] == best["epoch"] == provenance["epoch"] and provenance["epochs"] == EPOCHS
    assert len(slim["history"]["epoch"]) == EPOCHS and "optimizer" not in slim
    for name, weights in best["model"].items():  # fp16 copies of the best weights
        torch.testing.assert_close(slim["model"][name].float(), weights.float(), rtol=1e-3, atol=1e-3)
    assert out.with_suffix(".json").is_file()

    monkeypatch.setattr(checkpoints, "REFERENCE_RUNS", tmp_path / "reference-runs.csv")
    checkpoints.add_reference_run("tiny", finished.run_dir)
    runs = checkpoints.add_reference_run("tiny", finished.run_dir)  # recording again replaces, never duplicates
    assert list(runs["run"]) == ["tiny"] * EPOCHS and runs["device"].str.startswith("cpu").all()
    pd.testing.assert_frame_equal(checkpoints.reference_runs(), runs, check_dtype=False)


def test_export_as_a_shipped_preset_carries_that_preset_only_when_the_recipe_is_the_same(finished, tmp_path,
                                                                                         monkeypatch):
    """An ablation row trains a shipped recipe under the base preset's name (cpu-long as `cpu-plain` with settings);
    shipped, it says which preset it is. A run of another recipe is refused, and nothing is written."""
    ran = checkpoints.load_checkpoint(finished.run_dir / "best.pt")["preset"]
    same = Preset.from_dict(ran).replace(name="shipped", about="the same recipe, shipped under its own name")
    monkeypatch.setitem(checkpoints.PRESETS, "shipped", same)
    out = tmp_path / "shipped.pt"
    assert checkpoints.export_checkpoint(finished.run_dir, out, command="pytest", as_preset="shipped")["preset"] == (
        "shipped")
    assert checkpoints.load_checkpoint(out)["preset"] == same.to_dict()
    monkeypatch.setitem(checkpoints.PRESETS, "other", same.replace(name="other", epochs=same.epochs + 1))
    with pytest.raises(checkpoints.CheckpointError, match="trained another recipe than the other preset"):
        checkpoints.export_checkpoint(finished.run_dir, tmp_path / "other.pt", command="pytest", as_preset="other")
    assert not (tmp_path / "other.pt").exists()


def test_export_as_a_preset_that_does_not_exist_names_the_presets(finished, tmp_path):
    """Once a KeyError: 'cpu-lng' and a traceback."""
    with pytest.raises(PresetError, match="no preset 'cpu-lng'.*cpu-long"):
        checkpoints.export_checkpoint(finished.run_dir, tmp_path / "x.pt", command="pytest", as_preset="cpu-lng")
    assert not (tmp_path / "x.pt").exists()


def test_a_run_is_recorded_in_another_csv_with_the_command_that_reproduces_it(finished, tmp_path, monkeypatch):
    """The ablation's record: the shipped reference runs are left alone, and each row carries its command."""
    monkeypatch.setattr(checkpoints, "REFERENCE_RUNS", tmp_path / "reference-runs.csv")
    record = tmp_path / "ablation.csv"
    command = "python -m vitlib train --preset sample"
    checkpoints.add_reference_run("tiny", finished.run_dir, command=command, csv=record)
    runs = checkpoints.add_reference_run("other", finished.run_dir, command=f"{command} --lr 1", csv=record)
    assert not (tmp_path / "reference-runs.csv").exists()
    assert list(runs["run"]) == ["tiny"] * EPOCHS + ["other"] * EPOCHS
    assert set(runs.loc[runs["run"] == "tiny", "command"]) == {command}
    pd.testing.assert_frame_equal(checkpoints.reference_runs(record), runs, check_dtype=False)


def test_a_compiled_run_saves_the_plain_model_and_learns_like_the_eager_one(finished, tiny, tmp_path,
                                                                            inductor_compiler):
    """torch.compile wraps the model (its state_dict keys gain `_orig_mod.`); checkpoints must hold the plain one."""
    if inductor_compiler is None:
        pytest.skip("no C++ compiler for torch.compile's CPU backend ($CXX, else g++): it cannot compile here")
    one = PRESET.replace(epochs=1)
    compiled = run_fit(one, tiny, tmp_path / "compiled", compile=True)
    ckpt = checkpoints.load_checkpoint(compiled.run_dir / "last.pt")
    assert list(ckpt["model"]) == list(finished.model.state_dict())
    checkpoints.load_model(compiled.run_dir / "best.pt")  # loads into a freshly built model
    eager = run_fit(one, tiny, tmp_path / "eager")
    assert compiled.history["train_loss"].iloc[0] == pytest.approx(eager.history["train_loss"].iloc[0], rel=0.02)


def test_mixed_precision_off_trains_in_fp32_and_says_so(tiny, tmp_path, capsys):
    run = run_fit(PRESET.replace(epochs=1), tiny, tmp_path / "fp32", mixed_precision=False)
    assert "fp32" in capsys.readouterr().out.splitlines()[0]
    assert checkpoints.load_checkpoint(run.run_dir / "last.pt")["device"].endswith("fp32")


def test_ctrl_c_during_a_checkpoint_write_finishes_the_write_then_stops(tiny, tmp_path, monkeypatch, capsys):
    """A Ctrl-C that lands inside torch.save used to cut the file and surface as torch's "unexpected pos" error."""
    real = folders.save_checkpoint

    def interrupted_mid_write(path, state):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C (or Jupyter's interrupt) arrives while the file is written
        real(path, state)

    monkeypatch.setattr(folders, "save_checkpoint", interrupted_mid_write)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal or Jupyter
    try:
        with pytest.raises(KeyboardInterrupt):
            run_fit(PRESET, tiny, tmp_path / "run")
    finally:
        now = signal.signal(signal.SIGINT, previous)
    assert "Interrupted after epoch 1; last.pt holds epoch 1" in capsys.readouterr().out
    assert checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert now is signal.default_int_handler  # Ctrl-C works as before afterwards


def test_where_ctrl_c_is_ignored_a_signal_during_a_checkpoint_write_stays_ignored(tiny, tmp_path, monkeypatch):
    """A run started by `nohup ... &` ignores SIGINT: a checkpoint write must not turn one into a KeyboardInterrupt."""
    real = folders.save_checkpoint

    def interrupted_mid_write(path, state):
        os.kill(os.getpid(), signal.SIGINT)
        real(path, state)

    monkeypatch.setattr(folders, "save_checkpoint", interrupted_mid_write)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = run_fit(PRESET, tiny, tmp_path / "run")
    finally:
        now = signal.signal(signal.SIGINT, previous)
    assert len(run.history) == EPOCHS and now is signal.SIG_IGN


def test_a_shipped_preset_for_other_epochs_gets_a_run_folder_of_its_own(tmp_path, monkeypatch):
    """`--epochs 6` on the command line and EPOCHS = 6 in notebook 04 name the same folder, and never the full run's
    (where resuming would refuse it as another recipe)."""
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path))
    ident = {"name": "dogs-vs-cats-dev"}
    cpu = presets_get("cpu")
    assert default_path(cpu, ident) == tmp_path / "cpu-dogs-vs-cats-dev"
    assert default_path(cpu.replace(epochs=6), ident) == tmp_path / "cpu-6ep-dogs-vs-cats-dev"
    mine = cpu.replace(name="mine", epochs=6)  # not a shipped preset: its name is all it has
    assert default_path(mine, ident) == tmp_path / "mine-dogs-vs-cats-dev"


def presets_get(name):
    from vitlib.presets import get_preset

    return get_preset(name)


class _Payload:
    """What a malicious checkpoint holds: unpickling it would call os.system (creating a file, here)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_a_command_is_refused_in_our_words(tmp_path):
    """Before, torch 2.14's "unsupported GLOBAL" (not "Unsupported global") made this read as a damaged file, with
    torch's advice to set weights_only=False passed on."""
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"Python objects \((posix|nt)\.system\).*could run code"):
        checkpoints.load_checkpoint(path)
    assert not marker.exists()  # the payload never ran
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.load_checkpoint(path)
    assert "weights_only" not in str(e.value) and "did not load it" in str(e.value)
