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


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 arithmetic (compute capability 8.0 on: A100, H100, RTX 30xx).

    `torch.cuda.is_bf16_supported()` also says True on older GPUs (V100, T4) that only
    emulate it, where bf16 autocast would be slower than float32."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    return device.type == "cpu" and cpu_has_native_bf16()


def inference_autocast(device: torch.device):
    """bf16 autocast where it is fast (CUDA, CPUs with native bf16), else nothing."""
    if bf16_is_fast(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
