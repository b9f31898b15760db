"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints.

Runs on one CPU or GPU, or under `torchrun` with DistributedDataParallel (NCCL on CUDA, Gloo on
CPU). Under torchrun `batch_size` stays the global batch: each of N processes trains on
batch_size / N images of every step, and together they compute what one process computes with
the whole batch (same images, same noise, gradients averaged; up to float rounding, and to
BatchNorm statistics on CPU, where there is no SyncBatchNorm). So the learning rate and steps
per epoch do not depend on N, and a run resumes with any N. Validation is shared too: each
process scores its part of the validation set and the sums are added over processes. Only
rank 0 (the `main` process) writes files.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from dogvae import checkpoint
from dogvae.atomic import atomic_path, crash_point, write_json
from dogvae.data.cache import ImageSet, load_images
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.split import hold_back_labels, stratified_split
from dogvae.errors import CheckpointError, DogvaeError
from dogvae.metrics import active_units, mse_per_image, psnr_per_image, reconstruction_baselines
from dogvae.model import PRESETS, BaseVAE, VAEConfig, build_model, preset_config
from dogvae.pictures import image_grid, pairs_grid, save_png
from dogvae.precision import cpu_has_native_bf16, cuda_has_native_bf16
from dogvae.run import Run

logger = logging.getLogger(__name__)


class TrainingError(DogvaeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


# The exit status of a run stopped by a signal, as a shell reports a process it killed (128 + N).
EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}

# Settings with a command-line flag, as errors name them; the others are --config fields.
FLAGS = {"batch_size": "--batch-size", "lr": "--lr"}
MODEL_FLAGS = "--image-size, --latent-dim, --beta, --model or the model section of --config"

