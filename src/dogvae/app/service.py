"""A run loaded once for the web page: the model, what its run knows about breeds
(`dogvae.tasks.knowledge.BreedKnowledge`, all of it computed at start-up), a typical photo of
each breed, a gallery of validation dogs, and the photos people upload, each encoded once.

Every answer is `dogvae.tasks`' own (`answer_identify`, `answer_ancestry`,
`reconstruct_pixels`, `tasks.mixing`, `draw_dogs`), called with the photo encoded at upload:
this module adds pictures as data URLs and computes nothing of its own. Nothing here knows
about HTTP; `dogvae.app.server` is the thin shell that maps requests to these
methods and their errors to JSON. Every model call holds one lock and runs under
`torch.inference_mode()` (thread-local, so it is entered in the worker thread itself): requests
arrive on a thread pool, and PyTorch already spreads one call over the cores, so serialising
model calls costs nothing and rules out one request seeing another's state. The numpy work
around them (probe, novelty, ancestry fits) reads only arrays fixed at start-up.

A photo is known afterwards by its reference `photo:<sha256 of its bytes, 16 hex>`, so the page
uploads a dog once and then asks for its breed, ancestry and mixes by reference; the mix slider
decodes one latent per frame and never encodes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dogvae.data.decode import MAX_PIXELS, load_photo
from dogvae.errors import DogvaeError
from dogvae.latents import (
    Encoded,
    LatentStore,
    encode_images,
    open_store,
)
from dogvae.model import count_parameters
from dogvae.pictures import to_uint8
from dogvae.run import Run
from dogvae.tasks.ancestry import answer_ancestry, mixture_picture
from dogvae.tasks.identify import answer_identify, breed_pictures
from dogvae.tasks.inputs import find_breed
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.mixing import (
    METHODS,
    EndPoint,
    breed_end,
    decode_codes,
    encoded_breed_weights,
    mix_frames,
    needs_store,
    photo_end,
    strip_picture,
)
from dogvae.tasks.reconstruct import reconstruct_encoded
from dogvae.tasks.sample import DEFAULT_SOURCE, draw_dogs, needs_mixture, sampler_used

MAX_UPLOAD_BYTES = 20_000_000  # 20 MB: a phone photo is 2-8 MB
# Pixels of uploaded photos decoding at once. Decoding and converting a photo peaks at ~10
# bytes a pixel (RGB) to ~20 (RGBA composited on white): one 40-megapixel photo, or three
# 12-megapixel ones, so ~0.8 GB over the model's memory whatever the number of uploads.
DECODE_BUDGET_PIXELS = MAX_PIXELS
PHOTO_CACHE_SIZE = 256  # uploaded photos kept by reference (a few MB at 128 px)
GALLERY_SIZE = 24
TOP_BREEDS = 5
MAX_SAMPLES = 64
MAX_STEPS = 16


class PixelBudget:
    """At most `capacity` pixels decoding at once; an upload waits for room. A photo larger
    than the whole budget waits until nothing else decodes and then decodes alone."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


