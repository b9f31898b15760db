"""The latent store: every labelled image of a data set encoded once, kept beside the run.

`RUN/latents.npz` holds, per image, the posterior mean and log-variance, the posterior mean of
the mirrored image, the breed index, the id, whether the image is in the run's validation split,
and the mean squared error of its reconstruction from the mean and its code-length gap (the
out-of-distribution scores need them, see `dogvae.tasks.novelty`). It records the sha256 of the weights and a key of the data set, so a store made by
other weights or from other images is never reused: `open_store` rebuilds it.

Breed-level questions use `codes`, the average of an image's mean and its mirror's mean. A
dog's breed does not depend on which way it faces, but its code does: training flips images at
random, and the codes of each breed form two clusters, one per facing (what that gains is in
docs/results.md, "Latent codes on the synthetic breeds").

Breed centroids and covariances come from the training rows only, so validation figures
computed from the store stay honest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dogvae.atomic import atomic_path
from dogvae.errors import DataError, DogvaeError
from dogvae.losses import kl_per_dim, reconstruction_nll
from dogvae.metrics import mse_per_image
from dogvae.model import BaseVAE
from dogvae.precision import inference_autocast
from dogvae.progress import progress_bar
from dogvae.run import Run

log = logging.getLogger(__name__)

STORE_FILE = "latents.npz"
STORE_FORMAT = "dogvae-latents/4"
ENCODE_BATCH = 256


@dataclass
class LatentStore:
    """Posterior statistics of a labelled data set under one model, one row per image."""

    mu: np.ndarray  # (N, D) float32 posterior means
    logvar: np.ndarray  # (N, D) float32 posterior log-variances
    mu_mirror: np.ndarray  # (N, D) float32 posterior means of the left-right mirrored images
    labels: np.ndarray  # (N,) int64 index into `breeds`
    ids: np.ndarray  # (N,) str image ids
    is_val: np.ndarray  # (N,) bool: in the run's validation split
    recon_mse: np.ndarray  # (N,) float32 MSE of decode(mu) against the image, pixels in [0, 1]
    code_gap: np.ndarray  # (N,) float32 bits: the model's code length minus PNG's (`code_gap`)
    class_log_probs: np.ndarray  # (N, C) float32 log q(y|x) over the model's C breeds; C = 0
    breeds: list[str]
    weights_sha256: str  # the weights that encoded it
    data_key: str  # the image set it was encoded from (see `data_fingerprint`)
    data: str = ""  # the data folder it was encoded from
    encoded: bool = False  # encoded by this call rather than read back (not saved)
    within_cov: np.ndarray | None = None  # `pooled_covariance`, saved with the store once made

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def latent_dim(self) -> int:
        return self.mu.shape[1]

    @cached_property
    def codes(self) -> np.ndarray:
        """(N, D) facing-invariant codes: what breed-level questions compare."""
        return facing_invariant(self.mu, self.mu_mirror)

    @cached_property
    def kl_rate(self) -> np.ndarray:
        return kl_rate(self.mu, self.logvar)

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.is_val)

    @property
    def val_rows(self) -> np.ndarray:
        return np.flatnonzero(self.is_val)

    def summary(self) -> dict:
        return {
            "n_images": len(self),
            "n_val": int(self.is_val.sum()),
            "n_breeds": len(self.breeds),
            "latent_dim": self.latent_dim,
            "data": self.data,
            "encoded": self.encoded,
        }

    def centroids(self) -> np.ndarray:
        """(B, D) mean code of each breed over the training split."""
        rows = self.train_rows
        return breed_centroids(self.codes[rows], self.labels[rows], len(self.breeds))

    def pooled_covariance(self) -> np.ndarray:
        """(D, D) within-breed covariance of the training codes, Ledoit-Wolf shrunk; computed
        once and saved with the store (the novelty score and ancestry read it every time)."""
        if self.within_cov is None:
            rows = self.train_rows
            self.within_cov = pooled_within_covariance(
                self.codes[rows], self.labels[rows], len(self.breeds)
            )
        return self.within_cov

    def breed_covariance(self, breed: int, diagonal: bool = False) -> np.ndarray:
        """(D, D) spread of latent codes around one breed's centroid (training split).

        It is the covariance of the breed's posterior means (of both facings, so samples face
        both ways) plus their mean posterior variance: the covariance of z drawn from the
        breed's images' posteriors. Shrunk (Ledoit-Wolf) since a breed may have fewer images
        than latent dimensions.
        """
        rows = self.train_rows[self.labels[self.train_rows] == breed]
        if len(rows) == 0:
            raise DogvaeError(f"breed {self.breeds[breed]!r} has no training images in the store")
        noise = np.exp(self.logvar[rows]).mean(0)
        both = np.concatenate([self.mu[rows], self.mu_mirror[rows]])
        if diagonal:
            return np.diag(both.var(0) + noise)
        return shrunk_covariance(both - both.mean(0)) + np.diag(noise)

    def as_encoded(self, rows: np.ndarray) -> Encoded:
        """These rows as the encoder gave them, for scoring like a new photo."""
        return Encoded(
            self.mu[rows], self.logvar[rows], self.mu_mirror[rows],
            self.recon_mse[rows], self.code_gap[rows], self.class_log_probs[rows],
        )  # fmt: skip

    def save(self, path: str | Path) -> Path:
        arrays = {
            "format": np.array(STORE_FORMAT),
            "mu": self.mu,
            "logvar": self.logvar,
            "mu_mirror": self.mu_mirror,
            "labels": self.labels,
            "ids": self.ids.astype(str),
            "is_val": self.is_val,
            "recon_mse": self.recon_mse,
            "code_gap": self.code_gap,
            "class_log_probs": self.class_log_probs,
            "breeds": np.array(self.breeds, dtype=str),
            "weights_sha256": np.array(self.weights_sha256),
            "data_key": np.array(self.data_key),
            "data": np.array(self.data),
        }
        if len(self.train_rows) >= 2:
            arrays["within_cov"] = self.pooled_covariance()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LatentStore:
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["format"]) != STORE_FORMAT:
                    raise DogvaeError(f"{path}: unknown latent store format {str(f['format'])!r}")
                return cls(
                    mu=f["mu"],
                    logvar=f["logvar"],
                    mu_mirror=f["mu_mirror"],
                    labels=f["labels"].astype(np.int64),
                    ids=f["ids"],
                    is_val=f["is_val"].astype(bool),
                    recon_mse=f["recon_mse"],
                    code_gap=f["code_gap"],
                    class_log_probs=f["class_log_probs"],
                    breeds=[str(b) for b in f["breeds"]],
                    weights_sha256=str(f["weights_sha256"]),
                    data_key=str(f["data_key"]),
                    data=str(f["data"]),
                    within_cov=f["within_cov"] if "within_cov" in f.files else None,
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DogvaeError(f"{path} is not a readable latent store ({exc})") from exc


def save_derived(path: str | Path, fmt: str, store: LatentStore, arrays: dict) -> None:
    """Arrays fitted on `store` (a probe, a sampler), saved with what they were made from."""
    made_from = {
        "format": np.array(fmt),
        "weights_sha256": np.array(store.weights_sha256),
        "data_key": np.array(store.data_key),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **made_from, **arrays)


def load_derived(path: str | Path, fmt: str, store: LatentStore) -> dict | None:
    """What `save_derived` wrote, when it was fitted on this very store in this format; None
    when the file is missing, made from other weights or data, or damaged (fit it again)."""
    if not Path(path).exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            made_from = (str(f["format"]), str(f["weights_sha256"]), str(f["data_key"]))
            if made_from != (fmt, store.weights_sha256, store.data_key):
                return None
            return {name: f[name] for name in f.files}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def facing_invariant(mu: np.ndarray, mu_mirror: np.ndarray) -> np.ndarray:
    return (mu + mu_mirror) / 2


def kl_rate(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || N(0, I)) of each row, in nats: what the encoder says about the image."""
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * (np.exp(logvar) + mu**2 - 1.0 - logvar).sum(1)


