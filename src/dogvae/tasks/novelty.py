"""Is this input like any training dog? An out-of-distribution score with a measured threshold.

Three scores, each divided by its own 99th percentile over the validation split (so 1 means "as
odd as the oddest 1% of held-out dogs" on that score, whatever its units):

- latent distance: squared Mahalanobis distance of the (facing-invariant) code to the nearest
  breed centroid, under the pooled within-breed covariance (the idea of Lee et al. 2018, on a
  VAE's codes). The encoder maps an unfamiliar picture where no breed lives.
- reconstruction error: the MSE of decode(mu). The decoder only knows how to draw dogs.
- KL rate: KL(q(z|x) || p(z)) in nats, how much the encoder has to say about the picture.
  Line drawings and text carry far more detail than the photos it was trained on.

The novelty score is the largest of the three; an input is "unlike any training dog" above the
99th percentile of the validation split's novelty scores, so about 1 in 100 held-out dogs is
flagged by construction. Reconstruction error alone misleads, as raw VAE likelihood does
(Nalisnick et al. 2019): on a dogs-full model the VAE diagram `wallpaper.png` reconstructs
*better* than the typical photo (AUROC 0.24 against validation dogs); the latent distance
(0.93) and the KL rate (1.00) see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dogvae.latents import LatentStore, whitening_matrix

FLAG_QUANTILE = 0.99
SCORES = ("latent_distance", "reconstruction_error", "kl_rate")


@dataclass
class NoveltyScorer:
    centroids: np.ndarray  # (B, D) whitened breed centroids
    whitener: np.ndarray  # (D, D)
    scales: dict[str, float]  # FLAG_QUANTILE of each score over the validation split
    threshold: float  # FLAG_QUANTILE of the validation novelty scores

    @classmethod
    def fit(cls, store: LatentStore) -> NoveltyScorer:
        """Centroids and covariance from the training split; scales and threshold from the
        validation split (training codes sit closer to the centroids they made)."""
        whitener = whitening_matrix(store.pooled_covariance())
        scorer = cls(store.centroids() @ whitener, whitener, dict.fromkeys(SCORES, 1.0), np.inf)
        val = store.val_rows if len(store.val_rows) else store.train_rows
        raw = scorer.raw_scores(store.codes[val], store.recon_mse[val], store.kl_rate[val])
        scorer.scales = {k: float(np.quantile(v, FLAG_QUANTILE)) or 1.0 for k, v in raw.items()}
        scorer.threshold = float(np.quantile(scorer.novelty(raw), FLAG_QUANTILE))
        return scorer

    def raw_scores(self, codes, recon_mse, kl_rate) -> dict[str, np.ndarray]:
        return {
            "latent_distance": _nearest_distance(
                np.atleast_2d(codes) @ self.whitener, self.centroids
            ),
            "reconstruction_error": np.atleast_1d(recon_mse).astype(np.float64),
            "kl_rate": np.atleast_1d(kl_rate).astype(np.float64),
        }

    def novelty(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        return np.max([raw[k] / self.scales[k] for k in SCORES], axis=0)

    def score(self, codes, recon_mse, kl_rate=None) -> list[dict]:
        """One verdict per row of `codes` (see `LatentStore.codes`), given each image's
        reconstruction MSE and KL rate (`Encoded.kl_rate`; without it that score is left out)."""
        if kl_rate is None:
            kl_rate = np.zeros(len(np.atleast_2d(codes)))
        raw = self.raw_scores(codes, recon_mse, kl_rate)
        novelty = self.novelty(raw)
        return [
            {
                "score": float(novelty[i]),
                "threshold": self.threshold,
                **{f"{k}_ratio": float(raw[k][i] / self.scales[k]) for k in SCORES},
                "unlike_training_dogs": bool(novelty[i] > self.threshold),
            }
            for i in range(len(novelty))
        ]


def _nearest_distance(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance from each row to the nearest centroid (both whitened)."""
    squared = (x**2).sum(1)[:, None] - 2 * x @ centroids.T + (centroids**2).sum(1)[None]
    return np.maximum(squared.min(1), 0.0)
