"""A run folder on disk: weights in safetensors, facts in JSON, resume state apart. No pickle.

RUN/
  model.safetensors   best weights by validation ELBO (encoder.* and decoder.* tensors)
  config.json         model config, preset, breed map, data summary, versions, sha256 of weights
  last.safetensors    latest weights, every epoch (and on Ctrl-C)
  state.pt            optimiser, scheduler, epoch, RNG state, sha256 of last.safetensors;
                      plain tensors and numbers, loaded with torch.load(weights_only=True)
  split.json          the validation rows, written once when training starts (`dogvae.run`)
  metrics.jsonl       one line per epoch; metrics.json the final summary; images/; tb/
  checkpoints/NNNNNN/ the four files above, one generation per save
  current             symlink to the newest complete generation

A checkpoint is one unit: each save writes a new generation folder in full (under a temporary
name, every file flushed to disk, then renamed), and then swings the `current` symlink to it
in one rename. The four top-level names are symlinks through `current`, so a crash or kill at
any moment leaves the previous generation or the new one, never best weights from one save
beside a config.json or training state from another. Readers resolve `current` once
(`checkpoint_folder`); a run written before generations (or copied as its top-level files)
is read from the top level. `DOGVAE_CRASH_AT=STEP[@N]` kills the process (SIGKILL) at the
Nth pass through the named write step (`WRITE_STEPS`, `atomic.crash_point`) for the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import dogvae
from dogvae.atomic import (
    crash_point,
    fsync_dir,
    fsync_file,
    json_text,
    remove_stale_temporaries,
    temporary_path,
)
from dogvae.errors import CheckpointError
from dogvae.model import BaseVAE, VAEConfig

FORMAT = "dogvae-run/1"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
CONFIG = "config.json"
STATE = "state.pt"
RUN_FILES = (BEST_WEIGHTS, CONFIG, LAST_WEIGHTS, STATE)
GENERATIONS = "checkpoints"
CURRENT = "current"
# Every point a save can be cut at, in the order it passes them (`crash_point`).
WRITE_STEPS = ("last_weights", "state", "best_weights", "config", "generation", "current", "links")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    return {
        "dogvae": dogvae.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _state_tensors(model: BaseVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def checkpoint_folder(run: str | Path) -> Path:
    """The folder holding the run's latest checkpoint: the generation `RUN/current` names, or
    RUN itself for a run saved before generations existed."""
    run = Path(run)
    link = run / CURRENT
    return run / os.readlink(link) if link.is_symlink() else run


def write_weights(model: BaseVAE, path: Path, info: dict) -> str:
    """The model's tensors with its config in the file's metadata; returns the file's sha256."""
    save_file(_state_tensors(model), str(path), metadata={"dogvae": json.dumps(info)})
    fsync_file(path)
    return sha256_file(path)


def save_checkpoint(
    run: str | Path,
    *,
    last: tuple[BaseVAE, dict, dict] | None = None,
    best: tuple[BaseVAE, dict] | None = None,
) -> Path:
    """Save one generation: `last` = (model, info, training state) as last.safetensors and
    state.pt, `best` = (model, info) as model.safetensors and the config.json that vouches for
    them by hash. What is not given is carried over from the previous generation. Returns the
    new generation's folder."""
    run = Path(run)
    try:
        return _save_generation(run, last, best)
    except OSError as exc:
        raise CheckpointError(
            f"--out {run}: cannot save a checkpoint there ({exc.strerror or exc}); make it "
            "writable (or free space) and resume, or choose another --out"
        ) from exc


def _save_generation(run: Path, last, best) -> Path:
    tidy(run)
    previous = checkpoint_folder(run)
    generations = run / GENERATIONS
    folder = generations / f"{_generation_number(previous) + 1:06d}"
    pending = generations / f".{folder.name}.tmp"
    pending.mkdir(parents=True)
    if last is not None:
        model, info, state = last
        digest = write_weights(model, pending / LAST_WEIGHTS, info)
        crash_point("last_weights")
        torch.save({**state, "weights_sha256": digest}, pending / STATE)
        fsync_file(pending / STATE)
        crash_point("state")
    if best is not None:
        model, info = best
        digest = write_weights(model, pending / BEST_WEIGHTS, info)
        crash_point("best_weights")
        config = {**info, "weights": {"file": BEST_WEIGHTS, "sha256": digest}}
        (pending / CONFIG).write_text(json_text(config))
        fsync_file(pending / CONFIG)
        crash_point("config")
    _carry_over(previous, pending)
    fsync_dir(pending)
    os.replace(pending, folder)
    fsync_dir(generations)
    crash_point("generation")
    _replace_symlink(run / CURRENT, folder.relative_to(run))
    fsync_dir(run)
    crash_point("current")
    for name in RUN_FILES:
        if (folder / name).exists() and not (run / name).is_symlink():
            _replace_symlink(run / name, Path(CURRENT) / name)
    crash_point("links")
    tidy(run)
    return folder


def tidy(run: str | Path) -> None:
    """Remove what interrupted saves left: generations other than the current one (older,
    or written but never made current) and dead processes' temporaries."""
    run = Path(run)
    if (run / CURRENT).is_dir() and not (run / CURRENT).is_symlink():
        shutil.rmtree(run / CURRENT)  # a copy that followed the links: the top level holds it
    current = checkpoint_folder(run)
    generations = run / GENERATIONS
    if generations.is_dir():
        for entry in generations.iterdir():
            if entry == current:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for folder in (run, run / "images"):
        if folder.is_dir():
            remove_stale_temporaries(folder)


def _generation_number(folder: Path) -> int:
    return int(folder.name) if folder.name.isdigit() else 0


