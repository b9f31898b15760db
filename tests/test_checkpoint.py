"""A checkpoint is one unit: a kill at any write step resumes to the uninterrupted run's weights.

`DOGVAE_CRASH_AT=STEP@N` SIGKILLs a training process at the Nth pass through a write step
(`checkpoint.WRITE_STEPS`, and `metrics`, the metrics.jsonl line each epoch end writes first).
Every step is cut at its second pass, the second epoch's save, so an earlier checkpoint exists.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL, SignalAtStep, signal_once
from safetensors.torch import load_file

import dogvae
from dogvae import checkpoint
from dogvae.atomic import CRASH_ENV
from dogvae.cli import main
from dogvae.errors import CheckpointError
from dogvae.run import Run
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train

CRASH_STEPS = ("metrics", *checkpoint.WRITE_STEPS)
EPOCHS = 2

TRAIN_SCRIPT = """
import json, sys
from dogvae.train import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """2 breeds x 12 dogs at 32 px: 22 training images, 2 steps of 8 per epoch."""
    out = tmp_path_factory.mktemp("crash-synth")
    synthesize(out, breeds=2, per_breed=12, size=32, mutts=0, seed=1, progress=False)
    return out


def config(data, out, **kw) -> dict:
    values = dict(
        data=str(data), out=str(out), epochs=EPOCHS, batch_size=8, lr=3e-3, warmup_steps=2,
        progress=False, device="cpu", model_overrides=dict(TINY_MODEL),
    )  # fmt: skip
    return {**values, **kw}


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    """The run without interruptions, on one thread like every run here (the float sums of
    BatchNorm's statistics depend on the thread count)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**config(small_data, run)))
    finally:
        torch.set_num_threads(threads)
    return run


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def leftovers(run) -> list[str]:
    """Temporaries and generations other than the current one."""
    found = [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]
    current = checkpoint.checkpoint_folder(run)
    found += [p.name for p in (run / checkpoint.GENERATIONS).iterdir() if p != current]
    return found


def logged_epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_kill_at_every_write_step_resumes_to_the_uninterrupted_weights(
    small_data, uninterrupted, tmp_path, one_thread
):
    # every crash at once, one thread each: the processes spend most of their time importing
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {step: tmp_path / step for step in CRASH_STEPS}
    killed = {
        step: subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, json.dumps(config(small_data, run))],
            env={**env, CRASH_ENV: f"{step}@2"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for step, run in runs.items()
    }
    for step, process in killed.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"{step}: not killed there\n{err}"

    for step, run in runs.items():
        # a killed run still loads: the first epoch's generation, or the second's when the
        # kill came after the second was made current
        assert Run.load(run).epoch in (1, 2), step
        train(TrainConfig(**config(small_data, run, resume=True)))
        assert_same_weights(uninterrupted / "last.safetensors", run / "last.safetensors")
        assert_same_weights(uninterrupted / "model.safetensors", run / "model.safetensors")
        assert logged_epochs(run) == list(range(1, EPOCHS + 1)), step
        assert leftovers(run) == [], step


def test_a_run_saved_before_generations_resumes_and_moves_into_them(small_data, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**config(small_data, run, epochs=1)))
    # what a run folder held before: the four files themselves at the top level
    for name in checkpoint.RUN_FILES:
        data = (run / name).read_bytes()
        (run / name).unlink()
        (run / name).write_bytes(data)
    (run / checkpoint.CURRENT).unlink()
    old_best = (run / "model.safetensors").read_bytes()
    assert Run.load(run).epoch == 1
    train(TrainConfig(**config(small_data, run, resume=True)))
    assert (run / "model.safetensors").is_symlink()
    assert Run.load(run).epoch in (1, 2)
    if Run.load(run).epoch == 1:
        assert (run / "model.safetensors").read_bytes() == old_best
    assert leftovers(run) == []


def test_a_stop_on_an_epochs_last_step_resumes_to_the_same_weights_and_figures(
    small_data, uninterrupted, tmp_path, monkeypatch, one_thread
):
    run = tmp_path / "run"
    # the first epoch has 2 steps
    result = train(TrainConfig(**config(small_data, run)), callbacks=[SignalAtStep(2)])
    assert result == {"stopped": True, "epoch": 0, "batch_in_epoch": 2, "signal": "SIGINT"}
    train(TrainConfig(**config(small_data, run, resume=True)))  # was UnboundLocalError: beta
    assert_same_weights(uninterrupted / "last.safetensors", run / "last.safetensors")
    straight = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").open()]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    for a, b in zip(straight, resumed, strict=True):
        assert (a["epoch"], a["beta"], a["train"], a["val"]) == (
            b["epoch"], b["beta"], b["train"], b["val"]
        )  # fmt: skip


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_exits_128_plus_its_number(
    small_data, tmp_path, monkeypatch, capsys, signum, status
):
    run, settings = tmp_path / "run", tmp_path / "tiny.json"
    settings.write_text(json.dumps({"model": TINY_MODEL, "train": {"batch_size": 8}}))
    args = ["train", "--data", str(small_data), "--out", str(run), "--config", str(settings)]
    with signal_once(run / "tb", signum):  # made as training begins
        assert main(args) == status
    assert f"resume with: dogvae train --out {run} --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 0


def test_a_run_moved_or_copied_keeps_loading_and_resuming(small_data, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**config(small_data, run, epochs=1)))
    moved = tmp_path / "moved"
    run.rename(moved)  # the links are relative: they move with the folder
    expected = dogvae.load(moved).state_dict()
    links_kept = tmp_path / "links-kept"
    shutil.copytree(moved, links_kept, symlinks=True)
    followed = tmp_path / "followed"  # scp -r, cp -rL: every link becomes a copy
    shutil.copytree(moved, followed)
    assert not (followed / checkpoint.CURRENT).is_symlink()
    for copy in (links_kept, followed):
        got = dogvae.load(copy).state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.items()), copy
    train(TrainConfig(**config(small_data, followed, resume=True)))
    assert (followed / checkpoint.CURRENT).is_symlink()
    assert logged_epochs(followed) == [1, 2] and leftovers(followed) == []


@pytest.fixture(scope="module")
def one_epoch(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("one-epoch") / "run"
    train(TrainConfig(**config(small_data, run, epochs=1)))
    return run


def damaged_copy(run, tmp_path, name: str, damage: str):
    """A copy of `run` with its current `name` damaged as `damage` says."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    path = checkpoint.checkpoint_folder(copy) / name
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[0] ^= 0xFF
    elif damage == "empty":
        data = b""
    elif damage == "pickle":
        data = pickle.dumps({"epoch": 1, "payload": Exception("not a tensor")})
    elif damage == "not_utf8":
        data = b'\xff\xfe{"format": 1}'
    elif damage == "not_an_object":
        data = b"[1, 2]"
    path.unlink()  # the file is hard-linked with the original run's
    path.write_bytes(data)
    return copy