def breed_centroids(mu: np.ndarray, labels: np.ndarray, n_breeds: int) -> np.ndarray:
    """(B, D) mean of `mu` per breed; a breed with no rows gets NaN."""
    sums = np.zeros((n_breeds, mu.shape[1]), np.float64)
    np.add.at(sums, labels, mu)
    counts = np.bincount(labels, minlength=n_breeds).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of rows already centred on their mean."""
    from sklearn.covariance import ledoit_wolf

    return ledoit_wolf(centred, assume_centered=True)[0]


def pooled_within_covariance(mu: np.ndarray, labels: np.ndarray, n_breeds: int) -> np.ndarray:
    """Covariance of each code around its own breed's centroid, pooled over breeds."""
    centroids = breed_centroids(mu, labels, n_breeds)
    return shrunk_covariance(mu - centroids[labels])


def whitening_matrix(covariance: np.ndarray) -> np.ndarray:
    """A (D, D) matrix W with `x @ W` of identity covariance: Euclidean distances between
    whitened codes are Mahalanobis distances under `covariance`."""
    from scipy.linalg import solve_triangular

    lower = np.linalg.cholesky(np.asarray(covariance, np.float64))
    return solve_triangular(lower, np.eye(len(lower)), lower=True).T


# --- building the store ------------------------------------------------------------------


