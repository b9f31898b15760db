"""Image-quality figures and the baselines a VAE must beat to be worth its training.

Pixels are floats in [0, 1]; PSNR is the mean over images of 10 log10(1 / MSE_image). SSIM is
Wang et al. (2004): an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed per
channel over the window positions that fit inside the image and averaged over them and the
channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 60.0  # a perfect reconstruction would be infinite; cap it so means stay finite
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).square().flatten(1).mean(1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = mse_per_image(x, y).clamp(min=10 ** (-PSNR_CAP_DB / 10))
    return -10.0 * torch.log10(mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) float64 Gaussian weights summing to one; SSIM's 2-D window is its outer product."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _local_means(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean of every window position inside (B, C, H, W): a separable
    'valid' convolution, channel by channel."""
    channels, size = maps.shape[1], len(window)
    rows = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    return F.conv2d(F.conv2d(maps, rows, groups=channels), cols, groups=channels)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) structural similarity of images (B, C, H, W) in [0, data_range]: 1 for identical
    images, symmetric in x and y. The window shrinks (odd size) for images smaller than 11 px."""
    size = min(SSIM_WINDOW, *x.shape[-2:])
    size -= 1 - size % 2
    x, y = x.float(), y.float()
    window = gaussian_window(size).to(device=x.device, dtype=torch.float32)
    # the five local statistics in one convolution: float32 and one call keep it fast on CPU
    means = _local_means(torch.cat([x, y, x * x, y * y, x * y], 1), window)
    mean_x, mean_y, sq_x, sq_y, prod = means.chunk(5, 1)
    var_x, var_y = sq_x - mean_x**2, sq_y - mean_y**2
    cov = prod - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(1)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across images (Burda et al. 2016)."""
    if mu.shape[0] < 2:
        return 0
    return int((mu.float().var(0) > threshold).sum())


def as_flat_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, H*W*3) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def psnr_np(x: np.ndarray, y: np.ndarray) -> float:
    """Mean PSNR of flattened float images (N, D) in [0, 1], capped like `psnr_per_image`."""
    mse = np.maximum(((x - y) ** 2).mean(1), 10 ** (-PSNR_CAP_DB / 10))
    return float((-10.0 * np.log10(mse)).mean())


def pixel_pca(train_images: np.ndarray, n_components: int, max_fit: int = 4000):
    """PCA of flattened [0, 1] pixels with up to `n_components` components, fitted on (up to
    `max_fit` of) the training images, uint8 (N, H, W, 3). Its `mean_` is the mean image."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    fit_rows = np.sort(rng.permutation(len(train_images))[:max_fit])
    train = as_flat_float(train_images[fit_rows])
    k = min(n_components, len(train) - 1, train.shape[1])
    return PCA(n_components=k, svd_solver="randomized", random_state=0).fit(train)


def baseline_reconstructions(pca, val_images: np.ndarray) -> dict[str, np.ndarray]:
    """The validation images (flattened, [0, 1]) as the two baselines draw them: the training
    mean image, and their projection on the PCA components."""
    val = as_flat_float(val_images)
    return {
        "mean_image": np.broadcast_to(pca.mean_.astype(np.float32), val.shape),
        "pca": np.clip(pca.inverse_transform(pca.transform(val)), 0.0, 1.0),
    }


def reconstruction_baselines(
    train_images: np.ndarray, val_images: np.ndarray, n_components: int, max_fit: int = 4000
) -> dict[str, float]:
    """Validation PSNR of the training mean image and of PCA with `n_components` components.

    Both are fitted on (up to `max_fit` of) the training images, uint8 arrays (N, H, W, 3).
    """
    pca = pixel_pca(train_images, n_components, max_fit)
    val = as_flat_float(val_images)
    drawn = baseline_reconstructions(pca, val_images)
    return {
        "mean_image_psnr": psnr_np(val, drawn["mean_image"]),
        "pca_psnr": psnr_np(val, drawn["pca"]),
        "pca_components": pca.n_components_,
    }


def gaussian_frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """The squared Frechet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b,
    cov_b): |mean_a - mean_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)), as FID computes
    it (Heusel et al. 2017)."""
    from scipy.linalg import sqrtm

    root = sqrtm(np.asarray(cov_a, np.float64) @ np.asarray(cov_b, np.float64))
    root = np.real(root)  # rounding leaves a tiny imaginary part
    difference = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """`gaussian_frechet_distance` between Gaussians fitted to two sets of feature rows."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return gaussian_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
