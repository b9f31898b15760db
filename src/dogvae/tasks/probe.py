"""A breed probe on latent codes, with probabilities that mean what they say.

Two probes are fitted on the training split's posterior means: k-nearest neighbours and a
multinomial logistic regression (both on standardised codes). The one with the better
validation accuracy answers; its probabilities are then temperature-scaled on the validation
split (Guo et al. 2017), which changes confidence but never the ranking. Both accuracies are
reported. The fitted probe lives in `RUN/probes.npz` (plain arrays, no pickle) and is refitted
when the latent store changes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dogvae.errors import DogvaeError
from dogvae.latents import STORE_FORMAT, LatentStore, load_derived, save_derived

log = logging.getLogger(__name__)

PROBE_FILE = "probes.npz"
PROBE_FORMAT = f"dogvae-probe/1 on {STORE_FORMAT}"
KNN_NEIGHBOURS = 10
KNN_SMOOTHING = 0.5  # pseudo-votes per breed, so no breed gets probability zero
LOGISTIC_C = 1.0
PROBES = ("knn", "logistic")


@dataclass
class BreedProbe:
    """A fitted probe: standardisation, the classifier's parameters and a temperature."""

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    n_breeds: int
    temperature: float = 1.0
    coef: np.ndarray | None = None  # logistic: (B, D)
    intercept: np.ndarray | None = None  # logistic: (B,)
    train_codes: np.ndarray | None = None  # knn: (N, D) standardised
    train_labels: np.ndarray | None = None  # knn: (N,)
    report: dict = field(default_factory=dict)

    def log_scores(self, mu: np.ndarray) -> np.ndarray:
        """(N, B) unnormalised log-probabilities before temperature scaling."""
        z = (np.atleast_2d(mu) - self.mean) / self.scale
        if self.kind == "logistic":
            return z @ self.coef.T + self.intercept
        return np.log(_neighbour_votes(z, self.train_codes, self.train_labels, self.n_breeds))

    def predict_proba(self, mu: np.ndarray) -> np.ndarray:
        return softmax(self.log_scores(mu) / self.temperature)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def _neighbour_votes(z, train_codes, train_labels, n_breeds, k=KNN_NEIGHBOURS) -> np.ndarray:
    """Smoothed vote shares of the k nearest training codes."""
    k = min(k, len(train_codes))
    squared = (z**2).sum(1)[:, None] - 2 * z @ train_codes.T + (train_codes**2).sum(1)[None]
    nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
    votes = np.full((len(z), n_breeds), KNN_SMOOTHING)
    np.add.at(votes, (np.arange(len(z))[:, None], train_labels[nearest]), 1.0)
    return votes / votes.sum(1, keepdims=True)


def _standardiser(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = codes.std(0)
    return codes.mean(0), np.where(scale > 1e-8, scale, 1.0)


def fit_probe(store: LatentStore, kind: str) -> BreedProbe:
    """One probe on the training split's codes, temperature 1."""
    from sklearn.linear_model import LogisticRegression

    rows = store.train_rows
    codes, labels = store.codes[rows].astype(np.float64), store.labels[rows]
    mean, scale = _standardiser(codes)
    probe = BreedProbe(kind, mean, scale, len(store.breeds))
    z = (codes - mean) / scale
    if kind == "knn":
        probe.train_codes, probe.train_labels = z, labels
        return probe
    if len(np.unique(labels)) < 2:
        raise DogvaeError("identifying breeds needs training images of at least two breeds")
    fitted = LogisticRegression(C=LOGISTIC_C, max_iter=2000).fit(z, labels)
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:  # sklearn keeps one row for two classes; softmax wants two
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.concatenate([-intercept, intercept]) / 2,
        )
    probe.coef = np.zeros((len(store.breeds), z.shape[1]))
    probe.intercept = np.full(len(store.breeds), -1e9)  # breeds with no training rows
    probe.coef[fitted.classes_], probe.intercept[fitted.classes_] = coef, intercept
    return probe


