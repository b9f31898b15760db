"""The synthetic breeds: cartoon dogs whose looks follow per-breed distributions, plus mutts.

A breed (`BreedSpec`) is a distribution over a dog's factors: continuous ones (body length and
height, head size, snout length, ear size, leg length, tail length, overall scale) are
Normal(mean, sd) clipped to `FACTOR_RANGES`; categorical ones (ear shape, tail curl, coat pattern)
put most of their probability on one option; coat colours are Normal around an RGB mean. One dog
(`DogFactors`) is one draw from it (`draw_factors`), drawn side-on by `render_dog` over a random
background with random pose, placement and facing, so that neither background nor position tells
the breed.

`synthesize` writes the Kaggle "Dog Breed Identification" layout. Every image has its own random
generator seeded from (seed, stream, breed, index), so the bytes of an image depend on nothing but
those and the arguments: the same call twice gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dogvae.errors import DogvaeError
from dogvae.progress import progress_bar

SYNTH_VERSION = 1
JPEG_QUALITY = 92
SUPERSAMPLE = 4  # draw at 4x the output size, then box-filter down: anti-aliased edges
MAX_BREEDS = 1000
CANDIDATE_BREEDS = 2048  # the pool farthest-point sampling picks breeds from (>= MAX_BREEDS)
MUTT_SHARE_RANGE = (0.3, 0.7)
PX_PER_UNIT = 0.56  # one body unit as a fraction of the image side, at scale 1

# Continuous factors, in body units: a dog is clipped to (lo, hi); a breed's mean is drawn from
# the middle 80% of that range and its sd is SD_FRACTION of the range.
FACTOR_RANGES = {
    "body_length": (0.75, 1.6),
    "body_height": (0.32, 0.72),
    "head_size": (0.17, 0.34),  # head radius
    "snout_length": (0.03, 0.42),
    "ear_size": (0.14, 0.42),
    "leg_length": (0.14, 0.72),
    "tail_length": (0.15, 0.65),
    "scale": (0.7, 1.1),  # the whole dog's size in the picture
}
SD_FRACTION = 0.05
EAR_SHAPES = ("pointed", "floppy", "rose")
TAIL_CURLS = ("up", "straight", "down")
PATTERNS = ("solid", "spots", "saddle", "mask")
MAIN_OPTION_PROB = 0.9  # a breed's own ear shape, tail and pattern; the rest is spread evenly
COLOUR_SD = 0.07  # sd of the factor scaling one dog's coat brightness from its breed's colour
TINT_SD = 4.0  # per-channel RGB sd on top, so coats vary in shade far more than in hue

COAT_COLOURS = {
    "black": (36, 32, 32),
    "chocolate": (104, 60, 36),
    "rust": (186, 70, 38),
    "amber": (232, 160, 48),
    "cream": (234, 212, 150),
    "white": (247, 247, 244),
    "silver": (150, 156, 166),
    "slate": (68, 88, 126),
}
MIN_MARKING_CONTRAST = 90.0  # RGB distance between a coat and its markings, so they show
# Names say what a breed looks like: its coat colour and a type word from ears and leg length.
TYPE_WORDS = {
    "pointed": ("corgi", "terrier", "shepherd"),
    "floppy": ("basset", "spaniel", "hound"),
    "rose": ("pug", "bulldog", "whippet"),
}
SHORT_LEGS, LONG_LEGS = 0.33, 0.52

# Tail shapes: (start angle, total turn) in degrees; 0 points at the head, 90 straight up.
TAIL_SHAPES = {"up": (115.0, -150.0), "straight": (160.0, 0.0), "down": (212.0, 48.0)}
DARK = (26, 20, 20)  # eyes and nose

_TRAIN_STREAM, _MUTT_STREAM, _BREED_STREAM = 1, 2, 3


class SynthError(DogvaeError, ValueError):
    """An argument `synthesize` cannot use (a ValueError, reported by the CLI as one line)."""


@dataclass(frozen=True)
class BreedSpec:
    """A breed: the distribution its dogs' factors are drawn from (see `draw_factors`)."""

    name: str
    mean: dict[str, float]  # continuous factor -> mean (keys of FACTOR_RANGES)
    sd: dict[str, float]  # continuous factor -> standard deviation
    ear_shape: dict[str, float]  # option -> probability
    tail_curl: dict[str, float]
    pattern: dict[str, float]
    base_colour: tuple[float, float, float]  # mean RGB of the coat
    secondary_colour: tuple[float, float, float]  # mean RGB of spots, saddle or mask
    colour_sd: float = COLOUR_SD  # relative sd of a dog's coat brightness


