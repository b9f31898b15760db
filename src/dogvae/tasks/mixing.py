"""Mix two dogs or two breeds: walk the latent space between posterior means and decode.

An end point is a photo (its posterior mean, never a sampled z, so a mix is deterministic) or
a breed (its centroid, or with `breed_as="medoid"` the breed's training dog closest to it,
which decodes sharper than the average). `lerp` walks the straight line; `slerp` walks the great
circle, keeping the code's length in the range the decoder was trained on.

A conditional model (cvae, ssvae) mixes breeds in its breed embedding instead: every frame keeps
the same z (a photo end's code, else the prior mean 0) and decodes it with the breed weights
walked linearly from one end to the other. A photo end is its own breed (cvae: "unknown", ssvae:
the classifier's likeliest), so photo -> breed restyles that dog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dogvae.errors import DogvaeError
from dogvae.latents import LatentStore, encode_images
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png
from dogvae.tasks.inputs import as_tensor, find_breed, is_photo_argument, read_photos

METHODS = ("lerp", "slerp")
BREED_POINTS = ("centroid", "medoid")


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points a + t (b - a) for each t: (T, D)."""
    t = np.asarray(t, np.float64)[:, None]
    return (1 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985; White 2016 for generative models), with the
    norm interpolated linearly; falls back to lerp when a and b are (anti)parallel."""
    t = np.asarray(t, np.float64)[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-8 or nb < 1e-8:
        return lerp(a, b, t[:, 0])
    cos = np.clip(np.dot(a / na, b / nb), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t[:, 0])
    direction = (np.sin((1 - t) * omega) * a / na + np.sin(t * omega) * b / nb) / np.sin(omega)
    return direction * ((1 - t) * na + t * nb)


def interpolate(a, b, t, method: str = "lerp") -> np.ndarray:
    if method not in METHODS:
        raise DogvaeError(f"unknown mixing method {method!r}; choose {' or '.join(METHODS)}")
    return (slerp if method == "slerp" else lerp)(np.asarray(a), np.asarray(b), np.asarray(t))


def mix_grid(corners: np.ndarray, steps: int, method: str = "lerp") -> np.ndarray:
    """(steps*steps, D) codes mixing four corners (top-left, top-right, bottom-left,
    bottom-right): each row interpolates its left and right edges, bilinearly for lerp."""
    t = np.linspace(0.0, 1.0, steps)
    left = interpolate(corners[0], corners[2], t, method)
    right = interpolate(corners[1], corners[3], t, method)
    return np.vstack([interpolate(lo, hi, t, method) for lo, hi in zip(left, right, strict=True)])


@dataclass
class EndPoint:
    """A mix's end: its latent code, a caption, and the photo itself when it is one; for a
    conditional model its breed weights (n_breeds + 1, the last is "unknown") and no code when
    it is a breed."""

    code: np.ndarray | None
    label: str
    pixels: np.ndarray | None = None
    breed: np.ndarray | None = None


def breed_ends(model: BaseVAE, names: list[str]) -> list[str]:
    """The end points that name breeds (checked against the model's breeds; an unknown name
    is an error), so a caller opens the latent store only when it is needed."""
    breeds = [text for text in names if not is_photo_argument(text, model.breeds)]
    for text in breeds:
        find_breed(text, model.breeds)
    return breeds


def resolve_end(
    model: BaseVAE, store: LatentStore | None, text: str, breed_as: str = "centroid"
) -> EndPoint:
    """A photo path or a breed name -> its latent code."""
    if model.conditional:
        return conditional_end(model, text)
    breeds = store.breeds if store is not None else model.breeds
    if is_photo_argument(text, breeds):
        pixels = read_photos(model, [text])
        return EndPoint(encode_images(model, pixels).mu[0], Path(text).stem, pixels[0])
    breed = find_breed(text, breeds)
    if store is None:
        raise DogvaeError(f"mixing the breed {text!r} needs the run's latent store")
    return EndPoint(breed_point(store, breed, breed_as), store.breeds[breed])


def breed_weights(model: BaseVAE, breed: int | None) -> np.ndarray:
    """A conditional model's weights for one breed (n_breeds + 1; None: the last, "unknown")."""
    weights = np.zeros(len(model.breeds) + 1, np.float32)
    weights[-1 if breed is None else breed] = 1.0
    return weights


@torch.no_grad()
def photo_breed_weights(model: BaseVAE, pixels: np.ndarray) -> np.ndarray:
    """The breed weights a conditional model encodes a photo with, as `encode_images` does:
    its classifier's breed (ssvae), else "unknown" (cvae, no network call)."""
    breed = model.resolve_breed(as_tensor(model, pixels[None]), None)
    return breed_weights(model, None if breed is None else int(breed[0]))


@torch.no_grad()
def conditional_end(model: BaseVAE, text: str) -> EndPoint:
    """A photo -> its code and its own breed; a breed -> its weights (a code comes later)."""
    if not is_photo_argument(text, model.breeds):
        return EndPoint(None, text, breed=breed_weights(model, find_breed(text, model.breeds)))
    pixels = read_photos(model, [text])
    weights = photo_breed_weights(model, pixels[0])
    x, condition = as_tensor(model, pixels), torch.from_numpy(weights[None])
    code = model.encode(x, condition.to(x.device))[0][0].float().cpu().numpy()
    return EndPoint(code, Path(text).stem, pixels[0], weights)


