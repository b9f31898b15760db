"""One folder is a model: save_pretrained / from_pretrained round trips, a run folder loads the
same way, a folder laid out like a Hugging Face Hub snapshot loads offline, and export adds a
model card."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_tiny_run

import dogvae
from dogvae import checkpoint
from dogvae.cli import main
from dogvae.errors import CheckpointError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(
        tmp_path_factory.getbasetemp() / "pretrained-ssvae",
        breeds=3, per_breed=20, mutts=0, seed=2, epochs=1, warmup_steps=2, model="ssvae",
    )[0]  # fmt: skip


def outputs(model, x):
    with torch.no_grad():
        return model.reconstruct(x), model.classify(x), model.embed(x)


def test_from_pretrained_of_save_pretrained_gives_the_same_model(run, tmp_path):
    model = checkpoint.load(run)
    folder = model.save_pretrained(tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = dogvae.from_pretrained(folder)
    assert type(again) is type(model) and again.config == model.config
    assert again.breeds == model.breeds and again.crop == model.crop
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    x = torch.rand(3, 3, 32, 32)
    for a, b in zip(outputs(model, x), outputs(again, x), strict=True):
        assert torch.equal(a, b)


def test_a_run_folder_loads_through_from_pretrained_too(run):
    model, again = checkpoint.load(run), dogvae.from_pretrained(run)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_changed_weights_are_refused(run, tmp_path):
    folder = checkpoint.load(run).save_pretrained(tmp_path / "tiny")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        dogvae.from_pretrained(folder)


def test_a_folder_laid_out_like_a_hub_snapshot_loads_offline(run, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="the hub extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--dogs--tiny-ssvae"
    checkpoint.load(run).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = dogvae.from_pretrained(
        "dogs/tiny-ssvae", cache_dir=tmp_path / "hub", local_files_only=True
    )
    assert model.breeds == checkpoint.load(run).breeds
    with pytest.raises(CheckpointError, match="not a folder, and not on the Hub"):
        dogvae.from_pretrained("dogs/absent", cache_dir=tmp_path / "hub", local_files_only=True)


def test_export_writes_a_loadable_folder_with_a_model_card(run, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["export", str(run), str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"folder": str(out)}
    card = (out / "README.md").read_text()
    assert (
        "# dogvae ssvae" in card and "non-commercial" in card and "breed classifier top-1" in card
    )
    assert dogvae.from_pretrained(out).breeds == checkpoint.load(run).breeds
