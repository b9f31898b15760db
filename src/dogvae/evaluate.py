"""`dogvae evaluate` and `dogvae compare`: what a trained run is good at, each figure beside the
baseline that tells whether it is any good.

`evaluate_run(run, data, split)` scores the run on a data set and writes `RUN/eval/`:
`metrics.json` (keys in `METRICS_KEYS`, schema `SCHEMA_VERSION`), `report.html` (one file, images
inline) and the pictures as PNG. The split is the run's own rule (its validation fraction and
seed) applied to the data, so on the training data "val" is exactly the images training held out.

- Image quality on the split: ELBO (beta = 1, one fixed noise draw per image, as training
  validates), MSE, PSNR and SSIM of the reconstruction from the posterior mean; beside the
  training mean image and PCA with as many components as the latent size.
- Breeds: probes fitted on the training split's codes and scored on the validation split
  (whatever `split` is: a probe scored on its own training images says nothing), the model's own
  classifier where it has one, chance, and the same probes on PCA features of the pixels.
  Clusters of the codes against breeds, beside clusters of the pixel features. Ancestry of the
  synthetic mutts (when the data folder has `mutts.csv`) beside nearest-centroid.
- Pictures: reconstructions, prior samples, breed samples (conditional models), breed mix
  strips, the latent map; training curves from `RUN/metrics.jsonl`.

`compare_runs(runs)` reads each run's `eval/metrics.json` into one table with the best of each
row marked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from dogvae.atomic import atomic_path, write_json
from dogvae.data.loader import CachedImages, make_loader
from dogvae.errors import DataError, DogvaeError
from dogvae.latents import LatentStore, load_dataset, open_store, to_batch
from dogvae.metrics import (
    as_flat_float,
    baseline_reconstructions,
    pixel_pca,
    psnr_np,
    ssim_per_image,
)
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, pairs_grid, save_png
from dogvae.run import Run
from dogvae.runtime import Runtime, noise_rows
from dogvae.tasks.clusters import cluster_latents
from dogvae.tasks.identify import evaluate_identify
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.probe import choose_probe
from dogvae.validation import validate

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
SCHEMA_VERSION = 1
SPLITS = ("val", "train")
METRICS_KEYS = (
    "schema_version", "run", "data", "split", "n_images", "model", "training", "elbo",
    "reconstruction", "active_units", "identification", "clustering", "ancestry", "pictures",
    "seconds",
)  # fmt: skip
BATCH = 256
GRID_DOGS = 16
CONFUSION_BREEDS = 8
CONFUSED_PAIRS = 10
BREED_SAMPLE_BREEDS = 8
BREED_SAMPLES_EACH = 4
MIX_STEPS = 8


def eval_dir(run: str | Path) -> Path:
    return Path(run) / EVAL_DIR


# --- the evaluation ------------------------------------------------------------------------


def evaluate_run(
    run: str | Path, data: str | Path | None = None, split: str = "val", progress: bool = True
) -> dict:
    """Score the run on `data` (default: the data it was trained on), write `RUN/eval/`, and
    return what `RUN/eval/metrics.json` holds."""
    from dogvae.eval_report import render_report

    if split not in SPLITS:
        raise DogvaeError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
    started = time.perf_counter()
    facts = Run.load(run)
    run, model = facts.folder, facts.load_model()
    data = data_folder(facts, data)
    images = load_dataset(model, data, progress, facts)
    train_rows, rows = split_rows(facts, images, split, data)
    store = open_store(model, facts, data, progress=progress)
    out = eval_dir(run)
    pca = pixel_pca(images.images[train_rows], model.config.latent_dim)
    pixel_store = pixel_feature_store(pca, images, store)
    knowledge = BreedKnowledge(model, store, run)
    identification, confusion_probs = identification_figures(knowledge)
    identification["pixel_pca"] = pixel_baseline(pixel_store)
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run": str(run),
        "data": str(data),
        "split": split,
        "n_images": len(rows),
        "model": model_summary(model, facts),
        "training": training_summary(facts),
        **likelihood_figures(model, images, rows),
        "identification": identification,
        "clustering": clustering_figures(store, pixel_store, out),
        "ancestry": ancestry_figures(knowledge, data),
    }
    metrics["reconstruction"].update(
        ssim=reconstruction_ssim(model, images, rows),
        baselines=reconstruction_baseline_figures(pca, images.images[rows]),
    )
    identification["confusion"] = confusion_table(*confusion_probs, store.breeds)
    metrics["pictures"] = {
        "reconstructions": str(reconstruction_grid(model, images, rows, out)),
        "samples": str(prior_samples(model, out)),
        "breed_samples": breed_samples(model, store.breeds, out),
        "mixes": mix_strips(knowledge, identification["confusion"], out),
        "latent_map": metrics["clustering"].pop("picture"),
    }
    metrics["seconds"] = time.perf_counter() - started
    write_json(out / METRICS_FILE, metrics)
    with atomic_path(out / REPORT_FILE) as tmp:
        tmp.write_text(render_report(metrics, read_curves(run)), encoding="utf-8")
    return metrics


def data_folder(run: Run, data: str | Path | None) -> Path:
    """`data`, or the folder the run was trained on; it must exist."""
    folder = Path(data) if data is not None else run.data
    if folder is None or str(folder) in ("", "."):
        raise DataError("the run does not record its data folder: pass --data")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    return folder


def split_rows(run: Run, images, split: str, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows the baselines fit on (the run's training split, unlabelled images included)
    and the rows scored (`split`)."""
    is_val = run.validation_mask(images)
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    rows = val_rows if split == "val" else train_rows
    if len(rows) == 0:
        raise DataError(f"{data}: the {split} split holds no images (are any labelled?)")
    return train_rows, rows


