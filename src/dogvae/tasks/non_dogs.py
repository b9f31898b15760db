"""Pictures that are not dogs, to check that the novelty verdict holds on them.

`non_dog_pictures()` gathers them without any download: the sample photos scikit-image ships
inside its package (an astronaut, coffee, a rocket, coins, the moon, a page of text, bricks,
grass, a horse, a cat...), scikit-learn's two (`load_sample_images`: a temple in China and a
flower) and pictures drawn here with Pillow and numpy (text, shapes, noise, gradients, a
diagram). Each is PNG bytes, so it goes through the same decoding as an uploaded photo
(`dogvae.data.decode.load_photo`). `flag_rates` says, per novelty score and for the verdict,
which share of a set of encoded pictures is past the line; `bench/not_a_dog.py` and the tests
compare it on these pictures and on the validation dogs.
"""

from __future__ import annotations

import io
import logging
import textwrap
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dogvae.data.decode import load_photo
from dogvae.errors import DogvaeError
from dogvae.latents import Encoded, encode_images
from dogvae.model import BaseVAE
from dogvae.tasks.novelty import SCORES, NoveltyScorer

log = logging.getLogger(__name__)

# The photos and drawings inside scikit-image's package folder (none is fetched): a cat
# (chelsea) and a horse are there, no dog.
SKIMAGE_FILES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
    "chessboard_RGB.png", "clock_motion.png", "coffee.png", "coins.png", "color.png",
    "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
DRAWN_SIDE = 256
PAGE_TEXT = (
    "A variational autoencoder learns to draw what it was shown and nothing else: shown a "
    "page of text, it has no words for it, only dogs."
)


@dataclass(frozen=True)
class Picture:
    name: str  # e.g. "skimage/coffee", "sklearn/china.jpg", "drawn/noise"
    data: bytes  # an image file's bytes (PNG or JPEG)


def non_dog_pictures(seed: int = 0) -> list[Picture]:
    """At least 20 distinct pictures of things other than dogs, made or read offline; the drawn
    ones (noise) come from `seed`."""
    pictures = skimage_pictures() + sklearn_pictures() + drawn_pictures(seed)
    log.info("%d non-dog pictures", len(pictures))
    return pictures


def skimage_pictures() -> list[Picture]:
    try:
        folder = resources.files("skimage.data")
    except ModuleNotFoundError as exc:
        raise DogvaeError(
            "the non-dog pictures need scikit-image (pip install 'dogvae[dev]')"
        ) from exc
    return [
        Picture(f"skimage/{name.rsplit('.', 1)[0]}", (folder / name).read_bytes())
        for name in SKIMAGE_FILES
    ]


def sklearn_pictures() -> list[Picture]:
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    return [
        Picture(f"sklearn/{name.rsplit('/', 1)[-1]}", _png(pixels))
        for name, pixels in zip(images.filenames, images.images, strict=True)
    ]


def drawn_pictures(seed: int = 0) -> list[Picture]:
    rng = np.random.default_rng(seed)
    side = DRAWN_SIDE
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    drawn = {
        "text": _text_page(),
        "diagram": _diagram(),
        "shapes": _shapes(),
        "noise": rng.integers(0, 256, (side, side, 3)),
        "smooth_noise": _smooth_noise(rng, side),
        "gradient": np.stack([x, y, 1 - x], -1) * 255,
        "radial": np.repeat(np.hypot(x - 0.5, y - 0.5)[..., None] * 360, 3, -1),
        "stripes": np.repeat(((x * 12).astype(int) % 2 * 255)[..., None], 3, -1),
        "grey": np.full((side, side, 3), 128),
        "sine_plaid": (np.sin(20 * x)[..., None] * np.cos(14 * y)[..., None] + 1) * [127, 60, 127],
    }
    return [Picture(f"drawn/{name}", _png(pixels)) for name, pixels in drawn.items()]


def prepare(model: BaseVAE, pictures: list[Picture]) -> np.ndarray:
    """(N, S, S, 3) uint8: the pictures cropped and sized like the run's training images."""
    size, crop = model.config.image_size, model.crop
    return np.stack([load_photo(p.data, size, crop, name=p.name) for p in pictures])


def encode_pictures(model: BaseVAE, pictures: list[Picture]) -> Encoded:
    return encode_images(model, prepare(model, pictures))


def flag_rates(scorer: NoveltyScorer, encoded: Encoded) -> dict[str, float]:
    """Per score, the share of the pictures past that score's own line (its validation 99th
    percentile), and under "verdict" the share called unlike any training dog."""
    raw = scorer.raw_scores(encoded)
    rates = {name: float(np.mean(raw[name] > scorer.scales[name])) for name in SCORES}
    rates["verdict"] = float(np.mean(scorer.novelty(raw) > scorer.threshold))
    return rates


# --- drawing -------------------------------------------------------------------------------


def _png(pixels) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(_uint8(pixels))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _uint8(pixels) -> np.ndarray:
    return np.clip(np.asarray(pixels, np.float64), 0, 255).astype(np.uint8)


def _font(size: int):
    return ImageFont.load_default(size)


def _text_page() -> Image.Image:
    image = Image.new("RGB", (DRAWN_SIDE, DRAWN_SIDE), "white")
    draw = ImageDraw.Draw(image)
    for line, text in enumerate(textwrap.wrap(PAGE_TEXT, 24)):
        draw.text((10, 8 + 24 * line), text, fill="black", font=_font(18))
    return image


def _diagram() -> Image.Image:
    image = Image.new("RGB", (DRAWN_SIDE, DRAWN_SIDE), "white")
    draw = ImageDraw.Draw(image)
    boxes = [((20, 100, 80, 156), "x"), ((100, 90, 156, 166), "z"), ((176, 100, 236, 156), "x'")]
    for (left, top, right, bottom), label in boxes:
        draw.rectangle((left, top, right, bottom), outline="navy", width=3, fill="lightblue")
        draw.text((left + 20, top + 16), label, fill="black", font=_font(24))
    for start, end in ((80, 100), (156, 176)):
        draw.line((start, 128, end, 128), fill="black", width=3)
        draw.polygon([(end, 128), (end - 8, 122), (end - 8, 134)], fill="black")
    draw.text((60, 200), "encoder   decoder", fill="black", font=_font(16))
    return image


def _shapes() -> Image.Image:
    image = Image.new("RGB", (DRAWN_SIDE, DRAWN_SIDE), (240, 230, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 120, 120), fill="red")
    draw.rectangle((140, 30, 230, 110), fill="blue")
    draw.polygon([(60, 230), (128, 140), (200, 230)], fill="green")
    return image


def _smooth_noise(rng: np.random.Generator, side: int) -> np.ndarray:
    """Coarse random colours blown up smoothly: blotches, like camouflage."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    return np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC))
