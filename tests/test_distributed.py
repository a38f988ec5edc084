"""Two real processes under torchrun (gloo, on the CPU) training the sample preset: they finish, hold the same weights
after every step, rank 0 alone writes, a resumed two-process run continues, and a dead or silent process ends the
run with a clear message instead of a hang."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vitlib import checkpoints, distributed
from vitlib.data import prepare_data, validation_split
from vitlib.presets import get_preset
from vitlib.run_dir import RunDir

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Data and runs in temporary folders, the sample written once, no progress bars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "VITLIB_", "OMP_"))}
    env.update(VITLIB_DATA_DIR=str(tmp_path_factory.mktemp("data")),
               VITLIB_RUNS_DIR=str(tmp_path_factory.mktemp("runs")), VITLIB_PROGRESS="0",
               PYTHONPATH=str(WORKER.parent.parent))
    subprocess.run([sys.executable, "-m", "vitlib", "download", "--data", "sample"], env=env, check=True,
                   capture_output=True, timeout=120)
    return env


def free_port() -> int:
    """A TCP port no one listens on now, as the operating system hands one out (port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], env=env, capture_output=True, text=True, timeout=timeout)


def reports(stem: Path) -> list[dict]:
    return [json.loads(Path(f"{stem}.{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def two(env, tmp_path_factory):
    """Two epochs of the sample preset by two processes, each checking the weights after every step."""
    where = tmp_path_factory.mktemp("two")
    out = torchrun(str(WORKER), "--run-dir", str(where / "run"), "--report", str(where / "report"), "--epochs", "2",
                   env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return where, out, reports(where / "report")


@pytest.mark.slow
def test_both_processes_hold_the_same_weights_after_every_step(two):
    _, _, (r0, r1) = two
    steps = 2 * (len(r0["train"]) // (get_preset("sample").batch_size // 2))
    assert len(r0["checks"]) == len(r1["checks"]) == steps > 0
    assert all(r0["checks"]) and all(r1["checks"])
    assert r0["fingerprint"] == r1["fingerprint"] and r0["epochs"] == r1["epochs"] == [1, 2]


@pytest.mark.slow
def test_each_process_holds_its_own_shard_of_the_split(two, env, monkeypatch):
    _, _, (r0, r1) = two
    monkeypatch.setenv("VITLIB_DATA_DIR", env["VITLIB_DATA_DIR"])
    split = validation_split(prepare_data("sample", verbose=False))
    for part in ("train", "val"):
        files = list(split.loc[split["split"] == part, "file"])
        assert not set(r0[part]) & set(r1[part])  # disjoint
        assert sorted(r0[part] + r1[part]) == sorted(files)  # and together the whole part
        assert r0[part] == files[0::2] and r1[part] == files[1::2]


@pytest.mark.slow
def test_rank_0_alone_prints_and_writes_the_run(two):
    where, out, (r0, _) = two
    assert sorted(p.name for p in (where / "run").iterdir()) == ["best.pt", "history.csv", "last.pt"]
    ckpt = checkpoints.load_checkpoint(where / "run" / "last.pt")
    assert ckpt["epoch"] == 2 and "x 2 processes" in ckpt["device"]
    model = checkpoints.load_model(where / "run" / "last.pt")[0]
    assert distributed.fingerprint(model) == r0["fingerprint"]  # what rank 0 saved is what both trained
    assert out.stdout.count("epoch   1/2") == 1 and out.stdout.count("run: sample") == 1
    history = pd.read_csv(where / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()


@pytest.mark.slow
def test_batchnorm_statistics_are_made_one_before_validating_and_saving(env, tmp_path):
    """A conv stem's BatchNorm updates its running statistics from each process's own images; the processes must
    validate, and rank 0 save, one model."""
    out = torchrun(str(WORKER), "--run-dir", str(tmp_path / "run"), "--report", str(tmp_path / "r"), "--epochs", "1",
                   "--stem", "conv", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = reports(tmp_path / "r")
    assert all(r0["checks"]) and all(r1["checks"])  # the parameters, after every step
    assert r0["fingerprint"] == r1["fingerprint"]  # parameters and buffers, at the end
    model = checkpoints.load_model(tmp_path / "run" / "last.pt")[0]
    assert any("running_mean" in name for name, _ in model.named_buffers())
    assert distributed.fingerprint(model) == r0["fingerprint"]


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_a_clear_message_and_a_resume_continues_it(env, tmp_path):
    run = tmp_path / "run"
    steps_per_epoch = 200 // (get_preset("sample").batch_size // 2)
    out = torchrun(str(WORKER), "--run-dir", str(run), "--report", str(tmp_path / "r"), "--epochs", "3",
                   "--fail-at", str(steps_per_epoch + 5), env=env)  # rank 1 dies in epoch 2
    assert out.returncode != 0
    assert "lost the other processes during epoch 2" in out.stderr
    assert "last.pt holds epoch 1: run the same torchrun command to resume" in out.stderr
    assert checkpoints.load_checkpoint(run / "last.pt")["epoch"] == 1

    # the same recipe through the command line, on two processes: it resumes after epoch 1
    again = torchrun("-m", "vitlib", "train", "--preset", "sample", "--data", "sample", "--epochs", "3",
                     "--run-dir", str(run), "--no-progress", "--device", "cpu", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resuming after epoch 1") == 1
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3]

    # one process may not continue what two began (other crops, maybe other steps per epoch): refused, untouched
    before = (run / "last.pt").read_bytes()
    alone = subprocess.run([sys.executable, "-m", "vitlib", "train", "--preset", "sample", "--data", "sample",
                            "--epochs", "3", "--run-dir", str(run), "--no-progress", "--device", "cpu"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "holds a run trained by 2 process(es)" in alone.stderr
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_a_run_folder_another_process_trains_into_ends_every_process_at_once(env, tmp_path):
    run = tmp_path / "run"
    with RunDir(run).claim():  # this test process holds the folder, as a second training would
        out = torchrun("-m", "vitlib", "train", "--preset", "sample", "--data", "sample", "--run-dir", str(run),
                       "--no-progress", "--device", "cpu", env=env, timeout=120)
    assert out.returncode != 0
    assert out.stderr.count("error: another process is training into run/ right now") == 2  # both ranks, no hang


@pytest.mark.slow
def test_a_silent_process_ends_the_run_at_the_group_timeout(env, tmp_path):
    """No torchrun here to stop the others: the process group's timeout is what ends the wait."""
    common = dict(VITLIB_DIST_TIMEOUT="20", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  WORLD_SIZE="2", OMP_NUM_THREADS="1")
    args = [sys.executable, str(WORKER), "--run-dir", str(tmp_path / "run"), "--report", str(tmp_path / "r"),
            "--epochs", "3", "--fail-at", "30", "--signal", "SIGSTOP"]
    hung = subprocess.Popen(args, env={**env, **common, "RANK": "1", "LOCAL_RANK": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run(args, env={**env, **common, "RANK": "0", "LOCAL_RANK": "0"}, capture_output=True,
                             text=True, timeout=120)
    finally:
        hung.send_signal(signal.SIGKILL)
        hung.wait()
    assert out.returncode != 0
    assert "process 0 of 2 lost the other processes during epoch 2 (Timed out" in out.stderr
    assert "last.pt holds epoch 1" in out.stderr


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_refused_in_one_line(env, tmp_path):
    out = torchrun("-m", "vitlib", "train", "--preset", "sample", "--data", "sample", "--batch-size", "15",
                   "--run-dir", str(tmp_path / "run"), "--no-progress", "--device", "cpu", env=env)
    assert out.returncode != 0
    assert "error: batch_size 15 does not split over 2 processes: choose a multiple of 2" in out.stderr
    assert not (tmp_path / "run").exists()


def test_one_process_is_the_whole_world():
    world, device = distributed.start(torch.device("cpu"))
    assert world == distributed.SINGLE and world.main and device == torch.device("cpu")
    assert world.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.World(1, 2).shard([1, 2, 3, 4, 5]) == [2, 4]


def test_a_world_prints_on_rank_0_alone_and_one_process_is_its_own_sum_gather_and_once(capsys):
    world = distributed.SINGLE
    world.print("said")
    distributed.World(rank=1, size=2).print("not said")
    assert capsys.readouterr().out == "said\n"
    value = torch.tensor(3.0)
    assert world.sum(value) is value and value.item() == 3.0
    assert world.gather({"a": 1}) == [{"a": 1}]
    assert world.once(lambda: "rank 0's") == "rank 0's"
    with pytest.raises(ZeroDivisionError):  # its exception too
        world.once(lambda: 1 / 0)


def test_lost_tells_a_peer_gone_from_other_errors():
    assert distributed.lost(RuntimeError("[gloo/x.cc:12] Timed out waiting 5000ms for send operation"))
    assert distributed.lost(distributed.Stopped("torchrun stopped this process"))
    assert not distributed.lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert distributed.reason(RuntimeError("[gloo/x.cc:12] Timed out waiting\nmore")) == "Timed out waiting"


def test_after_leaving_the_group_a_sigterm_just_ends_the_process():
    """torchrun's SIGTERM after the one-line "lost the other processes" used to raise Stopped into the exit: a
    spurious traceback. Leaving the group takes vitlib's handler away."""
    previous = signal.signal(signal.SIGTERM, distributed._stopped)  # as start() installs it
    try:
        distributed.stop()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