@dataclass(frozen=True)
class DogFactors:
    """One drawn dog: everything about its looks, nothing about pose or background."""

    body_length: float
    body_height: float
    head_size: float
    snout_length: float
    ear_size: float
    leg_length: float
    tail_length: float
    scale: float
    ear_shape: str
    tail_curl: str
    pattern: str
    base_colour: tuple[int, int, int]
    secondary_colour: tuple[int, int, int]


# ---------------------------------------------------------------------------- breeds


def _mostly(option: str, options: tuple[str, ...]) -> dict[str, float]:
    rest = round((1.0 - MAIN_OPTION_PROB) / (len(options) - 1), 6)
    return {o: MAIN_OPTION_PROB if o == option else rest for o in options}


def _jitter_colour(rgb, rng) -> tuple[float, float, float]:
    """A breed's own shade of a named coat colour: a little lighter or darker, barely tinted."""
    shade = np.asarray(rgb) * rng.normal(1.0, 0.04) + rng.normal(0, 3, 3)
    return tuple(round(float(c), 1) for c in np.clip(shade, 0, 255))


def _coat_name(rgb) -> str:
    """The named coat colour nearest to `rgb`."""
    return min(COAT_COLOURS, key=lambda n: np.linalg.norm(np.subtract(COAT_COLOURS[n], rgb)))


def _random_breed(rng: np.random.Generator) -> BreedSpec:
    """One candidate breed with a descriptive name (made unique later)."""
    mean, sd = {}, {}
    for name, (lo, hi) in FACTOR_RANGES.items():
        mean[name] = round(lo + (hi - lo) * rng.uniform(0.1, 0.9), 4)
        sd[name] = round(SD_FRACTION * (hi - lo), 4)
    colour_names = list(COAT_COLOURS)
    base_name = colour_names[rng.integers(len(colour_names))]
    base = np.array(COAT_COLOURS[base_name], float)
    contrasting = [
        n
        for n in colour_names
        if np.linalg.norm(np.subtract(COAT_COLOURS[n], base)) > MIN_MARKING_CONTRAST
    ]
    second_name = contrasting[rng.integers(len(contrasting))]
    ears = EAR_SHAPES[rng.integers(len(EAR_SHAPES))]
    build = int(mean["leg_length"] > SHORT_LEGS) + int(mean["leg_length"] > LONG_LEGS)
    return BreedSpec(
        name=f"{base_name}_{TYPE_WORDS[ears][build]}",
        mean=mean,
        sd=sd,
        ear_shape=_mostly(ears, EAR_SHAPES),
        tail_curl=_mostly(TAIL_CURLS[rng.integers(len(TAIL_CURLS))], TAIL_CURLS),
        pattern=_mostly(PATTERNS[rng.integers(len(PATTERNS))], PATTERNS),
        base_colour=_jitter_colour(base, rng),
        secondary_colour=_jitter_colour(COAT_COLOURS[second_name], rng),
    )


def _look_features(spec: BreedSpec) -> np.ndarray:
    """Where a breed sits in look-space, weighted by how visible each factor is at 64 px.

    The named coat colour counts on its own, so breeds take distinct colours while there are some.
    """
    markings = 1.0 - spec.pattern["solid"]
    continuous = [(spec.mean[n] - lo) / (hi - lo) for n, (lo, hi) in FACTOR_RANGES.items()]
    coat = _coat_name(spec.base_colour)
    return np.concatenate(
        [
            2.5 * np.array([coat == name for name in COAT_COLOURS], float),
            2.0 * np.asarray(spec.base_colour) / 255,
            1.5 * markings * np.asarray(spec.secondary_colour) / 255,
            1.5 * np.array([spec.pattern[o] for o in PATTERNS]),
            1.0 * np.array([spec.ear_shape[o] for o in EAR_SHAPES]),
            0.6 * np.array([spec.tail_curl[o] for o in TAIL_CURLS]),
            0.6 * np.array(continuous),
        ]
    )