def weights_fingerprint(model: BaseVAE, run: Run | None = None) -> str:
    """The sha256 of the weights file of `run` (the model's run), or of the tensors for a
    model that belongs to no run folder."""
    if run is not None and run.weights_sha256:
        return run.weights_sha256
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(images, crop: str) -> str:
    """The image set's cache key (files, sizes, mtimes, labels, size, crop) when it was loaded
    from the cache, else a hash of what it holds."""
    cache_path = getattr(images, "cache_path", None)
    if cache_path:
        return Path(cache_path).stem
    digest = hashlib.sha256()
    digest.update(f"{images.images.shape}|{crop}".encode())
    digest.update("\n".join(map(str, images.ids)).encode())
    digest.update(np.asarray(images.labels, np.int64).tobytes())
    digest.update("\n".join(images.breeds).encode())
    return digest.hexdigest()


def load_dataset(model: BaseVAE, data_dir: str | Path, progress: bool = True, run=None):
    """The data set decoded as `run` (the model's run, if any) saw it: the model's image size
    and crop, the run's cache folder."""
    from dogvae.data.cache import load_images

    return load_images(
        data_dir,
        model.config.image_size,
        crop=model.crop,
        cache_dir=run.cache_dir if run is not None else None,
        progress=progress,
    )


def to_batch(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], as the model takes them."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class Encoded:
    """Images through the encoder: posterior means and log-variances, the means of the
    mirrored images, the MSE of each image's reconstruction from its mean, its code gap, and
    the model's own classifier's log-probabilities over its breeds (no columns without one)."""

    mu: np.ndarray
    logvar: np.ndarray
    mu_mirror: np.ndarray
    recon_mse: np.ndarray
    code_gap: np.ndarray
    class_log_probs: np.ndarray

    @property
    def codes(self) -> np.ndarray:
        return facing_invariant(self.mu, self.mu_mirror)

    @property
    def kl_rate(self) -> np.ndarray:
        return kl_rate(self.mu, self.logvar)

    def rows(self, rows) -> Encoded:
        """These images alone (`answer_identify` answers for an `Encoded` of one row)."""
        return Encoded(
            self.mu[rows], self.logvar[rows], self.mu_mirror[rows],
            self.recon_mse[rows], self.code_gap[rows], self.class_log_probs[rows],
        )  # fmt: skip


@torch.no_grad()
def encode_images(
    model: BaseVAE,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    batch_size: int = ENCODE_BATCH,
    progress: bool = False,
) -> Encoded:
    """uint8 (N, H, W, 3) images (those at `rows`, else all) through the encoder, a batch at a
    time, so a memory-mapped cache is never loaded whole. A model with a classifier classifies
    each image once (in bf16 where that is fast): its scores choose the breed it is encoded with
    and are kept."""
    device = next(model.parameters()).device
    model.eval()
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, np.int64)
    if len(rows) == 0:
        raise DogvaeError("no images to encode")
    parts: dict[str, list[torch.Tensor]] = {
        "mu": [], "logvar": [], "mu_mirror": [], "mse": [], "bits": [], "class": []
    }  # fmt: skip
    starts = range(0, len(rows), batch_size)
    for start in progress_bar(starts, show=progress, desc="encoding", unit="batch"):
        x = to_batch(images[rows[start : start + batch_size]], device)
        for name, value in _encode_batch(model, x).items():
            parts[name].append(value.float())
    arrays = {name: torch.cat(values).float().cpu().numpy() for name, values in parts.items()}
    gap = arrays["bits"] - png_bits(images[rows])
    return Encoded(
        arrays["mu"], arrays["logvar"], arrays["mu_mirror"], arrays["mse"], gap, arrays["class"]
    )


