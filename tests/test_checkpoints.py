"""Checkpoints that cannot be used, and checkpoints written onto a full disk.

Every unusable file gives a CheckpointError in one line that names the file and says what vitlib
expected; load_trained() passes over such a file among your runs with a warning; the command line
prints that one line and exits 2. A full disk while saving keeps the earlier checkpoint byte for
byte and leaves no temporary file; temporary files a killed run left are removed when a run starts.
"""

import dataclasses
import errno
import os
from pathlib import Path

import pytest
import torch

from vitlib import checkpoints, cli, data, files, models, sample, train
from vitlib.presets import get_preset

PRESET = get_preset("sample", epochs=2)
CONFIG = PRESET.model  # dim 64
HAS_DEV_FULL = os.path.exists("/dev/full")


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def write_part_of(f) -> None:
    """Write the first bytes of a checkpoint to `f`, a path or an open file, as a write cut short would."""
    if hasattr(f, "write"):
        f.write(b"PK\x03\x04 half a checkp")
    else:
        Path(f).write_bytes(b"PK\x03\x04 half a checkp")


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message.strip()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread: two fight each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _data_in_tmp(data_dir, monkeypatch):
    """Extracted data and image caches go to a temporary folder, not the repo's data/."""
    monkeypatch.setenv(files.DATA_DIR_ENV, str(data_dir))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A folder holding a 64-image sample (train.zip, test.zip), as --data takes it."""
    return sample.write_sample(tmp_path_factory.mktemp("src") / "tiny", n_train=64, n_test=4)


@pytest.fixture(scope="module")
def tiny(tiny_folder, data_dir):
    return data.prepare_data(tiny_folder, dest=data_dir, verbose=False)


def state(config: models.ModelConfig = CONFIG, weights: models.ModelConfig | None = None, **extra) -> dict:
    """A checkpoint as export_checkpoint writes it: the model_config of `config`, the weights of `weights`."""
    torch.manual_seed(0)
    model = models.build_model(weights or config)
    return {"format": checkpoints.CHECKPOINT_FORMAT, "epoch": 1, "model_config": models.config_dict(config),
            "model": model.state_dict(), "preset": PRESET.to_dict(), "data_id": {"kind": "local", "name": "photos"},
            "data": "real photos: a test", "device": "cpu", **extra}


# ---------------------------------------------------------------------------------------------
# Unusable checkpoints: one line that names the file


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    checkpoints.save_checkpoint(path, state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bare_state_dict(path: Path) -> None:
    torch.save(models.build_model(CONFIG).state_dict(), path)


def config_of_dim_64_weights_of_dim_32(path: Path) -> None:
    torch.save(state(CONFIG, weights=dataclasses.replace(CONFIG, dim=32)), path)


def config_with_an_unknown_key(path: Path) -> None:
    ckpt = state()
    ckpt["model_config"]["colour"] = "tabby"
    torch.save(ckpt, path)


def no_model_config(path: Path) -> None:
    ckpt = state()
    del ckpt["model_config"]
    torch.save(ckpt, path)


def model_that_is_not_weights(path: Path) -> None:
    torch.save(state(model=[1, 2, 3]), path)


def format_as_text(path: Path) -> None:
    torch.save(state(format="2"), path)  # once a TypeError (a str compared with an int)


def format_of_5_mb(path: Path) -> None:
    torch.save(state(format="x" * 5_000_000), path)  # once echoed whole in the error line


def negative_dim(path: Path) -> None:
    ckpt = state()
    ckpt["model_config"]["dim"] = -64  # once a ValueError traceback in predict
    torch.save(ckpt, path)


def nan_weights(path: Path) -> None:
    ckpt = state()
    first = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first] = torch.full_like(ckpt["model"][first], float("nan"))  # once "P(dog)=nan", exit 0
    torch.save(ckpt, path)


UNUSABLE = {  # how to spoil a file: what the message must say besides its name
    "empty": (empty, r"empty \(0 bytes\)"),
    "truncated": (truncated, "damaged or not a vitlib checkpoint"),
    "bare-state-dict": (bare_state_dict, "bare weights.*without the model_config"),
    "dim-64-config-dim-32-weights": (config_of_dim_64_weights_of_dim_32, "weights do not fit its model_config"),
    "unknown-config-key": (config_with_an_unknown_key, "model_config this vitlib cannot build.*colour"),
    "no-model-config": (no_model_config, "not a vitlib model checkpoint: it has no model_config"),
    "model-not-weights": (model_that_is_not_weights, "not a vitlib model checkpoint.*model.*list"),
    "format-as-text": (format_as_text, r"its format is '2', not a number vitlib writes"),
    "negative-dim": (negative_dim, "model_config this vitlib cannot build.*dim must be a whole number >= 1"),
    "nan-weights": (nan_weights, r"weights that are not finite numbers \(NaN or inf\)"),
    "format-of-5-MB": (format_of_5_mb, r"its format is 'x{36}\.\.\., not a number vitlib writes"),
}


@pytest.mark.parametrize("spoil", UNUSABLE, ids=list(UNUSABLE))
def test_an_unusable_checkpoint_is_one_line_that_names_the_file(tmp_path, spoil):
    make, says = UNUSABLE[spoil]
    path = tmp_path / "best.pt"
    make(path)
    with pytest.raises(checkpoints.CheckpointError, match=says) as error:
        checkpoints.load_model(path)
    assert f"best.pt in {files.shown(tmp_path)}/" in one_line(str(error.value))  # the whole folder, not its name


@pytest.mark.parametrize("spoil", UNUSABLE, ids=list(UNUSABLE))
def test_predict_with_an_unusable_checkpoint_prints_one_error_line_and_exits_2(tmp_path, tiny_folder, capsys,
                                                                               spoil):
    make, says = UNUSABLE[spoil]
    path = tmp_path / "best.pt"
    make(path)
    out = tmp_path / "submission.csv"
    assert cli.main(["predict", "--checkpoint", str(path), "--data", str(tiny_folder), "--out", str(out),
                     "--device", "cpu"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and f"best.pt in {files.shown(tmp_path)}/" in err, err
    assert not out.exists()


def test_a_mismatch_names_the_model_the_config_builds_and_the_first_difference(tmp_path):
    path = tmp_path / "model.pt"
    config_of_dim_64_weights_of_dim_32(path)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_model(path)
    message = one_line(str(error.value))
    assert "linformer ViT at 32 px, patch 8" in message
    assert "size mismatch" in message and "[1, 17, 32]" in message and "[1, 17, 64]" in message


# ---------------------------------------------------------------------------------------------
# load_trained: your runs, else the committed checkpoint


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(files.RUNS_ENV, str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.mark.parametrize("spoil", ["empty", "truncated", "dim-64-config-dim-32-weights", "no-model-config",
                                   "model-not-weights"])
def test_load_trained_skips_an_unusable_run_with_a_warning_and_falls_back_to_the_committed_one(runs, spoil):
    (runs / "x").mkdir(parents=True)
    UNUSABLE[spoil][0](runs / "x" / "best.pt")
    with pytest.warns(UserWarning, match=r"^Skipped .*best\.pt in .*/runs/x/") as caught:
        model, meta = checkpoints.load_trained()
    assert "\n" not in str(caught[0].message)
    assert meta["source"] == "committed checkpoint"
    assert model.config.attention == "linformer"


def test_load_trained_passes_over_a_newer_empty_run_to_an_older_good_one(runs):
    (runs / "good").mkdir(parents=True)
    checkpoints.save_checkpoint(runs / "good" / "best.pt", state())
    (runs / "broken").mkdir()
    empty(runs / "broken" / "best.pt")
    os.utime(runs / "good" / "best.pt", (1_000_000_000, 1_000_000_000))  # older than the broken one
    with pytest.warns(UserWarning, match=r"Skipped best\.pt in .*/runs/broken/ is empty"):
        model, meta = checkpoints.load_trained()
    assert meta["source"] == "your run good"
    torch.testing.assert_close(model.state_dict(), state()["model"])


# ---------------------------------------------------------------------------------------------
# Saving on a full disk


def test_save_checkpoint_on_a_full_disk_says_so_in_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def part_then_full(obj, f, *args, **kwargs):
        write_part_of(f)
        raise no_space()

    with monkeypatch.context() as m:
        m.setattr(torch, "save", part_then_full)
        with pytest.raises(OSError) as error:
            checkpoints.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    message = one_line(str(error.value))
    assert message.startswith(f"no space left on {tmp_path.resolve()}: last.pt was not written")
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("free", [0, 10 * 2**30])
def test_a_writer_that_hides_a_full_disk_in_a_runtime_error_is_called_so_only_when_it_is(tmp_path, monkeypatch, free):
    """torch's stream writer reports a full disk as RuntimeError("... unexpected pos ..."): before, a traceback."""
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def part_then_writer_error(obj, f, *args, **kwargs):
        write_part_of(f)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4310")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", part_then_writer_error)
        m.setattr(files.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": free})())
        expected = files.DiskFullError if free == 0 else RuntimeError
        with pytest.raises(expected) as error:
            checkpoints.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    if free == 0:
        assert one_line(str(error.value)).startswith(f"no space left on {tmp_path.resolve()}: last.pt was not written")
    else:  # space enough: not a full disk, and not said to be one
        assert "unexpected pos" in str(error.value) and not isinstance(error.value, files.DiskFullError)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_save_checkpoint_onto_a_really_full_device_says_so_in_one_line(tmp_path):
    """The real torch.save on a device without space: a disk-full error, not a stream writer's RuntimeError."""
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    files.temporary_name(path).symlink_to("/dev/full")
    with pytest.raises(OSError) as error:
        checkpoints.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    assert one_line(str(error.value)).startswith(f"no space left on {tmp_path.resolve()}: last.pt was not written")
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_train_on_a_full_disk_prints_one_error_line_exits_2_and_keeps_the_last_checkpoint(tiny_folder, tmp_path,
                                                                                         monkeypatch, capsys):
    """Epoch 1 is saved; saving epoch 2 finds the disk full."""
    run_dir = tmp_path / "run"
    real = torch.save
    saved, at_failure = [], {}

    def full_at_the_third_checkpoint(obj, f, *args, **kwargs):
        target = Path(f if isinstance(f, (str, os.PathLike)) else f.name)  # a path, or a file open on one
        if target.parent == run_dir:
            saved.append(target.name)
            if len(saved) == 3:
                at_failure.update({p.name: p.read_bytes() for p in run_dir.glob("*.pt")})
                write_part_of(f)
                raise no_space()
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_the_third_checkpoint)
    monkeypatch.setenv(files.PROGRESS_ENV, "0")  # --no-progress leaves the image cache's bar on stderr
    code = cli.main(["train", "--preset", "sample", "--data", str(tiny_folder), "--epochs", "2", "--no-progress",
                     "--device", "cpu", "--run-dir", str(run_dir)])
    err = one_line(capsys.readouterr().err)
    assert code == 2
    assert err.startswith(f"error: no space left on {run_dir.resolve()}: "), err
    assert sorted(at_failure) == ["best.pt", "last.pt"]
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pt")} == at_failure
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert temporaries(run_dir) == []


