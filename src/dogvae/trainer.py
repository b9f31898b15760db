"""The training loop: `setup` makes everything a run needs, `Trainer.fit` runs its epochs.

Under torchrun `batch_size` stays the global batch: each of N processes trains on
batch_size / N images of every step, and together they compute what one process computes with
the whole batch (same images, same noise, gradients averaged; up to float rounding, and to
BatchNorm statistics on CPU, where there is no SyncBatchNorm). So the learning rate and steps
per epoch do not depend on N, and a run resumes with any N. Logging, records, checkpoints, the
NaN guard and the stop on signals are callbacks (callbacks.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dogvae import checkpoint
from dogvae.atomic import write_json
from dogvae.callbacks import Callbacks
from dogvae.data.cache import ImageSet, load_images
from dogvae.data.loader import CachedImages, device_batches, make_loader, set_epoch
from dogvae.data.split import hold_back_labels, stratified_split
from dogvae.errors import CheckpointError, DogvaeError
from dogvae.metrics import reconstruction_baselines
from dogvae.model import BaseVAE, VAEConfig, build_model
from dogvae.optim import (
    clip_gradients,
    group_schedules,
    keep_saved_group_marks,
    make_optimizer,
    step_kl_weight,
)
from dogvae.run import Run
from dogvae.runtime import (
    Runtime,
    autocast,
    fingerprints_per_rank,
    host_to_device,
    noise_rows,
    runtime_facts,
    share_buffers,
    shared_by_main,
    to_device,
)
from dogvae.validation import validate

if TYPE_CHECKING:
    from dogvae.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class StepStats:
    """One training step's figures over the global batch (means in nats per image)."""

    epoch: int  # from 0
    batch: int  # from 0, within the epoch
    step: int  # steps done so far in the run, this one included
    loss: float
    recon: float
    kl: float
    images: int
    lr: float
    beta: float
    sigint: bool = False  # some process was asked to stop, by Ctrl-C or by SIGTERM
    sigterm: bool = False


@dataclass
class EpochTotals:
    """An epoch's running sums (figure x images), kept in checkpoints so that a resumed epoch
    reports the same training figures as an uninterrupted one."""

    loss: float = 0.0
    recon: float = 0.0
    kl: float = 0.0
    images: float = 0.0

    def add(self, stats: StepStats) -> None:
        self.loss += stats.loss * stats.images
        self.recon += stats.recon * stats.images
        self.kl += stats.kl * stats.images
        self.images += stats.images

    def means(self) -> tuple[float, float, float]:
        n = max(self.images, 1.0)
        return self.loss / n, self.recon / n, self.kl / n

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss, self.recon, self.kl, self.images], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, sums: torch.Tensor) -> EpochTotals:
        return cls(*sums.double().tolist())


@dataclass
class TrainState:
    """Where a run is: what a checkpoint saves besides the weights and optimiser."""

    epoch: int = 0  # the epoch being trained (from 0)
    batch_in_epoch: int = 0  # batches of it done
    step: int = 0
    best_elbo: float = math.inf
    history: dict = field(default_factory=dict)  # "baselines", and the "best" epoch's record
    totals: EpochTotals = field(default_factory=EpochTotals)
    seconds: float = 0.0  # spent on this epoch's steps so far


@dataclass
class TrainingSetup:
    """Everything `setup` makes for a run; the trainer and callbacks read it."""

    cfg: TrainConfig
    model_cfg: VAEConfig
    rt: Runtime
    run: Path
    images: ImageSet
    train_idx: object
    val_idx: object
    train_loader: object
    train_batches: object
    val_batches: object
    val_noise: torch.Tensor
    fixed: torch.Tensor  # the validation images drawn each epoch
    model: BaseVAE
    eval_model: BaseVAE  # the EMA average when there is one
    ema: object
    forward: nn.Module  # NoisyForward, wrapped by DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: object
    info: dict  # the run's config.json
    state: TrainState

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)


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


# --- set-up ---------------------------------------------------------------------------------


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


def fit_to_breeds(model_cfg: VAEConfig, images: ImageSet) -> VAEConfig:
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


