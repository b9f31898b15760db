"""What a run knows about breeds, gathered once: the question-answering core.

`BreedKnowledge(model, store, run)` holds the latent store and what is derived from it: the
breed probe on the codes, the model's own classifier calibrated on the validation split, the
novelty scorer, and each breed's typical training dog (its medoid). Every breed question
(identify, ancestry, breed mixes; the CLI, the web page and `evaluate` alike) reads its
probabilities and pictures from here, so one photo gets one answer whichever door it came in.

Breed probabilities come from the part of the model that knows breeds: the classifier where
the model has one (ssvae), else the probe on the latent codes (a plain VAE's or a cvae's codes
carry little more breed than the pixels do). Either is temperature-scaled on the validation
split (Guo et al. 2017), which changes confidence, never the ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from dogvae.errors import DogvaeError
from dogvae.latents import (
    Encoded,
    LatentStore,
    breed_centroids,
    load_dataset,
    load_derived,
    pooled_within_covariance,
    save_derived,
    whitening_matrix,
)
from dogvae.model import BaseVAE
from dogvae.run import Run
from dogvae.tasks.inputs import as_tensor
from dogvae.tasks.novelty import NoveltyScorer
from dogvae.tasks.probe import (
    BreedProbe,
    accuracy_at,
    breed_probe,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    softmax,
)
from dogvae.tasks.sample import LatentMixture, latent_mixture
from dogvae.tasks.synthesis import calibrated_penalty

log = logging.getLogger(__name__)

PENALTY_FILE, PENALTY_FORMAT = "ancestry_penalty.npz", "dogvae-ancestry-penalty/1"
PENALTY_PHOTOS = 64  # validation photos the synthesis penalty is measured on
UNKNOWN_BREED_LOG_PROB = np.log(1e-9)  # a store breed the classifier was not trained on
PLAIN_CODES_NOTE = (
    "a {kind}'s latent codes carry little more breed than the pixels do: these probabilities "
    "come from a probe on them; train --model ssvae for a model that knows breeds"
)


@dataclass
class Calibration:
    """A breed identifier's validation figures and the temperature that makes it honest."""

    source: str  # "classifier" (the model's own) or "probe" (on the latent codes)
    temperature: float
    report: dict  # top1, top5, log_loss, ece_before, ece_after, n_val, chance_top1/5


