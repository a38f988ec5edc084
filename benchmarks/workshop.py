"""What a workshop costs, measured (WORKSHOP.md): each notebook's reading time and its Run All time.

    python benchmarks/workshop.py words                                    # markdown words, minutes at 200 a minute
    python benchmarks/workshop.py run --data <your folder> [NOTEBOOK ...]  # Run All of each, timed, into a scratch copy

`run` executes copies (the committed notebooks are left alone), in order, with your runs folder, so notebook 04 finds
a run of the `cpu` preset you trained before (the workshop's case) or trains one (the time of a fresh Run All).
Writes JSON to benchmarks/results/, named by command and CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb")) + [ROOT / "notebooks" / "solutions.ipynb"]
WORDS_PER_MINUTE = 200


def markdown_words(path: Path) -> int:
    """The words of a notebook's markdown cells (tables and code spans included: they are read too)."""
    cells = json.loads(path.read_text())["cells"]
    return sum(len(re.findall(r"\S+", "".join(c["source"]))) for c in cells if c["cell_type"] == "markdown")


def words() -> list[dict]:
    rows = [{"notebook": p.stem, "words": markdown_words(p), "minutes": round(markdown_words(p) / WORDS_PER_MINUTE)}
            for p in NOTEBOOKS]
    for row in rows:
        print(f"{row['notebook']:32} {row['words']:6,} words  {row['minutes']:3} min")
    return rows


def run_all(names: list[str], data: str) -> list[dict]:
    """Run All of each notebook (a scratch copy, beside the originals' folder so relative paths hold), timed."""
    chosen = [p for p in NOTEBOOKS if not names or p.stem in names or p.stem[:2] in names]
    env = {**os.environ, "VITLIB_DATA": data, "VITLIB_PROGRESS": "0"}
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "notebooks", prefix=".timing-") as scratch:
        for path in chosen:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--ExecutePreprocessor.timeout=3600", "--output-dir", scratch, str(path)],
                           env=env, check=True, capture_output=True)
            rows.append({"notebook": path.stem, "run_all_s": round(time.perf_counter() - start, 1)})
            print(f"{path.stem:32} {rows[-1]['run_all_s']:8.1f} s")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("words")
    run = sub.add_parser("run")
    run.add_argument("--data", required=True, help="the folder of the photos (or 'sample')")
    run.add_argument("notebooks", nargs="*", help="names or numbers (01, 04, solutions); default: all")
    args = parser.parse_args(argv)
    if args.command == "words":
        words()
        return 0
    sys.path.insert(0, str(ROOT))
    from vitlib.device import cpu_name

    rows = run_all(args.notebooks, args.data)
    out = ROOT / "benchmarks" / "results" / f"workshop-run-all-{re.sub(r'[^a-z0-9]+', '-', cpu_name().lower())}.json"
    out.write_text(json.dumps({"cpu": cpu_name(), "threads": os.cpu_count(), "data": "<your folder>",
                               "notebooks": rows}, indent=1) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
