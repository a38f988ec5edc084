"""The recipe search behind the small-data ablation: each row is the `cpu` preset with some settings changed,
trained by `python -m vitlib train` (one command a row, recorded with its history), one at a time.

    python benchmarks/ablation.py --data ../shared/data/dogs-vs-cats-dev conv-stem conv-stem-full
    python benchmarks/ablation.py --list

Histories go to benchmarks/results/ablation-cpu.csv (one row per epoch; `run`, `device`, `data`, `command`), so a
notebook or the README draws the table and curves from real runs, and any row can be run again.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitlib import checkpoints  # noqa: E402

RECORD = ROOT / "benchmarks" / "results" / "ablation-cpu.csv"
ROWS = {  # name: the settings changed from the `cpu` preset (python -m vitlib train --set KEY=VALUE)
    "cpu": [],
    "conv-stem": ["model.stem=conv"],
    "conv-stem-full": ["model.stem=conv", "model.attention=full", "model.kv_init=uniform"],
    "conv-stem-mix": ["model.stem=conv", "augment.mixup=0.2", "augment.cutmix=1.0"],
    "conv-stem-80px": ["model.stem=conv", "model.image_size=80"],
    "conv-stem-80px-full": ["model.stem=conv", "model.image_size=80", "model.attention=full",
                            "model.kv_init=uniform"],
}


def command(name: str, data: str) -> list[str]:
    sets = [arg for setting in ROWS[name] for arg in ("--set", setting)]
    return ["python", "-m", "vitlib", "train", "--preset", "cpu", *sets, "--data", data,
            "--run-dir", f"runs/ablation/{name}", "--no-progress"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="*", help=f"rows to run, of: {', '.join(ROWS)}")
    p.add_argument("--data", default="../shared/data/dogs-vs-cats-dev")
    p.add_argument("--list", action="store_true", help="print each row's command and stop")
    args = p.parse_args(argv)
    for name in args.rows or (ROWS if args.list else []):
        cmd = command(name, args.data)
        if args.list:
            print(f"{name}: {shlex.join(cmd)}")
            continue
        print(f"== {name}: {shlex.join(cmd)}", flush=True)
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True)
        checkpoints.add_reference_run(name, ROOT / "runs" / "ablation" / name, command=shlex.join(cmd), csv=RECORD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