def accuracy_at(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true breed) in nats: the Kaggle competition's multi-class log loss (it clips
    probabilities to [1e-15, 1 - 1e-15])."""
    clipped = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1 - 1e-15)
    return float(-np.log(clipped).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over confidence bins, weighted by how full each bin is."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            hits = (predicted[members] == labels[members]).mean()
            gap += members.mean() * abs(hits - confidence[members].mean())
    return float(gap)


def fit_temperature(log_scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        logits = log_scores / np.exp(log_t)
        logits = logits - logits.max(1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(1))
        return float((log_norm - logits[np.arange(len(labels)), labels]).mean())

    if len(labels) == 0:
        return 1.0
    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def choose_probe(store: LatentStore) -> BreedProbe:
    """Fit both probes, keep the one with the better validation top-1 accuracy (ties go to
    logistic regression, the smoother one), then calibrate its temperature on validation."""
    val = store.val_rows
    labels = store.labels[val]
    report, probes = {}, {}
    for kind in PROBES:
        probe = fit_probe(store, kind)
        probs = probe.predict_proba(store.codes[val])
        report[kind] = {
            "top1": accuracy_at(probs, labels, 1),
            "top5": accuracy_at(probs, labels, 5),
        }
        probes[kind] = probe
    best = max(PROBES, key=lambda k: (np.nan_to_num(report[k]["top1"]), k == "logistic"))
    probe = probes[best]
    scores = probe.log_scores(store.codes[val])
    report["ece_before"] = expected_calibration_error(softmax(scores), labels) if len(val) else None
    probe.temperature = fit_temperature(scores, labels)
    calibrated = probe.predict_proba(store.codes[val])
    probe.report = {
        **report,
        "chosen": best,
        "temperature": probe.temperature,
        "ece_after": expected_calibration_error(calibrated, labels) if len(val) else None,
        "log_loss": log_loss(calibrated, labels) if len(val) else None,
        "chance_top1": 1.0 / len(store.breeds),
        "chance_top5": min(5, len(store.breeds)) / len(store.breeds),
        "n_train": int(len(store.train_rows)),
        "n_val": int(len(val)),
    }
    return probe


# --- kept in the run folder as plain arrays --------------------------------------------------


def save_probe(probe: BreedProbe, store: LatentStore, path: Path) -> None:
    arrays = {
        "kind": np.array(probe.kind),
        "mean": probe.mean,
        "scale": probe.scale,
        "temperature": np.array(probe.temperature),
        "report": np.array(json.dumps(probe.report)),
    }
    if probe.kind == "logistic":
        arrays.update(coef=probe.coef, intercept=probe.intercept)
    save_derived(path, PROBE_FORMAT, store, arrays)


def load_probe(store: LatentStore, path: Path) -> BreedProbe | None:
    """The saved probe when it was fitted on this very store, else None (a damaged file too:
    the probe is refitted)."""
    f = load_derived(path, PROBE_FORMAT, store)
    if f is None:
        return None
    try:
        probe = BreedProbe(
            str(f["kind"]), f["mean"], f["scale"], len(store.breeds), float(f["temperature"])
        )
        probe.report = json.loads(str(f["report"]))
        if probe.kind == "logistic":
            probe.coef, probe.intercept = f["coef"], f["intercept"]
    except (KeyError, ValueError):
        return None
    if probe.kind == "knn":
        rows = store.train_rows
        probe.train_codes = (store.codes[rows] - probe.mean) / probe.scale
        probe.train_labels = store.labels[rows]
    return probe


def breed_probe(store: LatentStore, run: str | Path | None = None) -> BreedProbe:
    """The run's probe: loaded from `RUN/probes.npz` when it matches the store, else fitted
    (and saved there when `run` is given and writable)."""
    path = Path(run) / PROBE_FILE if run is not None else None
    probe = load_probe(store, path) if path is not None else None
    if probe is None:
        probe = choose_probe(store)
        if path is not None:
            try:
                save_probe(probe, store, path)
            except OSError as exc:  # a read-only run folder: keep it in memory
                log.warning("breed probe not saved (%s)", exc)
    return probe
