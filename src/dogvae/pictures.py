"""Tensors of images -> PNG pictures people look at: grids, captioned rows, strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dogvae.atomic import atomic_path

BACKGROUND = (255, 255, 255)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return arr.permute(0, 2, 3, 1).numpy()


def image_grid(
    images: torch.Tensor | np.ndarray,
    ncols: int,
    pad: int = 2,
    captions: list[str] | None = None,
    scale: int = 1,
) -> Image.Image:
    """Tile images row by row; optional captions are drawn under each tile."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images, np.uint8)
    n, h, w = arr.shape[:3]
    h, w = h * scale, w * scale
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    caption_h = 12 if captions else 0
    sheet = Image.new(
        "RGB", (ncols * (w + pad) + pad, nrows * (h + pad + caption_h) + pad), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(arr):
        row, col = divmod(i, ncols)
        x0, y0 = pad + col * (w + pad), pad + row * (h + pad + caption_h)
        img = Image.fromarray(tile)
        if scale != 1:
            img = img.resize((w, h), Image.NEAREST)
        sheet.paste(img, (x0, y0))
        if captions and i < len(captions):
            draw.text((x0 + 1, y0 + h), captions[i][: max(1, w // 6)], fill=(0, 0, 0))
    return sheet


def pairs_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, ncols: int = 8
) -> Image.Image:
    """Originals on one row, their reconstructions on the row below, repeated."""
    rows = []
    for start in range(0, len(originals), ncols):
        rows += [originals[start : start + ncols], reconstructions[start : start + ncols]]
    width = min(ncols, len(originals))
    padded = [
        torch.cat([r, torch.ones(width - len(r), *r.shape[1:])]) if len(r) < width else r
        for r in rows
    ]
    return image_grid(torch.cat(padded), ncols=width)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (temp file + rename) so a crash never leaves half a picture."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