def setup(
    cfg: TrainConfig, model_cfg: VAEConfig, rt: Runtime, images: ImageSet | None = None
) -> TrainingSetup:
    """The run folder, data, split, loaders, model, optimiser and, on resume, the saved state.

    `images` are data given from Python; otherwise `cfg.data` is decoded (once per machine).
    The order of the steps that draw from torch's random state is that of every dogvae run
    (model initialisation after the loaders, the saved state restored last), so a resumed run
    ends exactly where an uninterrupted one does.
    """
    run = Path(cfg.out)
    shared_by_main(rt, lambda: _prepare_run_folder(run, cfg.resume))
    torch.manual_seed(cfg.seed)
    images = images if images is not None else _load_data(cfg, model_cfg.image_size, rt)
    model_cfg = fit_to_breeds(default_model(cfg, model_cfg, images), images)
    if rt.main and "model" not in cfg.model_overrides and not cfg.resume:
        logger.info("model: %s (%s)", model_cfg.model, MODEL_REASONS[model_cfg.model])
    train_idx, val_idx = _split(cfg, images, rt)
    loaders = _loaders(cfg, model_cfg, rt, images, train_idx, val_idx)
    model = _model(cfg, model_cfg, rt, images)
    saved = shared_by_main(rt, lambda: _read_last(run, model)) if cfg.resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])  # every process starts from rank 0's checkpoint
    model.to(
        rt.device,
        memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format,
    )
    steps = len(loaders["train_batches"])
    optimizer, scheduler, ema = _optimisation(cfg, model, rt, steps, saved)
    info = Run.create(
        run, model_config=model_cfg, train_config=cfg, images=images, val_indices=val_idx,
        runtime=runtime_facts(rt), save=rt.main,
    ).info()  # fmt: skip
    state = TrainState()
    if saved is not None:
        state = _restore(saved, optimizer, scheduler, ema, cfg, rt)
        state.step = state.epoch * steps + state.batch_in_epoch
    if not state.history and rt.main:
        state.history["baselines"] = reconstruction_baselines(
            images.images[train_idx], images.images[val_idx], model_cfg.latent_dim
        )
    return TrainingSetup(
        cfg=cfg, model_cfg=model_cfg, rt=rt, run=run, images=images, train_idx=train_idx,
        val_idx=val_idx, **loaders, model=model, eval_model=ema.module if ema is not None else model,
        ema=ema, forward=_wrapped_forward(model, cfg, rt), optimizer=optimizer,
        scheduler=scheduler, info=info, state=state,
    )  # fmt: skip


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


def _split(cfg: TrainConfig, images: ImageSet, rt: Runtime):
    """The stratified training / validation split, refusing one no run can train on."""
    train_idx, val_idx = stratified_split(images.labels, cfg.val_fraction, cfg.seed)
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
    return train_idx, val_idx


def _loaders(
    cfg: TrainConfig, model_cfg: VAEConfig, rt: Runtime, images: ImageSet, train_idx, val_idx
) -> dict:
    """Training batches (flipped, labels held back as `label_fraction` says), validation
    batches with one fixed noise row per image, and the images drawn each epoch."""
    train_images = images
    if cfg.label_fraction < 1.0:
        kept = hold_back_labels(images.labels, train_idx, cfg.label_fraction, cfg.seed)
        train_images = dataclasses.replace(images, labels=kept)
    train_data = CachedImages(train_images, train_idx, flip=True, seed=cfg.seed)
    train_loader = make_loader(
        train_data, cfg.batch_size // rt.world_size, shuffle=True, seed=cfg.seed, drop_last=True,
        rank=rt.rank, world_size=rt.world_size,
    )  # fmt: skip
    # each process validates every world_size-th image, with that image's row of fixed noise
    val_data = CachedImages(images, val_idx[rt.rank :: rt.world_size])
    val_loader = make_loader(val_data, 256, shuffle=False)
    fixed_rows = list(range(min(8, len(val_idx))))
    return {
        "train_loader": train_loader,
        "train_batches": device_batches(train_loader, cfg.device_cache, rt.device),
        "val_batches": device_batches(val_loader, cfg.device_cache, rt.device),
        "val_noise": noise_rows(
            len(val_idx), model_cfg.latent_dim, rt, torch.Generator().manual_seed(0)
        ),
        "fixed": CachedImages(images, val_idx[:8]).__getitems__(fixed_rows)[0],
    }


def _model(cfg: TrainConfig, model_cfg: VAEConfig, rt: Runtime, images: ImageSet) -> BaseVAE:
    model = build_model(model_cfg)
    model.breeds = list(images.breeds)
    model.crop = cfg.crop
    if rt.world_size > 1 and model_cfg.norm == "batch":
        if rt.device.type == "cuda":
            # statistics over the global batch: the same math as one process, whatever N is
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif rt.main:
            logger.warning(
                "BatchNorm statistics are per process here (SyncBatchNorm needs CUDA), "
                'so results depend a little on the number of processes; norm "group" does not'
            )
    return model


