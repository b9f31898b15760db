"""Image-quality figures and the baselines a VAE must beat to be worth its training.

Pixels are floats in [0, 1]; PSNR is the mean over images of 10 log10(1 / MSE_image).
"""

from __future__ import annotations

import numpy as np
import torch

PSNR_CAP_DB = 60.0  # a perfect reconstruction would be infinite; cap it so means stay finite


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).square().flatten(1).mean(1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = mse_per_image(x, y).clamp(min=10 ** (-PSNR_CAP_DB / 10))
    return -10.0 * torch.log10(mse)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across images (Burda et al. 2016)."""
    if mu.shape[0] < 2:
        return 0
    return int((mu.float().var(0) > threshold).sum())


def _as_flat_float(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _psnr_np(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.maximum(((x - y) ** 2).mean(1), 10 ** (-PSNR_CAP_DB / 10))
    return float((-10.0 * np.log10(mse)).mean())


def reconstruction_baselines(
    train_images: np.ndarray, val_images: np.ndarray, n_components: int, max_fit: int = 4000
) -> dict[str, float]:
    """Validation PSNR of the training mean image and of PCA with `n_components` components.

    Both are fitted on (up to `max_fit` of) the training images, uint8 arrays (N, H, W, 3).
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    fit_rows = np.sort(rng.permutation(len(train_images))[:max_fit])
    train = _as_flat_float(train_images[fit_rows])
    val = _as_flat_float(val_images)
    mean_psnr = _psnr_np(val, np.broadcast_to(train.mean(0), val.shape))
    k = min(n_components, len(train) - 1, train.shape[1])
    pca = PCA(n_components=k, svd_solver="randomized", random_state=0).fit(train)
    pca_psnr = _psnr_np(val, np.clip(pca.inverse_transform(pca.transform(val)), 0.0, 1.0))
    return {"mean_image_psnr": mean_psnr, "pca_psnr": pca_psnr, "pca_components": k}