def assert_one_line(capsys, name: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("dogvae: error: ")]
    assert len(errors) == 1 and name in errors[0], err
    return errors[0]


@pytest.mark.parametrize(
    "name, damage",
    [
        ("state.pt", "truncated"), ("state.pt", "flipped"), ("state.pt", "empty"),
        ("state.pt", "pickle"), ("last.safetensors", "truncated"),
        ("last.safetensors", "flipped"), ("last.safetensors", "empty"),
    ],
)  # fmt: skip
def test_a_damaged_training_state_or_last_weights_is_one_line_on_resume(
    one_epoch, tmp_path, capsys, name, damage
):
    run = damaged_copy(one_epoch, tmp_path, name, damage)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
    assert_one_line(capsys, name)
    assert Run.load(run).epoch == 1  # the best model does not need them


@pytest.mark.parametrize(
    "name, damage",
    [
        ("model.safetensors", "truncated"), ("model.safetensors", "flipped"),
        ("model.safetensors", "empty"), ("config.json", "not_utf8"),
        ("config.json", "not_an_object"), ("config.json", "empty"),
    ],
)  # fmt: skip
def test_a_damaged_best_model_is_one_line_for_load_and_identify(
    one_epoch, small_data, tmp_path, capsys, name, damage
):
    run = damaged_copy(one_epoch, tmp_path, name, damage)
    with pytest.raises(CheckpointError, match=name):
        dogvae.load(run)
    photo = next((small_data / "train").iterdir())
    assert main(["identify", str(run), str(photo)]) == 2
    assert_one_line(capsys, name)


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_resume_saves_a_missing_or_damaged_best_model_again(
    one_epoch, tmp_path, capsys, one_thread, damage
):
    run = damaged_copy(one_epoch, tmp_path, "model.safetensors", "flipped")
    if damage == "missing":
        (checkpoint.checkpoint_folder(run) / "model.safetensors").unlink()
    # no epoch left to train: refused, rather than a finished run with no model to load
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "--epochs 2" in assert_one_line(capsys, "model.safetensors")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert "saves the best model again" in capsys.readouterr().err
    assert Run.load(run).epoch == 2  # whether or not epoch 2 validated better


def test_a_run_folder_that_cannot_be_written_is_one_line(small_data, tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):  # as a read-only --out (root ignores chmod) or a full disk
        raise PermissionError(13, "Permission denied", args[1])

    monkeypatch.setattr(checkpoint, "save_file", read_only)
    run = tmp_path / "run"
    args = ["train", "--data", str(small_data), "--out", str(run), "--epochs", "1"]
    assert main([*args, "--batch-size", "8", "--image-size", "32", "--model", "vae"]) == 2
    assert "cannot save a checkpoint there (Permission denied)" in assert_one_line(capsys, str(run))
