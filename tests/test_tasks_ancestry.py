"""The ancestry solver on latents built from known mixtures of breed centroids, and on the
synthetic mutts' own generative factors (numpy only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dogvae.tasks.ancestry import explain, mixture_fits, nearest_centroids

BENCH = Path(__file__).resolve().parents[1] / "bench"

N_BREEDS, DIM = 10, 24


@pytest.fixture
def centroids():
    return np.random.default_rng(0).normal(0, 3, (N_BREEDS, DIM))


def noisy(x, rng, sd=0.2):
    return x + rng.normal(0, sd, x.shape)


def test_a_two_breed_mixture_recovers_both_parents_and_their_shares(centroids):
    rng = np.random.default_rng(1)
    for a, b, share in [(0, 1, 0.5), (3, 7, 0.3), (9, 2, 0.7), (4, 5, 0.62)]:
        x = noisy(share * centroids[a] + (1 - share) * centroids[b], rng)
        found = explain(x, centroids)
        assert sorted(found.parents) == sorted([a, b])
        assert dict(zip(found.parents, found.shares, strict=True))[a] == pytest.approx(
            share, abs=0.04
        )
        assert sum(found.shares) == pytest.approx(1.0)
        assert set(found.ranking[:2]) == {a, b}


def test_a_purebred_stays_one_breed(centroids):
    rng = np.random.default_rng(2)
    for breed in range(N_BREEDS):
        found = explain(noisy(centroids[breed], rng), centroids)
        assert found.parents == [breed] and found.shares == [1.0]
        assert found.ranking[0] == breed


def test_a_three_breed_mixture_is_found_when_each_share_is_large(centroids):
    x = noisy(
        0.4 * centroids[1] + 0.35 * centroids[6] + 0.25 * centroids[8], np.random.default_rng(3)
    )
    found = explain(x, centroids)
    assert sorted(found.parents) == [1, 6, 8]
    assert np.allclose(sorted(found.shares), [0.25, 0.35, 0.4], atol=0.04)


def test_whitening_lets_a_noisy_direction_count_for_little(centroids):
    """Dogs of every breed vary hugely along one axis; a mutt far off along it is still a mutt."""
    spread = np.ones(DIM)
    spread[0] = 400.0
    x = 0.5 * centroids[2] + 0.5 * centroids[3]
    x[0] += 40.0  # two standard deviations along the noisy axis
    whitener = np.diag(1 / np.sqrt(spread))
    assert sorted(explain(x, centroids, whitener).parents) == [2, 3]


def test_every_fit_is_a_convex_combination_with_its_exact_residual(centroids):
    x = np.random.default_rng(4).normal(0, 3, DIM)
    fits = mixture_fits(x, centroids)
    assert set(fits.sizes) == {1, 2, 3}
    for f in np.random.default_rng(5).choice(len(fits.residual), 50, replace=False):
        used = fits.parents[f] >= 0
        shares = fits.shares[f][used]
        assert (shares > 0).all() and shares.sum() == pytest.approx(1.0)
        point = shares @ centroids[fits.parents[f][used]]
        assert fits.residual[f] == pytest.approx(((x - point) ** 2).sum(), rel=1e-6)


def test_penalty_trades_fit_for_fewer_parents(centroids):
    x = noisy(0.5 * centroids[0] + 0.5 * centroids[1], np.random.default_rng(6))
    assert len(explain(x, centroids, penalty=0.0).parents) >= 2
    assert len(explain(x, centroids, penalty=1e9).parents) == 1


def test_nearest_centroid_baseline_ranks_by_distance(centroids):
    x = centroids[4] + 0.01
    assert nearest_centroids(x, centroids)[0] == 4


def bench_module(name: str):
    """A module of bench/ (scripts, not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_mutts_read_from_their_factors_name_both_parents_if_coats_stay_in_rgb():
    """The ancestry bar (80% / 90%) is reachable from what the pictures show: mutts blend coat
    colours in RGB, and the fit recovers both parents from the true factors (100% top 2
    measured; 99% with a solid dog's unseen secondary colour hidden). Coats perceived as named
    colours, the way a breed classifier sees them, lose most mutts (28% measured): a
    black x white mutt is silver, like a third breed."""
    recovery_on_true_factors = bench_module("ancestry_recovery").recovery_on_true_factors
    in_rgb = recovery_on_true_factors("rgb")
    pictured = recovery_on_true_factors("pictured")
    by_name = recovery_on_true_factors("named")
    assert in_rgb["both_parents_top2"] >= 0.95 and in_rgb["share_error"] < 0.06
    assert pictured["both_parents_top2"] >= 0.95 and pictured["both_parents_top3"] >= 0.95
    assert by_name["both_parents_top2"] < 0.5
