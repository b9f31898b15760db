"""The tasks' arithmetic against answers worked by hand: interpolation, cluster agreement,
probe scores and calibration (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from dogvae.tasks.clusters import agreement, cluster_codes, purity
from dogvae.tasks.mixing import lerp, mix_grid, slerp
from dogvae.tasks.probe import (
    accuracy_at,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    softmax,
)


def test_lerp_walks_the_straight_line_at_even_steps():
    a, b = np.array([0.0, 2.0]), np.array([4.0, -2.0])
    assert lerp(a, b, np.array([0.0, 0.25, 0.5, 1.0])).tolist() == [
        [0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [4.0, -2.0],
    ]  # fmt: skip


def test_slerp_turns_at_an_even_rate_and_grows_the_length_linearly():
    """From (3, 0) to (0, 1): a quarter turn, lengths 3 to 1; a third of the way is 30
    degrees round at length 3 - 2/3."""
    a, b = np.array([3.0, 0.0]), np.array([0.0, 1.0])
    t = np.array([0.0, 1 / 3, 0.5, 1.0])
    points = slerp(a, b, t)
    assert np.allclose(points[0], a) and np.allclose(points[-1], b)
    assert np.allclose(np.linalg.norm(points, axis=1), 3 - 2 * t)
    assert np.allclose(np.degrees(np.arctan2(points[:, 1], points[:, 0])), 90 * t)
    assert np.allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))  # parallel: the straight line


def test_a_mix_grid_has_the_four_corners_at_its_corners_and_their_mean_in_the_middle():
    corners = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 8.0], [4.0, 8.0]])
    grid = mix_grid(corners, steps=3).reshape(3, 3, 2)
    assert [grid[0, 0].tolist(), grid[0, 2].tolist(), grid[2, 0].tolist(), grid[2, 2].tolist()] == (
        corners.tolist()
    )
    assert grid[1, 1].tolist() == [2.0, 4.0] and grid[0, 1].tolist() == [2.0, 0.0]


def test_cluster_agreement_is_one_for_the_breeds_relabelled_and_purity_counts_by_hand():
    breeds = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert agreement(breeds, np.array([5, 5, 5, 3, 3, 9, 9, 9])) == pytest.approx(
        {"nmi": 1.0, "ari": 1.0, "purity": 1.0}
    )
    # cluster 0 holds breeds 0, 0, 1 (2 right), cluster 1 holds 0, 1, 2, 2, 2 (3 right): 5 / 8
    assert purity(breeds, np.array([0, 0, 1, 0, 1, 1, 1, 1])) == pytest.approx(5 / 8)
    one_cluster = agreement(breeds, np.zeros(8, int))
    assert one_cluster["ari"] == pytest.approx(0.0) and one_cluster["purity"] == pytest.approx(
        3 / 8
    )


def test_both_clusterings_recover_well_separated_breeds_exactly():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    labels = np.repeat(np.arange(4), 25)
    codes = centres[labels] + rng.normal(0, 0.5, (100, 3))
    for method, clusters in cluster_codes(codes, 4, seed=0).items():
        assert agreement(labels, clusters)["ari"] == pytest.approx(1.0), method


def test_accuracy_and_log_loss_of_probabilities_worked_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1])
    assert accuracy_at(probs, labels, 1) == pytest.approx(1 / 3)
    assert accuracy_at(probs, labels, 2) == pytest.approx(1.0)
    assert log_loss(probs, labels) == pytest.approx(-(np.log(0.7) + np.log(0.3) + np.log(0.4)) / 3)
    assert log_loss(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-15))


def test_expected_calibration_error_of_two_bins_worked_by_hand():
    # confidence 0.9 (bin 9), right 1 of 2: gap 0.4; confidence 0.6 (bin 6), right 2 of 2: 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def overconfident_scores(n: int, temperature: float, seed: int):
    """Breeds drawn from honest probabilities softmax(s), reported as s * temperature."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0, 1.5, (n, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(honest)])
    return honest * temperature, labels


def test_temperature_scaling_recovers_a_known_overconfidence_and_helps_on_held_out_dogs():
    fit_on, fit_labels = overconfident_scores(4000, 3.0, seed=0)
    held_out, labels = overconfident_scores(4000, 3.0, seed=1)
    temperature = fit_temperature(fit_on, fit_labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    raw, calibrated = softmax(held_out), softmax(held_out / temperature)
    assert log_loss(calibrated, labels) < log_loss(raw, labels) - 0.1
    assert expected_calibration_error(calibrated, labels) < 0.5 * expected_calibration_error(
        raw, labels
    )
    assert np.array_equal(raw.argmax(1), calibrated.argmax(1))  # the ranking never changes
