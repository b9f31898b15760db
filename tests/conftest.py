"""Shared fixtures: where the real photos live, and small generated data sets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from dogvae.callbacks import Callback

SHARED_DATA = Path(
    os.environ.get("DOGVAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# The model shape every test that trains uses: 32 px, 8 latents, a few thousand weights.
TINY_MODEL = {
    "image_size": 32,
    "latent_dim": 8,
    "enc_widths": [8, 16, 16],
    "dec_widths": [16, 8, 8],
    "dec_start_channels": 16,
}


def tiny_train_config(data, out, **kw):
    """A TrainConfig for a few seconds of training of the tiny model on `data`; `kw` wins."""
    from dogvae.train import TrainConfig

    values = dict(
        data=str(data), out=str(out), epochs=3, batch_size=16, lr=3e-3, warmup_steps=5,
        progress=False, model_overrides={**TINY_MODEL, "model": "vae"},
    )  # fmt: skip
    return TrainConfig(**{**values, **kw})


def train_tiny_run(
    root: Path,
    *,
    breeds: int,
    per_breed: int,
    mutts: int,
    seed: int,
    epochs: int,
    warmup_steps: int = 5,
    model: str = "vae",
) -> tuple[Path, Path]:
    """Synthetic breeds at 32 px in root/data and a tiny `model` (vae, cvae or ssvae) trained
    on them in root/run; a second call with the same root finds the finished run and trains
    nothing."""
    from dogvae.synth import synthesize
    from dogvae.train import TrainConfig, train

    run, data = root / "run", root / "data"
    if not (run / "metrics.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        synthesize(
            data,
            breeds=breeds,
            per_breed=per_breed,
            size=32,
            mutts=mutts,
            seed=seed,
            progress=False,
        )
        train(
            TrainConfig(
                data=str(data),
                out=str(run),
                epochs=epochs,
                batch_size=16,
                lr=3e-3,
                warmup_steps=warmup_steps,
                progress=False,
                model_overrides={**TINY_MODEL, "model": model},
                cache_dir=str(root / "cache"),
            )
        )
    return run, data


class SignalAtStep(Callback):
    """A training callback that sends this process `signum` (Ctrl-C by default), as a user
    would, at the start of its `step`th training step (from 1): the run stops after that step."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        self.step, self.signum, self.steps = step, signum, 0

    def on_step_begin(self, trainer, epoch, batch):
        self.steps += 1
        if self.steps == self.step:
            signal.raise_signal(self.signum)


@contextlib.contextmanager
def signal_once(path: Path, signum: int = signal.SIGINT):
    """Send this process `signum` as soon as `path` exists (from a watching thread): a signal
    from outside, at a moment the code inside does not choose."""
    import threading

    done = threading.Event()

    def watch():
        while not done.is_set():
            if path.exists():
                signal.raise_signal(signum)
                return
            done.wait(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def damage_file(path: Path, how: str) -> None:
    """Cut a file in half ("truncated") or flip one byte in its middle ("flipped")."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


def shared_path(name: str) -> Path:
    """A folder under ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real photos not found at {path} (a user's clone has no ../shared/data)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Session-wide fixtures (trained tiny models) decode into a private cache folder too."""
    previous = os.environ.get("DOGVAE_CACHE")
    os.environ["DOGVAE_CACHE"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if previous is None:
        os.environ.pop("DOGVAE_CACHE", None)
    else:
        os.environ["DOGVAE_CACHE"] = previous


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache folder, never the user's ~/.cache/dogvae."""
    monkeypatch.setenv("DOGVAE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


APP_BREEDS = 3


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """3 synthetic breeds x 30 dogs and 4 mutts; a tiny VAE trained 4 epochs (enough for the
    decoder to draw different dogs for different codes), shared by the app and browser tests.
    Modules that need another run define their own `tiny_run`."""
    return train_tiny_run(
        tmp_path_factory.getbasetemp() / "app-tiny-run",
        breeds=APP_BREEDS, per_breed=30, mutts=4, seed=3, epochs=4, warmup_steps=2,
    )  # fmt: skip
