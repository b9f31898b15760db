"""Choosing devices, on any machine: where a run loads and serves, what a GPU run would pick
(precision, its GPU under torchrun), deterministic kernels, the facts a run records, and the
device cache's batches. tests/test_cuda.py runs the same paths on a real GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, tiny_train_config

import dogvae
from dogvae import checkpoint
from dogvae.cli import _train_config, build_parser
from dogvae.data.cache import ImageSet
from dogvae.data.loader import CachedImages, DeviceBatches, make_loader, set_epoch
from dogvae.errors import CheckpointError, DogvaeError
from dogvae.precision import cuda_has_native_bf16
from dogvae.runtime import setup_runtime
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Just enough of torch.cuda for `setup_runtime` to take its CUDA branch on a CPU build,
    with the GPU's compute capability set by the test (`fake_gpu["capability"]`)."""
    state = {"capability": (9, 0), "set_device": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", state["set_device"].append)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device=None: state["capability"]
    )
    monkeypatch.setattr(torch.version, "hip", None)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return state


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices-synth")
    synthesize(out, breeds=3, per_breed=20, size=32, mutts=0, seed=0, progress=False)
    return out


def tiny_config(data, out, **kw) -> TrainConfig:
    settings = dict(epochs=1, warmup_steps=2, device="cpu", model_overrides=dict(TINY_MODEL))
    return tiny_train_config(data, out, **{**settings, **kw})


def test_pick_device_resolves_auto_and_refuses_cuda_without_a_gpu(no_gpu):
    assert checkpoint.pick_device("auto") == torch.device("cpu")
    assert checkpoint.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(CheckpointError, match="'cuda:1' was asked for but no CUDA GPU is visible"):
        checkpoint.pick_device("cuda:1")


def test_bf16_autocast_only_on_gpus_with_bf16_arithmetic(fake_gpu):
    # torch.cuda.is_bf16_supported() says True on a V100 too (emulated, slower than float32)
    fake_gpu["capability"] = (7, 0)
    assert not cuda_has_native_bf16(torch.device("cuda", 0))
    rt = setup_runtime(TrainConfig(data="d", out="o", device="cuda"), 64)
    assert rt.autocast_dtype is None and rt.device == torch.device("cuda", 0)
    assert fake_gpu["set_device"] == [torch.device("cuda", 0)]
    fake_gpu["capability"] = (9, 0)  # an H100/H200
    rt = setup_runtime(TrainConfig(data="d", out="o", device="auto"), 64)
    assert rt.autocast_dtype == torch.bfloat16 and rt.channels_last
    rt = setup_runtime(TrainConfig(data="d", out="o", device="cuda", precision="fp32"), 64)
    assert rt.autocast_dtype is None


def test_a_process_without_a_gpu_of_its_own_says_so(fake_gpu, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun --nproc_per_node=2 on a 1-GPU machine
    with pytest.raises(DogvaeError, match="LOCAL_RANK 1 has no GPU of its own: 1 visible"):
        setup_runtime(TrainConfig(data="d", out="o", device="cuda"), 64)
    assert fake_gpu["set_device"] == []


def test_deterministic_kernels_are_on_while_training_and_restored_after(tiny_data, tmp_path):
    seen = []

    def during(record):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))

    assert not torch.are_deterministic_algorithms_enabled()
    train(tiny_config(tiny_data, tmp_path / "run", deterministic=True), on_epoch=during)
    assert seen == [(True, False)]
    assert not torch.are_deterministic_algorithms_enabled()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["deterministic"] is True  # so --resume keeps it


def test_cli_deterministic_flag_reaches_the_train_config():
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--deterministic"])
    assert _train_config(args).deterministic is True
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert _train_config(args).deterministic is False


def test_a_run_records_where_it_trained_and_loads_on_the_device_asked_for(
    tiny_data, tmp_path, no_gpu
):
    train(tiny_config(tiny_data, tmp_path / "run"))
    runtime = json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]
    assert runtime["device"] == "cpu" and runtime["device_name"] is None
    assert runtime["world_size"] == 1 and runtime["backend"] is None
    assert runtime["precision"] in ("fp32", "bf16")  # bf16 where this CPU does it natively
    assert runtime["channels_last"] is False  # "auto" turns it on from 64 px on a CPU
    model = dogvae.load(tmp_path / "run", device="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"} and not model.training
    with pytest.raises(CheckpointError, match="no CUDA GPU is visible"):
        dogvae.load(tmp_path / "run", device="cuda")


def test_the_web_service_runs_its_model_on_the_device_asked_for(tiny_run, no_gpu):
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    from dogvae.app import create_app

    app = create_app(tiny_run[0], device="cpu")
    assert next(app.state.served.model.parameters()).device.type == "cpu"
    with pytest.raises(CheckpointError, match="no CUDA GPU is visible"):
        create_app(tiny_run[0], device="cuda")
    args = build_parser().parse_args(["serve", "run"])
    assert args.device == "cpu"
    assert build_parser().parse_args(["serve", "run", "--device", "auto"]).device == "auto"


def labelled_set(n: int, size: int = 4) -> ImageSet:
    """Each image's red channel holds its row, so a batch shows which images it took."""
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    images[..., 0] = np.arange(n)[:, None, None]
    images[..., 1] = np.arange(size)[None, None, :] * 50
    labels = np.arange(n, dtype=np.int64) % 3
    return ImageSet(images, labels, [f"d{i}" for i in range(n)], ["a", "b", "c"], [], "",
                    "plain", size, "center")  # fmt: skip


@pytest.mark.parametrize("shuffle", [False, True])
def test_device_batches_equal_the_loaders_own_including_a_short_last_batch(shuffle):
    data = CachedImages(labelled_set(23), indices=np.arange(2, 23), flip=True, seed=4)
    loader = make_loader(data, 5, shuffle=shuffle, seed=4)  # 21 images: 4 x 5 and 1
    made = DeviceBatches(loader, torch.device("cpu"))
    for epoch in (0, 1):
        set_epoch(loader, epoch)
        expected, got = list(loader), list(made)
        assert [len(y) for _, y in got] == [5, 5, 5, 5, 1]
        for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