# What a preset does not set in its `train_overrides` (the Keras replica turns most of them off).
TRAIN_DEFAULTS = {
    "weight_decay": 1e-4, "warmup_steps": 100, "grad_clip": 5.0, "compile": False,
    "lr_schedule": "cosine",
}  # fmt: skip
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """How to train. `None` fields take the preset's value (see `dogvae.model.PRESETS`): its
    epochs, batch size and learning rate, and its `train_overrides` of `TRAIN_DEFAULTS`.

    `batch_size` is the global batch: under torchrun with N processes each takes 1/N of it.
    `deterministic` makes a CUDA run repeat itself bit for bit (cuDNN's deterministic
    kernels, no autotuning, `torch.use_deterministic_algorithms`), so that `--resume` ends
    exactly where an uninterrupted run does, at some cost in speed; CPU runs already repeat
    themselves. `device_cache` ("auto", "on", "off") holds the decoded uint8 images on the
    training device and makes batches there; "auto" does so on a GPU when they take under a
    quarter of its free memory. `compile` runs the model through `torch.compile`.
    `label_fraction` keeps the labels of only that share of each breed's training images (the
    rest train as unlabelled images; for `ssvae`). The ssvae's classifier has a learning-rate
    schedule of its own, a one-cycle over its first `classifier_epochs` epochs (0: the whole
    run; `group_schedules`), and then stays fixed while the generative half goes on learning.
    """

    data: str
    out: str
    preset: str = "small64"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    lr_schedule: str | None = None  # "cosine" (after warm-up) or "constant"
    ema_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool | None = None
    device_cache: str = "auto"
    deterministic: bool = False
    crop: str = "center"
    cache_dir: str | None = None
    strict: bool = False
    resume: bool = False
    progress: bool = True
    label_fraction: float = 1.0
    classifier_epochs: int = 45
    model_overrides: dict = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with the preset's defaults filled in."""
        if self.preset not in PRESETS:
            raise DogvaeError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.epochs is not None and self.epochs < 1:
            raise DogvaeError("--epochs must be at least 1")
        if self.classifier_epochs < 0:
            raise DogvaeError("--classifier-epochs must be 0 (the whole run) or more")
        if not 0.0 < self.label_fraction <= 1.0:
            raise DogvaeError(f"--label-fraction must be in (0, 1], not {self.label_fraction}")
        if self.lr_schedule not in (None, *LR_SCHEDULES):
            raise DogvaeError(
                f"lr_schedule must be {' or '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}"
            )
        for name in ("channels_last", "device_cache"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise DogvaeError(f"{name} must be auto, on or off, not {getattr(self, name)!r}")
        preset = PRESETS[self.preset]
        values = dict(self.__dict__)
        for name in ("epochs", "batch_size", "lr"):
            if values[name] is None:
                values[name] = getattr(preset, name)
        for name, default in TRAIN_DEFAULTS.items():
            if values[name] is None:
                values[name] = preset.train_overrides.get(name, default)
        resolved = TrainConfig(**values)
        resolved.check_numbers()
        return resolved

    def check_numbers(self) -> None:
        """Refuse a setting no run can train with, naming its flag (or its config field)."""
        rules = (
            ("batch_size", lambda v: isinstance(v, int) and v >= 1, "be a whole number >= 1"),
            ("lr", lambda v: math.isfinite(v) and v > 0, "be a positive number"),
            ("weight_decay", lambda v: v >= 0, "not be negative"),
            ("warmup_steps", lambda v: isinstance(v, int) and v >= 0, "be a whole number >= 0"),
            ("grad_clip", lambda v: v >= 0, "not be negative (0: no clipping)"),
            ("ema_decay", lambda v: 0.0 <= v < 1.0, "be in [0, 1) (0: no average)"),
            ("val_fraction", lambda v: 0.0 <= v < 1.0, "be in [0, 1)"),
        )
        for name, test, rule in rules:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not test(value):
                raise DogvaeError(f"{FLAGS.get(name, name)} must {rule}, not {value!r}")

    def model_config(self) -> VAEConfig:
        try:
            return VAEConfig.from_dict(
                {**preset_config(self.preset).to_dict(), **self.model_overrides}
            )
        except ValueError as exc:
            raise DogvaeError(f"{exc} (set by {MODEL_FLAGS})") from exc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_settings(
        cls, settings: dict, flags: dict, *, out, resume: bool = False, strict: bool = False
    ) -> TrainConfig:
        """A --config file's `settings` ({"preset", "model", "train"}) under command-line
        `flags` (None: not given; `MODEL_FIELDS` set the model), for the run folder `out`."""
        model = dict(settings.get("model", {}))
        values = {**settings.get("train", {}), "preset": settings.get("preset", "small64")}
        for name, value in flags.items():
            if value is not None:
                (model if name in MODEL_FIELDS else values)[name] = value
        if values.get("data") is None:
            raise DogvaeError(
                f"{out} holds no checkpoint to read the data folder from: pass --data"
            )
        values.update(
            data=str(values["data"]), out=str(out), resume=resume, strict=strict,
            model_overrides=model,
        )  # fmt: skip
        return cls(**values)

    @classmethod
    def from_run(cls, out, settings: dict, flags: dict, *, strict: bool = False) -> TrainConfig:
        """What the run in `out` was started with (its latest checkpoint's settings), so that
        `--resume` goes on with that same run; `settings` (a --config file's) and `flags` win."""
        saved = Run.latest(out)
        if saved is not None:  # else `train` says there is nothing to resume
            train = {k: v for k, v in saved.train.items() if k not in RUN_ONLY_SETTINGS}
            train.setdefault("lr_schedule", "cosine")  # what runs saved before it trained with
            settings = {
                "preset": settings.get("preset", saved.preset),
                "model": {**saved.model_config.to_dict(), **settings.get("model", {})},
                "train": {**train, **settings.get("train", {})},
            }
        return cls.from_settings(settings, flags, out=out, resume=True, strict=strict)


# Flags that set the model, not the training; settings a resumed run does not take from its
# checkpoint (where it is, how it is watched, what the model section says).
MODEL_FIELDS = ("image_size", "latent_dim", "beta", "model")
RUN_ONLY_SETTINGS = ("out", "resume", "progress", "strict", "model_overrides")


# A --config file's sections: "tune" is the trial a tune/best.json came from (read by
# nobody); only `dogvae tune` reads "search".
SETTINGS_SECTIONS = ("preset", "model", "train", "tune")
TUNE_SECTIONS = (*SETTINGS_SECTIONS, "search")


def read_settings_file(path: str | Path, sections=SETTINGS_SECTIONS) -> dict:
    """A `--config` file: a JSON object of `sections`. Anything else is refused in one line
    that names the file."""
    path = Path(path)
    try:
        settings = json.loads(path.read_text())
    except OSError as exc:
        raise DogvaeError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DogvaeError(f"--config {path}: not valid JSON ({exc})") from exc
    if not isinstance(settings, dict):
        raise DogvaeError(
            f"--config {path}: must hold a JSON object, not {type(settings).__name__}"
        )
    unknown = sorted(set(settings) - set(sections))
    if unknown:
        raise DogvaeError(
            f"--config {path}: unknown section {', '.join(map(repr, unknown))}; "
            f"it may hold {', '.join(sections)}"
        )
    for section in set(sections) - {"preset"}:
        if not isinstance(settings.get(section, {}), dict):
            raise DogvaeError(f"--config {path}: {section!r} must be a JSON object")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings.get("train", {})) - fields)
    if unknown:
        raise DogvaeError(f"--config {path}: unknown train settings {', '.join(unknown)}")
    return settings


# --- devices, precision, processes --------------------------------------------------------


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

    PyTorch's CPU tensors come from malloc, which serves blocks over 32 MB (seed's dense-layer
    gradients and bf16 weight copies) with fresh mmaps, freed again each step: 60,000 page
    faults and a sixth of a seed step in the kernel. With mmap off and trimming off, the second
    step onwards reuses the heap: in `bench/train_throughput.py`, seed 94 img/s (bare loop,
    glibc's default) -> 120 (dogvae's loop with this), small64 445 -> 502 (before its 16-channel
    decoder), for 3-6% more peak memory. Not glibc (macOS, musl), or
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
    """channels_last pays on CUDA and, with bf16 on 2 CPU cores, from 64 px up (small64 +15%,
    seed +20%; res64 unchanged): `bench/train_throughput.py --speed-paths-only` re-checks it."""
    return cuda or image_size >= 64


