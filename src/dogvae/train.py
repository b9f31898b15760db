"""How to train (`TrainConfig`, `--config` files) and `train`, the one call that trains a run.

`train` picks the device (runtime.py), makes the run's data, model and optimiser
(`trainer.setup`) and hands them to `Trainer` (trainer.py) with the default callbacks
(callbacks.py) and any of the caller's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from dogvae.callbacks import Callback, EpochFunction, default_callbacks
from dogvae.errors import DogvaeError
from dogvae.model import PRESETS, VAEConfig, preset_config
from dogvae.recipes import TRAINING_RECIPES
from dogvae.run import Run
from dogvae.runtime import deterministic_algorithms, setup_runtime
from dogvae.trainer import Trainer, setup

# Settings with a command-line flag, as errors name them; the others are --config fields.
FLAGS = {"batch_size": "--batch-size", "lr": "--lr"}
MODEL_FLAGS = "--image-size, --latent-dim, --beta, --model or the model section of --config"

LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """How to train. `None` fields take the preset's value from its training recipe
    (`dogvae.recipes.TRAINING_RECIPES`).

    `batch_size` is the global batch: under torchrun with N processes each takes 1/N of it.
    `deterministic` makes a CUDA run repeat itself bit for bit (cuDNN's deterministic
    kernels, no autotuning, `torch.use_deterministic_algorithms`), so that `--resume` ends
    exactly where an uninterrupted run does, at some cost in speed; CPU runs already repeat
    themselves. `device_cache` ("auto", "on", "off") holds the decoded uint8 images on the
    training device and makes batches there; "auto" does so on a GPU when they take under a
    quarter of its free memory. `compile` runs the model through `torch.compile`.
    `label_fraction` keeps the labels of only that share of each breed's training images (the
    rest train as unlabelled images; for `ssvae`). The ssvae's classifier has a learning-rate
    schedule of its own, a one-cycle over its first `classifier_epochs` epochs (0: the whole
    run; `group_schedules`), and then stays fixed while the generative half goes on learning.
    """

    data: str
    out: str
    preset: str = "small64"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    lr_schedule: str | None = None  # "cosine" (after warm-up) or "constant"
    ema_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool | None = None
    device_cache: str = "auto"
    deterministic: bool = False
    crop: str = "center"
    cache_dir: str | None = None
    strict: bool = False
    resume: bool = False
    progress: bool = True
    label_fraction: float = 1.0
    classifier_epochs: int = 45
    model_overrides: dict = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with the preset's defaults filled in."""
        if self.preset not in PRESETS:
            raise DogvaeError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.epochs is not None and self.epochs < 1:
            raise DogvaeError("--epochs must be at least 1")
        if self.classifier_epochs < 0:
            raise DogvaeError("--classifier-epochs must be 0 (the whole run) or more")
        if not 0.0 < self.label_fraction <= 1.0:
            raise DogvaeError(f"--label-fraction must be in (0, 1], not {self.label_fraction}")
        if self.lr_schedule not in (None, *LR_SCHEDULES):
            raise DogvaeError(
                f"lr_schedule must be {' or '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}"
            )
        for name in ("channels_last", "device_cache"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise DogvaeError(f"{name} must be auto, on or off, not {getattr(self, name)!r}")
        recipe = dataclasses.asdict(TRAINING_RECIPES[self.preset])
        values = {k: recipe[k] if v is None and k in recipe else v for k, v in vars(self).items()}
        resolved = TrainConfig(**values)
        resolved.check_numbers()
        return resolved

    def check_numbers(self) -> None:
        """Refuse a setting no run can train with, naming its flag (or its config field)."""
        rules = (
            ("batch_size", lambda v: isinstance(v, int) and v >= 1, "be a whole number >= 1"),
            ("lr", lambda v: math.isfinite(v) and v > 0, "be a positive number"),
            ("weight_decay", lambda v: v >= 0, "not be negative"),
            ("warmup_steps", lambda v: isinstance(v, int) and v >= 0, "be a whole number >= 0"),
            ("grad_clip", lambda v: v >= 0, "not be negative (0: no clipping)"),
            ("ema_decay", lambda v: 0.0 <= v < 1.0, "be in [0, 1) (0: no average)"),
            ("val_fraction", lambda v: 0.0 <= v < 1.0, "be in [0, 1)"),
        )
        for name, test, rule in rules:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not test(value):
                raise DogvaeError(f"{FLAGS.get(name, name)} must {rule}, not {value!r}")

    def model_config(self) -> VAEConfig:
        try:
            return VAEConfig.from_dict(
                {**preset_config(self.preset).to_dict(), **self.model_overrides}
            )
        except ValueError as exc:
            raise DogvaeError(f"{exc} (set by {MODEL_FLAGS})") from exc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_settings(
        cls, settings: dict, flags: dict, *, out, resume: bool = False, strict: bool = False
    ) -> TrainConfig:
        """A --config file's `settings` ({"preset", "model", "train"}) under command-line
        `flags` (None: not given; `MODEL_FIELDS` set the model), for the run folder `out`."""
        model = dict(settings.get("model", {}))
        values = {**settings.get("train", {}), "preset": settings.get("preset", "small64")}
        for name, value in flags.items():
            if value is not None:
                (model if name in MODEL_FIELDS else values)[name] = value
        if values.get("data") is None:
            raise DogvaeError(
                f"{out} holds no checkpoint to read the data folder from: pass --data"
            )
        values.update(
            data=str(values["data"]), out=str(out), resume=resume, strict=strict,
            model_overrides=model,
        )  # fmt: skip
        return cls(**values)

    @classmethod
    def from_run(cls, out, settings: dict, flags: dict, *, strict: bool = False) -> TrainConfig:
        """What the run in `out` was started with (its latest checkpoint's settings), so that
        `--resume` goes on with that same run; `settings` (a --config file's) and `flags` win."""
        saved = Run.latest(out)
        if saved is not None:  # else `train` says there is nothing to resume
            train = {k: v for k, v in saved.train.items() if k not in RUN_ONLY_SETTINGS}
            train.setdefault("lr_schedule", "cosine")  # what runs saved before it trained with
            settings = {
                "preset": settings.get("preset", saved.preset),
                "model": {**saved.model_config.to_dict(), **settings.get("model", {})},
                "train": {**train, **settings.get("train", {})},
            }
        return cls.from_settings(settings, flags, out=out, resume=True, strict=strict)


# Flags that set the model, not the training; settings a resumed run does not take from its
# checkpoint (where it is, how it is watched, what the model section says).
MODEL_FIELDS = ("image_size", "latent_dim", "beta", "model")
RUN_ONLY_SETTINGS = ("out", "resume", "progress", "strict", "model_overrides")


# A --config file's sections: "tune" is the trial a tune/best.json came from (read by
# nobody); only `dogvae tune` reads "search".
SETTINGS_SECTIONS = ("preset", "model", "train", "tune")
TUNE_SECTIONS = (*SETTINGS_SECTIONS, "search")


def read_settings_file(path: str | Path, sections=SETTINGS_SECTIONS) -> dict:
    """A `--config` file: a JSON object of `sections`. Anything else is refused in one line
    that names the file."""
    path = Path(path)
    try:
        settings = json.loads(path.read_text())
    except OSError as exc:
        raise DogvaeError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DogvaeError(f"--config {path}: not valid JSON ({exc})") from exc
    if not isinstance(settings, dict):
        raise DogvaeError(
            f"--config {path}: must hold a JSON object, not {type(settings).__name__}"
        )
    unknown = sorted(set(settings) - set(sections))
    if unknown:
        raise DogvaeError(
            f"--config {path}: unknown section {', '.join(map(repr, unknown))}; "
            f"it may hold {', '.join(sections)}"
        )
    for section in set(sections) - {"preset"}:
        if not isinstance(settings.get(section, {}), dict):
            raise DogvaeError(f"--config {path}: {section!r} must be a JSON object")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings.get("train", {})) - fields)
    if unknown:
        raise DogvaeError(f"--config {path}: unknown train settings {', '.join(unknown)}")
    if not isinstance(settings.get("preset", ""), str):
        raise DogvaeError(f"--config {path}: preset must be a name, not {settings['preset']!r}")
    for section, cls in (("train", TrainConfig), ("model", VAEConfig)):
        for name, value in settings.get(section, {}).items():
            _check_type(
                value, typing.get_type_hints(cls).get(name), f"--config {path}: {section}.{name}"
            )
    return settings


