"""Where a run trains: the device, the process group under torchrun, precision and memory layout,
and the few collectives every process must take part in alike.

Under torchrun each of N processes holds one `Runtime`; only rank 0 (`main`) writes files.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from dogvae.errors import DogvaeError
from dogvae.precision import cpu_has_native_bf16, cuda_has_native_bf16

if TYPE_CHECKING:
    from dogvae.train import TrainConfig


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    owns_process_group: bool = False  # this `train` call joined it, so it leaves it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _cuda_device(local_rank: int) -> torch.device:
    """This process's GPU: under torchrun, the one numbered by its local rank."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DogvaeError(
            f"process with LOCAL_RANK {local_rank} has no GPU of its own: {count} visible; "
            "start torchrun with --nproc_per_node at most the number of GPUs"
        )
    return torch.device("cuda", local_rank)


def setup_runtime(cfg: TrainConfig, image_size: int) -> Runtime:
    """Pick the device, join the process group under torchrun, choose precision and layout."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DogvaeError("--device cuda was asked for but no CUDA GPU is visible")
    if want_cuda:
        device = _cuda_device(local_rank)
        torch.cuda.set_device(device)  # before NCCL starts: each process on its own GPU
        # fixed shapes: let cuDNN pick its fastest kernels, unless the run must repeat itself
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        keep_freed_memory()
    owns_process_group = world_size > 1 and not dist.is_initialized()
    if owns_process_group:
        if want_cuda:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if cfg.precision == "bf16" or (
        cfg.precision == "auto"
        and (want_cuda and cuda_has_native_bf16(device) or not want_cuda and cpu_has_native_bf16())
    ):
        dtype = torch.bfloat16
    elif cfg.precision in ("auto", "fp32"):
        dtype = None
    else:
        raise DogvaeError(f"unknown precision {cfg.precision!r}; choose auto, bf16 or fp32")
    channels_last = cfg.channels_last == "on" or (
        cfg.channels_last == "auto" and auto_channels_last(image_size, want_cuda)
    )
    return Runtime(device, rank, world_size, local_rank, dtype, channels_last, owns_process_group)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """With `enabled`, run the body with PyTorch's deterministic kernels (cuDNN's too) and
    restore the previous settings after it; otherwise change nothing.

    An operation with no deterministic version warns rather than fails (`warn_only`). cuBLAS
    needs CUBLAS_WORKSPACE_CONFIG before its first call in the process; it is set here when
    nobody set it, which is in time unless this process used the GPU before."""
    if not enabled:
        yield
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def runtime_facts(rt: Runtime) -> dict:
    """Where and how a run trains, for its config.json: device, GPU name, processes, the
    process group's backend (None for one process), precision and layout."""
    return {
        "device": str(rt.device),
        "device_name": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
        "world_size": rt.world_size,
        "backend": dist.get_backend() if rt.world_size > 1 else None,
        "precision": "bf16" if rt.autocast_dtype == torch.bfloat16 else "fp32",
        "channels_last": rt.channels_last,
    }


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    malloc serves blocks over 32 MB (seed's dense-layer gradients) with fresh mmaps that are
    freed again every step, so each step page-faults them in anew; with mmap and trimming off
    the heap is reused (figures: docs/results.md, "Training speed"). Not glibc, or
    DOGVAE_KEEP_FREED_MEMORY=0: nothing changes. Returns whether it took effect.
    """
    if os.environ.get("DOGVAE_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h; a threshold of -1: never trim
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, -1))


def auto_channels_last(image_size: int, cuda: bool) -> bool:
    """channels_last pays on CUDA and, with bf16 on CPU, from 64 px up
    (`bench/train_throughput.py --speed-paths-only` measures it)."""
    return cuda or image_size >= 64


def autocast(rt: Runtime):
    return torch.autocast(
        rt.device.type, dtype=rt.autocast_dtype, enabled=rt.autocast_dtype is not None
    )


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor onto `device`. From the host to a GPU it goes through page-locked memory
    without waiting: a plain copy from pageable memory would make the host wait until the
    GPU has finished all the work queued before it, every step."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """A batch of images onto the training device, in the run's memory layout."""
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    return host_to_device(x, rt.device).contiguous(memory_format=fmt)


def shared_by_main(rt: Runtime, read: Callable[[], object]):
    """Run `read` on rank 0 only and hand its result, or its DogvaeError, to every process,
    so that all of them go on, or all stop with the same message (none waits forever)."""
    result, error = None, None
    if rt.main:
        try:
            result = read()
        except DogvaeError as exc:
            error = exc
    if rt.world_size > 1:
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise error
    return result


def share_buffers(rt: Runtime, *modules: nn.Module) -> None:
    """Give every process rank 0's buffers, as DDP does before each forward. Per-process
    BatchNorm (on CPU) updates its running statistics from each process's own images, so
    without this the processes would validate and end with slightly different statistics."""
    if rt.world_size > 1:
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict: equal on all processes of a healthy DDP run."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprints_per_rank(model: nn.Module, rt: Runtime) -> list[str]:
    """`weights_fingerprint` of every process, by rank; ends on a tensor-free barrier.

    DDP keeps the process group, and so Gloo's worker threads, alive past
    `destroy_process_group` (PyTorch issues 72366, 109478). A worker frees a collective's
    tensors a moment after the caller's wait returns, and freeing a tensor that Python has
    already dropped takes the GIL. If that happens while the interpreter is shutting down, the
    worker thread is killed inside C++ and the process aborts ("terminate called without an
    active exception"; gdb showed ~AsyncAllgatherWork in pt_gloo_runloop waiting for the GIL
    during Py_FinalizeEx). This gather is a run's last collective, so a barrier follows it:
    waiting on it releases the GIL until every rank has arrived, which gives the workers time
    to free the gather's buffers before the run ends, and it holds no tensors itself. It
    narrows the race to a worker stalled for the whole barrier; PyTorch does not expose a way
    to wait for the free itself."""
    if rt.world_size == 1:
        return [weights_fingerprint(model)]
    replicas = [None] * rt.world_size
    dist.all_gather_object(replicas, weights_fingerprint(model))
    dist.barrier()
    return replicas


# --- batches and noise ----------------------------------------------------------------------


def noise_rows(rows: int, latent_dim: int, rt: Runtime, generator=None) -> torch.Tensor:
    """This process's rows of standard-normal noise drawn for `rows` images of the global batch.

    Drawn on the CPU by every process alike: one random state, the same on every device and for
    every world size. The sampler deals the global batch's images to processes in turn (image
    j to rank j mod N), so noise row j goes with image j whatever N is.
    """
    return torch.randn(rows, latent_dim, generator=generator)[rt.rank :: rt.world_size]
