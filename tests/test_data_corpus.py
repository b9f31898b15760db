"""Tiny generated data sets for the data-layer tests: good photos and every kind of broken file.

The helpers are imported by the other `test_data_*` modules; the tests here check that the
broken files really are broken the way their names say.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BREED_COLOURS = {
    "beagle": (200, 120, 40),
    "pug": (60, 60, 60),
    "samoyed": (240, 240, 235),
}

# What `make_broken_kaggle` leaves out, by reason.
BROKEN_COUNTS = {
    "empty_file": 1,
    "truncated": 1,
    "not_an_image": 1,
    "too_many_pixels": 1,
    "missing_file": 1,
    "no_label": 1,
    "duplicate_id": 1,
    "bad_label_row": 1,
}
GOOD_PER_BREED = 3


def noise_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A JPEG whose data cannot be guessed, so cutting it anywhere loses real pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def solid_image(path: Path, colour=(200, 120, 40), size=(24, 20), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def make_kaggle(root: Path, per_breed: dict[str, int], size=(24, 20)) -> Path:
    """A Kaggle-layout folder: `labels.csv` and one solid-colour JPEG per row."""
    rows = ["id,breed"]
    for breed, n in per_breed.items():
        colour = BREED_COLOURS.get(breed, (30 * len(breed) % 256, 90, 150))
        for i in range(n):
            image_id = f"{breed}{i:03d}"
            solid_image(root / "train" / f"{image_id}.jpg", colour, size)
            rows.append(f"{image_id},{breed}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_broken_kaggle(root: Path) -> Path:
    """Two breeds of `GOOD_PER_BREED` good photos plus one of each problem in BROKEN_COUNTS."""
    make_kaggle(root, {"beagle": GOOD_PER_BREED, "pug": GOOD_PER_BREED})
    train = root / "train"
    (train / "empty.jpg").write_bytes(b"")
    (train / "truncated.jpg").write_bytes(noise_jpeg()[: len(noise_jpeg()) // 2])
    (train / "notes.jpg").write_text("not a photo, just text\n")
    (train / "bomb.png").write_bytes(png_claiming(50_000, 50_000))
    (train / "stray.jpg").write_bytes(noise_jpeg(seed=1))
    with open(root / "labels.csv", "a") as f:
        f.write("empty,beagle\ntruncated,pug\nnotes,beagle\nbomb,pug\n")
        f.write("gone,beagle\n")  # missing_file
        f.write("beagle000,pug\n")  # duplicate_id: the first row (beagle) wins
        f.write(",pug\n")  # bad_label_row
    return root


def test_truncated_jpeg_really_fails_to_decode():
    data = noise_jpeg()
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(data[: len(data) // 2])).load()


def test_bomb_png_header_claims_the_size_it_says():
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png_claiming(50_000, 50_000)))
