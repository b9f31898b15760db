"""Which breed is this dog? The answer of the part of the model that knows breeds.

`answer_identify` is the one implementation: the CLI, the web page and notebooks call it with
a photo already encoded. Probabilities are calibrated on the validation split (see
`dogvae.tasks.knowledge`), and every answer carries the validation top-1 / top-5 and log loss of
the identifier that gave it, so a user can tell a confident model from a guessing one.
`identify_folder` answers for a folder of photos and writes the Kaggle competition's
submission CSV.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from dogvae.atomic import atomic_path
from dogvae.data.decode import BadImage
from dogvae.data.scan import IMAGE_EXTENSIONS
from dogvae.errors import DogvaeError
from dogvae.latents import Encoded, LatentStore, encode_images
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png
from dogvae.tasks.inputs import as_tensor, read_photos
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.reconstruct import reconstruct_encoded

log = logging.getLogger(__name__)

FOLDER_BATCH = 256


def ranked(breeds: list[str], probs: np.ndarray, top: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: max(1, top)]
    return [{"breed": breeds[b], "probability": float(probs[b])} for b in order]


def answer_identify(knowledge: BreedKnowledge, encoded: Encoded, top: int = 5) -> dict:
    """The breed of one encoded photo (`encoded` holds one row): the likeliest breeds with
    calibrated probabilities, the identifier's validation figures, and the novelty verdict
    (a photo unlike any training dog gets `breed` None; its nearest breeds are still listed,
    to be read as unreliable)."""
    probs = knowledge.breed_probabilities(encoded)[0]
    novelty = knowledge.scorer.score(encoded)[0]
    calibration = knowledge.calibration
    answer = {
        "breed": None
        if novelty["unlike_training_dogs"]
        else knowledge.breeds[int(np.argmax(probs))],
        "top": ranked(knowledge.breeds, probs, top),
        "source": calibration.source,
        "accuracy": calibration.report,
        "note": knowledge.note,
        "novelty": novelty,
        "probe": knowledge.probe.report,
    }
    if knowledge.has_classifier:
        probe_probs = knowledge.probe.predict_proba(encoded.codes)[0]
        answer["probe_top"] = ranked(knowledge.breeds, probe_probs, top)
    return answer


def identify(
    model: BaseVAE,
    store: LatentStore,
    photo: str | Path,
    top: int = 5,
    run: str | Path | None = None,
    out: str | Path | None = None,
    knowledge: BreedKnowledge | None = None,
) -> dict:
    """`answer_identify` for a photo file; with `out`, a picture of the photo, its
    reconstruction and a typical training dog of each top breed."""
    knowledge = knowledge or BreedKnowledge(model, store, run)
    pixels = read_photos(model, [photo])
    encoded = encode_images(model, pixels)
    result = {"image": str(photo), **answer_identify(knowledge, encoded, top)}
    if out is not None:
        result["picture"] = str(_identify_picture(knowledge, pixels, encoded, result["top"], out))
    return result


@torch.no_grad()
def _identify_picture(knowledge: BreedKnowledge, pixels, encoded, top: list[dict], out) -> Path:
    model = knowledge.model
    x = as_tensor(model, pixels)
    indices = [knowledge.breeds.index(t["breed"]) for t in top]
    breeds = torch.from_numpy(breed_pictures(knowledge, indices)).permute(0, 3, 1, 2) / 255
    recon = reconstruct_encoded(model, pixels, encoded)[0]
    tiles = torch.cat([x.cpu(), recon, breeds])
    captions = ["photo", "reconstruction"] + [f"{t['breed']} {t['probability']:.0%}" for t in top]
    scale = max(1, 128 // model.config.image_size)
    return save_png(image_grid(tiles, ncols=len(tiles), captions=captions, scale=scale), out)


def breed_pictures(knowledge: BreedKnowledge, breeds: list[int]) -> np.ndarray:
    """(B, S, S, 3) uint8: each breed's medoid training photo, or that dog's reconstruction
    when the training photos cannot be read."""
    from dogvae.pictures import to_uint8
    from dogvae.tasks.mixing import decode_codes

    rows = knowledge.medoid_rows[np.asarray(breeds, np.int64)]
    size = knowledge.model.config.image_size
    pictures = np.full((len(rows), size, size, 3), 255, np.uint8)  # no training dog: blank
    have = np.flatnonzero(rows >= 0)
    if len(have) == 0:
        return pictures
    photos = knowledge.photos_of_rows(rows[have])
    if photos is None:
        weights = None
        if knowledge.model.conditional:
            weights = np.stack([knowledge.breed_weights({breeds[i]: 1.0}) for i in have])
        photos = to_uint8(decode_codes(knowledge.model, knowledge.store.mu[rows[have]], weights))
    pictures[have] = photos
    return pictures


def photo_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DogvaeError(f"{folder}: not a folder of photos")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DogvaeError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def identify_folder(knowledge: BreedKnowledge, folder: str | Path, csv_path: str | Path) -> dict:
    """Calibrated breed probabilities for every photo in `folder`, written to `csv_path` in the
    Kaggle competition's `sample_submission.csv` layout: `id,<breed>,...` with the breeds in
    alphabetical order, one row per photo (its file name without extension). A photo that
    cannot be read gets uniform probabilities (the answer of knowing nothing), is counted and
    named in the result."""
    files = photo_files(folder)
    order = sorted(range(len(knowledge.breeds)), key=lambda b: knowledge.breeds[b])
    probs = np.full((len(files), len(knowledge.breeds)), 1.0 / len(knowledge.breeds))
    skipped: dict[str, str] = {}
    for start in range(0, len(files), FOLDER_BATCH):
        batch = files[start : start + FOLDER_BATCH]
        readable, pixels = _readable_photos(knowledge.model, batch, skipped)
        if readable:
            encoded = encode_images(knowledge.model, np.stack(pixels))
            probs[[start + i for i in readable]] = knowledge.breed_probabilities(encoded)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *(knowledge.breeds[b] for b in order)])
        for path, row in zip(files, probs, strict=True):
            writer.writerow([path.stem, *(f"{row[b]:.6g}" for b in order)])
    if skipped:
        log.warning("%d photos could not be read and got uniform probabilities", len(skipped))
    return {
        "csv": str(csv_path),
        "n_photos": len(files),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "source": knowledge.calibration.source,
        "accuracy": knowledge.calibration.report,
    }


def _readable_photos(model: BaseVAE, paths: list[Path], skipped: dict) -> tuple[list, list]:
    readable, pixels = [], []
    for i, path in enumerate(paths):
        try:
            pixels.append(read_photos(model, [path])[0])
            readable.append(i)
        except BadImage as exc:
            skipped[path.name] = exc.reason
    return readable, pixels


def evaluate_identify(knowledge: BreedKnowledge) -> dict:
    """Validation figures of the identifier that answers and of both probes, against chance,
    and how many held-out dogs the novelty flag calls unlike the training dogs."""
    store = knowledge.store
    val = store.val_rows
    flags = knowledge.scorer.score(store.as_encoded(val))
    return {
        **knowledge.probe.report,
        "source": knowledge.calibration.source,
        "answering": knowledge.calibration.report,
        "val_flagged_as_unlike": float(np.mean([f["unlike_training_dogs"] for f in flags]))
        if flags
        else None,
    }
