"""Is this input like any training dog? An out-of-distribution score with a measured threshold.

Four scores, each divided by its own 99th percentile over the validation split (so 1 means "as
odd as the oddest 1% of held-out dogs" on that score, whatever its units):

- latent distance: squared Mahalanobis distance of the (facing-invariant) code to the nearest
  breed centroid, under the pooled within-breed covariance (the idea of Lee et al. 2018, on a
  VAE's codes). The encoder maps an unfamiliar picture where no breed lives.
- reconstruction error: the MSE of decode(mu). The decoder only knows how to draw dogs.
- KL rate: KL(q(z|x) || p(z)) in nats, how much the encoder has to say about the picture.
- complexity gap: the model's code length for the image (-log p(x|mu) + KL, in bits) minus
  its length as a PNG, above the validation median (Serra et al. 2020, "Input complexity and
  out-of-distribution detection"). A model of dog photos describes a dog photo in fewer bits
  than a generic compressor does; on anything else it does no better.

The novelty score is the largest of the four; an input is "unlike any training dog" above the
96th percentile of the validation split's novelty scores, so about 1 in 25 held-out dogs is
flagged by construction: the budget of at most 5% of real dogs flagged, with room for the
split's sampling error, spent on catching more pictures that are not dogs. Raw VAE likelihood misleads (Nalisnick et al. 2019), and so do the
first three scores on simple pictures such as the VAE diagram, which a dog model reconstructs
well; the complexity gap catches them. How the verdict does on pictures that are not dogs, and
the scores tried and left out, are in docs/results.md ("Not a dog", `bench/not_a_dog.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dogvae.latents import Encoded, LatentStore, whitening_matrix

SCALE_QUANTILE = 0.99  # each score's unit
FLAG_QUANTILE = 0.96  # the verdict's line
SCORES = ("latent_distance", "reconstruction_error", "kl_rate", "complexity_gap")


@dataclass
class NoveltyScorer:
    centroids: np.ndarray  # (B, D) whitened breed centroids
    whitener: np.ndarray  # (D, D)
    gap_median: float  # validation median of the complexity gap, in bits
    scales: dict[str, float]  # SCALE_QUANTILE of each score over the validation split
    threshold: float  # FLAG_QUANTILE of the validation novelty scores

    @classmethod
    def fit(cls, store: LatentStore) -> NoveltyScorer:
        """Centroids and covariance from the training split; the gap's median, the scales and
        the threshold from the validation split (training codes sit closer to the centroids
        they made)."""
        whitener = whitening_matrix(store.pooled_covariance())
        val = store.val_rows if len(store.val_rows) else store.train_rows
        gap_median = float(np.median(store.code_gap[val]))
        scorer = cls(
            store.centroids() @ whitener, whitener, gap_median, dict.fromkeys(SCORES, 1.0), np.inf
        )
        raw = scorer.raw_scores(store.as_encoded(val))
        scorer.scales = {k: float(np.quantile(v, SCALE_QUANTILE)) or 1.0 for k, v in raw.items()}
        scorer.threshold = float(np.quantile(scorer.novelty(raw), FLAG_QUANTILE))
        return scorer

    def raw_scores(self, encoded: Encoded) -> dict[str, np.ndarray]:
        return {
            "latent_distance": _nearest_distance(encoded.codes @ self.whitener, self.centroids),
            "reconstruction_error": encoded.recon_mse.astype(np.float64),
            "kl_rate": encoded.kl_rate,
            "complexity_gap": np.maximum(encoded.code_gap.astype(np.float64) - self.gap_median, 0),
        }

    def novelty(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        return np.max([raw[k] / self.scales[k] for k in SCORES], axis=0)

    def score(self, encoded: Encoded) -> list[dict]:
        """One verdict per encoded image."""
        raw = self.raw_scores(encoded)
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
