"""A run folder on disk: weights in safetensors, facts in JSON, resume state apart. No pickle.

RUN/
  model.safetensors   best weights by validation ELBO (encoder.* and decoder.* tensors)
  config.json         model config, preset, breed map, data summary, versions, sha256 of weights
  last.safetensors    latest weights, every epoch (and on Ctrl-C)
  state.pt            optimiser, scheduler, epoch, RNG state, sha256 of last.safetensors;
                      plain tensors and numbers, loaded with torch.load(weights_only=True)
  metrics.jsonl       one line per epoch; metrics.json the final summary; images/; tb/

Every file is written atomically, so an interrupted save leaves the previous good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dogvae
from dogvae.atomic import atomic_path, write_json
from dogvae.errors import CheckpointError
from dogvae.model import BaseVAE, VAEConfig, build_model

FORMAT = "dogvae-run/1"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
CONFIG = "config.json"
STATE = "state.pt"


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


def save_weights(model: BaseVAE, path: Path, info: dict) -> str:
    """Write the model's tensors with its config in the file's metadata; return the file's sha256."""
    with atomic_path(path) as tmp:
        save_file(_state_tensors(model), str(tmp), metadata={"dogvae": json.dumps(info)})
        digest = sha256_file(tmp)
    return digest


def save_best(run: Path, model: BaseVAE, info: dict) -> None:
    """Best weights, then the config.json that vouches for them by hash."""
    digest = save_weights(model, run / BEST_WEIGHTS, info)
    write_json(run / CONFIG, {**info, "weights": {"file": BEST_WEIGHTS, "sha256": digest}})


def save_last(run: Path, model: BaseVAE, info: dict, state: dict) -> None:
    """Latest weights and the training state that resumes from them."""
    digest = save_weights(model, run / LAST_WEIGHTS, info)
    with atomic_path(run / STATE) as tmp:
        torch.save({**state, "weights_sha256": digest}, tmp)


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
    path = Path(run) / LAST_WEIGHTS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})["dogvae"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {what}")
    return path


def read_config(run: str | Path) -> dict:
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    path = _require(run / CONFIG, "this folder holds no trained dogvae model (run `dogvae train`)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {info.get('format')!r}, expected {FORMAT}")
    return info


def _load_into(model: BaseVAE, path: Path) -> None:
    tensors = load_file(str(path))
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


def model_from_info(info: dict) -> BaseVAE:
    try:
        saved = dict(info["model"])
        # runs saved before classifier_activation existed gave their classifier `activation`
        saved.setdefault("classifier_activation", saved.get("activation", VAEConfig.activation))
        config = VAEConfig.from_dict(saved)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the run's model config is unusable: {exc}") from exc
    return build_model(config)


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
    """A trained model, in eval mode, with `.breeds` (index -> name) and `.info` (config.json),
    on `device` ("cpu", "cuda", "cuda:1", or "auto": the GPU when there is one). A run
    trained on a GPU loads on a CPU and the other way round: the weights are saved from the CPU.

    Refuses a run whose weights are missing, do not match the hash in config.json, or do not
    fit the model config, and says which.
    """
    run = Path(run)
    info = read_config(run)
    weights = _require(run / BEST_WEIGHTS, "the run has no saved weights yet")
    expected = info.get("weights", {}).get("sha256")
    actual = sha256_file(weights)
    if expected != actual:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {run / CONFIG} "
            f"({actual[:12]}... vs {str(expected)[:12]}...): the file was changed or replaced"
        )
    model = model_from_info(info)
    _load_into(model, weights)
    model.breeds = list(info.get("breeds", []))
    model.info = info
    return model.to(pick_device(device)).eval()


def load_last(run: Path, model: BaseVAE) -> dict:
    """Restore the latest weights into `model` and return the training state to resume from."""
    state_path = _require(run / STATE, "nothing to resume: no training state saved in this run")
    weights = _require(run / LAST_WEIGHTS, "nothing to resume: no last weights in this run")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("weights_sha256") != sha256_file(weights):
        raise CheckpointError(f"{weights} does not match {state_path}: cannot resume safely")
    _load_into(model, weights)
    return state