def shared_codes(codes: list[np.ndarray | None], latent_dim: int) -> list[np.ndarray]:
    """A conditional mix's codes: a breed end (None) takes the first photo end's code, the dog
    being restyled, else z = 0 (the prior's mean)."""
    photo = next((c for c in codes if c is not None), np.zeros(latent_dim, np.float32))
    return [photo if c is None else c for c in codes]


def breed_point(store: LatentStore, breed: int, breed_as: str = "centroid") -> np.ndarray:
    """A breed's centroid, or the code of its training dog nearest to it (`medoid`)."""
    if breed_as not in BREED_POINTS:
        raise DogvaeError(f"a breed mixes as {' or '.join(BREED_POINTS)}, not {breed_as!r}")
    centroid = store.centroids()[breed]
    if breed_as == "centroid":
        return centroid
    rows = store.train_rows[store.labels[store.train_rows] == breed]
    nearest = rows[np.argmin(np.linalg.norm(store.codes[rows] - centroid, axis=1))]
    return store.mu[nearest]


@torch.no_grad()
def decode_codes(model: BaseVAE, codes: np.ndarray, breed=None) -> torch.Tensor:
    """Codes -> images; `breed` (indices, or breed weights as an array) for conditional models."""
    device = next(model.parameters()).device
    if isinstance(breed, np.ndarray):
        breed = torch.from_numpy(breed.astype(np.float32))
    if breed is not None:
        breed = breed.to(device)
    z = torch.from_numpy(np.asarray(codes, np.float32)).to(device)
    return model.decode(z, breed).cpu()


def check_mix_options(steps: int, method: str, t: float | None, grid) -> None:
    """Refuse option combinations `mix` cannot honour (before any encoding is done)."""
    if steps < 2:
        raise DogvaeError("--steps must be at least 2 (the two ends)")
    if method not in METHODS:
        raise DogvaeError(f"unknown mixing method {method!r}; choose {' or '.join(METHODS)}")
    if t is not None and not 0.0 <= t <= 1.0:
        raise DogvaeError(f"--t must be between 0 and 1, not {t}")
    if t is not None and grid is not None:
        raise DogvaeError("--t writes one mix and --grid a square of them: choose one")


def mix(
    model: BaseVAE,
    store: LatentStore | None,
    a: str,
    b: str,
    out: str | Path,
    *,
    steps: int = 8,
    method: str = "lerp",
    t: float | None = None,
    grid: tuple[str, str] | None = None,
    breed_as: str = "centroid",
) -> dict:
    """Write the strip from a to b (the photos themselves at its ends), the single mix at `t`,
    or, with `grid` = (c, d), a steps x steps square mixing a, b (top) and c, d (bottom)."""
    check_mix_options(steps, method, t, grid)
    names = [a, b, *(grid or ())]
    ends = [resolve_end(model, store, text, breed_as) for text in names]
    if model.conditional:
        codes = shared_codes([e.code for e in ends], model.config.latent_dim)
        for end, code in zip(ends, codes, strict=True):
            end.code = code
    scale = max(1, 96 // model.config.image_size)
    if grid is not None:
        codes, breeds = _walk(ends, method, lambda v, m: mix_grid(np.stack(v), steps, m))
        picture = image_grid(decode_codes(model, codes, breeds), ncols=steps, scale=scale)
    else:
        ts = [t] if t is not None else np.linspace(0, 1, steps)
        codes, breeds = _walk(ends, method, lambda v, m: interpolate(v[0], v[1], ts, m))
        decoded = decode_codes(model, codes, breeds)
        if t is not None:
            picture = image_grid(decoded, ncols=1, scale=2 * scale)
        else:
            picture = _strip_picture(model, ends, decoded, scale)
    breed_kind = "breed embedding" if model.conditional else f"breed {breed_as}"
    return {
        "ends": [e.label for e in ends],
        "kinds": ["photo" if e.pixels is not None else breed_kind for e in ends],
        "method": method,
        "mode": "grid" if grid is not None else ("single" if t is not None else "strip"),
        "t": t,
        "steps": steps,
        "n_images": len(codes),
        "picture": str(save_png(picture, out)),
    }


def _walk(ends: list[EndPoint], method: str, between) -> tuple[np.ndarray, np.ndarray | None]:
    """`between(vectors, method)` for the ends' codes, and for a conditional model for their
    breed weights too, always by lerp: they are shares of breeds, not directions."""
    codes = between([e.code for e in ends], method)
    if ends[0].breed is None:
        return codes, None
    return codes, between([e.breed for e in ends], "lerp")


def _strip_picture(model, ends: list[EndPoint], decoded: torch.Tensor, scale: int):
    """Decoded steps between the two ends, each photo end shown as itself beside them."""
    tiles = [decoded]
    captions = [ends[0].label] + [""] * (len(decoded) - 2) + [ends[1].label]
    if ends[0].pixels is not None:
        tiles.insert(0, as_tensor(model, ends[0].pixels[None]).cpu())
        captions.insert(0, "photo")
    if ends[1].pixels is not None:
        tiles.append(as_tensor(model, ends[1].pixels[None]).cpu())
        captions.append("photo")
    images = torch.cat(tiles)
    return image_grid(images, ncols=len(images), captions=captions, scale=scale)