def random_breeds(n: int, rng: np.random.Generator) -> list[BreedSpec]:
    """`n` breeds spread out in look-space, with unique file-safe names like `amber_spaniel`.

    A fixed pool of CANDIDATE_BREEDS random breeds is drawn, then farthest-point sampling picks
    each next breed as the candidate farthest from all picked so far. The pool does not depend on
    `n`, so with the same generator state the first k of `random_breeds(n)` are
    `random_breeds(k)`: `--breeds 40` extends `--breeds 8` rather than replacing it.
    """
    if not 1 <= n <= CANDIDATE_BREEDS:
        raise SynthError(f"can draw 1 to {CANDIDATE_BREEDS} breeds, not {n}")
    pool = [_random_breed(rng) for _ in range(CANDIDATE_BREEDS)]
    features = np.stack([_look_features(s) for s in pool])
    picked = [0]
    distance = np.linalg.norm(features - features[0], axis=1)
    for _ in range(n - 1):
        best = int(np.argmax(distance))
        picked.append(best)
        distance = np.minimum(distance, np.linalg.norm(features - features[best], axis=1))
    return _unique_names([pool[i] for i in picked])


def _unique_names(specs: list[BreedSpec]) -> list[BreedSpec]:
    seen: dict[str, int] = {}
    named = []
    for spec in specs:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        suffix = f"_{seen[spec.name]}" if seen[spec.name] > 1 else ""
        named.append(replace(spec, name=spec.name + suffix))
    return named


def mix_specs(a: BreedSpec, b: BreedSpec, share: float) -> BreedSpec:
    """The distribution of a mutt that takes `share` of its looks from `a` and the rest from `b`.

    Continuous means and sds, and the coat colours (in RGB), are blends share*a + (1-share)*b.
    Each categorical factor comes from `a` with probability `share`, else from `b`; that is the
    blended distribution share*p_a + (1-share)*p_b. share=1 gives `a`'s distribution exactly.
    """
    if not 0.0 <= share <= 1.0:
        raise SynthError(f"a mutt's share must be between 0 and 1, not {share}")

    def blend(x, y):
        return share * x + (1.0 - share) * y

    def blend_dict(x: dict, y: dict) -> dict:
        return {k: blend(x[k], y[k]) for k in x}

    return BreedSpec(
        name=f"{a.name}+{b.name}",
        mean=blend_dict(a.mean, b.mean),
        sd=blend_dict(a.sd, b.sd),
        ear_shape=blend_dict(a.ear_shape, b.ear_shape),
        tail_curl=blend_dict(a.tail_curl, b.tail_curl),
        pattern=blend_dict(a.pattern, b.pattern),
        base_colour=tuple(blend(x, y) for x, y in zip(a.base_colour, b.base_colour, strict=True)),
        secondary_colour=tuple(
            blend(x, y) for x, y in zip(a.secondary_colour, b.secondary_colour, strict=True)
        ),
        colour_sd=blend(a.colour_sd, b.colour_sd),
    )


def _pick(probs: dict[str, float], options: tuple[str, ...], rng) -> str:
    cumulative = np.cumsum([probs[o] for o in options])
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return options[min(index, len(options) - 1)]


def _coat(rgb, sd: float, rng) -> tuple[int, int, int]:
    shade = np.asarray(rgb) * rng.normal(1.0, sd) + rng.normal(0, TINT_SD, 3)
    return tuple(int(v) for v in np.clip(np.rint(shade), 0, 255))


