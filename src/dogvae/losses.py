"""The two halves of the VAE objective, in nats per image.

The negative ELBO of one image is `reconstruction + KL`, where

* `reconstruction` = -log p(x | z) summed over all pixels and channels of the image, under the
  chosen likelihood, and
* `KL` = KL(q(z | x) || N(0, I)) summed over latent dimensions.

`beta` (the KL weight) and free bits shape the *training* objective only; the ELBO we report
always uses beta = 1 and no free bits, so runs with different settings stay comparable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")

_LOG_2PI = math.log(2 * math.pi)


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
