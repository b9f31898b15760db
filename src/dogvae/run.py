"""A run as one object: what its model is, what it was trained with and on, which images it
held back for validation.

`Run.load(folder)` reads a run folder's config.json (from its current generation) or a
`save_pretrained` folder's (which has no training files: its crop and breed map only);
`Run.latest(folder)` reads what the newest checkpoint was saved with, for `--resume`;
`Run.create(...)` is the record training starts with, and saves the validation split as
RUN/split.json. Tasks read settings (data folder, crop, cache, split, weights' sha256) from
here, not from the model; the loaded model knows only what its weights mean (`breeds`: its
breed indices' names) and how its photos are cut (`crop`), which `save_pretrained` keeps too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dogvae import checkpoint
from dogvae.atomic import write_json
from dogvae.data.split import stratified_split
from dogvae.errors import CheckpointError
from dogvae.model import BaseVAE, VAEConfig, build_model

log = logging.getLogger(__name__)

PRETRAINED_FORMAT = "dogvae-pretrained/1"
SPLIT = "split.json"
SPLIT_FORMAT = "dogvae-split/1"


@dataclass(frozen=True)
class Run:
    """The facts of one run folder (or of one `save_pretrained` folder: `train` then holds
    only its crop). `checkpoint` is the generation they were read from, resolved once."""

    folder: Path | None
    model_config: VAEConfig
    breeds: list[str]
    train: dict = field(default_factory=dict)  # the TrainConfig fields it was trained with
    preset: str | None = None
    data_summary: dict = field(default_factory=dict)  # `ImageSet.summary()` of its data
    versions: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    epoch: int | None = None  # of the best weights
    metrics: dict = field(default_factory=dict)  # their validation figures
    weights_sha256: str | None = None
    format: str = checkpoint.FORMAT
    checkpoint: Path | None = None

    @property
    def data(self) -> Path | None:
        """The data folder it was trained on, or None when it does not say."""
        return Path(self.train["data"]) if self.train.get("data") else None

    @property
    def crop(self) -> str:
        return self.train.get("crop") or "center"

    @property
    def cache_dir(self) -> str | None:
        return self.train.get("cache_dir")

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | Path) -> Run:
        """The run in `folder` (its best model's config.json), or a `save_pretrained` folder."""
        generation = checkpoint.existing_run(folder)
        path = checkpoint.require(
            generation / checkpoint.CONFIG,
            "this folder holds no trained dogvae model (run `dogvae train`)",
        )
        config = checkpoint.read_json_object(path)
        if config.get("format") == PRETRAINED_FORMAT:
            return cls.from_pretrained_config(config, Path(folder))
        checkpoint.check_format(config, path)
        return cls.from_info(config, Path(folder), generation)

    @classmethod
    def find(cls, folder: str | Path) -> Run | None:
        """`Run.load(folder)`, or None when the folder holds no config.json (a folder that
        only keeps a latent store)."""
        if not (checkpoint.checkpoint_folder(folder) / checkpoint.CONFIG).is_file():
            return None
        return cls.load(folder)

    @classmethod
    def latest(cls, folder: str | Path) -> Run | None:
        """What the newest checkpoint was saved with (last.safetensors' metadata): the
        settings `--resume` goes on with; None when the run has no checkpoint yet."""
        info = checkpoint.last_run_info(Path(folder))
        return None if info is None else cls.from_info(info, Path(folder))

    @classmethod
    def from_info(cls, info: dict, folder: Path | None, generation: Path | None = None) -> Run:
        """A Run from what a checkpoint saved (`info`, the dict `Run.info` makes)."""
        return cls(
            folder=folder,
            model_config=checkpoint.model_config_from(info.get("model")),
            breeds=list(info.get("breeds", [])),
            train=dict(info.get("train", {})),
            preset=info.get("preset"),
            data_summary=dict(info.get("data", {})),
            versions=dict(info.get("versions", {})),
            runtime=dict(info.get("runtime", {})),
            epoch=info.get("epoch"),
            metrics=dict(info.get("metrics", {})),
            weights_sha256=info.get("weights", {}).get("sha256"),
            format=info.get("format", checkpoint.FORMAT),
            checkpoint=generation,
        )

    @classmethod
    def from_pretrained_config(cls, config: dict, folder: Path) -> Run:
        """A `save_pretrained` folder as a Run: no data, no split, no training settings."""
        return cls(
            folder=folder,
            model_config=checkpoint.model_config_from(config.get("model")),
            breeds=list(config.get("breeds", [])),
            train={"crop": config.get("crop", "center")},
            versions=dict(config.get("versions", {})),
            weights_sha256=config.get("weights", {}).get("sha256"),
            format=PRETRAINED_FORMAT,
            checkpoint=folder,
        )

    @classmethod
    def for_model(cls, model: BaseVAE) -> Run:
        """The facts a model alone gives, for a model that belongs to no run folder."""
        return cls(
            folder=None, model_config=model.config, breeds=list(model.breeds),
            train={"crop": model.crop}, format="",
        )  # fmt: skip

    def load_model(self, device: str | torch.device = "cpu") -> BaseVAE:
        """Its best model, in eval mode on `device` (see `checkpoint.pick_device`), with its
        `breeds` and `crop`; refuses weights that are missing, are not the ones config.json
        vouches for by sha256, or do not fit the model config."""
        if self.checkpoint is None:
            raise CheckpointError("this run has no saved weights to load")
        weights = checkpoint.verified_weights(self.checkpoint, self.weights_sha256)
        model = build_model(self.model_config)
        checkpoint.load_weights(model, weights)
        model.breeds, model.crop = list(self.breeds), self.crop
        return model.to(checkpoint.pick_device(device)).eval()

    # --- writing -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: str | Path,
        *,
        model_config: VAEConfig,
        train_config,
        images,
        val_indices,
        runtime: dict | None = None,
        save: bool = True,
    ) -> Run:
        """The record a training run starts with: `train_config` a TrainConfig (or its dict),
        `images` the ImageSet it trains on, `val_indices` the rows it holds back. With
        `save` (rank 0 only) the split is written to RUN/split.json now."""
        train = train_config if isinstance(train_config, dict) else train_config.to_dict()
        run = cls(
            folder=Path(folder), model_config=model_config, breeds=list(images.breeds),
            train=dict(train), preset=train.get("preset"), data_summary=images.summary(),
            versions=checkpoint.library_versions(), runtime=dict(runtime or {}),
        )  # fmt: skip
        if save:
            run.save_split(images, val_indices)
        return run

    def info(self) -> dict:
        """What every checkpoint of the run saves (config.json and the weights' metadata)."""
        info = checkpoint.run_info(
            model_type=self.model_config.model, preset=self.preset,
            model_config=self.model_config, train_config=self.train, breeds=self.breeds,
            data=self.data_summary,
        )  # fmt: skip
        return {**info, "versions": self.versions or info["versions"], "runtime": self.runtime}

    def save_split(self, images, val_indices) -> Path:
        """RUN/split.json: the validation rows of `images`, with what tells the same images."""
        split = {
            "format": SPLIT_FORMAT,
            "n_images": len(images),
            "ids_sha256": ids_digest(images.ids),
            "val_fraction": self.train.get("val_fraction"),
            "seed": self.train.get("seed"),
            "val_indices": [int(i) for i in np.asarray(val_indices).tolist()],
        }
        write_json(self.folder / SPLIT, split)
        return self.folder / SPLIT

    # --- the validation split ----------------------------------------------------------------

    def validation_indices(self, images) -> np.ndarray:
        """The rows of `images` the run validated on: as saved in RUN/split.json when these
        are the images it trained on, else (a run saved before the split was kept, or other
        images) drawn again from its validation share and seed, as training drew them."""
        saved = self.saved_split()
        if saved is not None and (saved["n_images"], saved["ids_sha256"]) == (
            len(images),
            ids_digest(images.ids),
        ):
            return np.asarray(saved["val_indices"], np.int64)
        fraction, seed = self.train.get("val_fraction", 0.1), self.train.get("seed", 0)
        why = "other images than it trained on" if saved else "no saved split"
        log.debug("validation split drawn again (fraction %s, seed %s): %s", fraction, seed, why)
        _, val = stratified_split(np.asarray(images.labels, np.int64), fraction, seed)
        return np.asarray(val, np.int64)

    def saved_split(self) -> dict | None:
        """RUN/split.json, or None when the run has none (or it is unreadable)."""
        path = self.folder / SPLIT if self.folder is not None else None
        if path is None or not path.is_file():
            return None
        try:
            split = json.loads(path.read_text(encoding="utf-8"))
            if split.get("format") == SPLIT_FORMAT:
                return split
        except (OSError, ValueError, AttributeError):
            pass
        log.warning("%s is unreadable: the validation split is drawn again", path)
        return None

    def validation_mask(self, images) -> np.ndarray:
        """(N,) bool over `images`: True on the run's validation rows."""
        mask = np.zeros(len(images), bool)
        mask[self.validation_indices(images)] = True
        return mask


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()
