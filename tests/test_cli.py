"""`python -m vitlib`: exit 0 when it worked, 2 with a one-line reason when the user can fix something."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from vitlib import checkpoints, cli, files


def exit_code(argv) -> int:
    """cli.main's return value, or the code argparse exits with."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def run_module(*args, env: dict, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitlib", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A user's environment with nothing set up: no Kaggle credentials, data and runs in temporary folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "VITLIB_"))}
    home = tmp_path_factory.mktemp("home")
    env.update(HOME=str(home), VITLIB_DATA_DIR=str(tmp_path_factory.mktemp("data")),
               VITLIB_RUNS_DIR=str(tmp_path_factory.mktemp("runs")))
    return env


@pytest.fixture(scope="module")
def downloaded(env) -> subprocess.CompletedProcess:
    """`python -m vitlib download --data sample`, run once: it writes the sample the other tests use."""
    return run_module("download", "--data", "sample", env=env)


def test_download_of_the_sample_exits_0(downloaded, env):
    assert downloaded.returncode == 0, downloaded.stderr
    assert "SYNTHETIC" in downloaded.stdout
    root = os.path.join(env["VITLIB_DATA_DIR"], "sample")
    assert sorted(os.listdir(os.path.join(root, "train")))[:2] == ["cat.0.jpg", "cat.1.jpg"]


def test_a_bad_path_exits_2_with_a_clear_message(env, tmp_path):
    missing = tmp_path / "no-such-folder"
    out = run_module("download", "--data", str(missing), env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "does not exist" in out.stderr and str(missing) in out.stderr
    assert "Traceback" not in out.stderr


def test_require_real_refuses_the_sample(downloaded, env):
    out = run_module("download", "--data", "sample", "--require-real", env=env)
    assert out.returncode == 2
    assert "Refusing" in out.stderr and "synthetic" in out.stderr


def test_a_command_is_required():
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2


@pytest.fixture
def as_user(env, monkeypatch):
    """In-process runs of cli.main with the module's environment, on one thread (the box has 2 busy cores)."""
    for name in ("VITLIB_DATA_DIR", "VITLIB_RUNS_DIR", "HOME"):
        monkeypatch.setenv(name, env[name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield env
    torch.set_num_threads(threads)


def test_train_the_sample_preset_on_the_sample(downloaded, as_user, capsys):
    assert cli.main(["train", "--preset", "sample", "--data", "sample", "--epochs", "2", "--no-progress",
                     "--device", "cpu"]) == 0
    run_dir = files.runs_dir() / "sample-sample"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [1, 2]
    out = capsys.readouterr().out
    assert "best epoch" in out and "sample-sample" in out
    assert checkpoints.load_checkpoint(run_dir / "last.pt")["preset"]["epochs"] == 2

    # --fresh on a run dir that holds a run: refused, exit 2, nothing overwritten
    before = (run_dir / "last.pt").read_bytes()
    assert cli.main(["train", "--preset", "sample", "--data", "sample", "--epochs", "2", "--fresh",
                     "--no-progress", "--device", "cpu"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "last.pt").read_bytes() == before


def test_a_run_dir_of_another_recipe_exits_2(downloaded, as_user, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--no-progress", "--device", "cpu",
            "--run-dir", str(run_dir)]
    assert cli.main(args) == 0
    before = (run_dir / "last.pt").read_bytes()
    assert exit_code([*args, "--lr", "0.01"]) == 2
    assert "different recipe" in capsys.readouterr().err
    assert (run_dir / "last.pt").read_bytes() == before


def test_an_unknown_preset_exits_2(downloaded, as_user, capsys):
    assert exit_code(["train", "--preset", "nope", "--data", "sample", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "sample" in err and "cpu" in err  # the choices


def test_the_environment_is_what_the_cli_reads(as_user):
    assert str(files.data_dir()) == as_user["VITLIB_DATA_DIR"]
    assert str(files.runs_dir()) == as_user["VITLIB_RUNS_DIR"]


def test_a_damaged_checkpoint_exits_2_with_the_readable_message(tmp_path, capsys):
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(b"half a checkp")
    out = tmp_path / "s.csv"
    assert exit_code(["predict", "--checkpoint", str(damaged), "--data", "sample", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "best.pt" in err
    assert not out.exists()
