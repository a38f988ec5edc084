"""vitlib.device: the precision each device trains in (autocast, the gradient scaler, its words), the CPU's bf16
units, read from one /proc/cpuinfo."""

import pytest
import torch

from vitlib import device as devices
from vitlib.device import Precision


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                   ((9, 0), torch.bfloat16)])
def test_gpus_before_ampere_get_fp16_with_a_scaler_not_emulated_bf16(monkeypatch, capability, dtype):
    """torch.cuda.is_bf16_supported() says yes on a T4 (emulated, slow); the capability decides."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.autocast_dtype(torch.device("cuda")) == dtype
    precision = Precision.of(torch.device("cuda"))
    assert precision.dtype == dtype and precision.mixed


def test_mps_runs_in_fp32_without_an_autocast_context():
    assert devices.autocast_dtype(torch.device("mps")) is None
    with devices.autocast(torch.device("mps")):  # a no-op context: older torch has no MPS autocast at all
        pass
    assert not Precision.of(torch.device("mps")).mixed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, None])
def test_a_precision_runs_its_forward_pass_in_its_dtype_and_scales_only_fp16(monkeypatch, dtype):
    monkeypatch.setattr(devices, "autocast_dtype", lambda device: dtype)
    cpu = torch.device("cpu")
    precision = Precision.of(cpu)
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        out = layer(torch.randn(2, 4))
    assert out.dtype == (dtype or torch.float32)
    assert precision.scaler().is_enabled() == (dtype is torch.float16)
    assert precision.describe().endswith({torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast",
                                          None: "fp32"}[dtype])


def test_mixed_precision_off_is_fp32_whatever_the_device_has(monkeypatch):
    monkeypatch.setattr(devices, "autocast_dtype", lambda device: torch.bfloat16)
    fp32 = Precision.of(torch.device("cpu"), mixed=False)
    assert fp32.dtype is None and not fp32.scaler().is_enabled()
    assert devices.describe_device(torch.device("cpu"), mixed_precision=False) == fp32.describe()


def test_cpuinfo_is_read_once_for_the_flags_the_name_and_the_units(monkeypatch, tmp_path):
    reads = []
    text = "model name\t: Test CPU 9000\nflags\t\t: fpu avx512_bf16\n"
    real = devices.Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            reads.append(self)
            return text
        return real(self, *args, **kwargs)

    monkeypatch.setattr(devices.Path, "read_text", read_text)
    devices._cpuinfo.cache_clear()
    try:
        assert devices.cpu_name() == "Test CPU 9000" and devices.cpu_supports_bf16()
        assert devices.cpu_bf16_units() == "AVX512-BF16 (no AMX)"
        assert len(reads) == 1
    finally:
        devices._cpuinfo.cache_clear()
