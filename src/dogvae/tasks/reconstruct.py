"""Reconstruct photos through the model: each original beside its decoded posterior mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dogvae.latents import Encoded, encode_images
from dogvae.metrics import psnr_per_image
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png
from dogvae.tasks.inputs import as_tensor, read_photos


@torch.no_grad()
def reconstruct_encoded(
    model: BaseVAE, pixels: np.ndarray, encoded: Encoded
) -> tuple[torch.Tensor, list[float]]:
    """uint8 (N, S, S, 3) photos, already through `encode_images` -> their reconstructions
    (N, 3, S, S) on the CPU, each the posterior mean decoded with the breed it was encoded
    with (as every other answer reads it), and each PSNR in dB."""
    from dogvae.tasks.mixing import decode_codes, encoded_breed_weights

    recon = decode_codes(model, encoded.mu, encoded_breed_weights(model, encoded))
    return recon, psnr_per_image(recon, as_tensor(model, pixels).cpu()).tolist()


def reconstruct_pixels(model: BaseVAE, pixels: np.ndarray) -> tuple[torch.Tensor, list[float]]:
    """`reconstruct_encoded` of photos not encoded yet."""
    return reconstruct_encoded(model, pixels, encode_images(model, pixels))


@torch.no_grad()
def reconstruct_photos(model: BaseVAE, photos: list[str | Path], out: str | Path) -> dict:
    """Write originals (left) beside reconstructions (right), one pair per row, captioned with
    PSNR in dB; return the PSNR of each photo and their mean."""
    pixels = read_photos(model, photos)
    recon, psnr = reconstruct_pixels(model, pixels)
    x = as_tensor(model, pixels)
    tiles = torch.stack([x.cpu(), recon.cpu()], 1).flatten(0, 1)  # original, recon, original...
    captions = []
    for value in psnr:
        captions += ["original", f"{value:.1f} dB"]
    scale = max(1, 96 // model.config.image_size)
    picture = image_grid(tiles, ncols=2, captions=captions, scale=scale)
    return {
        "images": [{"image": str(p), "psnr": v} for p, v in zip(photos, psnr, strict=True)],
        "mean_psnr": sum(psnr) / len(psnr),
        "picture": str(save_png(picture, out)),
    }
