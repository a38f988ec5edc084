"""Where one training step's time goes, and what fraction of the machine each model uses (issue 31, part 1).

    python benchmarks/profile_step.py --out benchmarks/results/profile-step-<machine>.json
    python benchmarks/profile_step.py --rows cpu cnn-96px-36ep cpu-full-meanpool-local

For each model (a shipped preset, or a row of small_data.ABLATION_ROWS), the step `fit` takes (the batch augmented on
the device, the forward pass and the loss in the device's precision, the backward pass, clipping, AdamW) runs under
torch.profiler on one batch of the recipe's size. Every operation's own CPU time is put in one part: the stem,
attention, the MLP, the norms, the head, the CNN's conv blocks, the loss, the optimiser, the augmentation. A
backward operation belongs to the part whose forward operation made it (the profiler's sequence numbers). Then the
model's FLOPs per step (3x the forward pass's, counted as `family.count_flops` counts them) over the step's time,
against this CPU's peak: a large matrix product in the same precision. Nothing here is a test: it measures this
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from vitlib import models  # noqa: E402
from vitlib.augment import BatchAugment  # noqa: E402
from vitlib.device import Precision, cpu_bf16_units, describe_device, pick_device  # noqa: E402
from vitlib.family import count_flops  # noqa: E402
from vitlib.presets import PRESETS, get_preset  # noqa: E402
from vitlib.small_data import ABLATION_ROWS, row_recipe  # noqa: E402
from vitlib.train import TrainingState, make_loss, make_optimizer, train_step  # noqa: E402

PARTS = ("augmentation", "stem", "attention", "mlp", "norm", "cnn blocks", "head", "loss", "optimiser", "other")


def recipe(name: str):
    return get_preset(name) if name in PRESETS else row_recipe(name)


def part_of(name: str, module: nn.Module) -> str | None:
    """The part a submodule of a model is, by what it is (None: look inside it)."""
    kind = type(module).__name__
    if name in ("to_patch_embedding", "stem"):
        return "stem"
    if name in ("mlp_head", "head", "dist_head"):
        return "head"
    if name == "blocks":
        return "cnn blocks"
    if kind in ("Attention", "LinformerSelfAttention", "LSA"):
        return "attention"
    if kind in ("FeedForward", "LocalFeedForward"):
        return "mlp"
    if kind == "LayerNorm":
        return "norm"
    return None


def label_parts(model: nn.Module) -> list:
    """Wrap each part's forward in a profiler range named `part:<name>`; returns the hooks' handles."""
    handles, seen = [], set()

    def visit(module: nn.Module, prefix: str = ""):
        for name, child in module.named_children():
            part = part_of(name, child)
            if part is None:
                visit(child, f"{prefix}{name}.")
                continue
            if isinstance(child, nn.ModuleList):  # never called itself: its members are (the CNN's blocks)
                for member in child:
                    label(member, part)
                continue
            label(child, part)

    def label(child: nn.Module, part: str):
        if id(child) in seen:
            return
        seen.add(id(child))
        ranges = []

        def enter(mod, args):
            ranges.append(record_function(f"part:{part}"))
            ranges[-1].__enter__()

        def leave(mod, args, out):
            ranges.pop().__exit__(None, None, None)

        handles.extend([child.register_forward_pre_hook(enter), child.register_forward_hook(leave)])

    visit(model)
    return handles


def classify(events) -> dict[str, float]:
    """Seconds of own CPU time per part, over every event of the profile."""
    forward_part = {}  # sequence number of a forward op -> its part

    def enclosing(ev):
        parent = ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("part:"):
                return parent.name[5:]
            parent = parent.cpu_parent
        return None

    for ev in events:
        if ev.sequence_nr >= 0 and not ev.name.startswith("autograd::"):
            part = enclosing(ev)
            if part is not None:
                forward_part.setdefault(ev.sequence_nr, part)
    seconds = defaultdict(float)
    for ev in events:
        if ev.name.startswith("part:"):
            continue
        part = enclosing(ev)
        if part is None:  # a backward op: the part of the forward op it differentiates
            node = ev
            while node is not None and part is None:
                if node.name.startswith("autograd::engine::evaluate_function") and node.sequence_nr >= 0:
                    part = forward_part.get(node.sequence_nr)
                node = node.cpu_parent
        seconds[part or "other"] += ev.self_cpu_time_total / 1e6
    return dict(seconds)


def peak_flops(precision: Precision, n: int = 2048, trials: int = 7, repeats: int = 3) -> float:
    """FLOP/s of an n x n by n x n matrix product in `precision` (its autocast dtype, or fp32): this CPU's peak, the
    best of `trials` timings of `repeats` products each (a single timing of a shared machine varied by 1.5x)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    with precision.autocast():
        for _ in range(2):
            torch.mm(a, b)
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


