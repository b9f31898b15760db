"""What a task's arguments become: photo paths -> image tensors, breed names -> breed indices."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import torch

from dogvae.data.decode import load_photo
from dogvae.data.scan import IMAGE_EXTENSIONS
from dogvae.errors import DogvaeError
from dogvae.latents import to_batch
from dogvae.model import BaseVAE


class UnknownBreed(DogvaeError):
    """A breed name the model was not trained on; the message lists the closest names."""


def read_photos(model: BaseVAE, paths: list[str | Path]) -> np.ndarray:
    """User photos (any format Pillow reads, any size, EXIF-rotated, alpha on white) ->
    (B, S, S, 3) uint8, cropped and sized as the run's training images were."""
    size = model.config.image_size
    return np.stack([load_photo(_existing_file(p), size, model.crop) for p in paths])


def as_tensor(model: BaseVAE, pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> the model's input, on the model's device."""
    return to_batch(pixels, next(model.parameters()).device)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DogvaeError(f"{path}: no such file")
    if not path.is_file():
        raise DogvaeError(f"{path}: not a file")
    return path


def normalise_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def find_breed(name: str, breeds: list[str]) -> int:
    """Index of `name` in `breeds`, matching case, spaces, hyphens and underscores loosely."""
    wanted = normalise_name(name)
    for i, breed in enumerate(breeds):
        if normalise_name(breed) == wanted:
            return i
    close = difflib.get_close_matches(wanted, [normalise_name(b) for b in breeds], n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownBreed(f"unknown breed {name!r}{hint} ({len(breeds)} breeds: `dogvae clusters`)")


def looks_like_path(text: str) -> bool:
    return Path(text).suffix.lower() in IMAGE_EXTENSIONS or "/" in text or "\\" in text


def is_photo_argument(text: str, breeds: list[str]) -> bool:
    """A mix/ancestry argument names a photo when such a file exists or it looks like a path
    and is not a breed; otherwise it names a breed (and an unknown one is an error)."""
    if Path(text).is_file():
        return True
    known = {normalise_name(b) for b in breeds}
    return looks_like_path(text) and normalise_name(text) not in known
