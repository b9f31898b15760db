"""A deterministic, breed-stratified train/validation split."""

from __future__ import annotations

import math

import numpy as np


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into sorted int64 (train, validation) index arrays.

    Each breed sends round(val_fraction * n) of its n images to validation (halves round up),
    at least one when it has two or more images and never all of them. Unlabelled images (label
    < 0) all train, unless no image has a label (a plain folder): then they are split as one
    group. Which images go is drawn per breed from (seed, breed), so a breed's choice does not
    depend on the other breeds or on the order they appear in.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    breeds = np.unique(labels[labels >= 0])
    validation = [
        _validation_members(
            np.flatnonzero(labels == breed), val_fraction, np.random.default_rng([seed, int(breed)])
        )
        for breed in breeds
    ]
    if breeds.size == 0:
        rng = np.random.default_rng([seed])
        validation.append(_validation_members(np.arange(labels.size), val_fraction, rng))
    val = np.sort(np.concatenate([np.empty(0, np.int64), *validation]))
    is_train = np.ones(labels.size, dtype=bool)
    is_train[val] = False
    return np.flatnonzero(is_train).astype(np.int64), val.astype(np.int64)


def _validation_members(
    members: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    n = members.size
    n_val = min(math.floor(val_fraction * n + 0.5), n - 1)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    return rng.permutation(members)[:n_val]


def hold_back_labels(
    labels: np.ndarray, rows: np.ndarray, label_fraction: float, seed: int = 0
) -> np.ndarray:
    """A copy of `labels` in which only `label_fraction` of each breed's images among `rows`
    keep their label (at least one per breed); the others become -1 (unlabelled).

    For semi-supervised training: `rows` are the training rows, so validation labels stay.
    Which images keep theirs is drawn per breed from (seed, breed), like the split.
    """
    if not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    kept = labels.copy()
    rows = np.asarray(rows, dtype=np.int64)
    for breed in np.unique(labels[rows][labels[rows] >= 0]):
        members = rows[labels[rows] == breed]
        n_keep = max(1, math.floor(label_fraction * members.size + 0.5))
        rng = np.random.default_rng([seed, int(breed), 1])
        kept[rng.permutation(members)[n_keep:]] = -1
    return kept
