"""The optimiser and the schedules: AdamW over the model's parameter groups, the learning-rate
factor of each group per step, gradient clipping, and the KL weight's warm-up."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from dogvae.model import BaseVAE, VAEConfig

if TYPE_CHECKING:
    from dogvae.train import TrainConfig


def make_optimizer(model: BaseVAE, lr: float, weight_decay: float, device: torch.device):
    """AdamW over the model's `parameter_groups`, fused into one kernel where this torch has it
    for the device (faster than the foreach step, most for the large `seed` preset)."""
    fused = device.type == "cuda" or torch.__version__ >= "2.4"
    return torch.optim.AdamW(model.parameter_groups(weight_decay), lr=lr, fused=fused)


def keep_saved_group_marks(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Mark the parameter groups as the resumed run's saved optimizer had them: a run saved
    before the classifier had a schedule of its own goes on with one schedule for all."""
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=False):
        group["classifier"] = saved_group.get("classifier", False)


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip each parameter group's gradient norm to `max_norm` on its own, except a group
    marked "classifier": its gradient (alpha x cross-entropy) is large by design, and clipping
    it would normalise every classifier step."""
    for group in optimizer.param_groups:
        if not group.get("classifier"):
            torch.nn.utils.clip_grad_norm_(group["params"], max_norm)


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
    That is the recipe of a breed classifier trained on its own (one-cycle AdamW, no clipping).
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
