"""A model as one folder: its weights and config, without the run's training files.

`save_pretrained(model, folder)` writes `model.safetensors` and `config.json` (the model
config, the breed map, the crop its photos need, library versions and the weights' sha256);
`from_pretrained(source)` loads such a folder, a run folder (its best model), or a Hugging Face
Hub id when `huggingface_hub` is installed (`pip install 'dogvae[hub]'`), as diffusers'
`save_pretrained` / `from_pretrained` do. `export_run(run, folder)` adds a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dogvae import checkpoint
from dogvae.atomic import atomic_path, write_json
from dogvae.errors import CheckpointError
from dogvae.model import BaseVAE
from dogvae.run import PRETRAINED_FORMAT as FORMAT
from dogvae.run import Run

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


def save_pretrained(model: BaseVAE, folder: str | Path) -> Path:
    """Write the model to `folder` (made if missing); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "model_type": model.config.model,
        "model": model.config.to_dict(),
        "breeds": list(model.breeds),
        "crop": model.crop,
        "versions": checkpoint.library_versions(),
    }
    with atomic_path(folder / WEIGHTS) as tmp:
        digest = checkpoint.write_weights(model, tmp, {"format": FORMAT})
    write_json(folder / CONFIG, {**config, "weights": {"sha256": digest}})
    return folder


def from_pretrained(
    source: str | Path,
    device: str | torch.device = "cpu",
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> BaseVAE:
    """A model in eval mode from a `save_pretrained` folder, a run folder, or a Hub id
    (`revision`, `cache_dir` and `local_files_only` as `huggingface_hub.snapshot_download`
    takes them)."""
    if Path(source).is_dir():
        folder = Path(source)
    else:
        folder = hub_snapshot(str(source), revision, cache_dir, local_files_only)
    return load_folder(folder).load_model(device)


def load_folder(folder: Path) -> Run:
    """The Run of a `save_pretrained` folder or a run folder; any other folder is refused."""
    config = _read_config(folder)
    if config.get("format") not in (checkpoint.FORMAT, FORMAT):
        raise CheckpointError(
            f"{folder / CONFIG}: not a dogvae model (format {config.get('format')!r})"
        )
    return Run.load(folder)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}, so not a dogvae model or run folder")
    return checkpoint.read_json_object(path)


def hub_snapshot(
    repo_id: str, revision=None, cache_dir=None, local_files_only: bool = False
) -> Path:
    """The local folder of a Hub model: from the Hub's cache, downloaded when allowed and
    not yet there (the Hub client also honours HF_HUB_OFFLINE and HF_HOME)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(
            f"{repo_id!r} is no folder here; loading it from the Hugging Face Hub needs "
            "huggingface_hub: pip install 'dogvae[hub]'"
        ) from exc
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir,
            local_files_only=local_files_only, library_name="dogvae",
        )  # fmt: skip
        return Path(folder)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"{repo_id!r}: not a folder, and not on the Hub's ({exc})") from exc


def export_run(run: str | Path, folder: str | Path) -> Path:
    """The run's best model as a `save_pretrained` folder with a model card (README.md)."""
    run = Run.load(run)
    model = run.load_model()
    save_pretrained(model, folder)
    with atomic_path(Path(folder) / CARD) as tmp:
        tmp.write_text(model_card(model, run), encoding="utf-8")
    return Path(folder)


def model_card(model: BaseVAE, run: Run) -> str:
    """What the model is, what it was trained on, how well it did, and what it is for."""
    cfg, data = model.config, run.data_summary
    metrics = _json_or_empty(run.folder / "metrics.json")
    val = metrics.get("val", {})
    evaluated = _json_or_empty(run.folder / "eval" / "metrics.json").get("identification") or {}
    lines = [
        f"# dogvae {cfg.model} ({run.preset}, {cfg.image_size} px, latent {cfg.latent_dim})",
        "",
        "A variational autoencoder of dog photos made with dogvae; load it with",
        "`dogvae.from_pretrained(folder)`.",
        "",
        "## Data",
        f"{data.get('n_images', '?')} images of {len(model.breeds)} breeds "
        f"({data.get('layout', '?')} layout, {run.crop} crop).",
        "",
        "## Measured (validation split)",
    ]
    if val:
        lines.append(f"- negative ELBO {val.get('elbo', float('nan')):.1f} nats/image, "
                     f"PSNR {val.get('psnr', float('nan')):.2f} dB")  # fmt: skip
    if "top1" in val:
        lines.append(f"- breed classifier top-1 {val['top1']:.1%}, top-5 {val['top5']:.1%}")
    c = evaluated.get("classifier") or {}
    if c.get("log_loss") is not None:
        lines.append(
            f"- `dogvae evaluate`: classifier top-1 {c['top1']:.1%}, log loss {c['log_loss']:.3f}"
        )
    lines += [
        f"- trained {metrics.get('epochs', '?')} epochs, best epoch {metrics.get('best_epoch', '?')}",
        "",
        "## Intended use",
        "Research and teaching: reconstructing, mixing and sampling dog photos, naming breeds",
        "with honest probabilities. Not for decisions about real animals or people.",
        "",
        "## Licence of the data",
        'Trained on photos from the Kaggle "Dog Breed Identification" competition (from Stanford',
        "Dogs, itself from ImageNet): for non-commercial research and education only. The",
        "weights inherit that restriction.",
        "",
    ]
    return "\n".join(lines)


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
