"""`dogvae tune`: an Optuna search over model shape and training settings, kept in a database.

The study lives in its storage (a SQLite file by default), so a search that was stopped or
killed carries on where it was when the same command runs again, and several processes, or
machines sharing a database, can work on one study at once. `trials` is the study's total of
finished (complete or pruned) trials, not a number to add.

Each trial trains into OUT/trial-NNN with `dogvae.train.train`, reporting its validation
ELBO (or PSNR) after every epoch to a median pruner, which stops trials that trail the median
of earlier ones at the same epoch. A trial stopped by Ctrl-C is queued again and resumes from
its checkpoint; one whose process was killed is found by its missing heartbeat (after
`GRACE_SECONDS`) and retried the same way. After every trial OUT/best.json holds the best one
in the format `dogvae train --config` reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from dogvae.atomic import write_json
from dogvae.checkpoint import STATE
from dogvae.data.cache import load_images
from dogvae.errors import DogvaeError
from dogvae.model import PRESETS, VAEConfig, preset_config
from dogvae.train import TrainConfig, train

log = logging.getLogger(__name__)

# --metric: the key in the validation record, the direction, and how to print it
METRICS = {
    "val_elbo": ("elbo", "minimize", "val ELBO", "nats/image"),
    "psnr": ("psnr", "maximize", "PSNR", "dB"),
}
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


@dataclass
class SearchSpace:
    """What a trial may choose. Tuples of values are categorical; (low, high) pairs are drawn
    log-uniformly. `width` multiplies every layer width of the preset."""

    preset: tuple[str, ...] = ("small64", "res64")
    latent_dim: tuple[int, ...] = (32, 64, 128, 256)
    width: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5)
    beta: tuple[float, float] = (0.25, 2.0)
    lr: tuple[float, float] = (2e-4, 5e-3)
    batch_size: tuple[int, ...] = (32, 64, 128)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DogvaeError(f"unknown search fields {unknown}; known: {sorted(known)}")
        space = cls(**{k: tuple(v) for k, v in data.items()})
        bad = [p for p in space.preset if p not in PRESETS]
        if bad:
            raise DogvaeError(f"unknown presets {bad}; choose from {', '.join(PRESETS)}")
        return space


def scaled_width(width: int, factor: float) -> int:
    """`width` x `factor`, rounded to a multiple of 8, or of 32 from 128 up (so that GroupNorm's
    min(32, width / 4) groups always divide it)."""
    step = 32 if width * factor >= 128 else 8
    return max(8, step * round(width * factor / step))


def suggest_config(trial, space: SearchSpace, base: dict, epochs: int) -> dict:
    """The trial's training config, {"preset", "model", "train"}: `base` with the drawn values."""
    preset = trial.suggest_categorical("preset", list(space.preset))
    shape = VAEConfig.from_dict({**preset_config(preset).to_dict(), **base.get("model", {})})
    width = trial.suggest_categorical("width", list(space.width))
    model = {
        **base.get("model", {}),
        "latent_dim": trial.suggest_categorical("latent_dim", list(space.latent_dim)),
        "beta": trial.suggest_float("beta", *space.beta, log=True),
        "enc_widths": [scaled_width(w, width) for w in shape.enc_widths],
        "dec_widths": [scaled_width(w, width) for w in shape.dec_widths],
        "dec_start_channels": scaled_width(shape.dec_start_channels, width),
    }
    if shape.dense:
        model["dense"] = scaled_width(shape.dense, width)
    train_values = {
        **base.get("train", {}),
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "epochs": epochs,
    }
    return {"preset": preset, "model": model, "train": train_values}


def _train_config(config: dict, data, run: Path) -> TrainConfig:
    """A trial's TrainConfig; it resumes when its folder holds a checkpoint."""
    values = {**config["train"], "data": str(data), "out": str(run), "preset": config["preset"]}
    values.update(model_overrides=config["model"], resume=(run / STATE).exists(), progress=False)
    try:
        return TrainConfig(**values)
    except TypeError as exc:  # an unknown key in the base config's "train"
        raise DogvaeError(f"the base config's train settings: {exc}") from exc


def _storage(url: str):
    import optuna

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    kwargs = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
    if retry is not None:
        kwargs["heartbeat_stale_trial_callback"] = retry(
            max_retry=3, inherit_intermediate_values=True
        )
    else:
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
            max_retry=3, inherit_intermediate_values=True
        )
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait for the other process
    return optuna.storages.RDBStorage(url, **kwargs)


def _comparable(space: SearchSpace, base: dict, metric: str) -> set[int]:
    """The image sizes the presets train at; refuses ELBOs that cannot be compared."""
    shapes = {
        (cfg.image_size, cfg.likelihood)
        for cfg in (
            VAEConfig.from_dict({**preset_config(p).to_dict(), **base.get("model", {})})
            for p in space.preset
        )
    }
    if metric == "val_elbo" and len(shapes) > 1:
        raise DogvaeError(
            f"presets {', '.join(space.preset)} differ in image size or likelihood "
            f"({sorted(shapes)}), so their ELBOs cannot be compared; choose presets that share "
            "them, or --metric psnr"
        )
    return {size for size, _ in shapes}