def model_summary(model: BaseVAE, run: Run) -> dict:
    return {
        "type": model.config.model,
        "preset": run.preset,
        "image_size": model.config.image_size,
        "latent_dim": model.config.latent_dim,
        "likelihood": model.config.likelihood,
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_breeds": len(model.breeds),
    }


def read_curves(run: Path) -> list[dict]:
    """The per-epoch records of `RUN/metrics.jsonl`, the last one of each epoch (a resumed run
    may log an epoch twice), in epoch order; [] when there is no log."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def training_summary(run: Run) -> dict:
    curves = read_curves(run.folder)
    return {
        "epochs": len(curves),
        "best_epoch": run.epoch,
        "minutes": sum(r.get("seconds", 0.0) for r in curves) / 60,
    }


# --- image quality -------------------------------------------------------------------------


def likelihood_figures(model: BaseVAE, images, rows: np.ndarray) -> dict:
    """ELBO, MSE, PSNR and active units on `rows`, computed exactly as training validates."""
    rt = Runtime(device=next(model.parameters()).device)
    batches = make_loader(CachedImages(images, rows), BATCH, shuffle=False)
    noise = noise_rows(len(rows), model.config.latent_dim, rt, torch.Generator().manual_seed(0))
    figures = validate(model, batches, noise, rt)
    return {
        "elbo": {
            "nats_per_image": figures["elbo"],
            "bits_per_dim": figures["bits_per_dim"],
            "reconstruction": figures["recon"],
            "kl": figures["kl"],
        },
        "reconstruction": {"mse": figures["mse"], "psnr": figures["psnr"]},
        "active_units": {"count": figures["active_units"], "of": model.config.latent_dim},
    }


def _batches(images, rows: np.ndarray, device):
    for start in range(0, len(rows), BATCH):
        yield to_batch(images.images[rows[start : start + BATCH]], device)


@torch.no_grad()
def reconstruction_ssim(model: BaseVAE, images, rows: np.ndarray) -> float:
    device = next(model.parameters()).device
    scores = [ssim_per_image(model.reconstruct(x), x) for x in _batches(images, rows, device)]
    return float(torch.cat(scores).mean())


def reconstruction_baseline_figures(pca, scored: np.ndarray) -> dict:
    """MSE, PSNR and SSIM of the mean image and of the PCA projection on uint8 images."""
    truth = as_flat_float(scored)
    figures = {}
    for name, drawn in baseline_reconstructions(pca, scored).items():
        as_images = torch.from_numpy(np.ascontiguousarray(drawn)).view(scored.shape)
        figures[name] = {
            "mse": float(((truth - drawn) ** 2).mean()),
            "psnr": psnr_np(truth, drawn),
            "ssim": float(ssim_per_image(as_images.permute(0, 3, 1, 2), to_batch(scored)).mean()),
        }
    figures["pca"]["components"] = int(pca.n_components_)
    return figures


# --- breeds --------------------------------------------------------------------------------


def pixel_feature_store(pca, images, store: LatentStore) -> LatentStore:
    """The store's images as PCA features of their pixels (and of their mirror images), so the
    baseline probes and clusters run exactly as the latent ones do."""
    labelled = np.flatnonzero(np.asarray(images.labels) >= 0)
    features = [_pca_features(pca, images.images, labelled, flip) for flip in (False, True)]
    zeros = np.zeros(len(labelled), np.float32)
    return LatentStore(
        mu=features[0], logvar=np.zeros_like(features[0]), mu_mirror=features[1],
        labels=store.labels, ids=store.ids, is_val=store.is_val, recon_mse=zeros, code_gap=zeros,
        class_log_probs=np.zeros((len(labelled), 0), np.float32), breeds=store.breeds, weights_sha256="pixel-pca", data_key=store.data_key,
    )  # fmt: skip


def _pca_features(pca, pixels: np.ndarray, rows: np.ndarray, flip: bool) -> np.ndarray:
    parts = []
    for start in range(0, len(rows), 1024):
        chunk = pixels[rows[start : start + 1024]]
        parts.append(pca.transform(as_flat_float(chunk[:, :, ::-1] if flip else chunk)))
    return np.concatenate(parts).astype(np.float32)


def identification_figures(knowledge: BreedKnowledge):
    """Top-1/top-5 and log loss on the validation split of the latent probes, the model's own
    classifier (as `identify` answers with it: calibrated, all its views) and chance; and the
    validation labels with the probabilities of the identifier that answers (for the
    confusion table)."""
    store = knowledge.store
    report = evaluate_identify(knowledge)
    val = store.val_rows
    figures = {
        "n_train": report["n_train"],
        "n_val": report["n_val"],
        "n_breeds": len(store.breeds),
        "chance": {"top1": report["chance_top1"], "top5": report["chance_top5"]},
        "knn": dict(report["knn"]),
        "logistic": dict(report["logistic"]),
        "probe_chosen": report["chosen"],
        "classifier": None,
    }
    figures[report["chosen"]]["log_loss"] = report["log_loss"]  # the calibrated one's
    figures["confusion_source"] = f"{report['chosen']} probe on the latent codes"
    if knowledge.classifier is not None:
        figures["classifier"] = {
            **{k: knowledge.classifier.report[k] for k in ("top1", "top5", "log_loss")},
            "temperature": knowledge.classifier.temperature,
            "views": knowledge.model.config.classifier_views,
        }
        figures["confusion_source"] = "the model's own classifier"
    return figures, (store.labels[val], knowledge.store_probabilities(val))


def pixel_baseline(pixel_store: LatentStore) -> dict:
    report = choose_probe(pixel_store).report
    return {"knn": report["knn"], "logistic": report["logistic"]}


def confusion_table(labels: np.ndarray, probs: np.ndarray, breeds: list[str]) -> dict:
    """The most-confused (true, predicted) pairs, and the confusion matrix restricted to the
    breeds most involved in mistakes (rows: true breed, columns: predicted)."""
    predicted = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    n = len(breeds)
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    mistakes = matrix.copy()
    np.fill_diagonal(mistakes, 0)
    order = np.argsort(-mistakes, axis=None, kind="stable")[:CONFUSED_PAIRS]
    totals = matrix.sum(1)
    pairs = [
        {
            "true": breeds[t],
            "predicted": breeds[p],
            "count": int(mistakes[t, p]),
            "share_of_true": float(mistakes[t, p] / totals[t]),
        }
        for t, p in zip(*np.unravel_index(order, mistakes.shape), strict=True)
        if mistakes[t, p] > 0
    ]
    involved = mistakes.sum(0) + mistakes.sum(1)
    shown = np.sort(np.argsort(-involved, kind="stable")[: min(CONFUSION_BREEDS, n)])
    return {
        "pairs": pairs,
        "breeds": [breeds[b] for b in shown],
        "matrix": matrix[np.ix_(shown, shown)].tolist(),
    }


def clustering_figures(store: LatentStore, pixel_store: LatentStore, out: Path) -> dict:
    latent = cluster_latents(store, out / "latent-map.png", seed=0)
    pixels = cluster_latents(pixel_store, seed=0)
    return {
        "kmeans": latent["kmeans"],
        "gaussian_mixture": latent["gaussian_mixture"],
        "pixel_pca": {"kmeans": pixels["kmeans"], "gaussian_mixture": pixels["gaussian_mixture"]},
        "picture": latent["picture"],
    }


def ancestry_figures(knowledge: BreedKnowledge, data: Path) -> dict | None:
    """Parent recovery on the synthetic mutts beside nearest-centroid; None without mutts."""
    from dogvae.tasks.ancestry import evaluate_ancestry

    if not (data / "mutts.csv").is_file():
        return None
    return evaluate_ancestry(knowledge.model, knowledge.store, data, knowledge=knowledge)


# --- pictures ------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_grid(model: BaseVAE, images, rows: np.ndarray, out: Path) -> Path:
    """Up to GRID_DOGS dogs spread over the split, each above its reconstruction."""
    chosen = rows[np.unique(np.linspace(0, len(rows) - 1, min(GRID_DOGS, len(rows))).astype(int))]
    x = to_batch(images.images[chosen], next(model.parameters()).device)
    return save_png(pairs_grid(x.cpu(), model.reconstruct(x).cpu()), out / "reconstructions.png")


@torch.no_grad()
def prior_samples(model: BaseVAE, out: Path, n: int = GRID_DOGS) -> Path:
    device = next(model.parameters()).device
    samples = model.sample(n, generator=torch.Generator(device).manual_seed(0)).cpu()
    return save_png(image_grid(samples, ncols=8), out / "samples.png")


@torch.no_grad()
def breed_samples(model: BaseVAE, breeds: list[str], out: Path) -> str | None:
    """A row of samples for each of up to BREED_SAMPLE_BREEDS breeds, drawn by a conditional
    model (`model.sample(n, breed=...)`); None for a model that cannot choose the breed."""
    if not model.conditional:
        return None
    n = BREED_SAMPLES_EACH
    chosen = np.unique(np.linspace(0, len(model.breeds) - 1, BREED_SAMPLE_BREEDS).astype(int))
    generator = torch.Generator(next(model.parameters()).device).manual_seed(0)
    rows, captions = [], []
    for b in chosen:
        rows.append(model.sample(n, breed=int(b), generator=generator).cpu())
        captions += [model.breeds[b]] + [""] * (n - 1)
    picture = image_grid(torch.cat(rows), ncols=n, captions=captions)
    return str(save_png(picture, out / "breed-samples.png"))


def mix_strips(knowledge: BreedKnowledge, confusion: dict, out: Path) -> list[dict]:
    """Strips between breeds (as their typical dogs): the most-confused pair, and the first
    two breeds."""
    from dogvae.tasks.mixing import mix

    model, store = knowledge.model, knowledge.store
    pairs = [(p["true"], p["predicted"]) for p in confusion["pairs"][:1]]
    if len(store.breeds) >= 2:
        pairs.append((store.breeds[0], store.breeds[1]))
    unique = list(dict.fromkeys(tuple(sorted(p)) for p in pairs))
    strips = []
    for i, (a, b) in enumerate(unique, start=1):
        made = mix(model, store, a, b, out / f"mix-{i}.png", steps=MIX_STEPS, knowledge=knowledge)
        strips.append({"a": a, "b": b, "picture": made["picture"]})
    return strips


# --- side by side --------------------------------------------------------------------------

# label, path in metrics.json, which way is better (None: not ranked), how it is printed
COMPARE_ROWS = (
    ("negative ELBO, nats/image", ("elbo", "nats_per_image"), "lower", "{:.1f}"),
    ("bits/dim", ("elbo", "bits_per_dim"), "lower", "{:.3f}"),
    ("MSE", ("reconstruction", "mse"), "lower", "{:.5f}"),
    ("PSNR, dB", ("reconstruction", "psnr"), "higher", "{:.2f}"),
    ("  mean image PSNR", ("reconstruction", "baselines", "mean_image", "psnr"), None, "{:.2f}"),
    ("  PCA PSNR", ("reconstruction", "baselines", "pca", "psnr"), None, "{:.2f}"),
    ("SSIM", ("reconstruction", "ssim"), "higher", "{:.4f}"),
    ("  PCA SSIM", ("reconstruction", "baselines", "pca", "ssim"), None, "{:.4f}"),
    ("active units", ("active_units", "count"), None, "{}"),
    ("top-1 k-NN", ("identification", "knn", "top1"), "higher", "{:.1%}"),
    ("top-5 k-NN", ("identification", "knn", "top5"), "higher", "{:.1%}"),
    ("top-1 logistic", ("identification", "logistic", "top1"), "higher", "{:.1%}"),
    ("top-5 logistic", ("identification", "logistic", "top5"), "higher", "{:.1%}"),
    ("top-1 classifier", ("identification", "classifier", "top1"), "higher", "{:.1%}"),
    ("top-5 classifier", ("identification", "classifier", "top5"), "higher", "{:.1%}"),
    ("log loss classifier", ("identification", "classifier", "log_loss"), "lower", "{:.3f}"),
    ("  top-1 pixel PCA logistic", ("identification", "pixel_pca", "logistic", "top1"), None, "{:.1%}"),
    ("  top-1 chance", ("identification", "chance", "top1"), None, "{:.1%}"),
    ("clusters NMI (k-means)", ("clustering", "kmeans", "nmi"), "higher", "{:.3f}"),
    ("clusters ARI (k-means)", ("clustering", "kmeans", "ari"), "higher", "{:.3f}"),
    ("mutts: both parents top-2", ("ancestry", "ancestry", "both_parents_top2"), "higher", "{:.1%}"),
    ("mutts: share error", ("ancestry", "ancestry", "share_error"), "lower", "{:.3f}"),
    ("epochs", ("training", "epochs"), None, "{}"),
    ("training minutes", ("training", "minutes"), None, "{:.1f}"),
)  # fmt: skip


def read_metrics(run: str | Path) -> dict:
    """A run's `eval/metrics.json`, or an error saying how to make it."""
    run = Path(run)
    if not run.is_dir():
        raise DogvaeError(f"{run}: no such run folder")
    path = eval_dir(run) / METRICS_FILE
    if not path.is_file():
        raise DogvaeError(f"{run} has not been evaluated (no {path}): run `dogvae evaluate {run}`")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DogvaeError(f"{path} is not valid JSON ({exc})") from exc
    if metrics.get("schema_version") != SCHEMA_VERSION:
        raise DogvaeError(f"{path}: schema {metrics.get('schema_version')!r}, expected "
                          f"{SCHEMA_VERSION}: run `dogvae evaluate {run}` again")  # fmt: skip
    return metrics


