"""Started by test_distributed.py under torchrun: the sample preset through vitlib's own `fit`, checking after every
optimiser step that all processes hold the same weights. With --fail-at STEP, rank 1 sends itself --signal there
(SIGKILL: it dies; SIGSTOP: it hangs), to see how the others end."""

import argparse
import json
import os
import signal
from pathlib import Path

import torch

from vitlib import distributed
from vitlib.data import prepare_data
from vitlib.presets import get_preset
from vitlib.train import fit, prepare_training_data

p = argparse.ArgumentParser()
p.add_argument("--run-dir", required=True)
p.add_argument("--report", required=True, help="each rank writes REPORT.<rank>.json")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--fail-at", type=int, default=0, help="the step (counted from 1 over the run) where rank 1 fails")
p.add_argument("--signal", default="SIGKILL")
p.add_argument("--stem", default="patch", help="conv: a stem with BatchNorm, whose running statistics differ per "
               "process during an epoch (then only the parameters are compared after each step)")
args = p.parse_args()

preset = get_preset("sample", epochs=args.epochs)
preset = preset.replace(model=preset.model.replace(stem=args.stem))
world, device = distributed.start(torch.device("cpu"))  # the entry point joins the process group
data = prepare_training_data(prepare_data("sample", verbose=False), preset, device, world=world)
checks = []


def after_step(model):
    if world.rank == 1 and len(checks) + 1 == args.fail_at:
        os.kill(os.getpid(), getattr(signal, args.signal))
    if args.stem == "conv":
        params = dict(model.named_parameters())  # buffers left out
        checks.append(len(set(distributed.gather(distributed.fingerprint(params), world))) == 1)
    else:
        checks.append(distributed.in_step(model, world))


run = fit(preset, data, run_dir=Path(args.run_dir), progress=False, after_step=after_step)
Path(f"{args.report}.{world.rank}.json").write_text(json.dumps({
    "rank": world.rank, "size": world.size, "checks": checks, "train": data.train.files, "val": data.val.files,
    "epochs": [int(e) for e in run.history["epoch"]], "fingerprint": distributed.fingerprint(run.model),
}))