def _carry_over(previous: Path, pending: Path) -> None:
    """Hard-link (or copy, where links are not possible) the previous generation's files that
    this save does not replace."""
    for name in RUN_FILES:
        source = previous / name
        if (pending / name).exists() or not source.is_file():
            continue
        try:
            os.link(source.resolve(), pending / name)
        except OSError:
            shutil.copy2(source, pending / name)
            fsync_file(pending / name)


def _replace_symlink(path: Path, target: Path) -> None:
    temporary = temporary_path(path, "link")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)


def run_info(
    *, model_type: str, preset: str, model_config: VAEConfig, train_config: dict, breeds, data: dict
) -> dict:
    """The facts saved with every checkpoint of a run."""
    return {
        "format": FORMAT,
        "model_type": model_type,
        "preset": preset,
        "model": model_config.to_dict(),
        "train": train_config,
        "breeds": list(breeds),
        "data": data,
        "versions": library_versions(),
    }


def last_run_info(run: Path) -> dict | None:
    """The facts saved with the latest checkpoint (`run_info`, in last.safetensors' metadata),
    or None when the run has none yet."""
    path = checkpoint_folder(run) / LAST_WEIGHTS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            info = json.loads((fh.metadata() or {})["dogvae"])
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc}){DAMAGED}") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: unreadable checkpoint (its metadata is not an object)")
    return info


DAMAGED = "; the file is damaged: restore it from a copy of the run"


def _read_state(path: Path) -> dict:
    """state.pt as saved: tensors and numbers only, so loading it runs no code. A damaged file,
    or one holding anything else (a pickle of other objects), is refused in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # its message suggests weights_only=False: never
        raise CheckpointError(
            f"{path} is not a training state dogvae wrote: damaged, or a pickle of other "
            f"objects than tensors and numbers (refused: loading those could run code){DAMAGED}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = str(exc).split(". ")[0] or type(exc).__name__  # torch's first sentence
        raise CheckpointError(
            f"{path} is not a readable training state ({reason}){DAMAGED}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a dogvae training state{DAMAGED}")
    return state


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {what}")
    return path


def existing_run(run: str | Path) -> Path:
    """`checkpoint_folder(run)`, or an error when there is no such folder."""
    if not Path(run).is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    return checkpoint_folder(run)


def read_json_object(path: Path) -> dict:
    """A JSON object from `path`; anything else is refused in one line that names the file."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise CheckpointError(f"{path} is not valid JSON ({exc}){DAMAGED}") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(info).__name__}")
    return info


def check_format(info: dict, path: Path) -> None:
    if info.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown format {info.get('format')!r}, expected {FORMAT}; it was written "
            "by another version of dogvae: load it there and `save_pretrained` the model"
        )


def load_weights(model: BaseVAE, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}){DAMAGED}"
        ) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes (file vs config): " + "; ".join(wrong[:3]))
        if missing:
            parts.append("missing tensors: " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected tensors: " + ", ".join(unexpected[:3]))
        raise CheckpointError(f"{path} does not fit its model config: " + " | ".join(parts))
    model.load_state_dict(tensors)


def model_config_from(saved: dict | None) -> VAEConfig:
    """A saved model config; runs saved before `classifier_activation` existed gave their
    classifier `activation`."""
    try:
        values = dict(saved)
        values.setdefault("classifier_activation", values.get("activation", VAEConfig.activation))
        return VAEConfig.from_dict(values)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the run's model config is unusable: {exc}") from exc


def pick_device(device: str | torch.device = "cpu") -> torch.device:
    """`device` as a torch.device; "auto" is the GPU when there is one, else the CPU. Asking
    for CUDA where there is none is an error that says so (not PyTorch's assertion)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {str(device)!r} was asked for but no CUDA GPU is visible")
    return device


def load(run: str | Path, device: str | torch.device = "cpu") -> BaseVAE:
    """A trained model, in eval mode, with `.breeds` (index -> name) and `.crop`, on `device`
    ("cpu", "cuda", "cuda:1", or "auto": the GPU when there is one): `Run.load(run)`'s
    `load_model`. A run trained on a GPU loads on a CPU and the other way round: the weights
    are saved from the CPU. The run's settings are `dogvae.run.Run.load(run)`'s.
    """
    from dogvae.run import Run  # a Run is read with this module's functions

    return Run.load(run).load_model(device)


def verified_weights(folder: Path, expected_sha256: str | None) -> Path:
    """`folder`'s model.safetensors, refused when missing or not the file whose sha256
    config.json records."""
    weights = require(folder / BEST_WEIGHTS, "the run has no saved weights yet")
    actual = sha256_file(weights)
    if expected_sha256 != actual:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {folder / CONFIG} "
            f"({actual[:12]}... vs {str(expected_sha256)[:12]}...): the file was changed or "
            "replaced"
        )
    return weights


def best_fault(run: str | Path) -> str | None:
    """Why `load(run)` refuses the run's best model (missing, damaged, or not the weights its
    config.json vouches for), or None when it loads."""
    try:
        load(run)
    except CheckpointError as exc:
        return str(exc)
    return None


def load_last(run: Path, model: BaseVAE) -> dict:
    """Restore the latest weights into `model` and return the training state to resume from."""
    folder = checkpoint_folder(run)
    state_path = require(folder / STATE, "nothing to resume: no training state saved in this run")
    weights = require(folder / LAST_WEIGHTS, "nothing to resume: no last weights in this run")
    state = _read_state(state_path)
    if state.get("weights_sha256") != sha256_file(weights):
        raise CheckpointError(f"{weights} does not match {state_path}: cannot resume safely")
    load_weights(model, weights)
    return state
