"""What attention costs over sequence length: time and peak memory of full attention (by hand and
PyTorch's fused SDPA) against Linformer's, with a memory profiler for the CPU, and their plot.

Full attention's n x n maps grow as n^2; Linformer's n x k maps (Wang et al., 2020) grow as n, but
pay off only once n is well above k. The benchmark finds where each method wins, on this machine.
"""

from __future__ import annotations

import math
import time
import weakref

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import einsum
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .device import device_name, synchronize

# (image size, patch size) pairs whose token counts (grid^2 + 1) span 50 to 4,097.
BENCH_SIZES = ((224, 32), (64, 8), (224, 16), (128, 8), (224, 8), (256, 8), (224, 4), (256, 4))


def full_attention(q, k, v):
    """Softmax attention as written in vit-pytorch: the whole (n, n) map per head is materialized."""
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


def linformer_attention(q, k, v, proj_k, proj_v):
    """Linformer as written in `linformer`: keys and values projected along the sequence, then attention."""
    k = einsum(k, proj_k, "b h n d, n k -> b h k d")
    v = einsum(v, proj_v, "b h n d, n k -> b h k d")
    return full_attention(q, k, v)


class PeakMemory(TorchDispatchMode):
    """Peak bytes held by tensors that ops create inside the block (inputs made before it are not counted).

    The CPU allocator keeps no statistics, so every op's outputs are followed until they are freed
    (weak references, storages shared by views counted once). Scratch memory private to a kernel
    (e.g. SDPA's per-thread blocks, a few hundred kB) is not seen.
    """

    def __enter__(self):
        self.current = self.peak = 0
        self._live: dict[int, list] = {}
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._live and key in inputs:
            return  # a view of (or an in-place op on) memory that existed before the block
        if key not in self._live:
            self._live[key] = [storage.nbytes(), 0]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self._live[key][1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self._live[key]


def peak_mb(fn, *args, device: torch.device) -> float:
    """Peak memory (MB) that `fn(*args)` allocates beyond its inputs: CUDA's allocator statistics, else PeakMemory."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(*args)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakMemory() as mem:
        fn(*args)
    return mem.peak / 2**20


def median_ms(fn, *args, device: torch.device, min_run_time: float = 0.05, min_runs: int = 3,
              max_run_time: float = 1.0) -> float:
    """Median wall-clock time of fn(*args) in ms: at least `min_runs` runs and `min_run_time` seconds,
    unless the runs already took `max_run_time` (one run of a slow case is enough to see it is slow)."""
    times = []
    while (len(times) < min_runs or sum(times) < min_run_time) and sum(times) < max_run_time:
        synchronize(device)
        start = time.perf_counter()
        fn(*args)
        synchronize(device)  # GPU kernels run asynchronously: wait before reading the clock
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


@torch.inference_mode()
def attention_benchmark(sizes=BENCH_SIZES, dim: int = 128, heads: int = 8, k: int = 64, batch: int = 1,
                        device=None, threads: int | None = 1, min_run_time: float = 0.05,
                        dtype=torch.float32) -> pd.DataFrame:
    """Time (median ms) and peak memory (MB) of one attention layer's core, forward only, over sequence length.

    For every (image size, patch size) in `sizes`, n = grid^2 + 1 tokens of `dim` = heads * d_head:
    full attention written out as vit-pytorch does, the same through PyTorch's fused
    `scaled_dot_product_attention`, and Linformer with projections to `k`. The Q, K and V
    projections, the same for all three, are left out. On a CPU the timings use `threads`
    threads (1 by default, as torch.utils.benchmark does: on a busy machine several threads
    wait for each other and short sequences would measure that; None keeps torch's setting).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        rows = [row for size in sizes for row in _bench_size(*size, dim, heads, k, batch, device, min_run_time, dtype)]
    finally:
        torch.set_num_threads(before)
    table = pd.DataFrame(rows)
    table.attrs["batch"] = batch
    used = threads if device.type == "cpu" and threads else before
    table.attrs["hardware"] = f"{device_name(device, used)}, {str(dtype).removeprefix('torch.')}"
    return table


def _bench_size(image_size, patch_size, dim, heads, k, batch, device, min_run_time, dtype) -> list[dict]:
    n = (image_size // patch_size) ** 2 + 1
    gen = torch.Generator().manual_seed(n)
    q, kk, v = (torch.randn(batch, heads, n, dim // heads, generator=gen).to(device, dtype) for _ in range(3))
    proj_k, proj_v = (torch.randn(n, k, generator=gen).div(math.sqrt(n)).to(device, dtype) for _ in range(2))
    methods = {"full (hand-written)": (full_attention, (q, kk, v)),
               "full (SDPA)": (F.scaled_dot_product_attention, (q, kk, v)),
               f"Linformer (k={k})": (linformer_attention, (q, kk, v, proj_k, proj_v))}
    rows = []
    for name, (fn, args) in methods.items():
        mb = peak_mb(fn, *args, device=device)  # also the warm-up run
        rows.append({"image_size": image_size, "patch_size": patch_size, "seq_len": n, "method": name,
                     "ms": median_ms(fn, *args, device=device, min_run_time=min_run_time), "peak_MB": mb})
    return rows


def crossover(results: pd.DataFrame, method: str, baseline: str, metric: str = "ms") -> int | None:
    """The shortest measured sequence length from which `method` beats `baseline` on `metric` at every longer one."""
    wide = results.pivot_table(index="seq_len", columns="method", values=metric)
    worse = np.flatnonzero((wide[method] >= wide[baseline]).to_numpy())
    first = worse[-1] + 1 if len(worse) else 0
    return int(wide.index[first]) if first < len(wide) else None


def plot_benchmark(results: pd.DataFrame, k: int | None = None) -> plt.Figure:
    """Time and peak memory against sequence length (log-log), one line per method; `k` marks n = k."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "ms", "time per call (ms, median)"), (axes[1], "peak_MB", "peak memory (MB)")):
        for name, part in results.groupby("method", sort=False):
            ax.plot(part["seq_len"], part[metric], "o-", label=name)
        if k is not None:  # Linformer's keys are longer below n = k; its multiply-adds are fewer above n = 2k
            for x, text in ((k, f" n = k = {k}"), (2 * k, f" n = 2k = {2 * k}")):
                ax.axvline(x, color="gray", ls=":", lw=1)
                ax.text(x * 1.04, ax.get_ylim()[1], text, fontsize=7, va="top", ha="left", color="gray",
                        rotation=90)  # beside its line, not struck through by it
        ax.set(xscale="log", yscale="log", xlabel="sequence length n (tokens)", ylabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    batch, hardware = results.attrs.get("batch", "?"), results.attrs.get("hardware", "unknown hardware")
    fig.suptitle(f"one attention layer's core, forward, batch {batch}, measured on {hardware}", fontsize=9)
    fig.tight_layout()
    return fig

