"""`python -m vitlib`: exit 0 when it worked, 2 with a one-line reason when the user can fix something."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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


@pytest.mark.slow
def test_download_of_the_sample_exits_0(downloaded, env):
    assert downloaded.returncode == 0, downloaded.stderr
    assert "SYNTHETIC" in downloaded.stdout
    root = os.path.join(env["VITLIB_DATA_DIR"], "sample")
    assert sorted(os.listdir(os.path.join(root, "train")))[:2] == ["cat.0.jpg", "cat.1.jpg"]


@pytest.mark.slow
def test_a_bad_path_exits_2_with_a_clear_message(env, tmp_path):
    missing = tmp_path / "no-such-folder"
    out = run_module("download", "--data", str(missing), env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "does not exist" in out.stderr and str(missing) in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_the_sample_preset_on_the_sample(downloaded, as_user, capsys):
    assert cli.main(["train", "--preset", "sample", "--data", "sample", "--epochs", "2", "--no-progress",
                     "--device", "cpu"]) == 0
    run_dir = files.runs_dir() / "sample-2ep-sample"  # the sample preset shortened to 2 epochs: a folder of its own
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [1, 2]
    out = capsys.readouterr().out
    assert "best epoch" in out and "sample-2ep-sample" in out
    assert checkpoints.load_checkpoint(run_dir / "last.pt")["preset"]["epochs"] == 2

    # --fresh on a run dir that holds a run: refused, exit 2, nothing overwritten
    before = (run_dir / "last.pt").read_bytes()
    assert cli.main(["train", "--preset", "sample", "--data", "sample", "--epochs", "2", "--fresh",
                     "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "without --fresh" in err  # a command-line user has no resume=True
    assert (run_dir / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_a_run_dir_of_another_recipe_exits_2(downloaded, as_user, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--no-progress", "--device", "cpu",
            "--run-dir", str(run_dir)]
    assert cli.main(args) == 0
    before = (run_dir / "last.pt").read_bytes()
    assert exit_code([*args, "--lr", "0.01"]) == 2
    assert "different recipe" in capsys.readouterr().err
    assert exit_code([*args[:6], "2", *args[7:]]) == 2  # only the epochs differ: the words say so, not "(sample)"
    assert "different recipe (sample: epochs 1 there, 2 here)" in capsys.readouterr().err
    assert (run_dir / "last.pt").read_bytes() == before


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# Bad numbers and devices: refused in one line before anything is read or written

BAD_ARGUMENTS = [  # argument, value, what the message must say: its name and the allowed range
    ("--epochs", "0", ["epochs", ">= 1"]),
    ("--epochs", "-1", ["epochs", ">= 1"]),
    ("--batch-size", "0", ["batch_size", ">= 1"]),  # the preset's name for --batch-size
    ("--batch-size", "-4", ["batch_size", ">= 1"]),
    ("--lr", "-1", ["lr", "> 0"]),
    ("--lr", "nan", ["lr", "> 0"]),
    ("--lr", "0", ["lr", "> 0"]),
    ("--seed", "-1", ["seed", "from 0 to"]),
    ("--seed", "99999999999999999999999", ["seed", "from 0 to 4294967295"]),  # a traceback (overflow) before
    ("--device", "cuda", ["device 'cuda'", "not available", "cpu"]),  # run as if there were no GPU
    ("--device", "banana", ["device 'banana'", "cpu"]),
]


@pytest.fixture
def nothing_yet(monkeypatch, tmp_path):
    """Empty data and runs folders for in-process runs of cli.main, on one thread."""
    folders = {name: tmp_path / name for name in ("data", "runs", "home")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("VITLIB_DATA_DIR", str(folders["data"]))
    monkeypatch.setenv("VITLIB_RUNS_DIR", str(folders["runs"]))
    monkeypatch.setenv("HOME", str(folders["home"]))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield folders
    torch.set_num_threads(threads)


def written(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize(("argument", "value", "says"), BAD_ARGUMENTS, ids=[f"{a}={v}" for a, v, _ in BAD_ARGUMENTS])
def test_a_bad_train_argument_exits_2_with_one_line_naming_it_and_writes_nothing(argument, value, says, nothing_yet,
                                                                                capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu", argument, value]
    assert exit_code(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(words in err for words in says), err
    assert "Traceback" not in err and out == ""
    for name in ("data", "runs"):  # no sample written, no cache, no run folder, no lock
        assert written(nothing_yet[name]) == [], name


@pytest.mark.parametrize(("argument", "value"), [("--epochs", "0"), ("--batch-size", "-4"), ("--device", "banana")])
@pytest.mark.slow
def test_a_bad_train_argument_is_one_line_on_the_real_stderr(argument, value, env, tmp_path):
    """The whole process, as a user runs it: exit 2, one line, no traceback, nothing written."""
    folders = {name: tmp_path / name for name in ("data", "runs")}
    for folder in folders.values():
        folder.mkdir()
    user = {**env, "VITLIB_DATA_DIR": str(folders["data"]), "VITLIB_RUNS_DIR": str(folders["runs"])}
    out = run_module("train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu",
                     argument, value, env=user)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1, out.stderr
    assert argument.removeprefix("--").replace("-", "_") in out.stderr and "Traceback" not in out.stderr
    assert written(folders["data"]) == [] and written(folders["runs"]) == []


# ---------------------------------------------------------------------------------------------
# Ctrl-C: the run says where it stands, exits 130 without a traceback, and resumes


class Running:
    """`python -m vitlib ...` started in the background, its output read line by line as it comes."""

    def __init__(self, args, env: dict):
        # Ctrl-C as in a terminal, even where the tests themselves run with SIGINT ignored (nohup ... &)
        self.proc = subprocess.Popen([sys.executable, "-m", "vitlib", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=pair, daemon=True)
                        for pair in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, condition, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no {what} (exit {self.proc.returncode}):\n{self.stdout}\n{self.stderr}")
            time.sleep(0.05)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the process, as a terminal sends it; its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        finally:
            self.stop()
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self.readers:
            reader.join(timeout=10)


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_with_its_line_alone_and_the_run_resumes(downloaded, env, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "50", "--device", "cpu", "--no-progress",
            "--run-dir", str(run_dir)]
    child_env = {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # lines as they are printed; one core

    first = Running(args, child_env)
    first.wait_for(lambda: "epoch   1/50" in first.stdout, "first epoch line")
    first.wait_for((run_dir / "history.csv").is_file, "history.csv of epoch 1")  # epoch 1 saved: now in epoch 2
    assert first.interrupt() == 130, first.stderr
    assert "Traceback" not in first.stderr and "KeyboardInterrupt" not in first.stderr, first.stderr
    stopped = re.search(r"Interrupted (during|after) epoch (\d+); last\.pt holds epoch (\d+)\. Run the same call "
                        "again", first.stdout)
    assert stopped, first.stdout
    when, epoch, held = stopped[1], int(stopped[2]), int(stopped[3])
    assert held == (epoch - 1 if when == "during" else epoch) and held >= 1  # a Ctrl-C just after a save: "after"
    assert checkpoints.load_checkpoint(run_dir / "last.pt")["epoch"] == held
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == list(range(1, held + 1))

    again = Running(args, child_env)  # the same command resumes
    again.wait_for(lambda: f"epoch {held + 1:3d}/50" in again.stdout, f"epoch {held + 1} after resuming")
    assert again.interrupt() == 130, again.stderr
    assert f"resuming after epoch {held}\n" in again.stdout
    assert "epoch   1/50" not in again.stdout  # not trained from the start
    assert "Traceback" not in again.stderr and re.search(r"Interrupted (during|after) epoch", again.stdout)


@pytest.mark.slow
def test_set_changes_any_setting_and_the_checkpoint_records_it(downloaded, as_user, tmp_path, capsys):
    run_dir = tmp_path / "conv"
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--no-progress", "--device", "cpu",
            "--run-dir", str(run_dir), "--set", "model.stem=conv", "--set", "augment.scale=[0.5, 1.0]"]
    assert exit_code(args) == 0, capsys.readouterr().err
    preset = checkpoints.load_checkpoint(run_dir / "last.pt")["preset"]
    assert preset["model"]["stem"] == "conv" and list(preset["augment"]["scale"]) == [0.5, 1.0]


@pytest.mark.parametrize(("setting", "named"), [("model.nope=1", "model.nope"), ("stem", "KEY=VALUE"),
                                                ("model.stem=lego", "stem"), ("model.dim=100000000", "model.dim"),
                                                ("model.depth=100000000", "model.depth"),
                                                ("model.image_size=80000", "image_size"),
                                                ("cache_size=100000", "cache_size"), ("augment.scale=abc", "scale"),
                                                ("name=../x", "name"), ("teacher=cnn", "teacher")])
@pytest.mark.slow
def test_a_bad_set_exits_2_naming_it_and_writes_nothing(downloaded, as_user, tmp_path, capsys, setting, named):
    run_dir = tmp_path / "bad"
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--device", "cpu",
            "--run-dir", str(run_dir), "--set", setting]
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Places that cannot be written: refused before the work, naming the setting


def test_a_run_dir_that_is_a_file_exits_2_before_anything_is_cached(nothing_yet, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert exit_code(["train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu",
                      "--run-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is a file, not a folder" in err, err
    assert a_file.read_text() == "mine" and not (nothing_yet["data"] / "cache").exists()


def test_a_diverging_run_exits_2_with_one_line(nothing_yet, tmp_path, capsys):
    """Before, --lr 1e30 ended in a FloatingPointError traceback (its text was already the right one)."""
    assert exit_code(["train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu",
                      "--epochs", "1", "--lr", "1e30", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Training diverged in epoch 1") and err.count("\n") == 1, err


def test_a_run_dir_that_links_to_nothing_exits_2_before_anything_is_cached(nothing_yet, tmp_path, capsys):
    """Before, a dangling link trained an epoch and then failed with "[Errno 17] File exists"."""
    link = tmp_path / "run-link"
    link.symlink_to(tmp_path / "gone")
    assert exit_code(["train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu",
                      "--run-dir", str(link)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "which does not exist" in err, err
    assert link.is_symlink() and not (tmp_path / "gone").exists() and not (nothing_yet["data"] / "cache").exists()


@pytest.mark.parametrize("variable", ["VITLIB_DATA_DIR", "VITLIB_RUNS_DIR"])
def test_a_data_or_runs_folder_that_is_a_file_exits_2_naming_its_variable(variable, nothing_yet, tmp_path, monkeypatch,
                                                                          capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    monkeypatch.setenv(variable, str(a_file))
    assert exit_code(["train", "--preset", "sample", "--data", "sample", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and variable in err and "is a file" in err, err


@pytest.mark.parametrize("out", ["", "."], ids=["empty", "a-folder"])
def test_predict_out_must_name_a_file(out, nothing_yet, capsys):
    assert exit_code(["predict", "--checkpoint", "x.pt", "--data", "sample", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out names the CSV file to write") and err.count("\n") == 1, err


def test_predict_out_under_a_file_exits_2_before_predicting(nothing_yet, tmp_path, capsys):
    (tmp_path / "a-file").write_text("mine")
    assert exit_code(["predict", "--checkpoint", "x.pt", "--data", "sample", "--out",
                      str(tmp_path / "a-file" / "s.csv")]) == 2
    assert "error: --out: " in capsys.readouterr().err


@pytest.mark.parametrize(("argument", "value"), [("--images", "0"), ("--seconds", "-1"), ("--seconds", "nan")])
def test_bench_refuses_numbers_it_cannot_measure_with(argument, value, capsys):
    """--images 0 was a traceback, --seconds -1 printed NaN."""
    assert exit_code(["bench", argument, value]) == 2
    assert "must be above 0" in capsys.readouterr().err


def test_bench_out_under_a_file_exits_2_before_measuring(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("mine")
    monkeypatch.setattr("vitlib.bench.run_benchmark", lambda **kwargs: pytest.fail("measured"))
    assert exit_code(["bench", "--out", str(tmp_path / "a-file" / "bench.json")]) == 2
    assert "error: bench --out: " in capsys.readouterr().err


def test_bench_out_that_is_a_folder_exits_2_before_measuring(tmp_path, capsys, monkeypatch):
    """Before: IsADirectoryError after all the measuring."""
    monkeypatch.setattr("vitlib.bench.run_benchmark", lambda **kwargs: pytest.fail("measured"))
    assert exit_code(["bench", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench --out names the JSON file to write, not a folder") and err.count("\n") == 1


@pytest.mark.parametrize(("settings", "names"), [
    (["model.depth=30000"], "model.depth"),  # passed the parameter check at 22 of 24 GiB, then ran out of memory
    (["model.image_size=4096", "model.patch_size=512"], "model.image_size"),  # a 25 GB cache of the sample
])
def test_a_recipe_too_large_for_this_machine_exits_2_before_anything_is_allocated(settings, names, nothing_yet,
                                                                                  monkeypatch, capsys):
    monkeypatch.setattr("vitlib.presets.memory_bytes", lambda: 24 * 2**30)  # the machine of the report
    monkeypatch.setattr("vitlib.cache.memory_bytes", lambda: 24 * 2**30)
    args = ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert exit_code([*args, *(a for s in settings for a in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and names in err and "GiB" in err, err
    assert not (nothing_yet["data"] / "cache").exists() or not any((nothing_yet["data"] / "cache").glob("*.pt"))
