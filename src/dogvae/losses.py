"""The VAE objectives in nats per image: likelihoods, the KL, and the losses of a forward pass.

The negative ELBO of one image is `reconstruction + KL`, where

* `reconstruction` = -log p(x | z) summed over all pixels and channels of the image, under the
  chosen likelihood, and
* `KL` = KL(q(z | x) || N(0, I)) summed over latent dimensions.

`beta` (the KL weight) and free bits shape the *training* objective only; the ELBO we report
always uses beta = 1 and no free bits, so runs with different settings stay comparable.
`vae_loss` and `m2_loss` score a `dogvae.model.VAEOutput`; the models' `objective` calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dogvae.model import SemiSupervisedOutput, VAEConfig, VAEOutput

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class LossOutput:
    """One batch's objective and its parts; every figure is a batch mean in nats per image."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor
    beta: float


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for every image and latent dimension, shape (B, D)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def reconstruction_nll(
    x: torch.Tensor, logits: torch.Tensor, likelihood: str, log_scale: torch.Tensor
) -> torch.Tensor:
    """-log p(x | z) per image (shape (B,)), pixels in [0, 1], decoder output as logits.

    * ``bernoulli``: binary cross-entropy, as in the original Keras model. For pixels that are not
      0 or 1 this is not a normalised density, so its "bits per dimension" is not a code length.
    * ``gaussian``: N(sigmoid(logits), exp(log_scale)^2) with one learned global scale.
    * ``laplace``: Laplace(sigmoid(logits), exp(log_scale)) with one learned global scale (L1).
    """
    logits = logits.float()
    x = x.float()
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif likelihood == "gaussian":
        mean = torch.sigmoid(logits)
        nll = 0.5 * ((x - mean) * torch.exp(-log_scale)).square() + log_scale + 0.5 * _LOG_2PI
    elif likelihood == "laplace":
        mean = torch.sigmoid(logits)
        nll = (x - mean).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
    return nll.flatten(1).sum(1)


def kl_with_free_bits(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Batch-mean KL with a floor of `free_bits` nats on each dimension (Kingma et al. 2016).

    Dimensions already above the floor are trained as usual; those below it get no KL gradient,
    which keeps the encoder from collapsing them early.
    """
    per_dim = kl_dims.mean(0)
    if free_bits > 0:
        per_dim = per_dim.clamp(min=free_bits)
    return per_dim.sum()


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> float:
    """Nats per image on [0, 1] pixels -> bits per 8-bit sub-pixel (adds log 256 per dimension)."""
    return (float(nll_nats) + num_dims * math.log(256.0)) / (num_dims * math.log(2.0))


def vae_loss(
    x: torch.Tensor, out: VAEOutput, cfg: VAEConfig, log_scale: torch.Tensor, beta: float
) -> LossOutput:
    """The negative ELBO of images `x` under their forward pass `out`, the KL weighted by `beta`
    (and floored by `cfg.free_bits`) in the total only."""
    recon = reconstruction_nll(x, out.logits, cfg.likelihood, log_scale).mean()
    kl_dims = out.posterior.kl(per_dim=True)
    kl = kl_dims.sum(1).mean()
    kl_term = kl_with_free_bits(kl_dims, cfg.free_bits) if cfg.free_bits else kl
    return LossOutput(
        total=recon + beta * kl_term,
        reconstruction=recon,
        kl=kl,
        elbo=(recon + kl).detach(),
        beta=beta,
    )


def m2_loss(
    x: torch.Tensor,
    out: SemiSupervisedOutput,
    breed: torch.Tensor | None,
    cfg: VAEConfig,
    log_scale: torch.Tensor,
    beta: float,
) -> LossOutput:
    """M2's objective (`dogvae.model.SemiSupervisedVAE`) for images `x` labelled `breed` (-1 or
    None: unlabelled): each scored (image, breed) pair's negative ELBO weighted by its
    candidate weight, plus -log p(y) and minus the classifier's entropy for unlabelled images,
    plus `classifier_weight` times the cross-entropy on labelled ones."""
    n = len(x)
    pairs = out.candidates
    weights = pairs.weights.float()
    recon = reconstruction_nll(x[pairs.rows], out.logits, cfg.likelihood, log_scale)
    weighted_kl_dims = (weights[:, None] * out.posterior.kl(per_dim=True)).sum(0) / n
    recon_mean = (weights * recon).sum() / n
    kl_mean = weighted_kl_dims.sum()
    kl_term = kl_with_free_bits(weighted_kl_dims[None], cfg.free_bits) if cfg.free_bits else kl_mean
    unlabelled = torch.ones(n, dtype=torch.bool, device=x.device) if breed is None else breed < 0
    log_q = torch.log_softmax(out.class_logits.float(), 1)
    entropy = -(log_q.exp() * log_q).sum(1)[unlabelled].sum() / n
    bound_extra = math.log(cfg.n_breeds) * weights.sum() / n - entropy  # -log p(y), p uniform
    classification = _labelled_cross_entropy(out.class_logits, breed, ~unlabelled, cfg)
    if out.class_mix is not None:  # its target: the same mix of the partner's label
        mix = out.class_mix
        classification = mix.share * classification + (1 - mix.share) * _labelled_cross_entropy(
            out.class_logits, breed[mix.partner], ~unlabelled, cfg
        )
    classification = classification / n
    return LossOutput(
        total=recon_mean + beta * kl_term + bound_extra + cfg.classifier_weight * classification,
        reconstruction=recon_mean,
        kl=kl_mean,
        elbo=(recon_mean + kl_mean + bound_extra).detach(),
        beta=beta,
    )


def _labelled_cross_entropy(
    class_logits: torch.Tensor, breed: torch.Tensor | None, labelled: torch.Tensor, cfg: VAEConfig
) -> torch.Tensor:
    """The classifier's label-smoothed cross-entropy summed over the labelled images."""
    if not labelled.any():
        return class_logits.new_zeros((), dtype=torch.float32)
    return F.cross_entropy(
        class_logits[labelled].float(),
        breed[labelled],
        label_smoothing=cfg.label_smoothing,
        reduction="sum",
    )