def _check_type(value, hint, where: str) -> None:
    """Refuse a JSON value of the wrong kind for its field (e.g. "8" for an int), naming it."""
    if hint is None or any(_fits(value, kind) for kind in _kinds(hint)):
        return
    kinds = " or ".join(_KIND_NAMES[typing.get_origin(k) or k] for k in _kinds(hint))
    raise DogvaeError(f"{where} must be {kinds}, not {json.dumps(value)}")


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               dict: "an object", tuple: "a list of whole numbers", type(None): "null"}  # fmt: skip


def _kinds(hint) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _fits(value, kind) -> bool:
    """Whether a JSON value can be a field of type `kind`: a list for a tuple of ints, any
    number for a float, and true/false only for a bool."""
    kind = typing.get_origin(kind) or kind
    if kind is tuple:
        return isinstance(value, list) and all(_fits(v, int) for v in value)
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


# --- devices, precision, processes --------------------------------------------------------


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    data=None,
    labels=None,
    breeds=None,
) -> dict:
    """Train a model as `cfg` says and return the final summary (also written to metrics.json),
    or, for a run stopped by a signal, where it stopped (`{"stopped": True, ...}`).

    The images come from the folder `cfg.data`, or from Python: `data` a uint8 array
    (N, H, W, 3) or a torch Dataset, with `labels` (breed names, or indices into `breeds`) when
    the Dataset does not give them (`dogvae.data.memory`); `cfg.data` then only names them in
    the run's records, and a resume needs the same `data` again.
    `callbacks` run after the default ones (`dogvae.callbacks`); `on_epoch(record)`, if given,
    is called after each epoch's validation and checkpoint, in every process with the same
    record, and may raise to end training (e.g. `optuna.TrialPruned`).
    Under torchrun the process group is left at the end, on errors too.
    """
    cfg = cfg.resolved()
    model_cfg = cfg.model_config()
    images = None
    if data is not None:
        from dogvae.data.memory import image_set

        images = image_set(data, labels, breeds, image_size=model_cfg.image_size, crop=cfg.crop)
    with deterministic_algorithms(cfg.deterministic):
        rt = setup_runtime(cfg, model_cfg.image_size)
        try:
            run = setup(cfg, model_cfg, rt, images)
            extra = [*callbacks, *([EpochFunction(on_epoch)] if on_epoch is not None else [])]
            return Trainer(run, [*default_callbacks(cfg.progress, rt.main), *extra]).fit()
        finally:
            if rt.owns_process_group:
                dist.destroy_process_group()
