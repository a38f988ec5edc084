"""The device: which one to train on, its mixed precision, waiting for it, and its name in words."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device that does not exist or is not available here; the message names the ones that are."""


def available() -> list[str]:
    """The device types usable here, best first."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA, else Apple's MPS, else the CPU; a DeviceError for one that is not here."""
    if isinstance(name, torch.device):
        return name
    if not name:
        return torch.device(available()[0])
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {name!r} is not a device: choose one of {', '.join(available())}") from None
    if device.type not in available():
        raise DeviceError(f"device {name!r} is not available on this machine: choose one of {', '.join(available())}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered from 0")
    return device


@functools.cache
def memory_bytes() -> int | None:
    """This machine's memory in bytes (None where the operating system does not say): the most any model or cache
    may take. A GPU's own memory is usually smaller, and says so itself (CUDA's out-of-memory error)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cpu_supports_bf16() -> bool:
    """bf16 is fast on CPUs with AVX512-BF16 or AMX (Xeon since Cooper/Sapphire Rapids); slow elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on Ampere-or-later GPUs and bf16-capable CPUs, fp16 (with a grad scaler) on older GPUs.

    The GPU test is the compute capability (8.0 = Ampere): `torch.cuda.is_bf16_supported()` also
    says yes on a T4, where bf16 is emulated and slow.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device):
    """The device's mixed-precision context, or none at all (older torch has no MPS autocast, even disabled)."""
    amp = autocast_dtype(device)
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (CUDA and MPS are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device, threads: int | None = None) -> str:
    """The device in words; for a CPU with its thread count (torch's current one unless given)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = threads or torch.get_num_threads()
        name = f"{cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"
    else:
        name = device.type
    return f"{device.type} ({name})"


def describe_device(device: torch.device, mixed_precision: bool = True) -> str:
    """The device in words and the precision training uses on it (fp32 when `mixed_precision` is off)."""
    amp = autocast_dtype(device) if mixed_precision else None
    return f"{device_name(device)}, {str(amp).removeprefix('torch.') + ' autocast' if amp else 'fp32'}"


def cpu_bf16_units() -> str:
    """What this CPU has for bf16, in words: AMX (Xeon since Sapphire Rapids) and/or AVX512-BF16, or neither."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    if not units:
        return "none (bf16 would be emulated: slow)"
    return " and ".join(units) + ("" if "AMX" in units else " (no AMX)")