def _optimisation(cfg: TrainConfig, model: BaseVAE, rt: Runtime, steps_per_epoch: int, saved):
    """AdamW, its per-group schedules and, with `ema_decay`, the weights' moving average."""
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, rt.device)
    if saved is not None:  # the schedules follow the groups' marks: the resumed run's own
        keep_saved_group_marks(optimizer, saved["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, group_schedules(optimizer, cfg, steps_per_epoch)
    )
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
            use_buffers=True,  # BatchNorm statistics follow the averaged weights
        )
    return optimizer, scheduler, ema


def _read_last(run: Path, model: BaseVAE) -> dict:
    """The training state to resume from, with the weights, for rank 0 to share with all."""
    state = checkpoint.load_last(run, model)
    return {**state, "model": model.state_dict()}


def _restore(saved: dict, optimizer, scheduler, ema, cfg: TrainConfig, rt: Runtime) -> TrainState:
    """Put the optimiser, schedule, EMA and random state back as the checkpoint saved them."""
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None and "ema" in saved:
        ema.load_state_dict(saved["ema"])
    state = TrainState(
        epoch=int(saved["epoch"]),
        batch_in_epoch=int(saved["batch_in_epoch"]),
        best_elbo=float(saved["best_elbo"]),
        history=json.loads(saved.get("history", "{}")),
    )
    # checked before the RNG is restored: loading the best model builds one, drawing from it
    if math.isfinite(state.best_elbo) and shared_by_main(  # a run stopped in epoch 1 has none
        rt, lambda: _unusable_best(Path(cfg.out), state.epoch, cfg.epochs)
    ):
        state.best_elbo = math.inf  # the next validation saves the best model afresh
    torch.set_rng_state(saved["rng"])
    if rt.device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], rt.device)  # the ssvae's dropout
    if state.batch_in_epoch and "epoch_sums" in saved:
        state.totals = EpochTotals.from_tensor(saved["epoch_sums"])
        state.seconds = float(saved["epoch_seconds"])
    return state


def _unusable_best(run: Path, start_epoch: int, epochs: int) -> bool:
    """Whether the run's best model cannot be loaded (missing or damaged), logged as a warning;
    an error when no epoch is left whose validation could save it again."""
    fault = checkpoint.best_fault(run)
    if fault is None:
        return False
    if start_epoch >= epochs:
        raise CheckpointError(
            f"{fault}; no epoch is left to save it again: resume with --epochs {start_epoch + 1}"
        )
    logger.warning("%s; the next validated epoch saves the best model again", fault)
    return True


