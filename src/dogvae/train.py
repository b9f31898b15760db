"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints.

Runs on one CPU or GPU, or under `torchrun` with DistributedDataParallel: every process trains
on its shard of each batch; only rank 0 (the `main` process) writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from dogvae import checkpoint
from dogvae.atomic import write_json
from dogvae.data.cache import ImageSet, load_images
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.split import stratified_split
from dogvae.errors import CheckpointError, DogvaeError
from dogvae.metrics import active_units, mse_per_image, psnr_per_image, reconstruction_baselines
from dogvae.model import PRESETS, BaseVAE, VAEConfig, build_model, preset_config
from dogvae.pictures import image_grid, pairs_grid, save_png


class TrainingError(DogvaeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """How to train. `None` fields take the preset's value (see `dogvae.model.PRESETS`)."""

    data: str
    out: str
    preset: str = "small64"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 5.0
    ema_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    crop: str = "center"
    cache_dir: str | None = None
    strict: bool = False
    resume: bool = False
    progress: bool = True
    model_overrides: dict = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with the preset's defaults filled in."""
        if self.preset not in PRESETS:
            raise DogvaeError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.epochs is not None and self.epochs < 1:
            raise DogvaeError("--epochs must be at least 1")
        preset = PRESETS[self.preset]
        values = {**preset.train_overrides, **{k: v for k, v in self.__dict__.items()}}
        for name in ("epochs", "batch_size", "lr"):
            if values[name] is None:
                values[name] = getattr(preset, name)
        return TrainConfig(**values)

    def model_config(self) -> VAEConfig:
        try:
            return VAEConfig.from_dict(
                {**preset_config(self.preset).to_dict(), **self.model_overrides}
            )
        except ValueError as exc:
            raise DogvaeError(str(exc)) from exc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- devices, precision, processes --------------------------------------------------------


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 autocast trains faster, not slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_runtime(cfg: TrainConfig, image_size: int) -> Runtime:
    """Pick the device, join the process group under torchrun, choose precision and layout."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DogvaeError("--device cuda was asked for but no CUDA GPU is visible")
    if want_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if cfg.precision == "bf16" or (
        cfg.precision == "auto"
        and (
            want_cuda and torch.cuda.is_bf16_supported() or not want_cuda and cpu_has_native_bf16()
        )
    ):
        dtype = torch.bfloat16
    elif cfg.precision in ("auto", "fp32"):
        dtype = None
    else:
        raise DogvaeError(f"unknown precision {cfg.precision!r}; choose auto, bf16 or fp32")
    channels_last = cfg.channels_last == "on" or (
        cfg.channels_last == "auto" and (want_cuda or image_size >= 128)
    )
    return Runtime(device, rank, world_size, dtype, channels_last)


def _autocast(rt: Runtime):
    return torch.autocast(
        rt.device.type, dtype=rt.autocast_dtype, enabled=rt.autocast_dtype is not None
    )


def _to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    return x.to(rt.device, non_blocking=True, memory_format=fmt)


# --- schedules ------------------------------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `floor` x the base learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def kl_weight(beta: float, warmup_epochs: float, epoch_progress: float) -> float:
    """KL weight ramps linearly from 0 to beta over the first `warmup_epochs` epochs."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch_progress / warmup_epochs)


# --- validation -----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: BaseVAE, loader, rt: Runtime) -> dict[str, float]:
    """Validation figures in float32: ELBO (nats/image, bits/dim), its parts, MSE, PSNR, units."""
    model.eval()
    sums = {"elbo": 0.0, "recon": 0.0, "kl": 0.0, "mse": 0.0, "psnr": 0.0}
    mus, n = [], 0
    gen_state = torch.get_rng_state()
    torch.manual_seed(0)  # the ELBO's one sampled z is the same every epoch and run
    for x, _ in loader:
        x = _to_device(x, rt)
        out = model.loss(x, beta=1.0)
        mu, _ = model.encode(x)
        recon = model.decode(mu)
        b = len(x)
        sums["elbo"] += float(out.elbo) * b
        sums["recon"] += float(out.reconstruction) * b
        sums["kl"] += float(out.kl) * b
        sums["mse"] += float(mse_per_image(recon, x).sum())
        sums["psnr"] += float(psnr_per_image(recon, x).sum())
        mus.append(mu.float().cpu())
        n += b
    torch.set_rng_state(gen_state)
    model.train()
    metrics = {k: v / max(n, 1) for k, v in sums.items()}
    metrics["bits_per_dim"] = model.bits_per_dim(metrics["elbo"])
    metrics["active_units"] = active_units(torch.cat(mus)) if mus else 0
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


class GracefulStop:
    """Turn the first Ctrl-C or SIGTERM into a request to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the loop -------------------------------------------------------------------------------


def _prepare_run_folder(run: Path, resume: bool) -> None:
    has_checkpoint = (run / checkpoint.STATE).exists() or (run / checkpoint.CONFIG).exists()
    if resume and not (run / checkpoint.STATE).exists():
        raise CheckpointError(f"{run}: nothing to resume (no {checkpoint.STATE}); drop --resume")
    if has_checkpoint and not resume:
        raise CheckpointError(
            f"{run} already holds a run; pass --resume to continue it or choose another --out"
        )
    run.mkdir(parents=True, exist_ok=True)


def _load_data(cfg: TrainConfig, image_size: int, rt: Runtime) -> ImageSet:
    """Decode once: rank 0 builds the cache, the other ranks wait and then read it."""
    kwargs = dict(crop=cfg.crop, cache_dir=cfg.cache_dir, strict=cfg.strict)
    if rt.world_size > 1 and not rt.main:
        dist.barrier()
    images = load_images(cfg.data, image_size, progress=cfg.progress and rt.main, **kwargs)
    if rt.world_size > 1 and rt.main:
        dist.barrier()
    return images


def train(cfg: TrainConfig) -> dict:
    """Train a model as `cfg` says and return the final summary (also written to metrics.json)."""
    cfg = cfg.resolved()
    model_cfg = cfg.model_config()
    run = Path(cfg.out)
    rt = setup_runtime(cfg, model_cfg.image_size)
    if rt.main:
        _prepare_run_folder(run, cfg.resume)
    torch.manual_seed(cfg.seed)

    images = _load_data(cfg, model_cfg.image_size, rt)
    train_idx, val_idx = stratified_split(images.labels, cfg.val_fraction, cfg.seed)
    if len(train_idx) < cfg.batch_size * rt.world_size:
        raise DogvaeError(
            f"{len(train_idx)} training images is fewer than one batch of "
            f"{cfg.batch_size * rt.world_size}; lower --batch-size"
        )
    train_data = CachedImages(images, train_idx, flip=True, seed=cfg.seed)
    val_data = CachedImages(images, val_idx)
    train_loader = make_loader(
        train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
        rank=rt.rank, world_size=rt.world_size,
    )  # fmt: skip
    val_loader = make_loader(val_data, 256, shuffle=False)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch

    model = build_model(model_cfg)
    model.breeds = list(images.breeds)
    model.to(
        rt.device,
        memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format,
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps)
    )
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)
        )
        if cfg.ema_decay > 0
        else None
    )
    info = checkpoint.run_info(
        model_type="vae", preset=cfg.preset, model_config=model_cfg, train_config=cfg.to_dict(),
        breeds=images.breeds, data=images.summary(),
    )  # fmt: skip

    start_epoch, skip_batches, best_elbo, history = 0, 0, math.inf, {}
    if cfg.resume:
        state = checkpoint.load_last(run, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch, skip_batches = int(state["epoch"]), int(state["batch_in_epoch"])
        best_elbo = float(state["best_elbo"])
        history = json.loads(state.get("history", "{}"))
        torch.set_rng_state(state["rng"])
        if rt.main:
            print(f"resuming {run} at epoch {start_epoch + 1}, batch {skip_batches}")

    net = model
    if rt.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    eval_model = ema.module if ema is not None else model
    log = RunLog(run, rt.main)
    fixed = val_data.__getitems__(list(range(min(8, len(val_data)))))[0]
    if not history and rt.main:
        history["baselines"] = reconstruction_baselines(
            images.images[train_idx], images.images[val_idx], model_cfg.latent_dim
        )

    def save_last(epoch: int, batch_in_epoch: int) -> None:
        if not rt.main:
            return
        state = {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best_elbo": best_elbo,
            "history": json.dumps(history),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        checkpoint.save_last(run, model, info, state)

    model.train()
    started = time.perf_counter()
    record = history.get("best", {})
    step = start_epoch * steps_per_epoch + skip_batches
    with GracefulStop() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            set_epoch(train_loader, epoch)
            batches = itertools.islice(train_loader, skip_batches, None)
            bar = tqdm(
                batches, total=steps_per_epoch, initial=skip_batches, disable=not (cfg.progress and rt.main),
                desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
            )  # fmt: skip
            sums = torch.zeros(3, dtype=torch.float64)
            seen, t0 = 0, time.perf_counter()
            for i, (x, _) in enumerate(bar, start=skip_batches):
                x = _to_device(x, rt)
                beta = kl_weight(
                    model_cfg.beta, model_cfg.kl_warmup_epochs, epoch + i / steps_per_epoch
                )
                with _autocast(rt):
                    out = model.objective(x, *net(x), beta=beta)
                if not torch.isfinite(out.total):
                    raise TrainingError(
                        f"the loss became {float(out.total.detach())} at epoch {epoch + 1}, batch {i + 1} "
                        f"(lr {scheduler.get_last_lr()[0]:.2e}); the last good checkpoint in {run} "
                        "is kept. Try a lower --lr or --precision fp32."
                    )
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                sums += torch.stack(
                    [out.total.detach(), out.reconstruction.detach(), out.kl.detach()]
                ).double().cpu() * len(x)
                seen += len(x)
                if i % 10 == 0 or i + 1 == steps_per_epoch:
                    loss, recon, kl = (sums / seen).tolist()
                    rate = seen * rt.world_size / (time.perf_counter() - t0)
                    bar.set_postfix(
                        loss=f"{loss:.1f}",
                        recon=f"{recon:.1f}",
                        kl=f"{kl:.1f}",
                        img_s=f"{rate:.0f}",
                    )
                if stop.requested:
                    save_last(epoch, i + 1)
                    if rt.main:
                        print(
                            f"\nstopped at epoch {epoch + 1}, batch {i + 1}; saved {run / checkpoint.LAST_WEIGHTS}."
                        )
                        print(
                            f"resume with: dogvae train --data {cfg.data} --out {run} --preset {cfg.preset} --resume"
                        )
                    log.close()
                    return {"stopped": True, "epoch": epoch, "batch_in_epoch": i + 1}
            bar.close()
            skip_batches = 0
            epoch_seconds = time.perf_counter() - t0
            loss, recon, kl = (sums / max(seen, 1)).tolist()
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "beta": beta,
                "seconds": epoch_seconds,
                "images_per_s": seen * rt.world_size / epoch_seconds,
                "train": {"loss": loss, "recon": recon, "kl": kl},
            }
            if rt.main:
                record["val"] = evaluate(eval_model, val_loader, rt)
                log.epoch(record)
                log.pictures(eval_model, fixed, epoch + 1, rt)
                if record["val"]["elbo"] < best_elbo:
                    best_elbo = record["val"]["elbo"]
                    history["best"] = record
                    checkpoint.save_best(
                        run, eval_model, {**info, "epoch": epoch + 1, "metrics": record["val"]}
                    )
                print(_epoch_line(record))
            save_last(epoch + 1, 0)
    log.close()
    if not rt.main:
        return {}
    summary = {
        "epochs": cfg.epochs,
        "best_epoch": history["best"]["epoch"],
        "val": history["best"]["val"],
        "baselines": history["baselines"],
        "train_seconds_this_session": time.perf_counter() - started,
        "images_per_s": record.get("images_per_s"),
    }
    write_json(run / "metrics.json", summary)
    print(quality_line(summary))
    return summary


def _epoch_line(record: dict) -> str:
    v = record["val"]
    return (
        f"epoch {record['epoch']}: val ELBO {v['elbo']:.1f} nats/image ({v['bits_per_dim']:.3f} bits/dim), "
        f"recon {v['recon']:.1f}, KL {v['kl']:.1f}, PSNR {v['psnr']:.2f} dB, "
        f"active units {v['active_units']}, {record['images_per_s']:.0f} img/s"
    )


def quality_line(summary: dict) -> str:
    b = summary["baselines"]
    return (
        f"validation PSNR {summary['val']['psnr']:.2f} dB (epoch {summary['best_epoch']}) vs "
        f"mean image {b['mean_image_psnr']:.2f} dB and PCA-{b['pca_components']} {b['pca_psnr']:.2f} dB"
    )