def draw_factors(spec: BreedSpec, rng: np.random.Generator) -> DogFactors:
    """One dog of breed `spec`: continuous factors Normal(mean, sd) clipped, the rest categorical."""
    continuous = {
        name: float(np.clip(rng.normal(spec.mean[name], spec.sd[name]), lo, hi))
        for name, (lo, hi) in FACTOR_RANGES.items()
    }
    return DogFactors(
        **continuous,
        ear_shape=_pick(spec.ear_shape, EAR_SHAPES, rng),
        tail_curl=_pick(spec.tail_curl, TAIL_CURLS, rng),
        pattern=_pick(spec.pattern, PATTERNS, rng),
        base_colour=_coat(spec.base_colour, spec.colour_sd, rng),
        secondary_colour=_coat(spec.secondary_colour, spec.colour_sd, rng),
    )


COAT_READINGS = ("rgb", "pictured", "named", "none")


def factor_vector(f: DogFactors, coats: str = "rgb") -> np.ndarray:
    """A dog's looks as numbers: continuous factors scaled to [0, 1], ears, tail and pattern
    one-hot, then its coats read as `coats` says:

    - "rgb": both coat colours, /255 (linear in how mutts blend them);
    - "pictured": the same, but a solid dog's secondary colour, which no picture shows, is
      read as its base colour;
    - "named": each coat as its nearest named colour, one-hot (how a breed classifier sees it);
    - "none": no coats.
    """
    if coats not in COAT_READINGS:
        raise SynthError(f"coats must be one of {', '.join(COAT_READINGS)}, not {coats!r}")
    shape = [(getattr(f, k) - lo) / (hi - lo) for k, (lo, hi) in FACTOR_RANGES.items()]
    kinds = ((f.ear_shape, EAR_SHAPES), (f.tail_curl, TAIL_CURLS), (f.pattern, PATTERNS))
    one_hot = [value == option for value, options in kinds for option in options]
    return np.concatenate([shape, one_hot, _coat_reading(f, coats)]).astype(float)


def _coat_reading(f: DogFactors, coats: str) -> np.ndarray:
    if coats == "none":
        return np.zeros(0)
    if coats == "named":
        pair = (f.base_colour, f.secondary_colour)
        return np.array([_coat_name(c) == n for c in pair for n in COAT_COLOURS], float)
    hidden = coats == "pictured" and f.pattern == "solid"
    return np.concatenate([f.base_colour, f.base_colour if hidden else f.secondary_colour]) / 255


# ---------------------------------------------------------------------------- drawing
# A dog is built in body units (y up, facing +x, body centred on the origin) as a list of
# polygons (points, fill, outline) in drawing order, then placed and drawn in pixels.