def _wrapped_forward(model: BaseVAE, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    forward = NoisyForward(model)
    if rt.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    return torch.compile(forward) if cfg.compile else forward


# --- the loop -------------------------------------------------------------------------------


class Trainer:
    """Trains `setup`'s model for its epochs, firing `callbacks` on each event."""

    def __init__(self, setup: TrainingSetup, callbacks=()):
        self.setup = setup
        self.state = setup.state
        self.callbacks = Callbacks(callbacks)
        self.stop_reason: str | None = None
        self.epoch_was_best = False
        self.stop_requests = lambda: (False, False)  # set by StopOnSignal
        self.record = self.state.history.get("best", {})  # the last epoch's record

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (with a checkpoint to resume from)."""
        self.stop_reason = reason

    def fit(self) -> dict:
        """All epochs from where the state is; the summary, or where the run stopped."""
        s, state = self.setup, self.state
        started = time.perf_counter()
        try:
            self.callbacks.fire("on_train_begin", self)
            s.model.train()
            for epoch in range(state.epoch, s.cfg.epochs):
                if not self.train_epoch(epoch):
                    return self._stopped()
                self.end_epoch(self.validate())
                if self.stop_reason is not None:  # asked for at the epoch's end: saved already
                    return self._stopped()
            return self.finish(time.perf_counter() - started)
        finally:
            self.callbacks.fire("close", self)

    def _stopped(self) -> dict:
        state = self.state
        return {"stopped": True, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                "signal": self.stop_reason}  # fmt: skip

    def train_epoch(self, epoch: int) -> bool:
        """One epoch's steps, from the state's batch on; False when a stop was asked for."""
        s, state = self.setup, self.state
        set_epoch(s.train_loader, epoch)
        t0 = time.perf_counter() - state.seconds
        self.callbacks.fire("on_epoch_begin", self, epoch)
        batches = itertools.islice(s.train_batches, state.batch_in_epoch, None)
        for i, (x, y) in enumerate(batches, start=state.batch_in_epoch):
            self.callbacks.fire("on_step_begin", self, epoch, i)
            stats = self.train_step(x, y, epoch, i)
            state.totals.add(stats)
            state.batch_in_epoch, state.seconds = i + 1, time.perf_counter() - t0
            self.callbacks.fire("on_step_end", self, stats)
            if self.stop_reason is not None:
                self.callbacks.fire("on_stop", self)
                return False
        return True

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> StepStats:
        """Forward, loss, backward, optimiser and schedule step, EMA; the step's statistics
        over the global batch, with every process's stop requests, in one all-reduce."""
        s = self.setup
        x, y = to_device(x, s.rt), host_to_device(y, s.rt.device)
        beta = step_kl_weight(s.model_cfg, epoch, batch, s.steps_per_epoch)
        eps = host_to_device(
            noise_rows(s.cfg.batch_size, s.model_cfg.latent_dim, s.rt), s.rt.device
        )
        with autocast(s.rt):
            out = s.model.objective(x, s.forward(x, eps, y), beta=beta, breed=y)
        lr = s.scheduler.get_last_lr()[0]
        sums = torch.cat([
            torch.stack([out.total, out.reconstruction, out.kl]).detach().double() * len(x),
            host_to_device(torch.tensor([len(x), *self.stop_requests()], dtype=torch.float64), s.rt.device),
        ])  # fmt: skip
        if s.rt.world_size > 1:
            dist.all_reduce(sums)
        loss, recon, kl, n, sigint, sigterm = sums.cpu().tolist()
        s.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        if s.cfg.grad_clip > 0:
            clip_gradients(s.optimizer, s.cfg.grad_clip)
        s.optimizer.step()
        s.scheduler.step()
        if s.ema is not None:
            s.ema.update_parameters(s.model)
        self.state.step += 1
        return StepStats(epoch, batch, self.state.step, loss / n, recon / n, kl / n, int(n), lr,
                         beta, sigint > 0, sigterm > 0)  # fmt: skip

    def validate(self) -> dict:
        """The epoch's validation figures, with the EMA weights where there are some."""
        s = self.setup
        share_buffers(s.rt, s.model, s.eval_model)
        return validate(s.eval_model, s.val_batches, s.val_noise, s.rt)

    def end_epoch(self, val: dict) -> dict:
        """The epoch's record; the state moves on to the next epoch, and the best is kept."""
        s, state = self.setup, self.state
        epoch, steps = state.epoch, s.steps_per_epoch
        loss, recon, kl = state.totals.means()
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "lr": s.scheduler.get_last_lr()[0],
            "beta": step_kl_weight(s.model_cfg, epoch, steps - 1, steps),
            "seconds": state.seconds,
            "images_per_s": state.totals.images / max(state.seconds, 1e-9),
            "train": {"loss": loss, "recon": recon, "kl": kl},
            "val": val,
        }
        self.epoch_was_best = val["elbo"] < state.best_elbo
        if self.epoch_was_best:
            state.best_elbo = val["elbo"]
            state.history["best"] = record
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        state.totals, state.seconds = EpochTotals(), 0.0
        self.record = record
        self.callbacks.fire("on_epoch_end", self, record)
        return record

    def state_dict(self) -> dict:
        """What a checkpoint holds besides the weights: where the run is, the optimiser, the
        schedule, the EMA and the random state, so that a resume repeats the run exactly."""
        s, state = self.setup, self.state
        saved = {
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "epoch_sums": state.totals.to_tensor(),
            "epoch_seconds": state.seconds,
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best_elbo": state.best_elbo,
            "history": json.dumps(state.history),
        }
        if s.ema is not None:
            saved["ema"] = s.ema.state_dict()
        if s.rt.device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
            saved["cuda_rng"] = torch.cuda.get_rng_state(s.rt.device)
        return saved

    def finish(self, seconds: float) -> dict:
        """The run's summary (rank 0; {} elsewhere), written to RUN/metrics.json."""
        s, history = self.setup, self.state.history
        replicas = fingerprints_per_rank(s.model, s.rt)
        if not s.rt.main:
            self.callbacks.fire("on_train_end", self, {})
            return {}
        if len(set(replicas)) > 1:
            logger.warning(
                "the processes ended with different weights (a DDP bug or a non-deterministic "
                "layer); the checkpoints are rank 0's. Fingerprints: %s",
                replicas,
            )
        summary = {
            "epochs": s.cfg.epochs,
            "best_epoch": history["best"]["epoch"],
            "val": history["best"]["val"],
            "baselines": history["baselines"],
            "train_seconds_this_session": seconds,
            "images_per_s": self.record.get("images_per_s"),
            "world_size": s.rt.world_size,
            "weights_sha256_per_rank": replicas,
        }
        write_json(s.run / "metrics.json", summary)
        self.callbacks.fire("on_train_end", self, summary)
        return summary
