"""Scores tried beside the novelty verdict's four, on the same non-dog pictures and dogs.

    .venv/bin/python bench/novelty_candidates.py --run RUN   # RUN: an ssvae

Each candidate is scored on the 36 non-dog pictures (`dogvae.tasks.non_dogs`) and the run's
validation dogs, alone (its line the dogs' 99th percentile) and as a fifth score beside the
verdict's four (each divided by its dogs' 99th percentile, the largest compared with the
dogs' 99th and 95th percentile):
- classifier Mahalanobis: the squared distance of the classifier's pooled features (photo and
  mirror) to the nearest breed mean, under the pooled within-breed covariance (Lee et al. 2018);
- classifier, one Gaussian: the same to the mean of all training dogs;
- fitted complexity gap: the model's bits less a line in PNG bits fitted on training dogs
  (the shipped gap takes the slope to be 1).
Training statistics come from every 8th training photo. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dogvae import checkpoint
from dogvae.latents import open_store, png_bits
from dogvae.model import photo_views
from dogvae.tasks.inputs import as_tensor
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.non_dogs import encode_pictures, non_dog_pictures, prepare


@torch.no_grad()
def classifier_features(model, pixels: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(pixels), 128):
        x = as_tensor(model, pixels[i : i + 128])
        views = photo_views(x, 2)
        out.append(sum(model.classifier.features(v) for v in views).float() / len(views))
    return torch.cat(out).numpy()


def inverse_root(covariance: np.ndarray) -> np.ndarray:
    ridge = 1e-3 * np.trace(covariance) / len(covariance)
    return np.linalg.cholesky(np.linalg.inv(covariance + ridge * np.eye(len(covariance))))


def nearest_squared(x, centres, root) -> np.ndarray:
    return (((x @ root)[:, None] - (centres @ root)[None]) ** 2).sum(2).min(1)


def candidates(model, store, knowledge, non_dogs: np.ndarray, non_encoded) -> dict[str, tuple]:
    """Each candidate's (dogs' scores, non-dogs' scores)."""
    train, val = store.train_rows[::8], store.val_rows
    photos = {"train": knowledge.photos_of_rows(train), "val": knowledge.photos_of_rows(val)}
    feats = {k: classifier_features(model, v) for k, v in photos.items()}
    feats["non"] = classifier_features(model, non_dogs)
    labels = store.labels[train]
    means = np.stack([feats["train"][labels == b].mean(0) for b in np.unique(labels)])
    within = inverse_root(
        np.cov((feats["train"] - means[np.searchsorted(np.unique(labels), labels)]).T)
    )
    overall = inverse_root(np.cov(feats["train"].T))
    centre = feats["train"].mean(0, keepdims=True)
    encoded = {"train": store.as_encoded(train), "val": store.as_encoded(val), "non": non_encoded}
    pixels = {**photos, "non": non_dogs}
    png = {k: png_bits(v) for k, v in pixels.items()}
    bits = {k: encoded[k].code_gap + png[k] for k in pixels}
    slope, intercept = np.polyfit(png["train"], bits["train"], 1)
    return {
        "classifier Mahalanobis": tuple(nearest_squared(feats[k], means, within) for k in ("val", "non")),
        "classifier, one Gaussian": tuple(nearest_squared(feats[k], centre, overall) for k in ("val", "non")),
        "fitted complexity gap": tuple(bits[k] - (slope * png[k] + intercept) for k in ("val", "non")),
    }  # fmt: skip


def measure(run: str) -> dict:
    model = checkpoint.load(run)
    store = open_store(model, run, progress=False)
    knowledge = BreedKnowledge(model, store, run)
    scorer = knowledge.scorer
    pictures = non_dog_pictures()
    non_dogs, non_encoded = prepare(model, pictures), encode_pictures(model, pictures)
    verdict = (
        scorer.novelty(scorer.raw_scores(store.as_encoded(store.val_rows))),
        scorer.novelty(scorer.raw_scores(non_encoded)),
    )
    result = {}
    for name, (dogs, others) in candidates(model, store, knowledge, non_dogs, non_encoded).items():
        unit = np.quantile(dogs, 0.99)
        both = (np.maximum(verdict[0] / np.quantile(verdict[0], 0.99), dogs / unit),
                np.maximum(verdict[1] / np.quantile(verdict[0], 0.99), others / unit))  # fmt: skip
        result[name] = {
            "alone": float(np.mean(others > unit)),
            **{f"with the four, {q:.0%} line": float(np.mean(both[1] > np.quantile(both[0], q)))
               for q in (0.99, 0.95)},
        }  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    result = measure(parser.parse_args().run)
    for name, shares in result.items():
        print(f"{name:>26}: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
