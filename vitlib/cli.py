"""python -m vitlib download|train|predict|bench: headless runs on the code the notebooks call."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path


def _download(args) -> int:
    from .data import prepare_data

    ds = prepare_data(args.data)
    if args.require_real and ds.synthetic:
        print("Refusing: this needs real photos, and the data resolved to the synthetic sample. Set VITLIB_DATA "
              "to a folder holding train.zip and test.zip, or add Kaggle credentials.", file=sys.stderr)
        return 2
    return 0


def _train(args) -> int:
    from .data import prepare_data
    from .device import pick_device
    from .distributed import start
    from .files import PROGRESS_ENV
    from .metrics import run_summary
    from .presets import check_fits, get_preset, with_text_settings
    from .run_dir import RunDir
    from .train import fit, prepare_training_data

    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                  ("seed", args.seed)) if v is not None}
    preset = get_preset(args.preset, **changes)  # checked here, before anything is read or written
    preset = with_text_settings(preset, args.set)
    check_fits(preset)  # the model and a batch against this machine's memory: before anything is read or written
    if args.no_progress:
        os.environ[PROGRESS_ENV] = "0"  # the caching bars too, not only the epochs'

    world, device = start(pick_device(args.device))  # under torchrun: join the other processes
    ds = prepare_data(args.data, verbose=world.main)  # downloads and extractions wait for one another (locks)
    folder = RunDir.for_run(preset, ds.identity, args.run_dir)
    with contextlib.ExitStack() as held:  # rank 0 holds the folder and reads it once, before the images are cached;
        # a refusal ends every process at once
        world.once(lambda: held.enter_context(folder.open(preset, ds.identity, not args.fresh, world.size)).path)
        data = prepare_training_data(ds, preset, device, world=world)
        run = fit(preset, data, run_dir=folder, resume=not args.fresh,
                  progress=False if args.no_progress else None, compile=args.compile, mixed_precision=not args.fp32)
    if world.main:
        best = run_summary(run.history)
        print(f"best epoch {best['best epoch']}: val acc {best['val acc']:.4f}, val log loss "
              f"{best['val log loss']:.4f}; checkpoints and history.csv in {run.run_dir}")
    return 0


def _predict(args) -> int:
    from .data import prepare_data
    from .submit import predict_to_csv

    if args.photos:
        return _predict_photos(args)
    if not args.checkpoint:
        print("error: predict needs --checkpoint (to predict the test folder) or photos to predict "
              "(python -m vitlib predict my_cat.jpg)", file=sys.stderr)
        return 2
    from .files import writable_folder

    out = Path(args.out)
    if not args.out or out.is_dir():
        print(f"error: --out names the CSV file to write, not {'a folder' if args.out else 'nothing'} "
              f"({args.out!r}); e.g. --out submission.csv", file=sys.stderr)
        return 2
    writable_folder(out.parent, "--out")  # before the predicting, not after it
    predict_to_csv(args.checkpoint, prepare_data(args.data), out, tta=not args.no_tta,
                   calibrate=not args.no_calibrate, submit_message=args.submit, device=args.device)
    return 0


def _predict_photos(args) -> int:
    """P(dog) for your own photos: a line each; the unreadable ones named on stderr; exit 2 if none could be read."""
    from .checkpoints import load_trained
    from .device import pick_device
    from .own_photos import photo_files, predict_photos

    files = photo_files(args.photos)
    if not files:
        print(f"error: no files in {', '.join(args.photos)}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    model, meta = load_trained(args.checkpoint, kind="cpu", device=device)
    found = predict_photos(model, {str(f): f for f in files}, tta=not args.no_tta, device=device)
    for row in found.itertuples():
        if isinstance(row.problem, str):
            print(f"skipped {row.problem}", file=sys.stderr)
        else:
            print(f"{row.photo}\tP(dog) = {row.p_dog:.3f}\t{row.answer}")
    if found["problem"].notna().all():
        print(f"error: none of the {len(found)} file(s) is an image vitlib can read", file=sys.stderr)
        return 2
    print(f"model: {meta.get('source', args.checkpoint or 'the cpu preset')}", file=sys.stderr)
    return 0


def _bench(args) -> int:
    from .bench import run_benchmark
    from .files import writable_folder

    if args.out:
        if Path(args.out).is_dir():
            print(f"error: bench --out names the JSON file to write, not a folder ({args.out!r}); e.g. --out "
                  "bench.json", file=sys.stderr)
            return 2
        writable_folder(Path(args.out).parent, "bench --out")  # before the minutes of measuring
    run_benchmark(data=args.data, seconds=args.seconds, out=args.out, time_to_target=args.time_to_target,
                  subset=args.images, compile_preset=args.compile)
    return 0


def _positive(kind):
    """An argparse type: a number of `kind` above 0 (argparse's own one-line error otherwise)."""

    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be above 0 (and finite), not {text}")
        return value

    read.__name__ = f"positive {kind.__name__}"
    return read


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vitlib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    data_help = "auto (default, or $VITLIB_DATA), sample, kaggle, or a folder/zip path"

    d = sub.add_parser("download", help="download or extract the data and check it")
    d.add_argument("--data", default=None, help=data_help)
    d.add_argument("--require-real", action="store_true", help="fail unless the data is real photos")
    d.set_defaults(func=_download)

    t = sub.add_parser("train", help="train a preset; resumes an interrupted run")
    t.add_argument("--preset", default="cpu", help="sample, cpu, cpu-long, cpu-plain, cpu-full, seed or gpu")
    t.add_argument("--data", default=None, help=data_help)
    t.add_argument("--run-dir", default=None, help="default: runs/<preset>-<data>")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="change any setting of the preset, e.g. --set model.stem=conv --set augment.mixup=0.2")
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    t.add_argument("--fresh", action="store_true", help="refuse to resume (fails if the run dir has a run)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    t.add_argument("--fp32", action="store_true", help="no mixed precision (autocast off), for a CPU with slow bf16")
    t.add_argument("--compile", action="store_true", help="train through torch.compile (a one-off compile first)")
    t.set_defaults(func=_train)

    r = sub.add_parser("predict", help="predict the test folder and write a validated submission.csv; or, given "
                       "photos, P(dog) for each")
    r.add_argument("photos", nargs="*", help="image files or folders of your own to predict (then no submission)")
    r.add_argument("--checkpoint", default=None, help="a best.pt or last.pt written by training (for photos, default: "
                   "your newest cpu run, else the one shipped with vitlib)")
    r.add_argument("--data", default=None, help=data_help)
    r.add_argument("--out", default="submission.csv")
    r.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation")
    r.add_argument("--no-calibrate", action="store_true", help="no temperature scaling fitted on validation")
    r.add_argument("--submit", metavar="MESSAGE", default=None, help="also submit to Kaggle with this message")
    r.add_argument("--device", default=None)
    r.set_defaults(func=_predict)

    b = sub.add_parser("bench", help="seed data pipeline against vitlib's, images/s and time to the seed's accuracy")
    b.add_argument("--data", default=None, help=data_help)
    b.add_argument("--seconds", type=_positive(float), default=20, help="time spent measuring each pipeline")
    b.add_argument("--images", type=_positive(int), default=2048, help="images to measure on (a seeded random subset)")
    b.add_argument("--time-to-target", action="store_true",
                   help="also train the cpu preset to the seed's accuracy (minutes)")
    b.add_argument("--compile", metavar="PRESET", nargs="?", const="cpu", default=None,
                   help="also time torch.compile on PRESET's training step (default cpu): compile s against img/s")
    b.add_argument("--out", default=None, help="write the results as JSON here")
    b.set_defaults(func=_bench)
    return p


def main(argv=None) -> int:
    """Run one command; a problem the user can fix ends with one line on stderr and exit status 2, Ctrl-C with 130."""
    args = parser().parse_args(argv)
    from .checkpoints import CheckpointError
    from .data import DataError
    from .device import DeviceError
    from .distributed import DistributedError
    from .download import KaggleError
    from .files import BusyError, DiskFullError, PlaceError
    from .own_photos import PhotoError
    from .presets import PresetError
    from .submit import SubmissionError
    from .train import DivergedError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)  # fit has said where the run stands and how to resume
        return 130
    except (BusyError, CheckpointError, DataError, DeviceError, DiskFullError, DistributedError, DivergedError,
            KaggleError, PhotoError, PlaceError, PresetError, SubmissionError, FileExistsError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
