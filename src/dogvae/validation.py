"""Validation: a model's figures on a fixed set of images, as training, `dogvae evaluate` and
`dogvae tune` all score it.

Each process scores its share of the images (`batches`, in order, with one fixed noise row per
image in `noise`) and the sums are added over all processes, so the figures are those of the
whole set, the same every epoch and for any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from dogvae.metrics import active_units, mse_per_image, psnr_per_image
from dogvae.model import BaseVAE
from dogvae.runtime import Runtime, host_to_device, to_device


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many labelled rows have their label among the k highest logits."""
    labelled = labels >= 0
    top = logits[labelled].topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[labelled, None]).any(1).sum()


@dataclass
class ValidationSums:
    """Running totals over images (each figure x images) and the classifier's hits."""

    elbo: float = 0.0
    recon: float = 0.0
    kl: float = 0.0
    mse: float = 0.0
    psnr: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    labelled: float = 0.0
    images: float = 0.0

    def as_tensor(self, device) -> torch.Tensor:
        return torch.tensor(list(self.__dict__.values()), dtype=torch.float64, device=device)


@torch.no_grad()
def _score_batch(model: BaseVAE, x, y, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's summed figures (in `ValidationSums` order, images last) and its codes."""
    b = len(x)
    given = model.validation_breed(y)
    out = model.objective(x, model.noisy_forward(x, eps, given), beta=1.0, breed=given)
    scores = model.classify(x, views=2) if model.has_classifier else None
    breed = model.resolve_breed(x, given, scores)
    mu = model.encode(x, breed)[0]
    recon = model.decode(mu, breed)
    hits = (
        torch.zeros(2, device=x.device)
        if scores is None
        else torch.stack([top_k_hits(scores, y, k) for k in (1, 5)])
    )
    sums = torch.stack([
        out.elbo * b, out.reconstruction * b, out.kl * b,
        mse_per_image(recon, x).sum(), psnr_per_image(recon, x).sum(),
        *hits, (y >= 0).sum(), torch.tensor(b, device=x.device),
    ]).double()  # fmt: skip
    return sums, mu.float().cpu()


@torch.no_grad()
def validate(model: BaseVAE, batches, noise: torch.Tensor, rt: Runtime) -> dict[str, float]:
    """Validation figures in float32: ELBO (nats/image, bits/dim), its parts, MSE, PSNR, active
    units, and for a model with a classifier its top-1 and top-5 accuracy. The model is scored
    in eval mode and left in the mode it came in.

    A cvae is given the breeds (its ELBO bounds -log p(x|y)); vae and ssvae are not (-log p(x)).
    The classifier is scored on a photo and its mirror only, not on all of its
    `classifier_views`, to keep each epoch's validation short; `dogvae evaluate` uses them all.
    """
    was_training = model.training
    model.eval()
    totals = ValidationSums().as_tensor(rt.device)
    mus, n = [], 0
    for x, y in batches:
        x, y = to_device(x, rt), host_to_device(y, rt.device)
        sums, mu = _score_batch(model, x, y, host_to_device(noise[n : n + len(x)], rt.device))
        totals += sums
        mus.append(mu)
        n += len(x)
    mus = torch.cat(mus) if mus else torch.empty(0, model.config.latent_dim)
    if rt.world_size > 1:
        dist.all_reduce(totals)
        shares = [None] * rt.world_size
        dist.all_gather_object(shares, mus)
        mus = torch.cat(shares)
    model.train(was_training)
    return _figures(model, ValidationSums(*totals.tolist()), mus)


def _figures(model: BaseVAE, sums: ValidationSums, mus: torch.Tensor) -> dict[str, float]:
    n = max(sums.images, 1)
    metrics = {name: getattr(sums, name) / n for name in ("elbo", "recon", "kl", "mse", "psnr")}
    metrics["bits_per_dim"] = model.bits_per_dim(metrics["elbo"])
    metrics["active_units"] = active_units(mus)
    if model.has_classifier:
        labelled = max(sums.labelled, 1)
        metrics["top1"], metrics["top5"] = sums.top1 / labelled, sums.top5 / labelled
    return metrics