def _ellipse(cx, cy, rx, ry, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _stroke(points, widths) -> np.ndarray:
    """The outline of a polyline drawn with a pen whose width goes from widths[0] to widths[-1]."""
    points = np.asarray(points, float)
    heading = np.gradient(points, axis=0)
    normal = np.stack([-heading[:, 1], heading[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    half = np.linspace(widths[0], widths[-1], len(points))[:, None] / 2
    return np.concatenate([points + half * normal, (points - half * normal)[::-1]])


def _curve(start, angle_deg: float, turn_deg: float, length: float, n: int = 10) -> np.ndarray:
    """`n` points along an arc of `length` that starts at `angle_deg` and turns by `turn_deg`."""
    angles = np.radians(angle_deg + turn_deg * np.linspace(0, 1, n - 1))
    steps = length / (n - 1) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _shade(rgb, k: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * k)) for c in rgb)


def _legs(f: DogFactors, stride: float) -> list:
    """Far legs (shaded) then near ones, hips hidden inside the body, each with a paw."""
    length, height = f.body_length, f.body_height
    width = 0.07 + 0.22 * height
    reach = 0.4 * height + f.leg_length
    parts = []
    for x, swing, k in (
        (0.3 * length + 0.06, -stride, 0.78),
        (-0.3 * length + 0.06, stride, 0.78),
        (0.3 * length, stride, 1.0),
        (-0.3 * length, -stride, 1.0),
    ):
        angle = math.radians(-90 + swing)
        top = np.array([x, -0.1 * height])
        foot = top + reach * np.array([math.cos(angle), math.sin(angle)])
        colour = _shade(f.base_colour, k)
        ink = _shade(colour, 0.5)
        parts.append((_stroke([top, foot], [width, 0.85 * width]), colour, ink))
        paw = _ellipse(foot[0] + 0.25 * width, foot[1], 0.7 * width, 0.36 * width, 16)
        parts.append((paw, colour, ink))
    return parts


def _ear(f: DogFactors, hx: float, hy: float, far: bool) -> np.ndarray:
    """The ear's polygon for a head centred at (hx, hy); the far ear sits a little forward."""
    r, e = f.head_size, f.ear_size
    hx = hx + (0.3 * r if far else 0.0)
    if f.ear_shape == "floppy":
        return _ellipse(hx - 0.4 * r, hy + 0.55 * r - 0.7 * e, 0.42 * e, 0.85 * e, 20)
    if f.ear_shape == "pointed":
        tip = (hx - 0.4 * r - 0.15 * e, hy + 0.75 * r + 1.3 * e)
        return np.array([(hx - 0.65 * r, hy + 0.5 * r), (hx + 0.05 * r, hy + 0.8 * r), tip])
    return np.array(  # rose: up a little, then folded back
        [
            (hx - 0.6 * r, hy + 0.55 * r),
            (hx + 0.05 * r, hy + 0.82 * r),
            (hx - 0.25 * r, hy + 0.8 * r + 0.7 * e),
            (hx - 0.6 * r - 0.9 * e, hy + 0.75 * r + 0.35 * e),
        ]
    )


def _markings(f: DogFactors, rng) -> list:
    """Spots or a saddle, kept inside the body ellipse; drawn between its fill and outline."""
    rx, ry = f.body_length / 2, f.body_height / 2
    if f.pattern == "saddle":
        t = np.radians(np.linspace(rng.uniform(12, 30), rng.uniform(150, 168), 20))
        return [(np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1), f.secondary_colour, None)]
    if f.pattern != "spots":
        return []
    spots = []
    for _ in range(rng.integers(3, 7)):
        radius = f.body_height * rng.uniform(0.1, 0.18)
        angle, dist = rng.uniform(0, 2 * np.pi), math.sqrt(rng.random())
        cx = (rx - radius) * dist * math.cos(angle)
        cy = (ry - radius) * dist * math.sin(angle)
        spots.append((_ellipse(cx, cy, radius, radius, 16), f.secondary_colour, None))
    return spots


def _head(f: DogFactors, hx: float, hy: float) -> list:
    """Far ear, head, mask patch, muzzle, nose, eye and near ear for a head centred at (hx, hy)."""
    r = f.head_size
    mask = f.pattern == "mask"
    base, ink = f.base_colour, _shade(f.base_colour, 0.5)
    ear_colour = f.secondary_colour if mask else _shade(base, 0.78)
    ex, ey = hx + 0.35 * r, hy + 0.22 * r
    sx, sy = hx + 0.5 * r + f.snout_length / 2, hy - 0.32 * r
    snout_rx = 0.45 * r + f.snout_length / 2
    head = _ellipse(hx, hy, r, 0.9 * r)
    # A far floppy ear would hang hidden behind the head.
    far_ear = (
        [] if f.ear_shape == "floppy" else [(_ear(f, hx, hy, True), _shade(ear_colour, 0.8), ink)]
    )
    eye_patch = (
        [(_ellipse(ex, ey, 0.36 * r, 0.32 * r, 20), f.secondary_colour, None)] if mask else []
    )
    return [
        *far_ear,
        (head, base, None),
        *eye_patch,
        (head, None, ink),
        (_ellipse(sx, sy, snout_rx, 0.42 * r), f.secondary_colour if mask else base, ink),
        (_ellipse(sx + snout_rx - 0.12 * r, sy + 0.18 * r, 0.18 * r, 0.15 * r, 16), DARK, None),
        (_ellipse(ex, ey, 0.15 * r, 0.15 * r, 16), DARK, None),
        (_ellipse(ex + 0.05 * r, ey + 0.05 * r, 0.05 * r, 0.05 * r, 8), (250, 250, 250), None),
        (_ear(f, hx, hy, False), ear_colour, ink),
    ]


def _dog_parts(f: DogFactors, rng) -> list:
    """The whole dog as (polygon, fill, outline) in drawing order, in body units."""
    length, height, r = f.body_length, f.body_height, f.head_size
    base, ink = f.base_colour, _shade(f.base_colour, 0.5)
    body = _ellipse(0.0, 0.0, length / 2, height / 2, 40)
    hx, hy = 0.42 * length + 0.3 * r, 0.3 * height + 0.9 * r
    start_angle, turn = TAIL_SHAPES[f.tail_curl]
    tail = _curve(
        np.array([-0.42 * length, 0.15 * height]),
        start_angle + rng.uniform(-10, 10),
        turn,
        f.tail_length,
    )
    tail_width = 0.05 + 0.12 * height
    neck = _stroke([(0.3 * length, 0.1 * height), (hx - 0.2 * r, hy - 0.3 * r)], [1.2 * r, r])
    return [
        *_legs(f, stride=rng.uniform(-14, 14)),
        (_stroke(tail, [tail_width, 0.35 * tail_width]), base, ink),
        (neck, base, ink),
        (body, base, None),
        *_markings(f, rng),
        (body, None, ink),
        *_head(f, hx, hy),
    ]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return 255 * np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _flat_background(size: int, rng) -> np.ndarray:
    colour = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.95))
    return np.broadcast_to(colour, (size, size, 3))


