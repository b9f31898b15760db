"""New dogs: codes drawn from a mixture fitted to the training codes, from the prior, or from
a breed's spread around its centroid.

A VAE's prior N(0, I) is not where its encoder puts dogs: the aggregate posterior (the codes
of the training photos) fills only part of it, and prior codes that fall outside decode as
blur. `LatentMixture` is a Gaussian mixture (`MIXTURE_COMPONENTS` components, full
covariance, as pythae's GMMSampler) fitted once to the training split's posterior means, both
facings, plus their mean posterior variance; it is kept in `RUN/sampler.npz` as plain arrays
beside the latent store it was fitted on. It is the default source ("gmm"); "prior" draws from
N(0, I). `bench/sampler_fid.py` measures both with a Frechet distance in the classifier's
feature space (docs/results.md, "Sampling").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dogvae.errors import DogvaeError
from dogvae.latents import LatentStore, load_derived, save_derived
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png
from dogvae.tasks.inputs import find_breed
from dogvae.tasks.mixing import decode_codes

log = logging.getLogger(__name__)

SOURCES = ("gmm", "prior")
DEFAULT_SOURCE = "gmm"
MIXTURE_FILE = "sampler.npz"
MIXTURE_FORMAT = "dogvae-latent-mixture/1"
MIXTURE_COMPONENTS = 10


@dataclass
class LatentMixture:
    """A Gaussian mixture over latent codes, as plain arrays."""

    weights: np.ndarray  # (K,) component probabilities
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)

    def draw(self, n: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
        """(n, D) codes: a component by its weight, then its mean plus `temperature` times
        its spread (0: the component means)."""
        components = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, self.means.shape[1]))
        lower = np.linalg.cholesky(self.covariances)
        spread = np.einsum("nij,nj->ni", lower[components], noise)
        return self.means[components] + temperature * spread


def fit_latent_mixture(
    store: LatentStore, components: int = MIXTURE_COMPONENTS, seed: int = 0
) -> LatentMixture:
    """The mixture fitted to the training codes (posterior means of both facings); each
    component's covariance gets the codes' mean posterior variance added, so it describes z
    drawn from the posteriors, not their means alone."""
    from sklearn.mixture import GaussianMixture

    rows = store.train_rows
    if len(rows) == 0:
        raise DogvaeError("the latent store has no training codes to fit a sampler on")
    codes = np.concatenate([store.mu[rows], store.mu_mirror[rows]]).astype(np.float64)
    k = min(components, len(codes))
    gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-5, random_state=seed)
    gmm.fit(codes)
    noise = np.diag(np.exp(store.logvar[rows].astype(np.float64)).mean(0))
    log.info("fitted a %d-component latent mixture on %d codes", k, len(codes))
    return LatentMixture(gmm.weights_, gmm.means_, gmm.covariances_ + noise)


def latent_mixture(store: LatentStore, run: str | Path | None = None) -> LatentMixture:
    """The run's sampler: read from `RUN/sampler.npz` when it was fitted on this store, else
    fitted (and saved there when `run` is given and writable)."""
    path = Path(run) / MIXTURE_FILE if run is not None else None
    mixture = load_mixture(store, path) if path is not None else None
    if mixture is None:
        mixture = fit_latent_mixture(store)
        if path is not None:
            try:
                save_mixture(mixture, store, path)
            except OSError as exc:  # a read-only run folder: keep it in memory
                log.warning("latent mixture not saved (%s)", exc)
    return mixture


def save_mixture(mixture: LatentMixture, store: LatentStore, path: Path) -> None:
    arrays = {
        "weights": mixture.weights,
        "means": mixture.means,
        "covariances": mixture.covariances,
    }
    save_derived(path, MIXTURE_FORMAT, store, arrays)


def load_mixture(store: LatentStore, path: Path) -> LatentMixture | None:
    """The saved mixture when it was fitted on this very store, else None (a damaged file
    too: the mixture is fitted again)."""
    f = load_derived(path, MIXTURE_FORMAT, store)
    if f is None or not {"weights", "means", "covariances"} <= set(f):
        return None
    return LatentMixture(f["weights"], f["means"], f["covariances"])


def breed_codes(
    store: LatentStore, breed: int, n: int, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """n codes from N(centroid, temperature^2 * the breed's covariance)."""
    covariance = store.breed_covariance(breed)
    lower = np.linalg.cholesky(covariance + 1e-9 * np.eye(len(covariance)))
    noise = rng.standard_normal((n, len(covariance)))
    return store.centroids()[breed] + temperature * noise @ lower.T


def needs_mixture(model: BaseVAE, breed: str | None, source: str) -> bool:
    """Whether these samples draw their codes from the latent mixture: source "gmm", unless a
    plain VAE samples around a breed (from the breed's own Gaussian)."""
    if source not in SOURCES:
        raise DogvaeError(f"unknown sampler {source!r}; choose {' or '.join(SOURCES)}")
    return source == "gmm" and (breed is None or model.conditional)


def sample_dogs(
    model: BaseVAE,
    out: str | Path,
    *,
    n: int = 16,
    breed: str | None = None,
    store: LatentStore | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    mixture: LatentMixture | None = None,
) -> dict:
    """Decode `n` codes drawn with `seed`: from `mixture` (`latent_mixture`) when given, else
    the prior N(0, temperature^2 I); or for a breed. A conditional model (cvae, ssvae) draws
    the breed from its decoder: the codes decoded with the breed's embedding (no store needed
    for prior codes). A plain VAE samples around the breed's centroid and covariance in the
    latent store. Writes them as a grid."""
    if n < 1:
        raise DogvaeError("--n must be at least 1")
    if temperature < 0:
        raise DogvaeError("--temperature must be 0 or more")
    rng = np.random.default_rng(seed)
    images, source = draw_dogs(model, n, breed, store, temperature, rng, mixture)
    ncols = int(np.ceil(np.sqrt(n)))
    scale = max(1, 96 // model.config.image_size)
    return {
        "source": source,
        "sampler": sampler_used(model, breed, mixture),
        "method": "decoder" if breed is not None and model.conditional else "latent",
        "n": n,
        "temperature": temperature,
        "seed": seed,
        "picture": str(save_png(image_grid(images, ncols=ncols, scale=scale), out)),
    }


def sampler_used(model: BaseVAE, breed: str | None, mixture: LatentMixture | None) -> str:
    """Where the codes came from: "gmm", "prior", or "breed" (a plain VAE's breed Gaussian)."""
    if breed is not None and not model.conditional:
        return "breed"
    return "prior" if mixture is None else "gmm"


def draw_dogs(
    model: BaseVAE,
    n: int,
    breed: str | None,
    store: LatentStore | None,
    temperature: float,
    rng: np.random.Generator,
    mixture: LatentMixture | None = None,
) -> tuple[torch.Tensor, str]:
    """n new dogs (N, 3, S, S) and where they came from ("prior", "gmm" or the breed's name):
    codes from `mixture` when given, else from the prior."""
    if breed is not None and not model.conditional:
        if store is None:
            raise DogvaeError("sampling a breed from a plain VAE needs its latent store")
        index = find_breed(breed, store.breeds)
        return decode_codes(model, breed_codes(store, index, n, temperature, rng)), store.breeds[
            index
        ]
    if mixture is None:
        codes, source = temperature * rng.standard_normal((n, model.config.latent_dim)), "prior"
    else:
        codes, source = mixture.draw(n, temperature, rng), "gmm"
    if breed is None:
        return decode_codes(model, codes, _prior_breeds(model, n, rng)), source
    index = find_breed(breed, model.breeds)
    return decode_codes(model, codes, torch.full((n,), index, dtype=torch.long)), model.breeds[
        index
    ]


def _prior_breeds(model: BaseVAE, n: int, rng: np.random.Generator) -> torch.Tensor | None:
    """A model with a class prior (ssvae) draws each dog's breed from it, with `rng`."""
    if not model.has_classifier:
        return None
    return torch.from_numpy(rng.integers(len(model.breeds), size=n))


@torch.no_grad()
def classifier_features(model: BaseVAE, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """(N, F) the breed classifier's pooled features (before dropout and the logits) of images
    (N, 3, S, S) in [0, 1], one view each: the space `bench/sampler_fid.py` compares samples
    with photos in, a proxy for Inception's (FID)."""
    if not model.has_classifier:
        raise DogvaeError(f"a {model.config.model} model has no breed classifier to embed with")
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model.classifier.features(images[s : s + batch].to(device)).float().cpu()
        for s in range(0, len(images), batch)
    ]
    return torch.cat(parts).numpy()
