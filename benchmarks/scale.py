"""Scaling out, measured: one process with N threads against N processes (torchrun, DDP) of one thread each, and
torch.compile's compile time against its steady-state speed. Results as JSON in benchmarks/results/.

    python benchmarks/scale.py processes --data ../shared/data/dogs-vs-cats-dev --epochs 2     # 1 x 2 against 2 x 1
    python benchmarks/scale.py compile --preset cpu                                             # eager against compiled

Both runs of `processes` train the same recipe (the preset with --epochs) from scratch on the same split, with the
same global batch and learning rate (vitlib.distributed's rule), so their accuracy after those epochs compares too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from vitlib import bench, device  # noqa: E402


def processes(data: str, preset: str, epochs: int, n: int) -> dict:
    """Train `preset` for `epochs` as 1 process x n threads, then n processes x 1 thread; each run's epochs."""
    result = {"preset": preset, "epochs": epochs, "cpu": device.cpu_name(), "bf16_units": device.cpu_bf16_units(),
              "runs": {}}
    train = ["-m", "vitlib", "train", "--preset", preset, "--epochs", str(epochs), "--data", data, "--no-progress",
             "--device", "cpu"]
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        plans = {f"1 x {n} threads": ([sys.executable, *train], {"OMP_NUM_THREADS": str(n)}),
                 f"{n} x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc_per_node={n}", *train], {"OMP_NUM_THREADS": "1"})}
        for name, (cmd, env) in plans.items():
            run_dir = Path(tmp) / name.replace(" ", "")
            cmd = [*cmd, "--run-dir", str(run_dir)]
            print(f"== {name}: {shlex.join(cmd)}", flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True)
            history = pd.read_csv(run_dir / "history.csv")
            result["runs"][name] = {
                "command": shlex.join(["python", *cmd[1:-2]]),
                "seconds": round(time.perf_counter() - start, 1),
                "images_per_s": [round(v, 1) for v in history["images_per_s"]],
                "epoch_s": [round(v, 1) for v in history["epoch_s"]],
                "val_acc": [round(v, 4) for v in history["val_acc"]],
                "val_loss": [round(v, 4) for v in history["val_loss"]],
            }
    one, many = result["runs"].values()
    result["speedup_last_epoch"] = round(many["images_per_s"][-1] / one["images_per_s"][-1], 2)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("processes", help="1 process x N threads against N processes x 1 thread")
    a.add_argument("--data", required=True)
    a.add_argument("--preset", default="cpu")
    a.add_argument("--epochs", type=int, default=2)
    a.add_argument("-n", type=int, default=2, help="threads, and processes")
    c = sub.add_parser("compile", help="torch.compile: compile seconds against images per second")
    c.add_argument("--preset", default="cpu")
    c.add_argument("--seconds", type=float, default=20)
    for s in (a, c):
        s.add_argument("--out", default=None, help="default: benchmarks/results/<command>-<preset>-<device>.json")
    args = p.parse_args(argv)
    if args.command == "processes":
        result = processes(args.data, args.preset, args.epochs, args.n)
    else:
        result = bench.compile_speed(args.preset, "cpu", args.seconds)
    result["command"] = shlex.join(["python", "benchmarks/scale.py", *(argv or sys.argv[1:])])
    print(json.dumps(result, indent=2))
    cpu = device.cpu_name().split()[0].lower()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{args.command}-{args.preset}-{cpu}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