def _horizon_background(size: int, rng) -> np.ndarray:
    """Sky (or a wall) fading to the horizon, then ground getting darker towards the viewer."""
    if rng.random() < 0.6:
        top = _hsv(rng.uniform(0.52, 0.66), rng.uniform(0.2, 0.55), rng.uniform(0.7, 1.0))
    else:
        top = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.55, 0.95))
    far = _hsv(rng.uniform(0.08, 0.36), rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.8))
    horizon = rng.uniform(0.45, 0.8)
    y = np.linspace(0, 1, size)[:, None]
    sky = top + (np.minimum(top * 1.15, 255) - top) * (y / horizon)
    ground = far * (1 - 0.35 * (y - horizon) / (1 - horizon))
    rows = np.where(y < horizon, sky, ground)
    return np.broadcast_to(rows[:, None, :], (size, size, 3))


def _texture_background(size: int, rng) -> np.ndarray:
    """A colour with soft blotches and fine grain."""
    colour = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.4, 0.9))
    blotches = Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32), mode="F")
    blotches = np.asarray(blotches.resize((size, size), Image.Resampling.BILINEAR))
    grain = rng.normal(0, 6, (size, size))
    return colour + (18 * blotches + grain)[:, :, None]


BACKGROUNDS = (_flat_background, _horizon_background, _texture_background)


def _place(parts: list, scale: float, canvas: int, rng) -> tuple[list, np.ndarray]:
    """Parts in canvas pixels: tilted, facing left or right, scaled, and put on the ground.

    Returns the placed parts and the dog's pixel bounding box (x0, y0, x1, y1).
    """
    tilt = math.radians(float(np.clip(rng.normal(0, 4), -10, 10)))
    facing = 1.0 if rng.random() < 0.5 else -1.0
    k = canvas * PX_PER_UNIT * scale * rng.uniform(0.93, 1.07)
    rotate = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    to_pixels = rotate.T * np.array([facing * k, -k])
    placed = [(pts @ to_pixels, fill, ink) for pts, fill, ink in parts]
    everything = np.vstack([pts for pts, _, _ in placed])
    low, high = everything.min(axis=0), everything.max(axis=0)
    fit = min(1.0, 0.94 * canvas / float(max(high - low)))  # a dog never leaves the picture
    low, high = low * fit, high * fit
    slack_x = canvas - (high[0] - low[0])
    x = 0.5 * slack_x + rng.uniform(-0.4, 0.4) * slack_x - low[0]
    ground = canvas * rng.uniform(0.82, 0.95)
    y = max(ground - high[1], 0.03 * canvas - low[1])
    y = min(y, canvas - high[1])
    shift = np.array([x, y])
    placed = [(pts * fit + shift, fill, ink) for pts, fill, ink in placed]
    return placed, np.concatenate([low + shift, high + shift])