# ---------------------------------------------------------------------------------------------
# Temporary files of killed processes


def test_save_checkpoint_removes_a_dead_process_s_temporary_file_and_keeps_a_live_one(tmp_path, dead_pid, live_pid):
    dead = files.temporary_name(tmp_path / "last.pt", dead_pid)
    live = files.temporary_name(tmp_path / "last.pt", live_pid)
    for tmp in (dead, live):
        tmp.write_bytes(b"half a checkp")
    checkpoints.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert not dead.exists() and live.read_bytes() == b"half a checkp"
    assert checkpoints.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_a_run_start_removes_the_temporary_files_a_killed_run_left(tiny, tmp_path, monkeypatch, dead_pid, live_pid):
    """Stopped in its first epoch, before any save: the cleaning is done at the start, and takes only what vitlib
    wrote: a file of the user's that looks like a temporary one, or a vitlib temporary of another file, stays."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = [files.temporary_name(run_dir / name, dead_pid) for name in ("last.pt", "best.pt", "history.csv")]
    kept = [files.temporary_name(run_dir / "last.pt", live_pid), run_dir / ".notes.tmp",
            run_dir / f".notes.txt.{dead_pid}.tmp", run_dir / f".last.pt.{dead_pid}.tmp",
            files.temporary_name(run_dir / "notes.txt", dead_pid)]
    for path in dead + kept:
        path.write_bytes(b"half a fi")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", stop)
    prepared = train.prepare_training_data(tiny, PRESET, torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        train.fit(PRESET, data=prepared, run_dir=run_dir, progress=False)
    assert sorted(run_dir.iterdir()) == sorted(kept)


# ---------------------------------------------------------------------------------------------
# A tampered last.pt: refused in one line when resumed, before any part is loaded


def _no_optimizer(ckpt):
    del ckpt["optimizer"]


def _bad_rng(ckpt):
    ckpt["rng"]["torch"] = torch.zeros(3)


def _weights_of_another_model(ckpt):
    ckpt["model"] = models.build_model(dataclasses.replace(CONFIG, dim=32)).state_dict()


def _epoch_as_text(ckpt):
    ckpt["epoch"] = "1"


def _history_without_elapsed_s(ckpt):
    del ckpt["history"]["elapsed_s"]


def _history_of_strings(ckpt):
    ckpt["history"]["val_loss"] = ["low"] * len(ckpt["history"]["val_loss"])


def _nan_weights(ckpt):
    first = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first] = torch.full_like(ckpt["model"][first], float("nan"))


TAMPERED = {  # once a KeyError, a TypeError, the whole size-mismatch dump; then (issue 29) a KeyError, a ValueError,
    # and a FloatingPointError on resume
    "no-optimizer": (_no_optimizer, "it has no optimizer state"),
    "history-without-elapsed_s": (_history_without_elapsed_s, "its history lacks elapsed_s"),
    "history-of-strings": (_history_of_strings, "its history holds values that are not numbers"),
    "nan-weights": (_nan_weights, r"its weights are not all finite numbers \(NaN or inf\)"),
    "bad-rng": (_bad_rng, "random-number state is not the byte tensor"),
    "other-weights": (_weights_of_another_model, "weights do not fit its recipe's model.*size mismatch"),
    "epoch-as-text": (_epoch_as_text, "its epoch is '1'"),
}


@pytest.mark.parametrize("tamper", TAMPERED, ids=list(TAMPERED))
def test_resuming_a_tampered_last_pt_is_one_line_naming_what_is_wrong(tiny, tmp_path, tamper):
    run_dir = tmp_path / "run"
    prepared = train.prepare_training_data(tiny, PRESET, torch.device("cpu"))
    train.fit(PRESET, data=prepared, run_dir=run_dir, progress=False, stop_when=lambda row: True)  # after epoch 1
    ckpt = checkpoints.load_checkpoint(run_dir / "last.pt")
    TAMPERED[tamper][0](ckpt)
    torch.save(ckpt, run_dir / "last.pt")
    with pytest.raises(checkpoints.CheckpointError, match=TAMPERED[tamper][1]) as error:
        train.fit(PRESET, data=prepared, run_dir=run_dir, progress=False)
    assert one_line(str(error.value)).startswith(f"last.pt in {files.shown(run_dir)}/ cannot be resumed")
