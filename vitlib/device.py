"""The device: which one to train on, its mixed precision, waiting for it, and its name in words."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
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


@functools.cache
def _cpuinfo() -> str | None:
    """/proc/cpuinfo's text, read once (None where there is none: macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo() or "").split())


def cpu_supports_bf16() -> bool:
    """bf16 is fast on CPUs with AVX512-BF16 or AMX (Xeon since Cooper/Sapphire Rapids); slow elsewhere."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_name() -> str:
    for line in (_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
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
    return Precision.of(device).autocast()


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
    return Precision.of(device, mixed_precision).describe()


def cpu_bf16_units() -> str:
    """What this CPU has for bf16, in words: AMX (Xeon since Sapphire Rapids) and/or AVX512-BF16, or neither."""
    if _cpuinfo() is None:
        return "unknown (no /proc/cpuinfo)"
    flags = _cpu_flags()
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    if not units:
        return "none (bf16 would be emulated: slow)"
    return " and ".join(units) + ("" if "AMX" in units else " (no AMX)")


@dataclass(frozen=True)
class Precision:
    """How a device trains and predicts: under autocast in `dtype` (bf16, or fp16 with its gradients scaled), or in
    fp32 (`dtype` None). Built once where training starts (`Precision.of`), used by every step."""

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, device: torch.device, mixed: bool = True) -> Precision:
        """The device's mixed precision (autocast_dtype), or fp32 when `mixed` is off (or the device has none)."""
        return cls(device, autocast_dtype(device) if mixed else None)

    @property
    def mixed(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        """The context a forward pass runs in: torch.autocast in `dtype`, or none at all for fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.mixed else contextlib.nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs its gradients scaled (small ones would underflow); bf16 and fp32 do not (a disabled scaler)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def describe(self) -> str:
        """The device and the precision in words, e.g. "cpu (Intel(R) Xeon(R) Processor, 2 threads), bfloat16
        autocast"."""
        precision = str(self.dtype).removeprefix("torch.") + " autocast" if self.mixed else "fp32"
        return f"{device_name(self.device)}, {precision}"