def render_dog(factors: DogFactors, size: int, rng: np.random.Generator) -> Image.Image:
    """A `size` x `size` RGB picture of one dog over a random background (style from `rng`).

    Pose (leg stride, tail angle, tilt), facing, placement, scale jitter and the background are
    all drawn from `rng`; the dog stands on a soft shadow, drawn at SUPERSAMPLE x and
    box-filtered down.
    """
    canvas = size * SUPERSAMPLE
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))](size, rng)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    image = image.resize((canvas, canvas), Image.Resampling.NEAREST)
    placed, (x0, _, x1, y1) = _place(_dog_parts(factors, rng), factors.scale, canvas, rng)
    shadow_rx, shadow_ry = 0.42 * (x1 - x0), 0.035 * canvas
    ImageDraw.Draw(image, "RGBA").ellipse(
        ((x0 + x1) / 2 - shadow_rx, y1 - shadow_ry, (x0 + x1) / 2 + shadow_rx, y1 + shadow_ry),
        fill=(0, 0, 0, 55),
    )
    draw = ImageDraw.Draw(image)
    line = max(1, round(SUPERSAMPLE * size / 96))
    for pts, fill, ink in placed:
        draw.polygon(pts.ravel().tolist(), fill=fill, outline=ink, width=line if ink else 0)
    return image.reduce(SUPERSAMPLE)


# ---------------------------------------------------------------------------- data set


def _rng(seed: int, stream: int, a: int = 0, b: int = 0) -> np.random.Generator:
    # Fixed-length keys: SeedSequence treats [s, 1, 2] and [s, 1, 2, 0] alike.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, a, b])))


def _image_id(seed: int, kind: str, a: int, b: int) -> str:
    """A Kaggle-style 32-hex id, fixed by seed and position, never by breed name."""
    key = f"dogvae-synth/{seed}/{kind}/{a}/{b}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def _save_jpeg(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False)
    path.write_bytes(buffer.getvalue())


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(sorted(rows))


def _check_args(breeds: int, per_breed: int, size: int | None, mutts: int, seed: int) -> None:
    problems = [
        (breeds < 2, f"breeds must be at least 2, got {breeds}"),
        (breeds > MAX_BREEDS, f"breeds must be at most {MAX_BREEDS}, got {breeds}"),
        (per_breed < 1, f"per_breed must be at least 1, got {per_breed}"),
        (size is not None and size < 16, f"size must be at least 16 pixels, got {size}"),
        (mutts < 0, f"mutts must be 0 or more, got {mutts}"),
        (not 0 <= seed < 2**32, f"seed must be between 0 and 2**32 - 1, got {seed}"),
    ]
    for failed, message in problems:
        if failed:
            raise SynthError(message)


def _prepare_out(out: Path) -> None:
    """Make `out`, refusing a folder that holds anything but an earlier synth run.

    An earlier run's images are removed, so a smaller re-run leaves no unlabelled strays.
    """
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "breeds.json").read_text())["generator"] == "dogvae.synth"
        except (OSError, ValueError, KeyError, TypeError):
            earlier = False
        if not earlier:
            raise SynthError(f"{out} is not empty and was not written by dogvae synth")
        for old in [*out.glob("train/*.jpg"), *out.glob("mutts/*.jpg")]:
            old.unlink()
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "mutts").mkdir(exist_ok=True)


def _breeds_document(specs: list[BreedSpec], **run) -> dict:
    return {
        "generator": "dogvae.synth",
        "version": SYNTH_VERSION,
        **run,
        "mutt_share_range": list(MUTT_SHARE_RANGE),
        "factor_ranges": {name: list(r) for name, r in FACTOR_RANGES.items()},
        "breeds": [asdict(spec) for spec in specs],
    }


def _breed_draws(specs: list[BreedSpec], per_breed: int, seed: int):
    """(image id, breed, generator) for every breed image, in the order `synthesize` draws them."""
    for b, spec in enumerate(specs):
        for i in range(per_breed):
            yield _image_id(seed, "train", b, i), spec, _rng(seed, _TRAIN_STREAM, b, i)


