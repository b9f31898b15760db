"""Parent recovery of synthetic mutts from features other than a model's codes.

The ancestry fit (`dogvae.tasks.ancestry.explain`) given the dogs' true looks
(`synth.dataset_factors`) or any other description of them: what a perfect encoder, or pixel
PCA, would reach. `ancestry_ceiling.py` prints these beside a run's codes; the tests check the
true-factor figures. Not part of the library, which never imports `synth`.
"""

from __future__ import annotations

import numpy as np

from dogvae import synth
from dogvae.latents import breed_centroids, pooled_within_covariance, whitening_matrix
from dogvae.tasks.ancestry import Mutt, explain, parent_recovery, share_of_parent_a


def recovery_on_features(
    features: np.ndarray, labels: np.ndarray, mutt_features: np.ndarray, mutts: list[Mutt]
) -> dict[str, float]:
    """Parent recovery of `mutts` with every dog described by `features` instead of a model's
    codes: centroids and whitening from the purebreds' features and labels, then `explain`."""
    n_breeds = int(labels.max()) + 1
    centroids = breed_centroids(features, labels, n_breeds)
    whitener = whitening_matrix(pooled_within_covariance(features, labels, n_breeds))
    found = [explain(x, centroids, whitener) for x in mutt_features]
    rankings = np.array([f.ranking for f in found])
    return parent_recovery(rankings, share_of_parent_a(found, mutts), mutts)


def recovery_on_true_factors(coats: str, **synth_args) -> dict[str, float]:
    """`recovery_on_features` on the true looks (`synth.factor_vector(f, coats)`) of the dogs
    `synth.synthesize(**synth_args)` draws: what a perfect encoder would give."""
    pure, mixed = synth.dataset_factors(**synth_args)
    names = sorted({breed for _, breed, _ in pure})
    labels = np.array([names.index(breed) for _, breed, _ in pure])
    mutts = [Mutt(i, names.index(a), names.index(b), s) for i, a, b, s, _ in mixed]
    return recovery_on_features(
        np.stack([synth.factor_vector(f, coats) for *_, f in pure]),
        labels,
        np.stack([synth.factor_vector(f, coats) for *_, f in mixed]),
        mutts,
    )