def make_optimizer(model: BaseVAE, lr: float, weight_decay: float, device: torch.device):
    """AdamW over the model's `parameter_groups`, fused into one kernel where this torch has it
    for the device: on 2 CPU cores the fused step trains the 43 M-parameter `seed` preset ~30%
    faster than the foreach one."""
    fused = device.type == "cuda" or torch.__version__ >= "2.4"
    return torch.optim.AdamW(model.parameter_groups(weight_decay), lr=lr, fused=fused)


def keep_saved_group_marks(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Mark the parameter groups as the resumed run's saved optimizer had them: a run saved
    before the classifier had a schedule of its own goes on with one schedule for all."""
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=False):
        group["classifier"] = saved_group.get("classifier", False)


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip each parameter group's gradient norm to `max_norm` on its own, except a group
    marked "classifier": its gradient, alpha x cross-entropy, has a norm of 100-300 on
    dogs-full, so clipping it to 5 would normalise every step. On dogs-full (alone, 16 of 30
    epochs) that and the ssvae's generative schedule together took the classifier from 22.6%
    top-1 to 17.4%."""
    for group in optimizer.param_groups:
        if not group.get("classifier"):
            torch.nn.utils.clip_grad_norm_(group["params"], max_norm)


def _autocast(rt: Runtime):
    return torch.autocast(
        rt.device.type, dtype=rt.autocast_dtype, enabled=rt.autocast_dtype is not None
    )


def _host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor onto `device`. From the host to a GPU it goes through page-locked memory
    without waiting: a plain copy from pageable memory would make the host wait until the
    GPU has finished all the work queued before it, every step."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """A batch of images onto the training device, in the run's memory layout."""
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    return _host_to_device(x, rt.device).contiguous(memory_format=fmt)


def _shared_by_main(rt: Runtime, read: Callable[[], object]):
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


def _share_buffers(rt: Runtime, *modules: nn.Module) -> None:
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


class DeviceBatches:
    """A loader's batches, made on `device` from a copy of its uint8 images held there.

    On a GPU this takes the loader off the critical path: the pixels cross the bus once, and a
    batch is one gather, flip and conversion on the GPU. The order (the loader's sampler) and the
    flips (the dataset's per-epoch draw) are the loader's own, so the numbers of a run do not
    depend on where its batches were made.
    """

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        data: CachedImages = loader.dataset
        self.pixels = torch.from_numpy(np.ascontiguousarray(data.images.images[data.rows]))
        self.pixels = self.pixels.to(device)  # (n, S, S, 3) uint8
        self.labels = torch.from_numpy(data.images.labels[data.rows].astype(np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        device = self.pixels.device
        # the flips `set_epoch` drew for this epoch (CachedImages keeps them per position)
        flips = torch.from_numpy(self.loader.dataset._flips).to(device)
        # the epoch's order crosses to the device in one copy, not one per batch
        batches = [np.asarray(positions, np.int64) for positions in self.loader.batch_sampler]
        if not batches:
            return
        order = torch.from_numpy(np.concatenate(batches)).to(device)
        ends = np.cumsum([len(b) for b in batches]).tolist()
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            at = order[start:end]
            x = self.pixels[at].permute(0, 3, 1, 2)  # (B, 3, S, S), channels_last in memory
            x = torch.where(flips[at].view(-1, 1, 1, 1), x.flip(3), x)
            yield x.float().div_(255.0), self.labels[at]


def _batches(loader, cfg: TrainConfig, rt: Runtime):
    """`loader` itself, or `DeviceBatches` over it when the device cache is on (see TrainConfig)."""
    data: CachedImages = loader.dataset
    nbytes = len(data) * int(np.prod(data.images.images.shape[1:]))
    fits = rt.device.type == "cuda" and nbytes < torch.cuda.mem_get_info(rt.device)[0] / 4
    if cfg.device_cache == "on" or (cfg.device_cache == "auto" and fits):
        return DeviceBatches(loader, rt.device)
    return loader


def noise_rows(rows: int, latent_dim: int, rt: Runtime, generator=None) -> torch.Tensor:
    """This process's rows of standard-normal noise drawn for `rows` images of the global batch.

    Drawn on the CPU by every process alike: one random state, the same on every device and for
    every world size. The sampler deals the global batch's images to processes in turn (image
    j to rank j mod N), so noise row j goes with image j whatever N is.
    """
    return torch.randn(rows, latent_dim, generator=generator)[rt.rank :: rt.world_size]


class NoisyForward(nn.Module):
    """The VAE's forward pass with the reparameterisation noise given rather than drawn.

    DDP and torch.compile wrap this module; the objective stays outside it, so the KL weight
    changing every step does not make torch.compile recompile. `breed` (labels, -1 for
    unlabelled images) reaches breed-aware models; a plain VAE ignores it.
    """

    def __init__(self, vae: BaseVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor, breed: torch.Tensor | None = None):
        return self.vae.noisy_forward(x, eps, breed)


# --- schedules ------------------------------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `floor` x the base learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def one_cycle_factor(step: int, total_steps: int, warm: float = 0.15) -> float:
    """`OneCycleLR`'s shape as a factor of the peak: up from 1/25 of it along a half cosine over
    the first `warm` of `total_steps`, then down to zero along another; zero after."""
    peak_at = max(1, round(warm * total_steps))
    if step < peak_at:
        return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / peak_at))
    progress = min(1.0, (step - peak_at) / max(1, total_steps - peak_at))
    return 0.5 * (1 + math.cos(math.pi * progress))


def group_schedules(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """One learning-rate factor per parameter group: `lr_factor` over the whole run (or, with
    `lr_schedule` "constant", 1 after any warm-up), or for a group marked "classifier"
    `one_cycle_factor` over its first `classifier_epochs` epochs.

    That is the recipe of a classifier trained alone on dogs-full (one-cycle AdamW, 30
    epochs, no clipping: 29.8% top-1); see `clip_gradients` for the other half of it.
    """
    total = cfg.epochs * steps_per_epoch
    epochs = min(cfg.classifier_epochs or cfg.epochs, cfg.epochs)
    classifier_total = epochs * steps_per_epoch

    def whole_run(step: int) -> float:
        if cfg.lr_schedule == "constant":
            return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return lr_factor(step, cfg.warmup_steps, total)

    def classifier(step: int) -> float:
        return one_cycle_factor(step, classifier_total)

    return [classifier if g.get("classifier") else whole_run for g in optimizer.param_groups]


def step_kl_weight(model_cfg: VAEConfig, epoch: int, batch: int, steps_per_epoch: int) -> float:
    """The KL weight of step `batch` (from 0) of `epoch` (from 0)."""
    return kl_weight(model_cfg.beta, model_cfg.kl_warmup_epochs, epoch + batch / steps_per_epoch)


def kl_weight(beta: float, warmup_epochs: float, epoch_progress: float) -> float:
    """KL weight ramps linearly from 0 to beta over the first `warmup_epochs` epochs."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch_progress / warmup_epochs)


# --- validation -----------------------------------------------------------------------------


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many labelled rows have their label among the k highest logits."""
    labelled = labels >= 0
    top = logits[labelled].topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[labelled, None]).any(1).sum()


@torch.no_grad()
def evaluate(model: BaseVAE, batches, noise: torch.Tensor, rt: Runtime) -> dict[str, float]:
    """Validation figures in float32: ELBO (nats/image, bits/dim), its parts, MSE, PSNR, units,
    and for a model with a classifier its top-1 and top-5 accuracy.

    Each process scores its share of the validation set (`batches`, in order, with one fixed
    noise row per image in `noise`) and the sums are added over all processes, so the figures
    are those of the whole set, the same every epoch and for any number of processes. A cvae
    is given the breeds (its ELBO bounds -log p(x|y)); vae and ssvae are not (-log p(x)).
    The classifier is scored on a photo and its mirror only, not on all of its
    `classifier_views`, to keep each epoch's validation short; `dogvae evaluate` uses them all.
    """
    model.eval()
    forward = NoisyForward(model)
    # elbo recon kl mse psnr, top-1 and top-5 hits, labelled images
    sums = torch.zeros(8, dtype=torch.float64, device=rt.device)
    mus, n = [], 0
    for x, y in batches:
        x, y = _to_device(x, rt), _host_to_device(y, rt.device)
        b = len(x)
        given = model.validation_breed(y)
        out = model.objective(
            x,
            *forward(x, _host_to_device(noise[n : n + b], rt.device), given),
            beta=1.0,
            breed=given,
        )
        scores = model.classify(x, views=2) if model.has_classifier else None
        breed = model.resolve_breed(x, given, scores)
        mu = model.encode(x, breed)[0]
        recon = model.decode(mu, breed)
        hits = (
            torch.zeros(2, device=rt.device)
            if scores is None
            else torch.stack([top_k_hits(scores, y, k) for k in (1, 5)])
        )
        sums += torch.stack([
            out.elbo * b, out.reconstruction * b, out.kl * b,
            mse_per_image(recon, x).sum(), psnr_per_image(recon, x).sum(),
            *hits, (y >= 0).sum(),
        ]).double()  # fmt: skip
        mus.append(mu.float().cpu())
        n += b
    totals = torch.cat([sums, sums.new_tensor([n])])
    mus = torch.cat(mus) if mus else torch.empty(0, model.config.latent_dim)
    if rt.world_size > 1:
        dist.all_reduce(totals)
        shares = [None] * rt.world_size
        dist.all_gather_object(shares, mus)
        mus = torch.cat(shares)
    model.train()
    *totals, top1, top5, n_labelled, n = totals.tolist()
    names = ("elbo", "recon", "kl", "mse", "psnr")
    metrics = {name: value / max(n, 1) for name, value in zip(names, totals, strict=True)}
    metrics["bits_per_dim"] = model.bits_per_dim(metrics["elbo"])
    metrics["active_units"] = active_units(mus)
    if model.has_classifier:
        metrics["top1"], metrics["top5"] = top1 / max(n_labelled, 1), top5 / max(n_labelled, 1)
    return metrics


# --- what rank 0 writes ----------------------------------------------------------------------


class RunLog:
    """metrics.jsonl, TensorBoard scalars and images, and the per-epoch pictures."""

    def __init__(self, run: Path, enabled: bool):
        self.run = run
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def keep_epochs(self, epochs: int) -> None:
        """Drop metrics.jsonl's lines past `epochs`: a run killed between writing an epoch's
        line and saving its checkpoint trains that epoch again on resume."""
        path = self.run / "metrics.jsonl"
        if not self.enabled or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_epoch(line) <= epochs]
        if kept != lines:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(kept))

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        for split in ("train", "val"):
            for key, value in record.get(split, {}).items():
                self.tb.add_scalar(f"{split}/{key}", value, record["epoch"])
        self.tb.add_scalar("lr", record["lr"], record["epoch"])
        self.tb.flush()

    def pictures(self, model: BaseVAE, fixed: torch.Tensor, epoch: int, rt: Runtime) -> None:
        if not self.enabled:
            return
        model.eval()
        with torch.no_grad():
            recon = model.reconstruct(_to_device(fixed, rt)).cpu()
            gen = torch.Generator(device=rt.device).manual_seed(0)
            samples = model.sample(16, generator=gen).cpu()
        model.train()
        save_png(pairs_grid(fixed, recon), self.run / "images" / f"recon-{epoch:03d}.png")
        save_png(image_grid(samples, ncols=8), self.run / "images" / f"samples-{epoch:03d}.png")
        self.tb.add_images("val/reconstruction", recon, epoch)
        self.tb.add_images("prior/samples", samples, epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _logged_epoch(line: str) -> float:
    """The epoch a metrics.jsonl line records; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class GracefulStop:
    """Turn the first Ctrl-C or SIGTERM into a request to stop after the current step.

    A second one a second or more later means "now": KeyboardInterrupt for Ctrl-C, SystemExit
    with status 143 for SIGTERM. Under torchrun one Ctrl-C can arrive twice (from the terminal
    and again from torchrun), so a repeat within a second is the same request.
    """

    def __init__(self):
        self.signal: int | None = None  # the first one received
        self._first = 0.0
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def requests(self) -> tuple[bool, bool]:
        """(Ctrl-C asked to stop, SIGTERM asked to stop): summed over processes."""
        return self.signal == signal.SIGINT, self.signal == signal.SIGTERM

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.signal, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > 1.0:
            if signum == signal.SIGTERM:
                raise SystemExit(EXIT_STATUS["SIGTERM"])
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the loop -------------------------------------------------------------------------------


def _prepare_run_folder(run: Path, resume: bool) -> None:
    folder = checkpoint.checkpoint_folder(run)
    has_state = (folder / checkpoint.STATE).is_file()
    if resume and not has_state:
        raise CheckpointError(f"{run}: nothing to resume (no {checkpoint.STATE}); drop --resume")
    if not resume and (has_state or (folder / checkpoint.CONFIG).is_file()):
        raise CheckpointError(
            f"{run} already holds a run; pass --resume to continue it or choose another --out"
        )
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"--out {run}: cannot make the run folder there ({exc.strerror or exc})"
        ) from exc
    if resume:
        checkpoint.tidy(run)


def _load_data(cfg: TrainConfig, image_size: int, rt: Runtime) -> ImageSet:
    """Decode once per machine: local rank 0 builds the cache, the others wait, then read it."""
    kwargs = dict(crop=cfg.crop, cache_dir=cfg.cache_dir, strict=cfg.strict)
    if rt.world_size > 1 and rt.local_rank != 0:
        dist.barrier()
    images = load_images(cfg.data, image_size, progress=cfg.progress and rt.main, **kwargs)
    if rt.world_size > 1 and rt.local_rank == 0:
        dist.barrier()
    return images


def _read_last(run: Path, model: BaseVAE) -> dict:
    """The training state to resume from, with the weights, for rank 0 to share with all."""
    state = checkpoint.load_last(run, model)
    return {**state, "model": model.state_dict()}


def _unusable_best(run: Path, start_epoch: int, epochs: int) -> bool:
    """Whether the run's best model cannot be loaded (missing or damaged), said on stderr; an
    error when no epoch is left whose validation could save it again."""
    fault = checkpoint.best_fault(run)
    if fault is None:
        return False
    if start_epoch >= epochs:
        raise CheckpointError(
            f"{fault}; no epoch is left to save it again: resume with --epochs {start_epoch + 1}"
        )
    print(f"warning: {fault}; the next validated epoch saves the best model again", file=sys.stderr)
    return True


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    data=None,
    labels=None,
    breeds=None,
) -> dict:
    """Train a model as `cfg` says and return the final summary (also written to metrics.json).

    The images come from the folder `cfg.data`, or from Python: `data` a uint8 array
    (N, H, W, 3) or a torch Dataset, with `labels` (breed names, or indices into `breeds`) when
    the Dataset does not give them (`dogvae.data.memory`); `cfg.data` then only names them in
    the run's records, and a resume needs the same `data` again.
    `on_epoch(record)`, if given, is called after each epoch's validation and checkpoints, in
    every process with the same record; it may raise to end training (e.g. `optuna.TrialPruned`).
    Under torchrun the process group is left at the end, on errors too.
    """
    cfg = cfg.resolved()
    model_cfg = cfg.model_config()
    in_memory = None
    if data is not None:
        from dogvae.data.memory import image_set

        in_memory = image_set(data, labels, breeds, image_size=model_cfg.image_size, crop=cfg.crop)
    with deterministic_algorithms(cfg.deterministic):
        rt = setup_runtime(cfg, model_cfg.image_size)
        try:
            return _train(cfg, model_cfg, rt, on_epoch, in_memory)
        finally:
            if rt.owns_process_group:
                dist.destroy_process_group()


def _train(cfg: TrainConfig, model_cfg: VAEConfig, rt: Runtime, on_epoch, in_memory) -> dict:
    run = Path(cfg.out)
    _shared_by_main(rt, lambda: _prepare_run_folder(run, cfg.resume))
    torch.manual_seed(cfg.seed)

    images = in_memory if in_memory is not None else _load_data(cfg, model_cfg.image_size, rt)
    model_cfg = _fit_to_breeds(default_model(cfg, model_cfg, images), images)
    if rt.main and "model" not in cfg.model_overrides and not cfg.resume:
        logger.info("model: %s (%s)", model_cfg.model, MODEL_REASONS[model_cfg.model])
    train_idx, val_idx = stratified_split(images.labels, cfg.val_fraction, cfg.seed)
    train_images = images
    if cfg.label_fraction < 1.0:
        kept = hold_back_labels(images.labels, train_idx, cfg.label_fraction, cfg.seed)
        train_images = dataclasses.replace(images, labels=kept)
    if cfg.batch_size % rt.world_size:
        raise DogvaeError(
            f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{rt.world_size} processes"
        )
    if len(val_idx) == 0:
        raise DogvaeError(
            f"{images.root}: no image is left for validation ({len(images)} images, "
            f"validation share {cfg.val_fraction}); add images or raise val_fraction"
        )
    if len(train_idx) < cfg.batch_size:
        raise DogvaeError(
            f"{len(train_idx)} training images is fewer than one batch of "
            f"{cfg.batch_size}; lower --batch-size"
        )
    train_data = CachedImages(train_images, train_idx, flip=True, seed=cfg.seed)
    train_loader = make_loader(
        train_data, cfg.batch_size // rt.world_size, shuffle=True, seed=cfg.seed, drop_last=True,
        rank=rt.rank, world_size=rt.world_size,
    )  # fmt: skip
    train_batches = _batches(train_loader, cfg, rt)
    # each process validates every world_size-th image, with that image's row of fixed noise
    val_data = CachedImages(images, val_idx[rt.rank :: rt.world_size])
    val_batches = _batches(make_loader(val_data, 256, shuffle=False), cfg, rt)
    val_noise = noise_rows(len(val_idx), model_cfg.latent_dim, rt, torch.Generator().manual_seed(0))
    steps_per_epoch = len(train_batches)

    model = build_model(model_cfg)
    model.breeds = list(images.breeds)
    if rt.world_size > 1 and model_cfg.norm == "batch":
        if rt.device.type == "cuda":
            # statistics over the global batch: the same math as one process, whatever N is
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif rt.main:
            print(
                "note: BatchNorm statistics are per process here (SyncBatchNorm needs CUDA), "
                'so results depend a little on the number of processes; norm "group" does not',
                file=sys.stderr,
            )
    state = _shared_by_main(rt, lambda: _read_last(run, model)) if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])  # every process starts from rank 0's checkpoint
    model.to(
        rt.device,
        memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format,
    )
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, rt.device)
    if state is not None:
        keep_saved_group_marks(optimizer, state["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, group_schedules(optimizer, cfg, steps_per_epoch)
    )
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
            use_buffers=True,  # BatchNorm statistics follow the averaged weights
        )
        if cfg.ema_decay > 0
        else None
    )
    info = Run.create(
        run, model_config=model_cfg, train_config=cfg, images=images, val_indices=val_idx,
        runtime=runtime_facts(rt), save=rt.main,
    ).info()  # fmt: skip

    start_epoch, skip_batches, best_elbo, history = 0, 0, math.inf, {}
    resumed_sums, resumed_seconds = torch.zeros(4, dtype=torch.float64), 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch, skip_batches = int(state["epoch"]), int(state["batch_in_epoch"])
        best_elbo = float(state["best_elbo"])
        # checked before the RNG is restored: loading the best model builds one, drawing from it
        saved_best = math.isfinite(best_elbo)  # a run stopped in epoch 1 has none yet
        if saved_best and _shared_by_main(rt, lambda: _unusable_best(run, start_epoch, cfg.epochs)):
            best_elbo = math.inf  # the next validation saves the best model afresh
        history = json.loads(state.get("history", "{}"))
        torch.set_rng_state(state["rng"])
        if rt.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], rt.device)  # the ssvae's dropout
        if skip_batches and "epoch_sums" in state:
            resumed_sums = state["epoch_sums"].double()
            resumed_seconds = float(state["epoch_seconds"])
        if rt.main:
            print(f"resuming {run} at epoch {start_epoch + 1}, batch {skip_batches}")

    forward = NoisyForward(model)
    if rt.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    if cfg.compile:
        forward = torch.compile(forward)
    eval_model = ema.module if ema is not None else model
    log = RunLog(run, rt.main)
    log.keep_epochs(start_epoch)  # lines a killed run wrote after its last checkpoint go
    fixed = CachedImages(images, val_idx[:8]).__getitems__(list(range(min(8, len(val_idx)))))[0]
    if not history and rt.main:
        history["baselines"] = reconstruction_baselines(
            images.images[train_idx], images.images[val_idx], model_cfg.latent_dim
        )

    def save(epoch: int, batch_in_epoch: int, sums: torch.Tensor, seconds: float, best=None):
        """One checkpoint generation: the latest state, and the best weights when `best`."""
        if not rt.main:
            return
        state = {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "epoch_sums": sums,  # the epoch's running totals, so a resumed epoch reports
            "epoch_seconds": seconds,  # the same training figures as an uninterrupted one
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best_elbo": best_elbo,
            "history": json.dumps(history),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        if rt.device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(rt.device)
        checkpoint.save_checkpoint(run, last=(model, info, state), best=best)

    model.train()
    started = time.perf_counter()
    record = history.get("best", {})
    step = start_epoch * steps_per_epoch + skip_batches
    with GracefulStop() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            set_epoch(train_loader, epoch)
            batches = itertools.islice(train_batches, skip_batches, None)
            bar = tqdm(
                batches, total=steps_per_epoch, initial=skip_batches, disable=not (cfg.progress and rt.main),
                desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
            )  # fmt: skip
            # loss, recon, kl (x images), images; a resumed epoch goes on from its saved totals
            sums = resumed_sums if epoch == start_epoch else torch.zeros(4, dtype=torch.float64)
            t0 = time.perf_counter() - (resumed_seconds if epoch == start_epoch else 0.0)
            for i, (x, y) in enumerate(bar, start=skip_batches):
                x, y = _to_device(x, rt), _host_to_device(y, rt.device)
                beta = step_kl_weight(model_cfg, epoch, i, steps_per_epoch)
                eps = _host_to_device(
                    noise_rows(cfg.batch_size, model_cfg.latent_dim, rt), rt.device
                )
                with _autocast(rt):
                    out = model.objective(x, *forward(x, eps, y), beta=beta, breed=y)
                # one all-reduce: the step's loss over the global batch, and whether any
                # process was asked to stop, so that all of them stop after the same step
                counts = torch.tensor([len(x), *stop.requests()], dtype=torch.float64)
                step_sums = torch.cat([
                    torch.stack([out.total, out.reconstruction, out.kl]).detach().double() * len(x),
                    _host_to_device(counts, rt.device),
                ])  # fmt: skip
                if rt.world_size > 1:
                    dist.all_reduce(step_sums)
                step_sums = step_sums.cpu()
                if not math.isfinite(step_sums[0]):
                    raise TrainingError(
                        f"the loss became {float(step_sums[0] / step_sums[3])} at epoch {epoch + 1}, batch {i + 1} "
                        f"(lr {scheduler.get_last_lr()[0]:.2e}); the last good checkpoint in {run} "
                        "is kept. Try a lower --lr or --precision fp32."
                    )
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                if cfg.grad_clip > 0:
                    clip_gradients(optimizer, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                sums += step_sums[:4]
                if i % 10 == 0 or i + 1 == steps_per_epoch:
                    loss, recon, kl = (sums[:3] / sums[3]).tolist()
                    rate = float(sums[3]) / (time.perf_counter() - t0)
                    bar.set_postfix(
                        loss=f"{loss:.1f}",
                        recon=f"{recon:.1f}",
                        kl=f"{kl:.1f}",
                        img_s=f"{rate:.0f}",
                    )
                if step_sums[4] > 0 or step_sums[5] > 0:
                    save(epoch, i + 1, sums, time.perf_counter() - t0)
                    if rt.main:
                        print(
                            f"\nstopped at epoch {epoch + 1}, batch {i + 1}; saved {run / checkpoint.LAST_WEIGHTS}."
                        )
                        print(f"resume with: {_resume_command(cfg)}")
                    log.close()
                    signum = signal.SIGINT if step_sums[4] > 0 else signal.SIGTERM
                    return {"stopped": True, "epoch": epoch, "batch_in_epoch": i + 1,
                            "signal": signal.Signals(signum).name}  # fmt: skip
            bar.close()
            skip_batches = 0
            epoch_seconds = time.perf_counter() - t0
            loss, recon, kl = (sums[:3] / max(float(sums[3]), 1)).tolist()
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "beta": step_kl_weight(model_cfg, epoch, steps_per_epoch - 1, steps_per_epoch),
                "seconds": epoch_seconds,
                "images_per_s": float(sums[3]) / epoch_seconds,
                "train": {"loss": loss, "recon": recon, "kl": kl},
            }
            _share_buffers(rt, model, eval_model)
            record["val"] = evaluate(eval_model, val_batches, val_noise, rt)
            is_best = record["val"]["elbo"] < best_elbo
            if is_best:
                best_elbo = record["val"]["elbo"]
                history["best"] = record
            if rt.main:
                log.epoch(record)
                crash_point("metrics")
                log.pictures(eval_model, fixed, epoch + 1, rt)
            best = (eval_model, {**info, "epoch": epoch + 1, "metrics": record["val"]})
            save(epoch + 1, 0, torch.zeros(4, dtype=torch.float64), 0.0, best if is_best else None)
            if rt.main:
                print(_epoch_line(record))
            if on_epoch is not None:
                on_epoch(record)
    log.close()
    replicas = fingerprints_per_rank(model, rt)
    if not rt.main:
        return {}
    if len(set(replicas)) > 1:
        print(
            "warning: the processes ended with different weights (a DDP bug or a non-deterministic "
            f"layer); the checkpoints are rank 0's. Fingerprints: {replicas}",
            file=sys.stderr,
        )
    summary = {
        "epochs": cfg.epochs,
        "best_epoch": history["best"]["epoch"],
        "val": history["best"]["val"],
        "baselines": history["baselines"],
        "train_seconds_this_session": time.perf_counter() - started,
        "images_per_s": record.get("images_per_s"),
        "world_size": rt.world_size,
        "weights_sha256_per_rank": replicas,
    }
    write_json(run / "metrics.json", summary)
    print(quality_line(summary))
    return summary


def default_model(cfg: TrainConfig, model_cfg: VAEConfig, images: ImageSet) -> VAEConfig:
    """The model to train when none was asked for: on labelled images of two or more breeds
    the ssvae, whose classifier is the part of dogvae that knows breeds (a plain VAE's codes
    know them little better than the pixels do); otherwise, and for the `seed` preset (the
    Keras replica), the plain VAE."""
    if "model" in cfg.model_overrides or cfg.preset == "seed":
        return model_cfg
    labelled = np.unique(images.labels[images.labels >= 0])
    return dataclasses.replace(model_cfg, model="ssvae" if len(labelled) >= 2 else "vae")


MODEL_REASONS = {
    "ssvae": "the images are labelled with breeds; --model vae trains the plain VAE",
    "vae": "the images carry no breed labels, or --preset seed asks for the Keras replica",
    "cvae": "asked for",
}


def _fit_to_breeds(model_cfg: VAEConfig, images: ImageSet) -> VAEConfig:
    """A breed-aware model's config with the data's breed count; refuses data it cannot use."""
    if model_cfg.model == "vae":
        return model_cfg
    if len(images.breeds) < 2 or not (images.labels >= 0).any():
        raise DogvaeError(
            f"{images.root}: a {model_cfg.model} model needs labelled images of at least two "
            f"breeds and this folder has {len(images.breeds)} breeds "
            f"({int((images.labels >= 0).sum())} labelled images); train --model vae instead"
        )
    return dataclasses.replace(model_cfg, n_breeds=len(images.breeds))


def _resume_command(cfg: TrainConfig) -> str:
    """`--resume` reads the rest (data, preset, model, settings) from RUN/config.json."""
    return f"dogvae train --out {cfg.out} --resume"


def _epoch_line(record: dict) -> str:
    v = record["val"]
    accuracy = f"top-1 {v['top1']:.1%}, top-5 {v['top5']:.1%}, " if "top1" in v else ""
    return (
        f"epoch {record['epoch']}: val ELBO {v['elbo']:.1f} nats/image ({v['bits_per_dim']:.3f} bits/dim), "
        f"recon {v['recon']:.1f}, KL {v['kl']:.1f}, PSNR {v['psnr']:.2f} dB, {accuracy}"
        f"active units {v['active_units']}, {record['images_per_s']:.0f} img/s"
    )


def quality_line(summary: dict) -> str:
    b = summary["baselines"]
    return (
        f"validation PSNR {summary['val']['psnr']:.2f} dB (epoch {summary['best_epoch']}) vs "
        f"mean image {b['mean_image_psnr']:.2f} dB and PCA-{b['pca_components']} {b['pca_psnr']:.2f} dB"
    )