def _mutt_draws(specs: list[BreedSpec], mutts: int, seed: int):
    """(image id, (parent a, parent b, share of a), generator) for every mutt: two different
    parents drawn uniformly, share_a ~ Uniform(MUTT_SHARE_RANGE) rounded to 3 decimals."""
    for m in range(mutts):
        rng = _rng(seed, _MUTT_STREAM, 0, m)
        a, b = (int(x) for x in rng.choice(len(specs), size=2, replace=False))
        share = round(float(rng.uniform(*MUTT_SHARE_RANGE)), 3)
        yield _image_id(seed, "mutt", 0, m), (specs[a], specs[b], share), rng


def dataset_factors(
    breeds: int = 8, per_breed: int = 150, mutts: int = 100, seed: int = 0
) -> tuple[list[tuple[str, str, DogFactors]], list[tuple[str, str, str, float, DogFactors]]]:
    """The looks of every dog `synthesize` draws with these arguments, without the pictures:
    (id, breed, factors) per breed image and (id, parent_a, parent_b, share_a, factors) per
    mutt. A picture's factors are the first draws from its generator, so these are exactly the
    dogs in the files: what a perfect encoder would read from them."""
    _check_args(breeds, per_breed, None, mutts, seed)  # no pictures: any size
    specs = random_breeds(breeds, _rng(seed, _BREED_STREAM))
    pure = [
        (i, spec.name, draw_factors(spec, rng))
        for i, spec, rng in _breed_draws(specs, per_breed, seed)
    ]
    mixed = [
        (i, a.name, b.name, share, draw_factors(mix_specs(a, b, share), rng))
        for i, (a, b, share), rng in _mutt_draws(specs, mutts, seed)
    ]
    return pure, mixed


def synthesize(
    out: str | Path,
    *,
    breeds: int = 8,
    per_breed: int = 150,
    size: int = 96,
    mutts: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Draw the synthetic data set into `out` in the Kaggle layout and return a summary.

    Writes `breeds.json` (each breed's distribution, version, seed, size), `train/<id>.jpg` with
    `labels.csv` (`id,breed`), and `mutts/<id>.jpg` with `mutts.csv`
    (`id,parent_a,parent_b,share_a`); `labels.csv` is written last, so its presence means the
    set is complete. Each mutt has two different parent breeds drawn uniformly and
    share_a ~ Uniform(MUTT_SHARE_RANGE) rounded to 3 decimals; its looks are drawn from
    `mix_specs(parent_a, parent_b, share_a)`. The summary's `n_images` counts the labelled
    breed images; `n_mutts` the mutts.
    """
    _check_args(breeds, per_breed, size, mutts, seed)
    out = Path(out)
    _prepare_out(out)
    specs = random_breeds(breeds, _rng(seed, _BREED_STREAM))
    document = _breeds_document(specs, seed=seed, size=size, per_breed=per_breed, mutts=mutts)
    (out / "breeds.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    labels, mutt_rows = [], []
    with progress_bar(total=breeds * per_breed + mutts, show=progress, unit="img") as bar:
        for image_id, spec, rng in _breed_draws(specs, per_breed, seed):
            _save_jpeg(
                render_dog(draw_factors(spec, rng), size, rng), out / "train" / f"{image_id}.jpg"
            )
            labels.append((image_id, spec.name))
            bar.update()
        for image_id, (a, b, share), rng in _mutt_draws(specs, mutts, seed):
            mutt = mix_specs(a, b, share)
            _save_jpeg(
                render_dog(draw_factors(mutt, rng), size, rng), out / "mutts" / f"{image_id}.jpg"
            )
            mutt_rows.append((image_id, a.name, b.name, f"{share:.3f}"))
            bar.update()
    _write_csv(out / "mutts.csv", ("id", "parent_a", "parent_b", "share_a"), mutt_rows)
    _write_csv(out / "labels.csv", ("id", "breed"), labels)
    return {
        "out": str(out),
        "n_images": len(labels),
        "n_breeds": breeds,
        "n_mutts": mutts,
        "breeds": [spec.name for spec in specs],
        "size": size,
        "seed": seed,
    }
