"""On a CUDA GPU: every preset trains, a resumed run ends bit for bit like an uninterrupted one,
runs move between CPU and GPU, and the web service answers. `pytest -m cuda` runs only these;
without a GPU each one skips and says why. `bench/gpu_check.py` runs them as its first step.

Not yet run on a GPU when written (see README, "GPUs and several processes").
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, SignalAtStep, tiny_train_config
from PIL import Image
from safetensors.torch import load_file

import dogvae
from dogvae.callbacks import Callback
from dogvae.data.loader import DeviceBatches
from dogvae.latents import to_batch
from dogvae.model import PRESETS
from dogvae.precision import cuda_has_native_bf16
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False on this machine)",
    ),
]

# What a CPU and a GPU may differ by in float32 with TF32 off: kernels sum in other orders.
# Pixels are in [0, 1]; the trained decoder's pictures differ from dog to dog by 0.01 or more.
PIXEL_ATOL = 1e-3
CODE_ATOL = 1e-3


@pytest.fixture(autouse=True)
def _deterministic_cublas(monkeypatch):
    """cuBLAS reads this before its first call in a process; bench/gpu_check.py sets it too."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(scope="module")
def synth_by_size(tmp_path_factory):
    """Three synthetic breeds x 30 dogs at each preset's image size, drawn once."""
    made = {}

    def data(size: int):
        if size not in made:
            made[size] = tmp_path_factory.mktemp(f"cuda-synth-{size}")
            synthesize(
                made[size], breeds=3, per_breed=30, size=size, mutts=0, seed=3, progress=False
            )
        return made[size]

    return data


def tiny_config(data, out, **kw) -> TrainConfig:
    settings = dict(epochs=2, warmup_steps=2, device="cuda", model_overrides=dict(TINY_MODEL))
    return tiny_train_config(data, out, **{**settings, **kw})


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_trains_a_few_steps_on_cuda_from_the_device_cache(
    preset, synth_by_size, tmp_path, monkeypatch
):
    made = []

    class BatchKinds(Callback):
        def on_train_begin(self, trainer):
            made.extend([type(trainer.setup.train_batches), type(trainer.setup.val_batches)])

    size = PRESETS[preset].model.image_size
    run = tmp_path / "run"
    summary = train(
        TrainConfig(
            data=str(synth_by_size(size)),
            out=str(run),
            preset=preset,
            epochs=1,
            batch_size=16,
            warmup_steps=2,
            progress=False,
            device="cuda",
        ),  # fmt: skip
        callbacks=[BatchKinds()],
    )
    assert made == [DeviceBatches, DeviceBatches]  # training and validation batches on the GPU
    assert all(math.isfinite(value) for value in summary["val"].values()), summary["val"]
    runtime = json.loads((run / "config.json").read_text())["runtime"]
    assert runtime["device"] == "cuda:0" and runtime["channels_last"] is True
    bf16 = cuda_has_native_bf16(torch.device("cuda", 0))
    assert runtime["precision"] == ("bf16" if bf16 else "fp32")
    model = dogvae.load(run, device="cuda")
    x = torch.rand(2, 3, size, size, device="cuda")
    with torch.no_grad():
        recon = model.reconstruct(x)
    assert recon.device.type == "cuda" and recon.shape == x.shape and torch.isfinite(recon).all()


@pytest.mark.parametrize("kind", ["vae", "ssvae"])
def test_resume_on_cuda_after_ctrl_c_ends_bit_for_bit_like_an_uninterrupted_run(
    kind, synth_by_size, tmp_path, monkeypatch
):
    # ssvae: its classifier's dropout draws from the GPU's generator, saved in state.pt
    model = {**TINY_MODEL, "model": kind, "classifier_widths": [8, 16, 32], "breed_embed_dim": 8}
    settings = dict(model_overrides=model, deterministic=True)
    if kind == "ssvae":
        settings["label_fraction"] = 0.5  # unlabelled images too: the whole M2 objective
    data = synth_by_size(32)
    train(tiny_config(data, tmp_path / "straight", **settings))

    result = train(tiny_config(data, tmp_path / "stopped", **settings), callbacks=[SignalAtStep(4)])
    assert result == {"stopped": True, "epoch": 0, "batch_in_epoch": 4, "signal": "SIGINT"}
    train(tiny_config(data, tmp_path / "stopped", resume=True, **settings))

    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def outputs(run, device: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's posterior means and reconstructions of `x`, computed on `device`, on the CPU."""
    model = dogvae.load(run, device=device)
    assert next(model.parameters()).device.type == device
    with torch.no_grad():
        x = x.to(device)
        return model.embed(x).cpu(), model.reconstruct(x).cpu()


@pytest.mark.parametrize("trained_on", ["cpu", "cuda"])
def test_a_run_trained_on_either_device_gives_the_same_outputs_on_the_other(
    trained_on, synth_by_size, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    train(
        tiny_config(
            synth_by_size(32), run, device=trained_on, precision="fp32", epochs=12, warmup_steps=5
        )
    )
    dogs = sorted((synth_by_size(32) / "train").glob("*.jpg"))[::7][:8]
    x = to_batch(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in dogs]))
    # training turns TF32 on (setup_runtime); compare in true float32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    codes_cpu, recon_cpu = outputs(run, "cpu", x)
    codes_gpu, recon_gpu = outputs(run, "cuda", x)
    assert torch.allclose(codes_cpu, codes_gpu, atol=CODE_ATOL), (codes_cpu - codes_gpu).abs().max()
    assert torch.allclose(recon_cpu, recon_gpu, atol=PIXEL_ATOL), (
        (recon_cpu - recon_gpu).abs().max()
    )
    # a decoder that draws different dogs for different photos, not one that matches trivially
    assert (recon_cpu - recon_cpu.mean(0)).abs().mean() > 0.01, (
        (recon_cpu - recon_cpu.mean(0)).abs().mean()
    )


def test_the_web_service_answers_on_cuda(tiny_run):
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    from fastapi.testclient import TestClient

    from dogvae.app import create_app

    run, data = tiny_run
    app = create_app(run, device="cuda")
    assert next(app.state.served.model.parameters()).device.type == "cuda"
    dog = sorted((data / "mutts").glob("*.jpg"))[0]
    with TestClient(app) as client:
        assert client.get("/api/model").status_code == 200
        photo = client.post(
            "/api/photos", files={"image": (dog.name, dog.read_bytes(), "image/jpeg")}
        )
        assert photo.status_code == 200, photo.text
        ref = photo.json()["photo"]["ref"]
        for path in ("/api/identify", "/api/reconstruct", "/api/ancestry"):
            answer = client.post(path, data={"photo": ref})
            assert answer.status_code == 200, (path, answer.text)
        assert client.post("/api/reconstruct", data={"photo": ref}).json()["psnr"] > 5
        breed = app.state.served.breeds[0]
        mix = client.post("/api/mix", data={"a": ref, "b": breed, "steps": 4})
        assert mix.status_code == 200 and len(mix.json()["frames"]) == 4, mix.text
        frame = client.get("/api/mix/frame.png", params={"a": ref, "b": breed, "t": 0.5})
        assert frame.status_code == 200 and frame.content[:4] == b"\x89PNG"
        sample = client.get("/api/sample", params={"n": 4, "seed": 1})
        assert sample.status_code == 200 and len(sample.json()["images"]) == 4
