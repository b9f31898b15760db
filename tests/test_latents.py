"""The latent store: encoded once, read back exactly, rebuilt when the weights or images change."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, damage_file

from dogvae import checkpoint
from dogvae.data.cache import load_images
from dogvae.data.split import stratified_split
from dogvae.errors import DataError, DogvaeError
from dogvae.latents import (
    STORE_FILE,
    LatentStore,
    breed_centroids,
    encode_dataset,
    encode_images,
    model_bits,
    open_store,
    png_bits,
    whitening_matrix,
)
from dogvae.model import VAEConfig, build_model
from dogvae.run import Run
from dogvae.synth import synthesize

TINY = VAEConfig(**TINY_MODEL)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, breeds=3, per_breed=12, size=32, mutts=0, seed=0, progress=False)
    return out


def save_untrained_run(run, data, seed: int):
    """A run folder holding a randomly initialised tiny model: the store needs no training."""
    torch.manual_seed(seed)
    model = build_model(TINY)
    train = {"data": str(data), "val_fraction": 0.25, "seed": 3, "crop": "center"}
    info = checkpoint.run_info(
        model_type="vae", preset="small64", model_config=TINY, train_config=train,
        breeds=["amber", "black", "cream"], data={},
    )  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(run, best=(model.eval(), info))
    return checkpoint.load(run)


def test_store_holds_every_labelled_image_with_the_runs_validation_split(synth_data, tmp_path):
    model = save_untrained_run(tmp_path / "run", synth_data, seed=0)
    store = encode_dataset(model, synth_data, progress=False, run=Run.load(tmp_path / "run"))
    assert store.mu.shape == store.logvar.shape == (36, 8)
    assert store.recon_mse.shape == (36,) and (store.recon_mse > 0).all()
    assert len(set(store.ids)) == 36
    _, val = stratified_split(store.labels, 0.25, 3)
    assert np.array_equal(store.val_rows, val)
    images = load_images(synth_data, 32, progress=False)
    x = torch.from_numpy(np.array(images.images[:4])).permute(0, 3, 1, 2).float() / 255
    assert np.allclose(store.mu[:4], model.embed(x).numpy(), atol=1e-5)


def test_store_round_trips_through_npz_without_pickle(synth_data, tmp_path):
    model = save_untrained_run(tmp_path / "run", synth_data, seed=0)
    store = encode_dataset(model, synth_data, progress=False)
    again = LatentStore.load(store.save(tmp_path / "store.npz"))
    for name in ("mu", "logvar", "labels", "ids", "is_val", "recon_mse", "class_log_probs"):
        assert np.array_equal(getattr(store, name), getattr(again, name)), name
    # the within-breed covariance is saved once made, and equals a fresh computation
    fresh = dataclasses.replace(again, within_cov=None).pooled_covariance()
    assert again.within_cov is not None and np.allclose(again.pooled_covariance(), fresh)
    assert (again.breeds, again.weights_sha256, again.data_key) == (
        store.breeds,
        store.weights_sha256,
        store.data_key,
    )


def test_centroids_average_the_training_split_only(synth_data, tmp_path):
    store = encode_dataset(save_untrained_run(tmp_path / "run", synth_data, 0), synth_data, False)
    centroids = store.centroids()
    for breed in range(3):
        rows = store.train_rows[store.labels[store.train_rows] == breed]
        assert np.allclose(centroids[breed], store.codes[rows].mean(0))
    assert np.allclose(breed_centroids(np.eye(3), np.array([0, 0, 2]), 3)[0], [0.5, 0.5, 0])


def test_a_dog_and_its_mirror_image_share_one_breed_code(synth_data, tmp_path):
    model = save_untrained_run(tmp_path / "run", synth_data, seed=0)
    pixels = np.array(load_images(synth_data, 32, progress=False).images[:3])
    plain, mirrored = encode_images(model, pixels), encode_images(model, pixels[:, :, ::-1])
    assert np.allclose(plain.mu_mirror, mirrored.mu, atol=1e-5)
    assert np.allclose(plain.codes, mirrored.codes, atol=1e-5)
    assert not np.allclose(plain.mu, mirrored.mu, atol=1e-3)


def test_whitening_turns_the_pooled_covariance_into_the_identity(synth_data, tmp_path):
    store = encode_dataset(save_untrained_run(tmp_path / "run", synth_data, 0), synth_data, False)
    covariance = store.pooled_covariance()
    w = whitening_matrix(covariance)
    assert np.allclose(w.T @ covariance @ w, np.eye(8), atol=1e-8)
    assert np.all(np.linalg.eigvalsh(store.breed_covariance(0)) > 0)
    diagonal = store.breed_covariance(0, diagonal=True)
    assert np.array_equal(diagonal, np.diag(np.diag(diagonal))) and (np.diag(diagonal) > 0).all()


def test_store_is_reused_then_rebuilt_when_the_checkpoint_changes(synth_data, tmp_path):
    run = tmp_path / "run"
    first = open_store(save_untrained_run(run, synth_data, seed=0), run, progress=False)
    assert first.encoded and (run / STORE_FILE).is_file()
    same = open_store(checkpoint.load(run), run, progress=False)
    assert not same.encoded and np.array_equal(same.mu, first.mu)

    retrained = save_untrained_run(run, synth_data, seed=1)  # new weights in the same run
    rebuilt = open_store(retrained, run, progress=False)
    assert rebuilt.encoded and not np.allclose(rebuilt.mu, first.mu)
    assert rebuilt.weights_sha256 == Run.load(run).weights_sha256


def test_store_is_rebuilt_when_the_images_change(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    run = tmp_path / "run"
    model = save_untrained_run(run, data, seed=0)
    assert len(open_store(model, run, progress=False)) == 36
    lines = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")  # one dog fewer
    rebuilt = open_store(model, run, progress=False)
    assert rebuilt.encoded and len(rebuilt) == 35


def test_a_store_outlives_its_data_folder_but_not_other_weights(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    run = tmp_path / "run"
    model = save_untrained_run(run, data, seed=0)
    with pytest.raises(DataError, match="pass --data"):
        open_store(model, run, tmp_path / "nowhere", progress=False)
    open_store(model, run, progress=False)
    shutil.rmtree(data)
    assert not open_store(model, run, progress=False).encoded
    with pytest.raises(DataError, match="other weights"):
        open_store(save_untrained_run(run, data, seed=1), run, progress=False)


def test_png_length_grows_with_what_there_is_to_say():
    rng = np.random.default_rng(0)
    flat = np.full((2, 32, 32, 3), 255, np.uint8)
    noise = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    flat_bits, noise_bits = png_bits(flat), png_bits(noise)
    assert (flat_bits < 2_000).all() and (noise_bits > 32 * 32 * 3 * 7).all()


def test_code_gap_is_the_models_code_length_minus_the_pngs(synth_data, tmp_path):
    model = save_untrained_run(tmp_path / "run", synth_data, seed=0)
    images = load_images(synth_data, 32, progress=False).images[:4]
    encoded = encode_images(model, images)
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
        bits = model_bits(model, x, model.decode_logits(mu), mu, logvar).numpy()
    np.testing.assert_allclose(encoded.code_gap, bits - png_bits(images), rtol=1e-4)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_store_is_rebuilt_or_one_line_without_its_data(synth_data, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    run = tmp_path / "run"
    model = save_untrained_run(run, data, seed=0)
    first = open_store(model, run, progress=False)

    damage_file(run / STORE_FILE, damage)
    rebuilt = open_store(model, run, progress=False)
    assert rebuilt.encoded and np.array_equal(rebuilt.mu, first.mu)
    damage_file(run / STORE_FILE, damage)
    shutil.rmtree(data)
    with pytest.raises(DogvaeError, match=f"{STORE_FILE} is not a readable latent store"):
        open_store(model, run, progress=False)


def test_a_read_only_run_folder_answers_from_a_store_and_probe_kept_in_memory(
    synth_data, tmp_path, monkeypatch
):
    from dogvae.tasks import probe

    model = save_untrained_run(tmp_path / "run", synth_data, seed=0)

    def read_only(*args, **kwargs):  # as a read-only run folder does (root ignores chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(LatentStore, "save", read_only)
    monkeypatch.setattr(probe, "save_probe", read_only)
    store = open_store(model, tmp_path / "run", progress=False)
    assert store.encoded and not (tmp_path / "run" / STORE_FILE).exists()
    fitted = probe.breed_probe(store, tmp_path / "run")
    assert fitted.report == probe.choose_probe(store).report
    assert not (tmp_path / "run" / probe.PROBE_FILE).exists()