class BreedKnowledge:
    """A loaded model and its latent store, with every breed answer's ingredients computed
    once, on first use. `run` is where the fitted probe is kept (None: in memory only)."""

    def __init__(self, model: BaseVAE, store: LatentStore, run: str | Path | None = None):
        self.model, self.store = model, store
        self.run = Path(run) if run is not None else None

    def warm(self) -> BreedKnowledge:
        """Compute every answer's ingredients now (a server does, so no request waits)."""
        for name in ("calibration", "scorer", "probe", "ancestry_centroids",
                     "ancestry_whitener", "medoid_rows", "latent_mixture",
                     "synthesis_penalty"):  # fmt: skip
            getattr(self, name)
        return self

    @property
    def breeds(self) -> list[str]:
        return self.store.breeds

    @property
    def has_classifier(self) -> bool:
        return self.model.has_classifier

    # --- identifiers -----------------------------------------------------------------------

    @cached_property
    def probe(self) -> BreedProbe:
        return breed_probe(self.store, self.run)

    @cached_property
    def classifier(self) -> Calibration | None:
        """The model's classifier scored and calibrated on the store's validation rows."""
        if not self.has_classifier:
            return None
        val = self.store.val_rows
        scores, labels = (
            self.classifier_scores(self.store.class_log_probs[val]),
            self.store.labels[val],
        )
        temperature = fit_temperature(scores, labels)
        return Calibration(
            "classifier", temperature, identifier_report(scores, labels, temperature)
        )

    @property
    def calibration(self) -> Calibration:
        """The identifier that answers: the classifier where there is one, else the probe."""
        if self.classifier is not None:
            return self.classifier
        report = self.probe.report
        chosen = report["chosen"]
        return Calibration(
            "probe",
            self.probe.temperature,
            {**report[chosen], "log_loss": report.get("log_loss"), "ece_before": report.get("ece_before"),
             "ece_after": report.get("ece_after"), "n_val": report["n_val"],
             "temperature": self.probe.temperature,
             "chance_top1": report["chance_top1"], "chance_top5": report["chance_top5"]},
        )  # fmt: skip

    @property
    def note(self) -> str | None:
        """What a user should know about where the answer comes from."""
        return (
            None if self.has_classifier else PLAIN_CODES_NOTE.format(kind=self.model.config.model)
        )

    def model_breed(self, breed: int) -> int:
        """A store breed's column in a conditional model's breed weights: its own index, or
        the last column ("unknown breed") for a breed the model was not trained on."""
        name = self.breeds[breed]
        return (
            self.model.breeds.index(name) if name in self.model.breeds else len(self.model.breeds)
        )

    def breed_weights(self, shares: dict[int, float]) -> np.ndarray:
        """(n_model_breeds + 1,) a conditional model's weights for store breeds' shares."""
        weights = np.zeros(len(self.model.breeds) + 1, np.float32)
        for breed, share in shares.items():
            weights[self.model_breed(breed)] += share
        return weights

    def classifier_scores(self, class_log_probs: np.ndarray) -> np.ndarray:
        """The classifier's log-probabilities over the model's breeds -> over the store's,
        matched by name."""
        position = {name: i for i, name in enumerate(self.model.breeds)}
        scores = np.full((len(class_log_probs), len(self.breeds)), UNKNOWN_BREED_LOG_PROB)
        for b, name in enumerate(self.breeds):
            if name in position:
                scores[:, b] = class_log_probs[:, position[name]]
        return scores

    def breed_probabilities(self, encoded: Encoded) -> np.ndarray:
        """(N, store breeds) calibrated probabilities from the identifier that answers."""
        if self.classifier is not None:
            scores = self.classifier_scores(encoded.class_log_probs)
            return softmax(scores / self.classifier.temperature)
        return self.probe.predict_proba(encoded.codes)

    def store_probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.breed_probabilities(self.store.as_encoded(rows))

    # --- where dogs sit ----------------------------------------------------------------------

    @cached_property
    def scorer(self) -> NoveltyScorer:
        return NoveltyScorer.fit(self.store)

    @cached_property
    def centroids(self) -> np.ndarray:
        return self.store.centroids()

    @cached_property
    def whitener(self) -> np.ndarray:
        return whitening_matrix(self.store.pooled_covariance())

    @cached_property
    def latent_mixture(self) -> LatentMixture:
        """The sampler fitted to the training codes (`dogvae.tasks.sample.latent_mixture`)."""
        return latent_mixture(self.store, self.run)

    # --- the space ancestry mixes breeds in --------------------------------------------------

    @property
    def ancestry_space(self) -> str:
        """ "classifier": a dog is a mixture of breeds' mean calibrated probability vectors;
        "codes": a mixture of breed centroids in latent space (models without a classifier)."""
        return "classifier" if self.has_classifier else "codes"

    def ancestry_features(self, encoded: Encoded) -> np.ndarray:
        if self.has_classifier:
            return self.breed_probabilities(encoded)
        return encoded.codes

    @cached_property
    def _ancestry_training(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.store.train_rows
        return self.ancestry_features(self.store.as_encoded(rows)), self.store.labels[rows]

    @cached_property
    def ancestry_centroids(self) -> np.ndarray:
        if not self.has_classifier:
            return self.centroids
        return breed_centroids(*self._ancestry_training, len(self.breeds))

    @cached_property
    def ancestry_whitener(self) -> np.ndarray:
        if not self.has_classifier:
            return self.whitener
        return whitening_matrix(
            pooled_within_covariance(*self._ancestry_training, len(self.breeds))
        )

    @property
    def synthesis_breeds(self) -> np.ndarray:
        """(model breeds,) bool: the model's breeds that the store has, the only ones an
        answer can name."""
        return np.array([name in self.breeds for name in self.model.breeds])

    @property
    def penalty_rows(self) -> np.ndarray:
        """Up to `PENALTY_PHOTOS` validation rows, evenly spread (the training split's are
        explained too well by a model that has seen them), that measure the penalty."""
        val = self.store.val_rows
        return val[np.linspace(0, len(val) - 1, min(PENALTY_PHOTOS, len(val))).astype(int)]

    @cached_property
    def synthesis_penalty(self) -> float | None:
        """Nats an extra parent must gain in analysis-by-synthesis, measured on the purebred
        photos of `penalty_rows` (`calibrated_penalty`) and kept in RUN/ancestry_penalty.npz;
        None for a model whose decoder takes no breed, or when the photos cannot be read."""
        if not self.model.conditional:
            return None
        path = self.run / PENALTY_FILE if self.run is not None else None
        saved = load_derived(path, PENALTY_FORMAT, self.store) if path is not None else None
        if saved is not None and "penalty" in saved:
            return float(saved["penalty"])
        rows = self.penalty_rows
        pixels = self.photos_of_rows(rows) if len(rows) else None
        if pixels is None:
            return None
        penalty = calibrated_penalty(
            self.model, as_tensor(self.model, pixels), self.store.class_log_probs[rows],
            self.synthesis_breeds,
        )  # fmt: skip
        if path is not None:
            try:
                save_derived(path, PENALTY_FORMAT, self.store, {"penalty": np.array(penalty)})
            except OSError as exc:  # a read-only run folder: keep it in memory
                log.warning("ancestry penalty not saved (%s)", exc)
        return penalty

    # --- typical dogs ----------------------------------------------------------------------

    @cached_property
    def medoid_rows(self) -> np.ndarray:
        """(B,) store rows: each breed's training dog whose code is nearest the breed's
        centroid under the within-breed covariance (-1 for a breed without training dogs)."""
        store, rows = self.store, self.store.train_rows
        whitened = store.codes[rows] @ self.whitener
        centres = self.centroids @ self.whitener
        medoids = np.full(len(self.breeds), -1, np.int64)
        for b in range(len(self.breeds)):
            own = np.flatnonzero(store.labels[rows] == b)
            if len(own):
                distance = ((whitened[own] - centres[b]) ** 2).sum(1)
                medoids[b] = rows[own[np.argmin(distance)]]
        return medoids

    @cached_property
    def _dataset(self):
        """The images the store was encoded from, or None when they cannot be read now."""
        if not self.store.data or not Path(self.store.data).is_dir():
            return None
        try:
            run = Run.find(self.run) if self.run is not None else None  # its cache folder
            images = load_dataset(self.model, self.store.data, progress=False, run=run)
        except (DogvaeError, OSError) as exc:  # a picture is not worth failing an answer for
            log.warning("training photos unavailable (%s): breeds are shown decoded", exc)
            return None
        return images, {str(image_id): i for i, image_id in enumerate(images.ids)}

    def photos_of_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """(N, S, S, 3) uint8 training photos of store rows, or None without the data folder."""
        if self._dataset is None:
            return None
        images, index = self._dataset
        ids = [str(self.store.ids[r]) for r in rows]
        if not all(i in index for i in ids):
            return None
        return np.stack([np.asarray(images.images[index[i]]) for i in ids])


def identifier_report(scores: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """Validation top-1 / top-5, multi-class log loss and calibration error of log-scores,
    before and after dividing them by `temperature`."""
    n_breeds = scores.shape[1]
    before, after = softmax(scores), softmax(scores / temperature)
    empty = len(labels) == 0
    return {
        "top1": accuracy_at(after, labels, 1),
        "top5": accuracy_at(after, labels, 5),
        "log_loss": None if empty else log_loss(after, labels),
        "ece_before": None if empty else expected_calibration_error(before, labels),
        "ece_after": None if empty else expected_calibration_error(after, labels),
        "temperature": temperature,
        "n_val": int(len(labels)),
        "chance_top1": 1.0 / n_breeds,
        "chance_top5": min(5, n_breeds) / n_breeds,
    }