def profile_row(name: str, device: torch.device, precision: Precision, steps: int = 5, warmup: int = 3) -> dict:
    preset = recipe(name)
    torch.manual_seed(0)
    model = models.build_model(preset.model).to(device).train()
    opt = make_optimizer(model, preset)
    state = TrainingState(model, opt, None, precision.scaler(), preset.grad_clip)
    loss_fn = make_loss(preset)
    augment = BatchAugment(preset.augment, preset.model.num_classes, preset.model.image_size)
    size, batch = preset.train_size, preset.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)

    def labelled_loss(x, logits, target):
        with record_function("part:loss"):
            return loss_fn(x, logits, target)

    def step():
        with record_function("part:augmentation"):
            x, y = augment(images, labels)
        opt_step = state.optimizer.step
        state.optimizer.step = lambda *a, **k: _in_part("optimiser", opt_step, *a, **k)
        try:
            train_step(state, x, y, precision, labelled_loss)
        finally:
            state.optimizer.step = opt_step

    for _ in range(warmup):
        step()
    handles = label_parts(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            wall = (time.perf_counter() - start) / steps
    finally:
        for h in handles:
            h.remove()
    parts = {k: v / steps for k, v in classify(prof.events()).items()}
    # the profiler's own cost inflates the parts; the unprofiled step time is the one to quote
    start = time.perf_counter()
    for _ in range(steps):
        step()
    plain = (time.perf_counter() - start) / steps
    flops = 3 * count_flops(model, preset.model.image_size, batch)
    total = sum(parts.values())
    return {"row": name, "batch": batch, "image px": preset.model.image_size, "tokens": preset.model.seq_len,
            "params (M)": round(models.count_parameters(model) / 1e6, 3), "step s": round(plain, 4),
            "images/s": round(batch / plain, 1), "step s profiled": round(wall, 4),
            "share %": {p: round(100 * parts.get(p, 0.0) / total, 1) for p in PARTS},
            "GFLOPs per step": round(flops / 1e9, 2), "GFLOP/s": round(flops / plain / 1e9, 1)}


def _in_part(part: str, fn, *args, **kwargs):
    with record_function(f"part:{part}"):
        return fn(*args, **kwargs)


def markdown(result: dict) -> str:
    rows = result["rows"]
    head = "| part | " + " | ".join(r["row"] for r in rows) + " |"
    lines = [head, "|---|" + "---:|" * len(rows)]
    for p in PARTS:
        lines.append(f"| {p} | " + " | ".join(f"{r['share %'][p]:.0f} %" for r in rows) + " |")
    for key in ("step s", "images/s", "GFLOPs per step", "GFLOP/s"):
        lines.append(f"| {key} | " + " | ".join(f"{r[key]}" for r in rows) + " |")
    peak = result["peak GFLOP/s"]
    lines.append("| share of the peak | " + " | ".join(f"{100 * r['GFLOP/s'] / peak:.0f} %" for r in rows) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="*", default=["cpu", "cnn-96px-36ep"],
                   help=f"presets ({', '.join(PRESETS)}) or ablation rows (e.g. {', '.join(list(ABLATION_ROWS)[-3:])})")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--fp32", action="store_true", help="fp32 instead of the device's mixed precision")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    device = pick_device("cpu")
    precision = Precision.of(device, not args.fp32)
    result = {"device": describe_device(device, not args.fp32), "bf16 units": cpu_bf16_units(),
              "torch": torch.__version__, "peak GFLOP/s": round(peak_flops(precision) / 1e9, 1),
              "rows": [profile_row(name, device, precision, args.steps) for name in args.rows]}
    print(result["device"], "| bf16 units:", result["bf16 units"], "| peak (2048^3 matmul):",
          result["peak GFLOP/s"], "GFLOP/s")
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
