"""Does the novelty verdict hold on pictures that are not dogs?

    .venv/bin/python bench/not_a_dog.py --run RUN [--data DATA] [--seeds FOLDER] [--json]

Scores `dogvae.tasks.non_dogs.non_dog_pictures()` (scikit-image's and scikit-learn's bundled
photos and pictures drawn here: none of them a dog) and the run's validation dogs with the
run's `NoveltyScorer`, and prints, per score and for the verdict, the share of each past the
line (each score's line is its validation 99th percentile, so about 1% of the dogs cross each
by construction; the verdict's is the 96th). Then the verdict's share of non-dogs at other
lines (the 99th, 97.5th and 95th percentiles of validation novelty: 1%, 2.5% and 5% of real
dogs flagged), the non-dogs it
misses, and `dogvae identify`'s answer for each photo in --seeds (default
../shared/data/seed-images, skipped when absent). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dogvae import checkpoint
from dogvae.latents import open_store
from dogvae.tasks.identify import identify, photo_files
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.non_dogs import encode_pictures, flag_rates, non_dog_pictures
from dogvae.tasks.novelty import SCORES

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
OTHER_LINES = (0.99, 0.975, 0.95)


def measure(run: Path, data: Path | None, seeds: Path) -> dict:
    model = checkpoint.load(run)
    store = open_store(model, run, data, progress=False)
    knowledge = BreedKnowledge(model, store, run)
    scorer = knowledge.scorer
    pictures = non_dog_pictures()
    encoded = encode_pictures(model, pictures)
    val = store.as_encoded(store.val_rows)
    novelty = scorer.novelty(scorer.raw_scores(encoded))
    val_novelty = scorer.novelty(scorer.raw_scores(val))
    lines = {}
    for q in OTHER_LINES:
        line = float(np.quantile(val_novelty, q))
        lines[str(q)] = {
            "dogs": float(np.mean(val_novelty > line)),
            "non_dogs": float(np.mean(novelty > line)),
        }
    return {
        "run": str(run),
        "n_non_dogs": len(pictures),
        "n_val_dogs": len(store.val_rows),
        "non_dogs": flag_rates(scorer, encoded),
        "val_dogs": flag_rates(scorer, val),
        "other_lines": lines,
        "missed": [p.name for p, s in zip(pictures, novelty, strict=True) if s <= scorer.threshold],
        "seeds": seed_answers(knowledge, seeds) if seeds.is_dir() else None,
    }


def seed_answers(knowledge: BreedKnowledge, folder: Path) -> list[dict]:
    answers = []
    for photo in photo_files(folder):
        answer = identify(knowledge.model, knowledge.store, photo, knowledge=knowledge)
        answers.append(
            {
                "photo": photo.name,
                "unlike_training_dogs": answer["novelty"]["unlike_training_dogs"],
                "novelty": answer["novelty"]["score"],
                "breed": answer["breed"],
                "nearest": answer["top"][0]["breed"],
            }
        )
    return answers


def report(result: dict) -> str:
    lines = [
        f"{result['run']}: {result['n_non_dogs']} non-dog pictures, "
        f"{result['n_val_dogs']} validation dogs",
        f"{'past the line':22} {'non-dogs':>9} {'dogs':>7}",
    ]
    for name in (*SCORES, "verdict"):
        lines.append(f"{name:22} {result['non_dogs'][name]:9.1%} {result['val_dogs'][name]:7.1%}")
    for q, shares in result["other_lines"].items():
        lines.append(
            f"verdict at the {float(q):.1%} line: {shares['non_dogs']:.1%} of non-dogs, "
            f"{shares['dogs']:.1%} of dogs"
        )
    lines.append("missed: " + ", ".join(result["missed"]))
    for seed in result["seeds"] or []:
        verdict = "unlike any training dog" if seed["unlike_training_dogs"] else seed["breed"]
        lines.append(
            f"  {seed['photo']:16} novelty {seed['novelty']:.2f}: {verdict} "
            f"(nearest {seed['nearest']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="the run's data, if it has moved")
    parser.add_argument("--seeds", type=Path, default=SEEDS, help="photos to identify")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.run, args.data, args.seeds)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
