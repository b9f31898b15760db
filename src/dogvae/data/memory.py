"""Images from Python instead of a folder: a uint8 array or a torch `Dataset` -> an `ImageSet`.

What training reads from the decoded cache it can read from memory too: `image_set(data,
labels)` resizes and crops each image as a folder's would be (`dogvae.data.decode.to_square`)
and numbers the breeds. `data` is a uint8 array (N, H, W, 3), or a `Dataset` whose items are an
image or (image, label), the image a PIL image, a uint8 (H, W, 3) array or a (3, H, W) tensor
(floats in [0, 1] or uint8). Labels are breed names or indices into `breeds` (-1: unlabelled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dogvae.data.cache import ImageSet
from dogvae.data.decode import as_rgb, to_square
from dogvae.errors import DataError

MEMORY_ROOT = "<memory>"


def image_set(
    data,
    labels: Sequence | np.ndarray | None = None,
    breeds: Sequence[str] | None = None,
    *,
    image_size: int,
    crop: str = "center",
) -> ImageSet:
    """The images of `data` (and their labels) as training reads a decoded folder."""
    images, found = _images_and_labels(data)
    if labels is None:
        labels = found
    pixels = np.stack([_square(image, image_size, crop, i) for i, image in enumerate(images)])
    codes, names = _breed_codes(labels, len(pixels), breeds)
    return ImageSet(
        images=pixels,
        labels=codes,
        ids=[f"{i:06d}" for i in range(len(pixels))],
        breeds=names,
        skipped=[],
        root=MEMORY_ROOT,
        layout="memory",
        image_size=image_size,
        crop=crop,
    )


def _images_and_labels(data) -> tuple[Sequence, list | None]:
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
            raise DataError(
                f"an image array must be uint8 (N, H, W, 3), not {data.dtype} {data.shape}"
            )
        return data, None
    if isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        if items and isinstance(items[0], tuple | list):
            return [item[0] for item in items], [_label(item[1]) for item in items]
        return items, None
    raise DataError(
        f"train reads a folder, a uint8 array (N, H, W, 3) or a torch Dataset, not {type(data).__name__}"
    )


def _label(value):
    return value.item() if isinstance(value, torch.Tensor) else value


def _square(image, size: int, crop: str, index: int) -> np.ndarray:
    """One image of any of the accepted kinds -> (size, size, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise DataError(
                f"image {index}: expected uint8 (H, W, 3), not {image.dtype} {image.shape}"
            )
        if image.shape[:2] == (size, size):
            return image
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise DataError(f"image {index}: a {type(image).__name__} is not an image")
    return to_square(as_rgb(image, f"image {index}"), size, crop)


def _breed_codes(labels, n: int, breeds: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels -> (indices, breed names): names are numbered in sorted order; indices keep
    `breeds` (or breed_0, breed_1, ...); None, -1 and "" are unlabelled."""
    if labels is None:
        return np.full(n, -1, np.int64), list(breeds or [])
    labels = list(labels)
    if len(labels) != n:
        raise DataError(f"{len(labels)} labels for {n} images")
    if any(isinstance(v, str) for v in labels):
        if not all(v is None or isinstance(v, str) for v in labels):
            raise DataError("labels are all breed names (or None) or all breed indices, not both")
        names = sorted({v for v in labels if v})
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[v] if v else -1 for v in labels], np.int64), names
    try:
        codes = np.array([-1 if v is None else int(v) for v in labels], np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"a label is neither a breed name nor an index ({exc})") from exc
    count = int(codes.max()) + 1 if (codes >= 0).any() else 0
    names = list(breeds) if breeds is not None else [f"breed_{i}" for i in range(count)]
    if count > len(names):
        raise DataError(f"label {count - 1} has no breed name ({len(names)} breeds given)")
    return codes, names
