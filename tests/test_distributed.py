"""Distributed training: `torchrun -m dogvae train` with 2 CPU processes (Gloo) against 1 process.

The model has no normalisation layers (norm "none"), so 2 processes with 8 images each compute
exactly what 1 process computes with 16: same images, same noise, averaged gradients. What is
left is float32 rounding, which Adam turns into steps of up to +-lr wherever a gradient is near
zero; changing only the thread count of a 1-process run moves the weights as much (0.005).
Measured at lr 3e-3, after 5 steps (and 10, resumed in 1 process): validation ELBO equal to
2e-6 (4e-6) relative, training loss to 4e-7 (1.5e-5), weights to 0.002 (0.005) absolute.
Pairing the noise wrongly across processes moves the training loss by 5e-4 and fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL
from safetensors.torch import load_file

from dogvae.model import build_model
from dogvae.run import Run
from dogvae.runtime import weights_fingerprint
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train

PLAIN_TINY_MODEL = {**TINY_MODEL, "norm": "none", "model": "vae"}
TRAIN = {"batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "progress": False, "device": "cpu"}
ELBO_RTOL = 1e-4  # measured at most 1.5e-5 (training loss after 10 steps)
WEIGHT_ATOL = 0.02  # measured 0.005 after 10 Adam steps at lr 3e-3


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Tiny data, its decoded cache, and a `dogvae train --config` file, shared by the module."""
    root = tmp_path_factory.mktemp("ddp")
    synthesize(root / "data", breeds=3, per_breed=30, size=32, mutts=0, seed=0, progress=False)
    config = root / "tiny.json"
    config.write_text(json.dumps({"preset": "small64", "model": PLAIN_TINY_MODEL, "train": TRAIN}))
    return {"data": root / "data", "config": config, "cache": root / "cache"}


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    pass


@pytest.fixture(autouse=True)
def _shared_cache(setting, monkeypatch):
    monkeypatch.setenv("DOGVAE_CACHE", str(setting["cache"]))


def torchrun(setting, out, *args, nproc=2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "dogvae", "train", "--data", str(setting["data"]), "--out", str(out),
        "--config", str(setting["config"]), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def one_process(setting, out, **kw) -> dict:
    cfg = TrainConfig(
        data=str(setting["data"]), out=str(out), model_overrides=dict(PLAIN_TINY_MODEL), **TRAIN
    )
    return train(TrainConfig(**{**cfg.to_dict(), **kw}))


def epochs(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a, b) -> None:
    """Same epochs, same figures within ELBO_RTOL, same last weights within WEIGHT_ATOL."""
    ea, eb = epochs(a), epochs(b)
    assert [e["epoch"] for e in ea] == [e["epoch"] for e in eb]
    for x, y in zip(ea, eb, strict=True):
        assert x["step"] == y["step"]
        for split, key in [("val", "elbo"), ("val", "recon"), ("train", "loss")]:
            assert x[split][key] == pytest.approx(y[split][key], rel=ELBO_RTOL), (split, key)
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), rtol=0, atol=WEIGHT_ATOL), key


def last_weights_fingerprint(run) -> str:
    model = build_model(Run.load(run).model_config)
    model.load_state_dict(load_file(str(run / "last.safetensors")))
    return weights_fingerprint(model)


def test_two_processes_end_identical_and_train_like_one_with_the_same_global_batch(
    setting, tmp_path
):
    done = torchrun(setting, tmp_path / "two", "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert summary["world_size"] == 2
    runtime = Run.load(tmp_path / "two").runtime
    assert (runtime["backend"], runtime["world_size"], runtime["device"]) == ("gloo", 2, "cpu")
    # both ranks end with bit-identical weights, and those are the ones saved
    rank0, rank1 = summary["weights_sha256_per_rank"]
    assert rank0 == rank1 == last_weights_fingerprint(tmp_path / "two")
    assert done.stderr.count("epoch 1: val ELBO") == 1  # rank 0 alone reports and writes

    one_process(setting, tmp_path / "one", epochs=1)
    assert_same_training(tmp_path / "two", tmp_path / "one")

    # resume with another world size: 2 processes -> 1, and 1 process -> 2
    shutil.copytree(tmp_path / "one", tmp_path / "one-then-two")
    one_process(setting, tmp_path / "two", epochs=2, resume=True)
    one_process(setting, tmp_path / "one", epochs=2, resume=True)
    assert_same_training(tmp_path / "two", tmp_path / "one")
    done = torchrun(setting, tmp_path / "one-then-two", "--epochs", "2", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    assert_same_training(tmp_path / "one-then-two", tmp_path / "one")


def test_every_process_stops_with_the_same_clear_error(setting, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    done = torchrun(setting, tmp_path / "taken", "--epochs", "1")
    assert done.returncode != 0
    assert done.stderr.count("already holds a run; pass --resume") == 2


def test_global_batch_must_split_evenly_over_processes(setting, tmp_path):
    done = torchrun(setting, tmp_path / "run", "--epochs", "1", "--batch-size", "15")
    assert done.returncode != 0
    assert "is the global batch and must divide evenly over 2 processes" in done.stderr
