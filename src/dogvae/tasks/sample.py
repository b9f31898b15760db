"""New dogs: codes drawn from the prior, or from a breed's spread around its centroid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dogvae.errors import DogvaeError
from dogvae.latents import LatentStore
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png
from dogvae.tasks.inputs import find_breed
from dogvae.tasks.mixing import decode_codes


def breed_codes(
    store: LatentStore, breed: int, n: int, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """n codes from N(centroid, temperature^2 * the breed's covariance)."""
    covariance = store.breed_covariance(breed)
    lower = np.linalg.cholesky(covariance + 1e-9 * np.eye(len(covariance)))
    noise = rng.standard_normal((n, len(covariance)))
    return store.centroids()[breed] + temperature * noise @ lower.T


def sample_dogs(
    model: BaseVAE,
    out: str | Path,
    *,
    n: int = 16,
    breed: str | None = None,
    store: LatentStore | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """Decode `n` codes drawn with `seed`: from the prior N(0, temperature^2 I), or for a breed.
    A conditional model (cvae, ssvae) draws the breed from its decoder: prior codes decoded
    with the breed's embedding (no store needed). A plain VAE samples around the breed's
    centroid and covariance in the latent store. Writes them as a grid."""
    if n < 1:
        raise DogvaeError("--n must be at least 1")
    if temperature < 0:
        raise DogvaeError("--temperature must be 0 or more")
    images, source = draw_dogs(model, n, breed, store, temperature, np.random.default_rng(seed))
    ncols = int(np.ceil(np.sqrt(n)))
    scale = max(1, 96 // model.config.image_size)
    return {
        "source": source,
        "method": "decoder" if breed is not None and model.conditional else "latent",
        "n": n,
        "temperature": temperature,
        "seed": seed,
        "picture": str(save_png(image_grid(images, ncols=ncols, scale=scale), out)),
    }


def draw_dogs(
    model: BaseVAE,
    n: int,
    breed: str | None,
    store: LatentStore | None,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, str]:
    """n new dogs (N, 3, S, S) and where they came from ("prior" or the breed's name)."""
    if breed is not None and not model.conditional:
        if store is None:
            raise DogvaeError("sampling a breed from a plain VAE needs its latent store")
        index = find_breed(breed, store.breeds)
        return decode_codes(model, breed_codes(store, index, n, temperature, rng)), store.breeds[
            index
        ]
    prior = temperature * rng.standard_normal((n, model.config.latent_dim))
    if breed is None:
        return decode_codes(model, prior, _prior_breeds(model, n, rng)), "prior"
    index = find_breed(breed, model.breeds)
    return decode_codes(model, prior, torch.full((n,), index, dtype=torch.long)), model.breeds[
        index
    ]


def _prior_breeds(model: BaseVAE, n: int, rng: np.random.Generator) -> torch.Tensor | None:
    """A model with a class prior (ssvae) draws each dog's breed from it, with `rng`."""
    if not model.has_classifier:
        return None
    return torch.from_numpy(rng.integers(len(model.breeds), size=n))
