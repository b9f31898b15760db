"""Which sampler draws dogs more like the photos: the prior N(0, I) or the latent mixture?

    .venv/bin/python bench/sampler_fid.py --run RUN [--data DATA] [--temperature 1.0 ...] [--json]

Draws as many dogs as the run has validation photos from each source (`dogvae.tasks.sample`,
seed 0, the breeds of an ssvae drawn from p(y) as `dogvae sample` does), embeds them and the
validation photos with the run's own breed classifier (pooled features before its logits,
one view: `classifier_features`) and prints the Frechet distance between each set and the
photos, beside that of as many training photos (the floor a perfect sampler would reach) and
of the photos' reconstructions. It is a proxy for FID, which embeds with Inception-v3: those
weights cannot be downloaded here, and this classifier is far weaker, so read the figures as a
ranking of samplers on this run, not against published FIDs. Needs a model with a classifier
(ssvae). Writes RUN/sampler.npz if the mixture was not fitted yet. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dogvae.latents import load_dataset, open_store, to_batch
from dogvae.metrics import frechet_distance
from dogvae.run import Run
from dogvae.tasks.sample import SOURCES, classifier_features, draw_dogs, latent_mixture

SEED = 0


@torch.no_grad()
def measure(run: Path, data: Path | None, temperatures: list[float]) -> dict:
    facts = Run.load(run)
    model = facts.load_model()
    store = open_store(model, facts, data, progress=False)
    images = load_dataset(model, data or store.data, progress=False, run=facts)
    index = {str(image_id): i for i, image_id in enumerate(images.ids)}

    def photos(rows: np.ndarray) -> torch.Tensor:
        return to_batch(np.stack([images.images[index[str(store.ids[r])]] for r in rows]))

    val = store.val_rows
    train = np.random.default_rng(SEED).choice(store.train_rows, len(val), replace=False)
    reference = classifier_features(model, photos(val))
    mixtures = {"prior": None, "gmm": latent_mixture(store, run)}
    result = {
        "run": str(run),
        "n": len(val),
        "training_photos": frechet_distance(classifier_features(model, photos(train)), reference),
        "reconstructions": frechet_distance(
            classifier_features(model, model.reconstruct(photos(val))), reference
        ),
        "samplers": {},
    }
    for t in temperatures:
        for source in SOURCES:
            rng = np.random.default_rng(SEED)
            dogs, _ = draw_dogs(model, len(val), None, store, t, rng, mixtures[source])
            features = classifier_features(model, dogs)
            result["samplers"][f"{source} T={t}"] = frechet_distance(features, reference)
    return result


def report(result: dict) -> str:
    lines = [
        f"{result['run']}: Frechet distance to {result['n']} validation photos in the "
        "classifier's feature space (lower is better)",
        f"  {'training photos (floor)':26} {result['training_photos']:10.2f}",
        f"  {'reconstructions':26} {result['reconstructions']:10.2f}",
    ]
    lines += [f"  {name:26} {value:10.2f}" for name, value in result["samplers"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="the run's data, if it has moved")
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.run, args.data, args.temperature)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
