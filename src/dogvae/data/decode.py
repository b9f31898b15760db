"""One image file -> RGB pixels, or a `BadImage` that says why not.

The format is read from the content, never the extension (a `.jpeg` that is really WebP loads).
The pixel count is checked from the header before any pixel is decoded, every file is decoded in
full so a truncated JPEG is caught here rather than as a grey band in a training batch (Pillow's
global `LOAD_TRUNCATED_IMAGES` is left alone), EXIF orientation is applied, and every mode ends as
8-bit RGB with transparency composited on white.

Skip reasons raised here: `empty_file`, `truncated`, `not_an_image`, `too_many_pixels`,
`unreadable`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dogvae.errors import BadImage

MAX_PIXELS = 40_000_000
CROPS = ("center", "squash")

Source = str | Path | bytes | BinaryIO

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Each resampling pass may first shrink by an integer factor (Image.reduce, a box filter) until
# the image is within this factor of the target; LANCZOS then does the rest at full quality.
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ImageFacts:
    """What a file holds, as stored: `format` read from the content, `mode` before conversion
    to RGB, `width` x `height` after EXIF orientation (the picture as it is shown)."""

    format: str
    mode: str
    width: int
    height: int


def open_rgb(
    source: Source,
    *,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` fully into an upright 8-bit RGB image.

    `draft_size` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding, keeping both
    sides >= `draft_size`: several times faster for photos much larger than the target size.
    Raises `BadImage(name or path, reason, detail)` when the file cannot be used.
    """
    return _decode(source, max_pixels=max_pixels, draft_size=draft_size, name=name)[0]


def probe(source: Source, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> ImageFacts:
    """Decode `source` exactly as `open_rgb` does (same checks, same errors); describe it."""
    return _decode(source, max_pixels=max_pixels, draft_size=None, name=name)[1]


def to_square(img: Image.Image, size: int, crop: str = "center") -> np.ndarray:
    """Resample an RGB image to a (size, size, 3) uint8 array.

    `center` scales the short side to `size` and keeps the central square; `squash` scales both
    sides to `size` ignoring the aspect ratio (the original Keras pipeline did this).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if img.mode != "RGB":
        raise ValueError(f"to_square expects an RGB image (see open_rgb), got mode {img.mode}")
    box = _central_square(img.size) if crop == "center" else None
    square = img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)
    return np.asarray(square, dtype=np.uint8).copy()


def decode_file(path: str | Path, size: int, crop: str = "center") -> np.ndarray:
    """One image file -> (size, size, 3) uint8, using JPEG draft decoding when it is safe."""
    return to_square(open_rgb(path, draft_size=size), size, crop)


def load_photo(
    source: Source, size: int, crop: str = "center", *, name: str | None = None
) -> np.ndarray:
    """A user's photo (path, bytes or open binary file) -> (size, size, 3) uint8."""
    return to_square(open_rgb(source, draft_size=size, name=name), size, crop)


def _decode(
    source: Source, *, max_pixels: int, draft_size: int | None, name: str | None
) -> tuple[Image.Image, ImageFacts]:
    label = name or _describe(source)
    with _binary_stream(source, label) as fp:
        img = _open_checked(fp, label, max_pixels)
        original_mode, image_format = img.mode, img.format or "unknown"
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        _load_fully(img, label)
    img = _upright(img)
    facts = ImageFacts(image_format, original_mode, img.width, img.height)
    return as_rgb(img, label), facts


def _describe(source: Source) -> str:
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


@contextmanager
def _binary_stream(source: Source, label: str):
    """A seekable binary stream over `source`; files opened here are closed on exit."""
    if isinstance(source, bytes | bytearray | memoryview):
        stream = nullcontext(io.BytesIO(bytes(source)))
    elif isinstance(source, str | Path):
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise BadImage(label, "unreadable", _os_error_detail(exc)) from exc
    elif source.seekable():
        stream = nullcontext(source)
    else:
        stream = nullcontext(io.BytesIO(source.read()))
    with stream as fp:
        yield fp


def _open_checked(fp: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Read the header only; refuse empty, unknown and oversized files before decoding."""
    start = fp.tell()
    if not fp.read(1):
        raise BadImage(label, "empty_file", "0 bytes")
    fp.seek(start)
    try:
        img = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise BadImage(label, "not_an_image", "no image format recognises the content") from exc
    except Image.DecompressionBombError as exc:
        raise BadImage(label, "too_many_pixels", str(exc)) from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise BadImage(label, _decode_failure_reason(exc), _error_detail(exc)) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(
            label, "too_many_pixels", f"{width}x{height} exceeds the limit of {max_pixels:,} pixels"
        )
    return img


def _load_fully(img: Image.Image, label: str) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise BadImage(label, "too_many_pixels", str(exc)) from exc
    except Exception as exc:  # likewise for malformed pixel data (struct.error, IndexError...)
        raise BadImage(label, _decode_failure_reason(exc), _error_detail(exc)) from exc


def _decode_failure_reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated"
    return "unreadable"


def _error_detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _os_error_detail(exc: OSError) -> str:
    return exc.strerror or _error_detail(exc)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag in place (no copy when there is none); a malformed EXIF
    block leaves the image as stored, since the pixels themselves decoded fine."""
    with suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)
    return img


def as_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode as RGB: 16-bit and float scaled down, transparency composited on white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return Image.fromarray(_wide_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise BadImage(label, "unreadable", f"cannot convert mode {img.mode} to RGB") from exc


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grey image to 0..255 (Pillow's convert clips).

    16-bit modes map 0..65535 linearly. Mode `I` holds 8-bit data (0..255) as is, 16-bit data
    (up to 65535) like a 16-bit mode, and anything else is stretched from its minimum to its
    maximum. Mode `F` in 0..1 is scaled by 255, in 0..255 kept, otherwise stretched.
    """
    values = values.astype(np.float32)
    if mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        if mode == "F" and low >= 0 and high <= 1:
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        elif mode == "I" and low >= 0 and high <= 65535:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _central_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side