def header_pixels(data: bytes) -> int:
    """Width x height from the image header, without decoding; 0 when the header is unreadable
    (decoding then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except Exception:  # Pillow's plugins raise many types on malformed headers
        return 0


class StoreUnavailable(DogvaeError):
    """Breed questions need the latent store, which this server could not open."""


class UnknownPhoto(DogvaeError):
    """A photo reference this server does not hold (never uploaded, or forgotten since)."""


@dataclass(frozen=True)
class Photo:
    """An uploaded photo as the model sees it, encoded once."""

    ref: str
    name: str
    pixels: np.ndarray  # (S, S, 3) uint8, cropped and sized like the training images
    mu: np.ndarray  # (D,) posterior mean
    code: np.ndarray  # (D,) facing-invariant code (what breed questions compare)
    encoded: Encoded  # what the encoder made of it, for the novelty score


@dataclass(frozen=True)
class MixEnd:
    """One end of a mix, as `tasks.mixing` makes it (`point`), with the ref that names it."""

    ref: str
    kind: str  # photo, gallery or breed
    point: EndPoint

    @property
    def label(self) -> str:
        return self.point.label

    @property
    def pixels(self) -> np.ndarray | None:
        return self.point.pixels


@dataclass(frozen=True)
class GalleryDog:
    ref: str
    id: str
    breed: str
    code: np.ndarray
    mu: np.ndarray
    encoded: Encoded
    pixels: np.ndarray  # the photo, or its reconstruction when the data folder is gone
    decoded: bool


def png_bytes(pixels: np.ndarray | Image.Image) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a PNG `data:` URL the page shows without another request."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def finite(value):
    """JSON has no NaN or infinity: such floats become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class ServedRun:
    """A trained run ready to answer the page's questions; build it once per process. The
    model runs on `device` (see `dogvae.run.Run.load_model`); everything else stays in numpy."""

    def __init__(
        self,
        run: str | Path,
        data: str | Path | None = None,
        *,
        progress: bool = False,
        photo_cache_size: int = PHOTO_CACHE_SIZE,
        decode_budget_pixels: int = DECODE_BUDGET_PIXELS,
        device: str | torch.device = "cpu",
    ):
        self.run = Path(run)
        self.decode_budget = PixelBudget(decode_budget_pixels)
        self.facts = Run.load(self.run)  # what the run was trained with and on
        self.model = self.facts.load_model(device)
        self.image_size = self.model.config.image_size
        self.crop = self.model.crop
        self._model_lock = threading.Lock()
        self._photos: OrderedDict[str, Photo] = OrderedDict()
        self._photos_lock = threading.Lock()
        self._photo_cache_size = photo_cache_size
        self.metrics = _read_metrics(self.run)
        self.store, self.store_problem = self._open_store(data, progress)
        self.breeds = self.store.breeds if self.store is not None else list(self.model.breeds)
        self.gallery: dict[str, GalleryDog] = {}
        self.knowledge: BreedKnowledge | None = None
        if self.store is not None:
            self.knowledge = BreedKnowledge(self.model, self.store, self.run).warm()
            with self._inference():
                self.breed_photos = breed_pictures(self.knowledge, list(range(len(self.breeds))))
            self.gallery = self._pick_gallery()

    # --- start-up ------------------------------------------------------------------------

    def _open_store(self, data, progress) -> tuple[LatentStore | None, str | None]:
        """The run's latent store (built now if missing), or None and why not."""
        try:  # a read-only run folder keeps the store in memory (`open_store`)
            return open_store(self.model, self.facts, data, progress=progress), None
        except (DogvaeError, OSError) as exc:
            return None, (
                f"breed questions are off: the latent store could not be opened ({exc}). "
                "Start the server with --data pointing at the labelled photos the run was "
                "trained on to turn identify, ancestry, breed mixes and breed samples on."
            )

    def _pick_gallery(self) -> dict[str, GalleryDog]:
        """Up to GALLERY_SIZE validation dogs, taking breeds in turn, with their photos when the
        data folder is still there and their reconstructions otherwise."""
        store = self.store
        pool = store.val_rows if len(store.val_rows) else store.train_rows
        by_breed = [pool[store.labels[pool] == b] for b in range(len(store.breeds))]
        rows = [int(r) for r in _take_turns(by_breed)][:GALLERY_SIZE]
        ids = [str(store.ids[r]) for r in rows]
        pixels = self._dataset_pixels(ids)
        decoded = pixels is None
        if decoded:
            weights = encoded_breed_weights(self.model, store.as_encoded(np.array(rows)))
            pixels = self._decode(store.mu[rows], weights)
        codes = store.codes[rows]
        return {
            f"gallery:{image_id}": GalleryDog(
                ref=f"gallery:{image_id}",
                id=image_id,
                breed=store.breeds[store.labels[r]],
                code=codes[i],
                mu=store.mu[r],
                encoded=store.as_encoded(np.array([r])),
                pixels=pixels[i],
                decoded=decoded,
            )
            for i, (r, image_id) in enumerate(zip(rows, ids, strict=True))
        }

    def _dataset_pixels(self, ids: list[str]) -> np.ndarray | None:
        index = {str(image_id): row for row, image_id in enumerate(self.store.ids)}
        return self.knowledge.photos_of_rows(np.array([index[i] for i in ids], np.int64))

    # --- the model, one call at a time ----------------------------------------------------

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with self._model_lock, torch.inference_mode():
            yield

    def _decode(self, codes: np.ndarray, breeds: np.ndarray | None = None) -> np.ndarray:
        """(N, D) latent codes (and a conditional model's (N, n_breeds + 1) breed weights)
        -> (N, S, S, 3) uint8 pictures."""
        with self._inference():
            return to_uint8(
                decode_codes(self.model, np.reshape(codes, (-1, self.latent_dim)), breeds)
            )

    @property
    def latent_dim(self) -> int:
        return self.model.config.latent_dim

    # --- photos ---------------------------------------------------------------------------

    def add_photo(self, data: bytes, name: str = "photo") -> Photo:
        """Decode an uploaded photo (BadImage says why it cannot be used), encode it once and
        keep it under its reference."""
        ref = "photo:" + hashlib.sha256(data).hexdigest()[:16]
        with self.decode_budget.reserve(header_pixels(data)):
            pixels = load_photo(data, self.image_size, self.crop, name=name)
        with self._inference():
            encoded = encode_images(self.model, pixels[None])
        photo = Photo(
            ref=ref,
            name=name,
            pixels=pixels,
            mu=encoded.mu[0],
            code=encoded.codes[0],
            encoded=encoded,
        )
        with self._photos_lock:
            self._photos[ref] = photo
            self._photos.move_to_end(ref)
            while len(self._photos) > self._photo_cache_size:
                self._photos.popitem(last=False)
        return photo

    def photo(self, ref: str) -> Photo:
        """An uploaded photo or a gallery dog by its reference."""
        with self._photos_lock:
            found = self._photos.get(ref)
            if found is not None:
                self._photos.move_to_end(ref)
                return found
        dog = self.gallery.get(ref)
        if dog is not None:
            return Photo(ref, dog.id, dog.pixels, dog.mu, dog.code, dog.encoded)
        raise UnknownPhoto(
            f"no photo {ref!r} here: upload it again (the server keeps the last "
            f"{self._photo_cache_size} photos, and forgets them all when it restarts)"
        )

    # --- the questions ---------------------------------------------------------------------

    def require_store(self) -> LatentStore:
        if self.store is None:
            raise StoreUnavailable(self.store_problem)
        return self.store

    def reconstruct(self, photo: Photo) -> dict:
        """`tasks.reconstruct.reconstruct_encoded` of the photo encoded at upload, as `dogvae
        reconstruct` gives it."""
        with self._inference():
            recon, psnr = reconstruct_encoded(self.model, photo.pixels[None], photo.encoded)
        return {
            "photo": self.describe(photo),
            "reconstruction": data_url(to_uint8(recon)[0]),
            "psnr": float(psnr[0]),
        }

    def identify(self, photo: Photo, top: int = TOP_BREEDS) -> dict:
        """`tasks.identify.answer_identify` for the photo, each breed with a typical training
        photo of it."""
        answer = answer_identify(self.knowledge, photo.encoded, top)
        for entry in answer["top"]:
            entry["image"] = self._breed_image(entry["breed"])
        return finite({"photo": self.describe(photo), **answer})

    def ancestry(self, photo: Photo, top: int = 3) -> dict:
        """`tasks.ancestry.answer_ancestry` for the photo, each parent breed with a typical
        training photo of it and the mixture drawn."""
        with self._inference():  # synthesis runs the model dozens of times
            answer, found = answer_ancestry(self.knowledge, photo.pixels[None], photo.encoded, top)
            mixture = mixture_picture(self.knowledge, photo.encoded, found)
        for entry in answer["parents"]:
            entry["image"] = self._breed_image(entry["breed"])
        return finite({"photo": self.describe(photo), **answer, "mixture": data_url(mixture)})

    def _breed_image(self, breed: str) -> str:
        return data_url(self.breed_photos[self.breeds.index(breed)])

    def describe(self, photo: Photo) -> dict:
        return {"ref": photo.ref, "name": photo.name, "image": data_url(photo.pixels)}

    # --- mixing ----------------------------------------------------------------------------

    def mix_end(self, ref: str, breed_as: str = "medoid") -> MixEnd:
        """`photo:...`, `gallery:...`, or a breed (`breed:NAME` or the bare name), as
        `tasks.mixing` makes a mix's end."""
        if ref.startswith(("photo:", "gallery:")):
            photo = self.photo(ref)
            point = photo_end(self.model, photo.pixels, photo.encoded, Path(photo.name).stem)
            return MixEnd(ref, ref.split(":", 1)[0], point)
        name = ref.removeprefix("breed:")
        find_breed(name, self.breeds)  # an unknown breed is 404 before the store is asked for
        if self.knowledge is None and needs_store(self.model, [name], breed_as):
            self.require_store()
        point = breed_end(self.knowledge, self.model, name, breed_as)
        return MixEnd(f"breed:{point.label}", "breed", point)

    def mix_frames(self, a: MixEnd, b: MixEnd, ts, method: str = "lerp") -> np.ndarray:
        """(T, S, S, 3) decoded mixes at each t (0 = a, 1 = b)."""
        if method not in METHODS:
            raise DogvaeError(f"unknown mixing method {method!r}; choose {' or '.join(METHODS)}")
        with self._inference():
            return to_uint8(mix_frames(self.model, a.point, b.point, ts, method))

    def mix_strip(self, a: MixEnd, b: MixEnd, steps: int, method: str = "lerp") -> Image.Image:
        """The strip as one captioned PNG, photo ends shown as themselves beside it."""
        with self._inference():
            frames = mix_frames(self.model, a.point, b.point, np.linspace(0.0, 1.0, steps), method)
            return strip_picture(self.model, a.point, b.point, frames)

    # --- sampling --------------------------------------------------------------------------

    def sample(
        self,
        n: int = 8,
        temperature: float = 1.0,
        seed: int | None = None,
        breed=None,
        source: str = DEFAULT_SOURCE,
    ) -> dict:
        """New dogs with codes from the latent mixture ("gmm") or the prior, or around a
        breed; the same seed and source draw the same dogs as `dogvae sample --seed`."""
        seed = secrets.randbelow(2**31) if seed is None else seed
        breed = breed or None
        mixture = None
        if needs_mixture(self.model, breed, source):
            self.require_store()
            mixture = self.knowledge.latent_mixture
        store = self.require_store() if breed and not self.model.conditional else None
        with self._inference():
            images, drawn_from = draw_dogs(
                self.model, n, breed, store, temperature, np.random.default_rng(seed), mixture
            )
        images = to_uint8(images)
        return {
            "source": drawn_from,
            "sampler": sampler_used(self.model, breed, mixture),
            "n": n,
            "temperature": temperature,
            "seed": seed,
            "images": [data_url(p) for p in images],
        }

    # --- what the page shows about the run --------------------------------------------------

    def card(self, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> dict:
        facts, store = self.facts, self.store
        return finite(
            {
                "run": str(self.run),
                "preset": facts.preset,
                "image_size": self.image_size,
                "latent_dim": self.latent_dim,
                "likelihood": self.model.config.likelihood,
                "parameters": count_parameters(self.model),
                "crop": self.crop,
                "breeds": self.breeds,
                "data": facts.data_summary,
                "epoch": facts.epoch,
                "metrics": self.metrics,
                "versions": facts.versions,
                "weights_sha256": facts.weights_sha256,
                "store": {
                    "available": store is not None,
                    "message": self.store_problem,
                    **(store.summary() if store is not None else {}),
                },
                "probe": self.knowledge.probe.report if store is not None else None,
                "identifier": self._identifier(),
                "limits": {
                    "max_upload_bytes": max_upload_bytes,
                    "max_pixels": MAX_PIXELS,
                    "max_samples": MAX_SAMPLES,
                    "max_steps": MAX_STEPS,
                },
            }
        )

    def _identifier(self) -> dict | None:
        """Which part of the model answers breed questions, and how well on validation."""
        if self.knowledge is None:
            return None
        calibration = self.knowledge.calibration
        return {"source": calibration.source, **calibration.report, "note": self.knowledge.note}

    def gallery_items(self) -> dict:
        return {
            "images": [
                {
                    "ref": d.ref,
                    "id": d.id,
                    "breed": d.breed,
                    "image": data_url(d.pixels),
                    "decoded": d.decoded,
                }
                for d in self.gallery.values()
            ],
            "message": self.store_problem,
        }


def _take_turns(groups: list[np.ndarray]):
    """The first of each group, then the second of each, and so on."""
    for i in range(max((len(g) for g in groups), default=0)):
        yield from (g[i] for g in groups if i < len(g))


def _read_metrics(run: Path) -> dict | None:
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
