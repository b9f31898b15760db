"""Which number format a device computes fastest in, for training and for inference alike."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 autocast runs faster, not slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def inference_autocast(device: torch.device):
    """bf16 autocast where it is fast (CUDA, CPUs with native bf16), else nothing."""
    if bf16_is_fast(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