def _lookup(metrics: dict, path: tuple[str, ...]):
    value = metrics
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def best_of(values: list, better: str | None) -> list[int]:
    """Positions holding the best value (all of them on a tie); none when the row is not
    ranked or fewer than two runs have a value."""
    present = [v for v in values if v is not None]
    if better is None or len(present) < 2:
        return []
    best = max(present) if better == "higher" else min(present)
    return [i for i, v in enumerate(values) if v == best]


def run_names(runs: list[Path]) -> list[str]:
    """Folder names, or whole paths where two runs share a folder name."""
    names = [r.name or str(r) for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names, strict=True)]


def compare_runs(runs: list[str | Path]) -> dict:
    """The evaluated runs' figures side by side: one row per figure, the best marked."""
    runs = [Path(r) for r in runs]
    evaluated = [read_metrics(r) for r in runs]
    rows = []
    for label, path, better, fmt in COMPARE_ROWS:
        values = [_lookup(m, path) for m in evaluated]
        if any(v is not None for v in values):
            rows.append({"label": label, "key": ".".join(path), "better": better,
                         "format": fmt, "values": values, "best": best_of(values, better)})  # fmt: skip
    return {"runs": run_names(runs), "paths": [str(r) for r in runs], "rows": rows,
            "notes": comparison_notes(evaluated)}  # fmt: skip


def comparison_notes(evaluated: list[dict]) -> list[str]:
    """What makes a row unfair to compare: other data, split, image size or likelihood."""
    notes = []
    for what, get in (
        ("data folder", lambda m: m["data"]),
        ("split", lambda m: m["split"]),
        ("image size", lambda m: m["model"]["image_size"]),
        ("likelihood", lambda m: m["model"]["likelihood"]),
    ):
        seen = sorted({str(get(m)) for m in evaluated})
        if len(seen) > 1:
            notes.append(f"the runs differ in {what} ({', '.join(seen)}): compare with care")
    types = {m["model"]["type"] for m in evaluated}
    if "cvae" in types and len(types) > 1:
        notes.append(
            "a cvae's ELBO bounds -log p(x | breed), given the breed; the others' bound "
            "-log p(x): the ELBO rows do not compare like with like"
        )
    return notes


def write_comparison(table: dict, out: str | Path) -> Path:
    """The comparison as a self-contained HTML page."""
    from dogvae.eval_report import render_comparison

    with atomic_path(out) as tmp:
        tmp.write_text(render_comparison(table), encoding="utf-8")
    return Path(out)
