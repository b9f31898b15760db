"""A run loaded once for the web page: the model, its latent store, the breed probe, the novelty
scorer, a gallery of validation dogs, and the photos people upload, each encoded once.

Nothing here knows about HTTP; `dogvae.app.server` is the thin shell that maps requests to these
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

from dogvae import checkpoint
from dogvae.data.decode import MAX_PIXELS, load_photo
from dogvae.errors import DogvaeError
from dogvae.latents import (
    Encoded,
    LatentStore,
    encode_dataset,
    encode_images,
    load_dataset,
    open_store,
)
from dogvae.metrics import psnr_per_image
from dogvae.model import count_parameters
from dogvae.pictures import image_grid, to_uint8
from dogvae.tasks.ancestry import explain
from dogvae.tasks.identify import breed_probe
from dogvae.tasks.inputs import as_tensor, find_breed, run_crop
from dogvae.tasks.mixing import (
    BREED_POINTS,
    METHODS,
    breed_point,
    breed_weights,
    decode_codes,
    interpolate,
    photo_breed_weights,
    shared_codes,
)
from dogvae.tasks.novelty import NoveltyScorer
from dogvae.tasks.sample import draw_dogs

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
    """One end of a mix: a latent code with a caption, and what to show for it. For a
    conditional model also its breed weights (see `tasks.mixing.breed_weights`); a breed end
    then has no code of its own and takes the other end's (`tasks.mixing.shared_codes`)."""

    ref: str
    label: str
    kind: str  # photo, gallery or breed
    code: np.ndarray | None
    pixels: np.ndarray | None  # the photo itself; None for a breed
    breed: np.ndarray | None = None


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
    """A trained run ready to answer the page's questions; build it once per process."""

    def __init__(
        self,
        run: str | Path,
        data: str | Path | None = None,
        *,
        progress: bool = False,
        photo_cache_size: int = PHOTO_CACHE_SIZE,
        decode_budget_pixels: int = DECODE_BUDGET_PIXELS,
    ):
        self.run = Path(run)
        self.decode_budget = PixelBudget(decode_budget_pixels)
        self.model = checkpoint.load(self.run)
        self.image_size = self.model.config.image_size
        self.crop = run_crop(self.model)
        self._model_lock = threading.Lock()
        self._photos: OrderedDict[str, Photo] = OrderedDict()
        self._photos_lock = threading.Lock()
        self._photo_cache_size = photo_cache_size
        self._breed_points: dict[tuple[int, str], np.ndarray] = {}
        self.metrics = _read_metrics(self.run)
        self.store, self.store_problem = self._open_store(data, progress)
        self.breeds = self.store.breeds if self.store is not None else list(self.model.breeds)
        self.gallery: dict[str, GalleryDog] = {}
        if self.store is not None:
            self.probe = _probe(self.store, self.run)
            self.scorer = NoveltyScorer.fit(self.store)
            self.centroids = self.store.centroids()
            self.gallery = self._pick_gallery()

    # --- start-up ------------------------------------------------------------------------

    def _open_store(self, data, progress) -> tuple[LatentStore | None, str | None]:
        """The run's latent store (built now if missing), or None and why not."""
        try:
            try:
                return open_store(self.model, self.run, data, progress=progress), None
            except OSError:  # a read-only run folder: encode, but keep the store in memory
                data = data or self.model.info.get("train", {}).get("data")
                return encode_dataset(self.model, data, progress=progress), None
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
            pixels = self._decode(store.mu[rows])
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
        if not ids or not self.store.data or not Path(self.store.data).is_dir():
            return None
        try:
            images = load_dataset(self.model, self.store.data, progress=False)
        except (DogvaeError, OSError):
            return None
        index = {str(image_id): i for i, image_id in enumerate(images.ids)}
        if not all(i in index for i in ids):
            return None
        return np.stack([np.asarray(images.images[index[i]]) for i in ids])

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

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

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
        x = as_tensor(self.model, photo.pixels[None])
        with self._inference():
            recon = self.model.decode(torch.from_numpy(photo.mu[None]).to(self._device))
            psnr = float(psnr_per_image(recon, x)[0])
        return {
            "photo": self.describe(photo),
            "reconstruction": data_url(to_uint8(recon)[0]),
            "psnr": psnr,
        }

    def identify(self, photo: Photo, top: int = TOP_BREEDS) -> dict:
        """The breed, top breeds with calibrated probabilities, and the novelty verdict, as
        `dogvae.tasks.identify` gives them for a file."""
        store = self.require_store()
        probs = self.probe.predict_proba(photo.code[None])[0]
        order = np.argsort(-probs, kind="stable")[: max(1, top)]
        novelty = self._novelty(photo)
        return {
            "photo": self.describe(photo),
            "breed": None if novelty["unlike_training_dogs"] else store.breeds[order[0]],
            "top": [{"breed": store.breeds[b], "probability": float(probs[b])} for b in order],
            "novelty": novelty,
            "probe": finite(self.probe.report),
        }

    def ancestry(self, photo: Photo, top: int = 3) -> dict:
        """Parent breeds with shares (see `dogvae.tasks.ancestry`), each parent's centroid and
        the mixture decoded."""
        store = self.require_store()
        found = explain(photo.code, self.centroids, self.scorer.whitener)
        pictures = self._decode(np.vstack([found.mixture[None], self.centroids[found.parents]]))
        return {
            "photo": self.describe(photo),
            "parents": [
                {"breed": store.breeds[b], "share": s, "image": data_url(pictures[i + 1])}
                for i, (b, s) in enumerate(zip(found.parents, found.shares, strict=True))
            ],
            "mixture": data_url(pictures[0]),
            "ranking": [store.breeds[b] for b in found.ranking[:top]],
            "residual": found.residual,
            "novelty": self._novelty(photo),
        }

    def _novelty(self, photo: Photo) -> dict:
        return finite(self.scorer.score(photo.encoded)[0])

    def describe(self, photo: Photo) -> dict:
        return {"ref": photo.ref, "name": photo.name, "image": data_url(photo.pixels)}

    # --- mixing ----------------------------------------------------------------------------

    def mix_end(self, ref: str, breed_as: str = "centroid") -> MixEnd:
        """`photo:...`, `gallery:...`, or a breed (`breed:NAME` or the bare name)."""
        if ref.startswith(("photo:", "gallery:")):
            photo = self.photo(ref)
            kind = ref.split(":", 1)[0]
            weights = None
            if self.model.conditional:  # photo.mu was encoded with these weights' breed
                with self._inference():
                    weights = photo_breed_weights(self.model, photo.pixels)
            return MixEnd(ref, Path(photo.name).stem, kind, photo.mu, photo.pixels, weights)
        if self.model.conditional:  # a breed is its embedding, drawn with the other end's z
            index = find_breed(ref.removeprefix("breed:"), self.model.breeds)
            breed, weights = self.model.breeds[index], breed_weights(self.model, index)
            return MixEnd(f"breed:{breed}", breed, "breed", None, None, weights)
        if breed_as not in BREED_POINTS:
            raise DogvaeError(f"a breed mixes as {' or '.join(BREED_POINTS)}, not {breed_as!r}")
        name = ref.removeprefix("breed:")
        index = find_breed(name, self.breeds)
        store = self.require_store()
        key = (index, breed_as)
        if key not in self._breed_points:  # a race computes the same point twice, harmlessly
            self._breed_points[key] = breed_point(store, index, breed_as)
        breed = store.breeds[index]
        return MixEnd(f"breed:{breed}", breed, "breed", self._breed_points[key], None)

    def mix_frames(self, a: MixEnd, b: MixEnd, ts, method: str = "lerp") -> np.ndarray:
        """(T, S, S, 3) decoded mixes at each t (0 = a, 1 = b)."""
        if method not in METHODS:
            raise DogvaeError(f"unknown mixing method {method!r}; choose {' or '.join(METHODS)}")
        ts = np.asarray(ts, np.float64)
        code_a, code_b = shared_codes([a.code, b.code], self.latent_dim)
        breeds = None if a.breed is None else interpolate(a.breed, b.breed, ts, "lerp")
        return self._decode(interpolate(code_a, code_b, ts, method), breeds)

    def mix_strip(self, a: MixEnd, b: MixEnd, steps: int, method: str = "lerp") -> Image.Image:
        """The strip as one captioned PNG, photo ends shown as themselves beside it."""
        frames = self.mix_frames(a, b, np.linspace(0.0, 1.0, steps), method)
        tiles, captions = [frames], [a.label] + [""] * (steps - 2) + [b.label]
        if a.pixels is not None:
            tiles.insert(0, a.pixels[None])
            captions.insert(0, "photo")
        if b.pixels is not None:
            tiles.append(b.pixels[None])
            captions.append("photo")
        images = np.concatenate(tiles)
        scale = max(1, 96 // self.image_size)
        return image_grid(images, ncols=len(images), captions=captions, scale=scale)

    # --- sampling --------------------------------------------------------------------------

    def sample(
        self, n: int = 8, temperature: float = 1.0, seed: int | None = None, breed=None
    ) -> dict:
        """New dogs from the prior, or around a breed; the same seed draws the same dogs as
        `dogvae sample --seed`."""
        seed = secrets.randbelow(2**31) if seed is None else seed
        breed = breed or None
        store = self.require_store() if breed and not self.model.conditional else None
        with self._inference():
            images, source = draw_dogs(
                self.model, n, breed, store, temperature, np.random.default_rng(seed)
            )
        images = to_uint8(images)
        return {
            "source": source,
            "n": n,
            "temperature": temperature,
            "seed": seed,
            "images": [data_url(p) for p in images],
        }

    # --- what the page shows about the run --------------------------------------------------

    def card(self, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> dict:
        info = self.model.info
        store = self.store
        return finite(
            {
                "run": str(self.run),
                "preset": info.get("preset"),
                "image_size": self.image_size,
                "latent_dim": self.latent_dim,
                "likelihood": self.model.config.likelihood,
                "parameters": count_parameters(self.model),
                "crop": self.crop,
                "breeds": self.breeds,
                "data": info.get("data", {}),
                "epoch": info.get("epoch"),
                "metrics": self.metrics,
                "versions": info.get("versions", {}),
                "weights_sha256": info.get("weights", {}).get("sha256"),
                "store": {
                    "available": store is not None,
                    "message": self.store_problem,
                    **(store.summary() if store is not None else {}),
                },
                "probe": self.probe.report if store is not None else None,
                "limits": {
                    "max_upload_bytes": max_upload_bytes,
                    "max_pixels": MAX_PIXELS,
                    "max_samples": MAX_SAMPLES,
                    "max_steps": MAX_STEPS,
                },
            }
        )

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


def _probe(store: LatentStore, run: Path):
    try:
        return breed_probe(store, run)
    except OSError:  # a read-only run folder: fit it, keep it in memory
        return breed_probe(store, None)


def _read_metrics(run: Path) -> dict | None:
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
