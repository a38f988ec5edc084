"""The recipe search behind the small-data ablation: each row is the `cpu-plain` preset with some settings changed,
trained by `python -m vitlib train` (one command a row, recorded with its history), one at a time.

    python benchmarks/ablation.py --data ../shared/data/dogs-vs-cats-dev conv-stem conv-stem-full
    python benchmarks/ablation.py --list

The rows and the record live in vitlib (`small_data.ABLATION_ROWS`, `vitlib/pretrained/ablation-cpu.csv`: one line per
epoch with `run`, `device`, `data`, `command`; issue 31's search rows in `search-cpu.csv` until it is done), so
notebook 05 draws its table and curves from real runs wherever
vitlib is installed, and any row can be run again from here.
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
from vitlib.small_data import ABLATION_ROWS as ROWS  # noqa: E402
from vitlib.small_data import ablation_command as command  # noqa: E402
from vitlib.small_data import record_of  # noqa: E402


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
        checkpoints.add_reference_run(name, ROOT / "runs" / "ablation" / name, command=shlex.join(cmd),
                                      csv=record_of(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
