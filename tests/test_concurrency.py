"""Two processes at once: extracting the same zip, and training into the same run folder.

Every test starts real processes with this interpreter and this checkout of vitlib; data and runs live in tmp_path.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import jpeg, listing

import vitlib
from vitlib import cli, data, sample, train
from vitlib.files import BusyError
from vitlib.presets import get_preset

pytestmark = pytest.mark.slow  # every test here starts processes that import vitlib

ROOT = Path(vitlib.__file__).resolve().parent.parent  # the checkout the children import, whatever is installed


def child_env(**extra) -> dict:
    """This environment without Kaggle or vitlib settings, importing this checkout, on one thread (2 busy cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "VITLIB_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def wait_for(condition, what: str, procs=(), timeout=60.0) -> None:
    """Poll `condition` until it holds; fail at once if one of `procs` has died meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"a child died (exit {p.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def killed_at_exit(*procs):
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


# What each child script runs once it is ready: it says so with a file in the sync folder (second-last argument),
# then blocks on the start line, the read end of a pipe (last argument), until the parent closes the write end:
# both children read end-of-file at the same moment, with no polling and no sleep.
START_LINE = """
sync, go = sys.argv[-2:]
Path(sync, f"ready.{os.getpid()}").touch()
os.read(int(go), 1)
"""


def run_two_at_once(script: str, args, sync: Path):
    """Two children running `script` with `args`, the sync folder and the start line (the last two arguments),
    released together once both are ready; their processes and (stdout, stderr)."""
    sync.mkdir()
    go_read, go_write = os.pipe()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, args), str(sync), str(go_read)],
                                  env=child_env(), pass_fds=[go_read], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    finally:
        os.close(go_read)  # only the children read it
    with killed_at_exit(*procs):
        try:
            wait_for(lambda: len(list(sync.glob("ready.*"))) == 2, "both children were ready", procs)
        finally:
            os.close(go_write)  # the start: both children's reads return (or, on a failure, they are not left waiting)
        return procs, [p.communicate(timeout=120) for p in procs]


# ---------------------------------------------------------------------------------------------
# Extraction

N_FILES = 3000  # enough that each extraction takes a while, so the two really overlap

EXTRACT = """
import json, os, sys
from pathlib import Path
from vitlib import extract
zip_path, dest = map(Path, sys.argv[1:3])
""" + START_LINE + """
print(json.dumps([p.name for p in extract.extract_zip(zip_path, dest)]))
"""


def test_two_processes_extracting_the_same_zip_at_once_both_get_every_file_once(tmp_path):
    """Both succeed, the folder holds each entry exactly once, marked complete, with no staging or .old-N left."""
    image = jpeg()
    names = [f"train/{kind}.{i}.jpg" for kind in ("cat", "dog") for i in range(N_FILES // 2)]
    zip_path = tmp_path / "train.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name in names:
            zf.writestr(name, image)
    dest = tmp_path / "data"
    procs, results = run_two_at_once(EXTRACT, [zip_path, dest], tmp_path / "sync")

    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.splitlines()[-1] == '["train"]'  # the one that came second may first say it is waiting
    assert listing(dest) == sorted(["train", ".train.zip.complete", *names])  # no .partial, no .old-N, no .tmp
    assert all((dest / n).read_bytes() == image for n in names[:: N_FILES // 10])


SAMPLE = """
import os, sys
from pathlib import Path
from vitlib import data
dest = Path(sys.argv[1])
""" + START_LINE + """
data.prepare_data("sample", dest=dest, verbose=False)
"""


def test_two_processes_making_the_sample_at_once_leave_one_sample_and_no_old_folders(tmp_path):
    """The default offline path (two `download` or `train` commands on a fresh machine): one sample, made once."""
    dest = tmp_path / "data"
    procs, results = run_two_at_once(SAMPLE, [dest], tmp_path / "sync")
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "has changed" not in err and "kept it as" not in err, err
    assert not [p.name for p in (dest / "sample").iterdir() if ".old-" in p.name]
    assert data.count_images(dest / "sample" / "train") == sample.N_TRAIN


# ---------------------------------------------------------------------------------------------
# The image cache

CACHE = """
import json, os, sys, time
from pathlib import Path
from vitlib import cache, data
source, cache_dir = map(Path, sys.argv[1:3])
ds = data.prepare_data(source, dest=source.parent / "data", verbose=False)
decoded = []
real = cache.load_image
def slow(path, size=None):  # slow enough that the two builds would overlap
    decoded.append(path)
    time.sleep(0.02)
    return real(path, size)
cache.load_image = slow
""" + START_LINE + """
built = cache.build_cache(ds, data.index_images(ds), 16, cache_dir=cache_dir)
print(json.dumps({"decoded": len(decoded), "images": len(built), "sum": int(built.images.sum())}))
"""


def test_two_processes_caching_the_same_images_at_once_decode_them_once(tmp_path):
    """torchrun's processes (or two notebooks) building one cache: one decodes, the other waits and loads it."""
    import json

    source = sample.write_sample(tmp_path / "zips", n_train=60, n_test=4)
    data.prepare_data(source, dest=tmp_path / "data", verbose=False)  # extracted once, before the race
    procs, results = run_two_at_once(CACHE, [source, tmp_path / "cache"], tmp_path / "sync")
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert sorted(g["decoded"] for g in got) == [0, 60]  # one decoded every image, the other none
    assert got[0]["images"] == got[1]["images"] == 60 and got[0]["sum"] == got[1]["sum"]


# ---------------------------------------------------------------------------------------------
# The run lock

HOLD = """
import sys, time
from pathlib import Path
from vitlib.run_dir import RunDir
with RunDir(Path(sys.argv[1])).claim():
    Path(sys.argv[2]).touch()
    time.sleep(float(sys.argv[3]))
"""
HOLD_S = 120  # how long the holder would keep the run; a refusal must come long before


@contextlib.contextmanager
def run_held_by_another_process(run_dir: Path, tmp_path: Path):
    """A child process that holds `run_dir`'s lock (as a training run does) until the block ends or kills it."""
    held = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(held), str(HOLD_S)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_at_exit(proc):
        wait_for(held.exists, "the holder had the lock", [proc])
        yield proc


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict:
    """An environment whose data folder already holds the synthetic sample (made once, in this process)."""
    env = child_env(HOME=str(tmp_path_factory.mktemp("home")), VITLIB_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    VITLIB_RUNS_DIR=str(tmp_path_factory.mktemp("runs")))
    data.prepare_data("sample", dest=Path(env["VITLIB_DATA_DIR"]), verbose=False)
    return env


def train_args(run_dir: Path) -> list[str]:
    return ["train", "--preset", "sample", "--data", "sample", "--epochs", "1", "--device", "cpu", "--no-progress",
            "--run-dir", str(run_dir)]


def test_a_second_train_into_a_held_run_folder_exits_2_at_once_and_a_killed_holder_does_not_block(
        cli_env, tmp_path, monkeypatch):
    """Refused quickly with one line naming the folder, nothing written; after SIGKILL of the holder it trains."""
    run_dir = tmp_path / "runs" / "mine"
    with run_held_by_another_process(run_dir, tmp_path) as holder:
        before = listing(run_dir.parent)
        start = time.monotonic()
        refused = subprocess.run([sys.executable, "-m", "vitlib", *train_args(run_dir)], capture_output=True,
                                 text=True, env=cli_env, timeout=HOLD_S)
        took = time.monotonic() - start
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert took < HOLD_S / 4, f"the refusal took {took:.0f} s: it waited for the other run"
        assert "Traceback" not in refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "mine/" in lines[0], refused.stderr
        assert "another process" in lines[0]
        assert listing(run_dir.parent) == before  # nothing written: not even the run folder
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL

    assert (run_dir.parent / ".mine.lock").exists()  # what the killed holder left behind ...
    for name in ("HOME", "VITLIB_DATA_DIR", "VITLIB_RUNS_DIR"):
        monkeypatch.setenv(name, cli_env[name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(train_args(run_dir)) == 0  # ... does not block the same command (run here: saves a start)
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]


def test_fit_refuses_a_run_folder_another_process_holds(tmp_path, monkeypatch):
    """train.fit raises BusyError naming the folder while another process holds it; nothing is written."""
    monkeypatch.setenv("VITLIB_DATA_DIR", str(tmp_path / "cache"))
    preset = get_preset("sample", epochs=1)
    folder = sample.write_sample(tmp_path / "src", n_train=64, n_test=4)
    ds = data.prepare_data(folder, dest=tmp_path / "data", verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepared = train.prepare_training_data(ds, preset, "cpu")
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "runs" / "theirs"
    with run_held_by_another_process(run_dir, tmp_path):
        with pytest.raises(BusyError, match="another process is training into theirs/"):
            train.fit(preset, prepared, run_dir=run_dir, progress=False)
        assert not run_dir.exists()