def _open_study(storage, name: str, direction: str, seed: int, settings: dict):
    """Create the study or load it; refuse one created with other settings."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),  # from epoch 2
    )  # fmt: skip
    settings = json.loads(json.dumps(settings))  # tuples as lists, as stored
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        keys = settings.keys() | stored.keys()
        changed = sorted(k for k in keys if stored.get(k) != settings.get(k))
        raise DogvaeError(
            f"study {name!r} was started with other {', '.join(changed)} "
            f"(stored: {json.dumps({k: stored.get(k) for k in changed})}); "
            "run it with those, or name a new --study"
        )
    return study


def tune(
    data: str | Path,
    out: str | Path | None = None,
    *,
    trials: int = 20,
    storage: str | None = None,
    study_name: str = "dogvae",
    timeout: float | None = None,
    epochs: int = 10,
    metric: str = "val_elbo",
    space: SearchSpace | None = None,
    base: dict | None = None,
    seed: int = 0,
    callbacks=(),
) -> dict:
    """Run the study until it holds `trials` finished trials (or `timeout` seconds pass) and
    return its summary; writes OUT/best.json. `base` is a `dogvae train --config` dict the
    drawn values go into (its "search" key, if any, narrows the space); `callbacks` go to each
    trial's `train`."""
    try:
        import optuna
    except ImportError as exc:
        raise DogvaeError("dogvae tune needs Optuna: pip install 'dogvae[tune]'") from exc
    if metric not in METRICS:
        raise DogvaeError(f"unknown metric {metric!r}; choose {' or '.join(METRICS)}")
    if trials < 1 or epochs < 1:
        raise DogvaeError("--trials and --epochs must be at least 1")
    base = dict(base or {})
    space = space or SearchSpace.from_dict(base.pop("search", {}))
    base.pop("search", None)
    out, storage = _study_folder(out, storage)
    key, direction, label, unit = METRICS[metric]

    _check_data(data, base, space, metric, out)
    settings = {
        "data": str(Path(data).resolve()),
        "metric": metric,
        "epochs": epochs,
        "base": base,
        "space": dataclasses.asdict(space),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(_storage(storage), study_name, direction, seed, settings)

    objective = _objective(optuna, space, base, epochs, data, out, key, callbacks)
    after_trial = _after_trial(optuna, out, metric, label, unit)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=states))
    if finished < trials:
        study.optimize(
            objective, n_trials=trials - finished, timeout=timeout, catch=(DogvaeError,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=states), after_trial],
        )  # fmt: skip
    best = _write_best(study, out / "best.json", metric)
    result = {
        "study": study_name,
        "storage": storage,
        "metric": metric,
        "finished_trials": len(study.get_trials(deepcopy=False, states=states)),
        "best": best,
        "best_json": str(out / "best.json") if best else None,
    }
    return result


def _study_folder(out, storage: str | None) -> tuple[Path, str]:
    """The study's folder (where trials train) and its storage URL, one from the other."""
    if storage is None and out is None:
        raise DogvaeError("give --storage (e.g. sqlite:///RUN/tune.db) or --out")
    if out is None:
        if not storage.startswith("sqlite:///"):
            raise DogvaeError("--out is needed when --storage is not a sqlite:/// file")
        out = Path(storage[len("sqlite:///") :]).parent
    out = Path(out).resolve()  # trials record their folder; resumes may start elsewhere
    out.mkdir(parents=True, exist_ok=True)
    return out, storage or f"sqlite:///{out / 'tune.db'}"


def _check_data(data, base: dict, space, metric: str, out: Path) -> None:
    """Refuse unknown settings, and decode the data once at each size the study trains, so a
    bad data set fails before the first trial."""
    base_train = base.get("train", {})
    _train_config({"preset": "small64", "model": {}, "train": base_train}, data, out)
    for size in _comparable(space, base, metric):
        load_images(
            data, size, crop=base_train.get("crop", "center"), cache_dir=base_train.get("cache_dir")
        )


def _objective(optuna, space, base, epochs, data, out: Path, key: str, callbacks):
    """One trial: draw its settings, train it (resuming the run a Ctrl-C stopped), report each
    epoch's figure to the pruner; its validation figure."""

    def objective(trial) -> float:
        config = suggest_config(trial, space, base, epochs)
        run = Path(trial.user_attrs.get("run") or out / f"trial-{trial.number:03d}")
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("config", config)
        log.info("trial %d: %s -> %s", trial.number, _params(trial.params), run)

        def report(record: dict) -> None:
            trial.report(record["val"][key], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        cfg = _train_config(config, data, run)
        summary = train(cfg, on_epoch=report, callbacks=callbacks)
        if summary.get("stopped"):  # Ctrl-C: queue this trial to resume from its checkpoint
            trial.study.enqueue_trial(trial.params, user_attrs={"run": str(run)})
            raise KeyboardInterrupt
        return summary["val"][key]

    return objective


def _after_trial(optuna, out: Path, metric: str, label: str, unit: str):
    """Log how a trial ended and keep OUT/best.json up to date."""

    def after_trial(study, trial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            log.info("trial %d complete: %s %.4g %s", trial.number, label, trial.value, unit)
        elif trial.state == optuna.trial.TrialState.PRUNED:
            log.info("trial %d pruned after epoch %s", trial.number, trial.last_step)
        else:
            log.warning("trial %d %s", trial.number, trial.state.name.lower())
        _write_best(study, out / "best.json", metric)

    return after_trial


def format_tune(result: dict) -> str:
    """The study's summary as `dogvae tune` prints it: the best trial and where it went."""
    best = result["best"]
    if not best:
        return "no trial has finished yet"
    _, _, label, unit = METRICS[result["metric"]]
    found = best["tune"]
    return (
        f"best: trial {found['trial']}, {label} {found['value']:.4g} {unit} "
        f"({_params(found['params'])}); wrote {result['best_json']}"
    )


def _params(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _write_best(study, path: Path, metric: str) -> dict | None:
    """OUT/best.json: the best complete trial as a `dogvae train --config` file."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    trial = study.best_trial
    best = {
        **trial.user_attrs["config"],
        "tune": {
            "study": study.study_name, "trial": trial.number, "metric": metric,
            "value": trial.value, "params": trial.params, "run": trial.user_attrs["run"],
        },
    }  # fmt: skip
    write_json(path, best)
    return best
