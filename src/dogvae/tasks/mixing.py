"""Mix two dogs or two breeds: walk the latent space between posterior means and decode.

An end point is a photo (its posterior mean, never a sampled z, so a mix is deterministic) or
a breed: by default its medoid, the typical training dog nearest the breed's centroid (a real
dog decodes sharper than the average of many); with `breed_as="centroid"` the centroid
itself. `lerp` walks the straight line; `slerp` the great circle, keeping the code's length in
the range the decoder was trained on.

A conditional model (cvae, ssvae) also walks the breed weights, linearly, from one end's breed
to the other's. A photo end is its own breed (cvae: "unknown", ssvae: the classifier's
likeliest). With `breed_as="centroid"` a breed end is its embedding alone and takes the other
end's z (the prior mean 0 between two breeds), so photo -> breed restyles that dog.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dogvae.errors import DogvaeError
from dogvae.latents import Encoded, LatentStore, encode_images
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


def needs_store(model: BaseVAE, names: list[str], breed_as: str) -> bool:
    """Whether mixing these ends needs the latent store: a breed end as a typical dog
    (medoid) or a plain VAE's centroid does; a conditional model's breed embedding does not."""
    return bool(breed_ends(model, names)) and (not model.conditional or breed_as == "medoid")


def encoded_breed_weights(model: BaseVAE, encoded: Encoded) -> np.ndarray | None:
    """(N, n_breeds + 1) the breed weights a conditional model encoded each photo with
    (ssvae: its classifier's likeliest; cvae: unknown); None for a plain VAE."""
    if not model.conditional:
        return None
    scores = encoded.class_log_probs
    breeds = np.argmax(scores, 1) if scores.shape[1] else [None] * len(scores)
    return np.stack([breed_weights(model, None if b is None else int(b)) for b in breeds])


def photo_end(model: BaseVAE, pixels: np.ndarray, encoded: Encoded, label: str) -> EndPoint:
    """A photo (S, S, 3) encoded by `encode_images`: its posterior mean and, for a conditional
    model, the breed weights it was encoded with."""
    weights = encoded_breed_weights(model, encoded)
    return EndPoint(encoded.mu[0], label, pixels, None if weights is None else weights[0])


def breed_end(knowledge, model: BaseVAE, name: str, breed_as: str = "medoid") -> EndPoint:
    """A breed as a mix's end. `medoid` (the default): the breed's typical training dog, its
    code and, for a conditional model, that breed's weights. `centroid`: a plain VAE's breed
    centroid; a conditional model's breed embedding alone, drawn with the other end's code
    (so photo -> breed restyles the dog). `knowledge` may be None for the latter."""
    if breed_as not in BREED_POINTS:
        raise DogvaeError(f"a breed mixes as {' or '.join(BREED_POINTS)}, not {breed_as!r}")
    if model.conditional and breed_as == "centroid":
        index = find_breed(name, model.breeds)
        return EndPoint(None, model.breeds[index], breed=breed_weights(model, index))
    if knowledge is None:
        raise DogvaeError(f"mixing the breed {name!r} as its {breed_as} needs the latent store")
    index = find_breed(name, knowledge.breeds)
    label = knowledge.breeds[index]
    if breed_as == "centroid":
        return EndPoint(knowledge.centroids[index], label)
    row = knowledge.medoid_rows[index]
    if row < 0:
        raise DogvaeError(f"breed {label!r} has no training images in the store")
    weights = knowledge.breed_weights({index: 1.0}) if model.conditional else None
    return EndPoint(knowledge.store.mu[row], label, breed=weights)


def resolve_end(model: BaseVAE, knowledge, text: str, breed_as: str = "medoid") -> EndPoint:
    """A photo path or a breed name -> a mix's end."""
    breeds = knowledge.breeds if knowledge is not None else model.breeds
    if is_photo_argument(text, breeds):
        pixels = read_photos(model, [text])
        return photo_end(model, pixels[0], encode_images(model, pixels), Path(text).stem)
    return breed_end(knowledge, model, text, breed_as)


def breed_weights(model: BaseVAE, breed: int | None) -> np.ndarray:
    """A conditional model's weights for one breed (n_breeds + 1; None: the last, "unknown")."""
    weights = np.zeros(len(model.breeds) + 1, np.float32)
    weights[-1 if breed is None else breed] = 1.0
    return weights


def shared_codes(codes: list[np.ndarray | None], latent_dim: int) -> list[np.ndarray]:
    """A conditional mix's codes: a breed end without a code of its own takes the first photo
    end's code, the dog being restyled, else z = 0 (the prior's mean)."""
    photo = next((c for c in codes if c is not None), np.zeros(latent_dim, np.float32))
    return [photo if c is None else c for c in codes]


def mix_frames(model: BaseVAE, a: EndPoint, b: EndPoint, ts, method: str = "lerp") -> torch.Tensor:
    """(T, 3, S, S) the mixes at each t (0 = a, 1 = b): codes walked by `method`, a
    conditional model's breed weights always by lerp (they are shares, not directions)."""
    ts = np.asarray(ts, np.float64)
    code_a, code_b = shared_codes([a.code, b.code], model.config.latent_dim)
    breeds = None if a.breed is None else interpolate(a.breed, b.breed, ts, "lerp")
    return decode_codes(model, interpolate(code_a, code_b, ts, method), breeds)


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
    breed_as: str = "medoid",
    knowledge=None,
) -> dict:
    """Write the strip from a to b (the photos themselves at its ends), the single mix at `t`,
    or, with `grid` = (c, d), a steps x steps square mixing a, b (top) and c, d (bottom)."""
    from dogvae.tasks.knowledge import BreedKnowledge

    check_mix_options(steps, method, t, grid)
    if knowledge is None and store is not None:
        knowledge = BreedKnowledge(model, store)
    names = [a, b, *(grid or ())]
    ends = [resolve_end(model, knowledge, text, breed_as) for text in names]
    scale = max(1, 96 // model.config.image_size)
    if grid is not None:
        if model.conditional:
            codes = shared_codes([e.code for e in ends], model.config.latent_dim)
            ends = [replace(e, code=c) for e, c in zip(ends, codes, strict=True)]
        codes, breeds = _walk(ends, method, lambda v, m: mix_grid(np.stack(v), steps, m))
        decoded = decode_codes(model, codes, breeds)
        picture = image_grid(decoded, ncols=steps, scale=scale)
    elif t is not None:
        decoded = mix_frames(model, ends[0], ends[1], [t], method)
        picture = image_grid(decoded, ncols=1, scale=2 * scale)
    else:
        decoded = mix_frames(model, ends[0], ends[1], np.linspace(0, 1, steps), method)
        picture = strip_picture(model, ends[0], ends[1], decoded)
    embedding = model.conditional and breed_as == "centroid"
    breed_kind = "breed embedding" if embedding else f"breed {breed_as}"
    return {
        "ends": [e.label for e in ends],
        "kinds": ["photo" if e.pixels is not None else breed_kind for e in ends],
        "method": method,
        "mode": "grid" if grid is not None else ("single" if t is not None else "strip"),
        "t": t,
        "steps": steps,
        "n_images": len(decoded),
        "picture": str(save_png(picture, out)),
    }


def _walk(ends: list[EndPoint], method: str, between) -> tuple[np.ndarray, np.ndarray | None]:
    """`between(vectors, method)` for the ends' codes, and for a conditional model for their
    breed weights too, always by lerp: they are shares of breeds, not directions."""
    codes = between([e.code for e in ends], method)
    if ends[0].breed is None:
        return codes, None
    return codes, between([e.breed for e in ends], "lerp")


def strip_picture(model: BaseVAE, a: EndPoint, b: EndPoint, decoded: torch.Tensor):
    """The captioned strip: decoded steps between the two ends, each photo end shown as
    itself beside them."""
    tiles = [decoded]
    captions = [a.label] + [""] * (len(decoded) - 2) + [b.label]
    if a.pixels is not None:
        tiles.insert(0, as_tensor(model, a.pixels[None]).cpu())
        captions.insert(0, "photo")
    if b.pixels is not None:
        tiles.append(as_tensor(model, b.pixels[None]).cpu())
        captions.append("photo")
    images = torch.cat(tiles)
    scale = max(1, 96 // model.config.image_size)
    return image_grid(images, ncols=len(images), captions=captions, scale=scale)
