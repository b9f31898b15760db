"""A run folder as one object (`dogvae.run.Run`): run folders of the previous release load,
answer and resume; a new run saves its validation split and the latent store uses exactly it;
`TrainConfig.from_run` merges a resumed run's settings under the file's and the flags'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dogvae import checkpoint
from dogvae.cli import main
from dogvae.data.split import stratified_split
from dogvae.errors import DogvaeError
from dogvae.latents import encode_images, load_dataset, open_store
from dogvae.pretrained import from_pretrained, save_pretrained
from dogvae.run import SPLIT, Run
from dogvae.synth import synthesize
from dogvae.tasks import identify
from dogvae.tasks.inputs import read_photos
from dogvae.train import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures" / "run-v1"
BREEDS = ["chocolate_bulldog", "cream_corgi", "white_basset"]
# what tests/fixtures/run-v1/README.md trained each run with: crop, validation share, seed
OLD_SETTINGS = {"vae": ("center", 0.1, 0), "ssvae": ("squash", 0.25, 3)}


@pytest.fixture(scope="module")
def old_data(tmp_path_factory):
    """The fixture runs' data set, drawn again byte for byte."""
    data = tmp_path_factory.mktemp("old-data")
    synthesize(data, breeds=3, per_breed=12, size=32, mutts=0, seed=0, progress=False)
    return data


def old_run(name: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture run (symlinks kept, as the release wrote them)."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name, symlinks=True))


def split_drawn(images, fraction: float, seed: int) -> list[int]:
    return stratified_split(images.labels, fraction, seed)[1].tolist()


@pytest.mark.parametrize("name", sorted(OLD_SETTINGS))
def test_a_run_folder_of_the_previous_release_loads_with_its_settings(name):
    run = Run.load(FIXTURES / name)
    crop, fraction, seed = OLD_SETTINGS[name]
    assert (run.model_config.model, run.crop, run.train["val_fraction"], run.train["seed"]) == (
        name, crop, fraction, seed,
    )  # fmt: skip
    assert (run.breeds, run.preset, run.epoch, run.saved_split()) == (BREEDS, "small64", 1, None)
    assert run.checkpoint == FIXTURES / name / "checkpoints" / "000001"
    model = checkpoint.load(FIXTURES / name)
    assert (model.config, model.breeds, model.crop) == (run.model_config, BREEDS, crop)
    saved = load_file(str(FIXTURES / name / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_an_old_run_answers_with_its_split_drawn_again_as_it_trained(old_data, tmp_path):
    folder = old_run("ssvae", tmp_path)
    run, model = Run.load(folder), checkpoint.load(folder)
    store = open_store(model, folder, old_data, progress=False)
    images = load_dataset(model, old_data, progress=False, run=run)
    assert store.val_rows.tolist() == split_drawn(images, 0.25, 3)  # every image is labelled
    photo = old_data / "train" / f"{images.ids[5]}.jpg"
    as_photo = encode_images(model, read_photos(model, [photo]))
    assert np.allclose(as_photo.mu, store.mu[5], atol=1e-5)  # read with the run's crop
    answer = identify(model, store, photo, top=3)
    assert sorted(t["breed"] for t in answer["top"]) == BREEDS
    assert sum(t["probability"] for t in answer["top"]) == pytest.approx(1.0)


def test_an_old_run_resumes_with_its_settings_and_then_keeps_its_split(old_data, tmp_path):
    folder = old_run("ssvae", tmp_path)
    argv = ["train", "--out", str(folder), "--resume", "--data", str(old_data), "--epochs", "2"]
    assert main(argv) == 0
    latest = Run.latest(folder)
    assert (latest.train["epochs"], latest.train["data"]) == (2, str(old_data))  # the flags
    assert (latest.crop, latest.train["val_fraction"], latest.train["batch_size"]) == (
        "squash", 0.25, 8,
    )  # fmt: skip
    images = load_dataset(checkpoint.load(folder), old_data, progress=False, run=latest)
    assert Run.load(folder).saved_split()["val_indices"] == split_drawn(images, 0.25, 3)


@pytest.fixture
def new_run(tiny_run, tmp_path):
    """A copy of the session's tiny run (trained by this release), and its data."""
    run, data = tiny_run
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True)), data


def test_a_new_run_saves_the_validation_split_it_trained_with(new_run):
    folder, data = new_run
    run = Run.load(folder)
    images = load_dataset(checkpoint.load(folder), data, progress=False, run=run)
    saved = run.saved_split()
    assert saved["val_indices"] == split_drawn(images, 0.1, 0)
    assert (saved["n_images"], saved["val_fraction"], saved["seed"]) == (len(images), 0.1, 0)


def test_the_store_takes_the_saved_split_and_draws_again_only_for_other_images(new_run):
    folder, data = new_run
    split = json.loads((folder / SPLIT).read_text())
    split["val_indices"] = [0, 1, 2, 3]  # not what a draw gives: only the file can say it
    (folder / SPLIT).write_text(json.dumps(split))
    model = checkpoint.load(folder)  # rebuild: the copy may hold a store the app tests made
    store = open_store(model, folder, data, rebuild=True, progress=False)
    assert store.val_rows.tolist() == [0, 1, 2, 3]
    split["ids_sha256"] = "0" * 64  # as if the split were of other images
    (folder / SPLIT).write_text(json.dumps(split))
    images = load_dataset(model, data, progress=False, run=Run.load(folder))
    rebuilt = open_store(model, folder, data, rebuild=True, progress=False)
    assert rebuilt.val_rows.tolist() == split_drawn(images, 0.1, 0)


def test_resume_settings_come_from_the_run_under_the_file_and_the_flags():
    file_settings = {"train": {"lr": 1e-3, "epochs": 5}}
    flags = {"epochs": 4, "data": "elsewhere", "latent_dim": 4, "crop": None}
    cfg = TrainConfig.from_run(FIXTURES / "ssvae", file_settings, flags)
    assert (cfg.epochs, cfg.lr, cfg.data) == (4, 1e-3, "elsewhere")  # flag > file > run
    assert (cfg.crop, cfg.val_fraction, cfg.seed, cfg.batch_size) == ("squash", 0.25, 3, 8)
    assert cfg.model_overrides["latent_dim"] == 4 and cfg.model_overrides["model"] == "ssvae"
    assert (cfg.resume, cfg.out, cfg.progress) == (True, str(FIXTURES / "ssvae"), True)


def test_resume_of_a_folder_without_checkpoints_asks_for_the_data(tmp_path):
    with pytest.raises(DogvaeError, match="holds no checkpoint to read the data folder from"):
        TrainConfig.from_run(tmp_path, {}, {"epochs": 2})


def test_a_pretrained_folder_is_a_run_without_training_files(old_data, tmp_path):
    folder = save_pretrained(checkpoint.load(FIXTURES / "ssvae"), tmp_path / "shared")
    run = Run.load(folder)
    assert (run.crop, run.breeds, run.data, run.epoch, run.saved_split()) == (
        "squash", BREEDS, None, None, None,
    )  # fmt: skip
    model = from_pretrained(folder)
    assert model.crop == "squash"
    store = open_store(model, folder, old_data, progress=False)
    images = load_dataset(model, old_data, progress=False)
    assert store.val_rows.tolist() == split_drawn(images, 0.1, 0)  # no split: the default


def test_no_module_reads_settings_off_the_model():
    source = Path(__file__).parents[1] / "src" / "dogvae"
    readers = [
        str(path)
        for path in source.rglob("*.py")
        if 'getattr(model, "info"' in path.read_text() or "model.info" in path.read_text()
    ]
    assert readers == []