def _encode_batch(model: BaseVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    scores = x.new_zeros(len(x), 0)
    if model.has_classifier:  # its views are most of the work: bf16 where that is fast
        with inference_autocast(x.device):
            scores = model.classify(x).float()
    breed = model.resolve_breed(x, None, scores if model.has_classifier else None)
    mu, logvar = model.encode(x, breed=breed)
    logits = model.decode_logits(mu, breed=breed)
    return {
        "mu": mu,
        "logvar": logvar,
        "mu_mirror": model.encode(x.flip(3), breed=breed)[0],
        "mse": mse_per_image(torch.sigmoid(logits.float()), x),
        "bits": model_bits(model, x, logits, mu, logvar),
        "class": torch.log_softmax(scores.float(), 1) if scores.shape[1] else scores.float(),
    }


def model_bits(model: BaseVAE, x, logits, mu, logvar) -> torch.Tensor:
    """The model's code length for each image in bits: -log p(x | mu) + KL, with 8 bits per
    sub-pixel added so that a density on [0, 1] compares with a code for 8-bit pixels."""
    cfg = model.config
    nll = reconstruction_nll(x, logits, cfg.likelihood, model.log_scale)
    kl = kl_per_dim(mu.float(), logvar.float()).sum(1)
    return (nll + kl) / math.log(2) + x[0].numel() * 8


def png_bits(images: np.ndarray) -> np.ndarray:
    """Each uint8 (S, S, 3) image's length as a PNG, in bits: a generic measure of how much
    there is to say about it (its complexity, as in Serra et al. 2020)."""
    lengths = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG", compress_level=9)
        lengths.append(8 * buffer.tell())
    return np.asarray(lengths, np.float32)


def encode_dataset(
    model: BaseVAE, data_dir: str | Path, progress: bool = True, images=None, run=None
) -> LatentStore:
    """Encode every labelled image of `data_dir` once (posterior mean, never a sample), with
    the validation rows of `run` (the model's run; None: a model of no run folder)."""
    run = run if run is not None else Run.for_model(model)
    images = images if images is not None else load_dataset(model, data_dir, progress, run)
    labels = np.asarray(images.labels, np.int64)
    is_val = run.validation_mask(images)
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) == 0:
        raise DataError(f"{data_dir} holds no labelled images to encode")
    encoded = encode_images(model, images.images, labelled, progress=progress)
    return LatentStore(
        mu=encoded.mu,
        logvar=encoded.logvar,
        mu_mirror=encoded.mu_mirror,
        labels=labels[labelled],
        ids=np.asarray([str(images.ids[i]) for i in labelled]),
        is_val=is_val[labelled],
        recon_mse=encoded.recon_mse,
        code_gap=encoded.code_gap,
        class_log_probs=encoded.class_log_probs,
        breeds=list(images.breeds),
        weights_sha256=weights_fingerprint(model, run),
        data_key=data_fingerprint(images, model.crop),
        data=str(data_dir),
        encoded=True,
    )


def open_store(
    model: BaseVAE,
    run: str | Path | Run,
    data_dir: str | Path | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
) -> LatentStore:
    """The latent store of `model` and its run (a Run, or the folder `model` was loaded
    from), kept in the run folder and encoded now if missing or made by other weights or data.

    `data_dir` defaults to the data the run was trained on. When that folder is gone, a store
    made by these same weights is used as it is (it cannot be checked against the images). A
    folder that holds no run only keeps the store: the model is then taken as a run of its own
    (default split, fingerprinted by its tensors).
    """
    folder = run.folder if isinstance(run, Run) else Path(run)
    run = run if isinstance(run, Run) else Run.find(folder) or Run.for_model(model)
    path = folder / STORE_FILE
    data_dir = Path(data_dir or run.data or "")
    if not str(data_dir) or not data_dir.is_dir():
        return _store_without_data(model, run, path, data_dir)
    images = load_dataset(model, data_dir, progress, run)
    data_key = data_fingerprint(images, model.crop)
    if path.exists() and not rebuild:
        with contextlib.suppress(DogvaeError):  # an older or damaged store is rebuilt
            store = LatentStore.load(path)
            if (store.weights_sha256, store.data_key) == (
                weights_fingerprint(model, run),
                data_key,
            ):
                return store
    store = encode_dataset(model, data_dir, progress=progress, images=images, run=run)
    try:
        store.save(path)
    except OSError as exc:  # a read-only run folder: answer from memory this time
        log.warning("latent store not saved (%s): it is encoded again next time", exc)
    return store


def _store_without_data(model: BaseVAE, run: Run, path: Path, data_dir: Path) -> LatentStore:
    where = f"the data folder {data_dir}" if str(data_dir) else "no data folder"
    if not path.exists():
        raise DataError(f"{where} cannot be read and {path} does not exist: pass --data")
    store = LatentStore.load(path)
    if store.weights_sha256 != weights_fingerprint(model, run):
        raise DataError(
            f"{path} was made by other weights and {where} cannot be read to rebuild it: "
            "pass --data"
        )
    return store
