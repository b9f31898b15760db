"""`dogvae demo`: the whole path on the embedded default, in a few minutes on a laptop CPU.

Draws the synthetic breeds (if not already there), trains `small64` on them (an ssvae, since
they are labelled: `dogvae.trainer.default_model`), and leaves the pictures and numbers a
first-time user wants to look at in one folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from dogvae.atomic import write_json
from dogvae.callbacks import quality_line
from dogvae.checkpoint import load
from dogvae.data.cache import load_images
from dogvae.data.loader import CachedImages
from dogvae.data.split import stratified_split
from dogvae.pictures import image_grid, pairs_grid, save_png
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train

DEMO_SYNTH = {"breeds": 8, "per_breed": 150, "size": 96, "mutts": 100, "seed": 0}
log = logging.getLogger(__name__)


def run_demo(out: str | Path, epochs: int = 40, progress: bool = True) -> dict:
    """Synthesise, train, and write reconstructions.png, samples.png and metrics.json to `out`;
    returns the training summary and the files (`format_demo` prints them)."""
    out = Path(out)
    data, run = out / "data", out / "run"
    if not (data / "labels.csv").exists():
        log.info("drawing the synthetic breeds into %s", data)
        synthesize(data, progress=progress, **DEMO_SYNTH)
    if run.exists():
        shutil.rmtree(run)  # the demo's own run folder: always a fresh, comparable run
    summary = train(
        TrainConfig(
            data=str(data), out=str(run), preset="small64", epochs=epochs, progress=progress
        )
    )
    model = load(run)
    images = load_images(data, model.config.image_size, progress=False)
    _, val_idx = stratified_split(images.labels, 0.1, 0)
    originals = CachedImages(images, val_idx[:16]).__getitems__(list(range(16)))[0]
    with torch.no_grad():
        recons = model.reconstruct(originals)
        samples = model.sample(32, generator=torch.Generator().manual_seed(0))
    files = {
        "reconstructions": save_png(
            pairs_grid(originals, recons, ncols=8), out / "reconstructions.png"
        ),
        "samples": save_png(image_grid(samples, ncols=8), out / "samples.png"),
        "metrics": write_json(out / "metrics.json", summary),
    }
    return {
        "summary": summary,
        "files": {name: str(path) for name, path in files.items()},
        "run": str(run),
    }


def format_demo(result: dict) -> str:
    """How good the model is, and where its pictures and weights are."""
    lines = [quality_line(result["summary"])]
    lines += [f"{name:>15}: {path}" for name, path in result["files"].items()]
    run = result["run"]
    lines.append(f"{'model':>15}: {run} (load it with dogvae.load('{run}'))")
    return "\n".join(lines)
