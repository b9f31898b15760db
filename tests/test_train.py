"""Training: loss falls, checkpoints round-trip and resume exactly, bad states are refused."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, SignalAtStep, tiny_train_config
from safetensors.torch import load_file

import dogvae
from dogvae import checkpoint
from dogvae.atomic import atomic_path, remove_stale_temporaries, temporary_path, write_json
from dogvae.callbacks import Callback
from dogvae.cli import main
from dogvae.errors import CheckpointError, TrainingError
from dogvae.run import Run
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, breeds=3, per_breed=30, size=32, mutts=0, seed=0, progress=False)
    return out


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_seed_preset_trains_as_the_keras_original_and_explicit_settings_win():
    # the original notebook: Adam(lr=1e-4), batch 32, no weight decay, warm-up or clipping
    seed = TrainConfig(data="d", out="o", preset="seed").resolved()
    assert (seed.weight_decay, seed.warmup_steps, seed.grad_clip) == (0.0, 0, 0.0)
    assert (seed.batch_size, seed.lr, seed.lr_schedule) == (32, 1e-4, "constant")
    mine = TrainConfig(data="d", out="o", preset="seed", grad_clip=1.0, lr=3e-4).resolved()
    assert (mine.grad_clip, mine.lr, mine.weight_decay) == (1.0, 3e-4, 0.0)


def test_the_seed_preset_keeps_the_keras_constant_learning_rate_and_the_others_decay():
    from dogvae.optim import group_schedules

    seed = TrainConfig(data="d", out="o", preset="seed", epochs=10).resolved()
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=seed.lr)
    (factor,) = group_schedules(optimizer, seed, steps_per_epoch=100)
    assert [factor(step) for step in (0, 500, 999)] == [1.0, 1.0, 1.0]  # Adam 1e-4 throughout
    small = TrainConfig(data="d", out="o", epochs=10).resolved()
    (decaying,) = group_schedules(optimizer, small, steps_per_epoch=100)
    assert decaying(0) == pytest.approx(0.01) and decaying(999) == pytest.approx(0.05, abs=1e-3)


def test_a_seed_run_saved_before_lr_schedule_resumes_with_the_cosine_it_began_with(monkeypatch):
    info = {"preset": "seed", "model": {}, "train": {"data": "d", "epochs": 3}}
    monkeypatch.setattr(checkpoint, "last_run_info", lambda run: info)
    assert TrainConfig.from_run("run", {}, {}).lr_schedule == "cosine"
    info["train"]["lr_schedule"] = "constant"
    assert TrainConfig.from_run("run", {}, {}).lr_schedule == "constant"


FAULTS_SCRIPT = """
import ctypes, resource
from dogvae.runtime import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
size = 64 << 20  # over glibc's largest mmap threshold, like seed's dense-layer gradients

def page_faults_for_a_written_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = [page_faults_for_a_written_block() for _ in range(2)]
took = keep_freed_memory()
kept = [page_faults_for_a_written_block() for _ in range(3)]
print(default[-1], took, kept[-1])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_reuses_a_big_block_without_fresh_page_faults():
    # its own process: the setting is process-wide, and training in this one sets it
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True)
    default, took, kept = out.stdout.split()
    assert int(default) > 10_000  # glibc's default: a fresh mmap, 16,384 pages, every time
    assert took == "True"
    assert int(kept) < 1000


def test_short_run_lowers_validation_elbo_and_keeps_the_best_epoch(tiny_data, tmp_path):
    summary = train(tiny_train_config(tiny_data, tmp_path / "run", epochs=6))
    epochs = read_metrics(tmp_path / "run")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5, 6]
    assert epochs[-1]["val"]["elbo"] < 0.9 * epochs[0]["val"]["elbo"]
    assert summary["best_epoch"] == min(epochs, key=lambda e: e["val"]["elbo"])["epoch"]
    assert summary["baselines"]["pca_components"] == TINY_MODEL["latent_dim"]
    for name in (
        "model.safetensors",
        "config.json",
        "last.safetensors",
        "state.pt",
        "metrics.json",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / "images" / "recon-006.png").is_file()
    assert any((tmp_path / "run" / "tb").iterdir())


def test_loaded_model_gives_bit_identical_outputs_and_knows_its_breeds(tiny_data, tmp_path):
    train(tiny_train_config(tiny_data, tmp_path / "run", epochs=1))
    model = checkpoint.load(tmp_path / "run")
    rows = (tiny_data / "labels.csv").read_text().splitlines()[1:]
    assert model.breeds == sorted({row.split(",")[1] for row in rows})
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    again = dogvae.load(tmp_path / "run")  # the top-level library entry point
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.decode(model.embed(x)), again.decode(again.embed(x)))


def test_resume_after_kill_ends_with_the_same_weights_as_an_uninterrupted_run(
    tiny_data, tmp_path, monkeypatch
):
    train(tiny_train_config(tiny_data, tmp_path / "straight"))

    real_save = checkpoint.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("killed right after the first epoch's checkpoint")

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(SystemExit):
        train(tiny_train_config(tiny_data, tmp_path / "killed"))
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    train(tiny_train_config(tiny_data, tmp_path / "killed", resume=True))

    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "killed" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ctrl_c_mid_epoch_saves_last_and_resume_matches_uninterrupted(
    tiny_data, tmp_path, monkeypatch
):
    train(tiny_train_config(tiny_data, tmp_path / "straight", epochs=2))

    stopped = tiny_train_config(tiny_data, tmp_path / "stopped", epochs=2)
    result = train(stopped, callbacks=[SignalAtStep(4)])
    assert result == {"stopped": True, "epoch": 0, "batch_in_epoch": 4, "signal": "SIGINT"}
    train(tiny_train_config(tiny_data, tmp_path / "stopped", epochs=2, resume=True))

    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "last.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    train(tiny_train_config(tiny_data, run, epochs=1))
    good = {name: (run / name).read_bytes() for name in ("model.safetensors", "last.safetensors")}

    class PoisonTheWeights(Callback):  # as a diverging run would leave them
        def on_train_begin(self, trainer):
            with torch.no_grad():
                next(trainer.setup.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at epoch 2, batch 1"):
        train(
            tiny_train_config(tiny_data, run, epochs=2, resume=True), callbacks=[PoisonTheWeights()]
        )
    for name, data in good.items():
        assert (run / name).read_bytes() == data
    checkpoint.load(run)  # still loads


def test_interrupted_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old good weights")

    def die(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dogvae.atomic.os.replace", die)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-written new wei")
    assert target.read_bytes() == b"old good weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_next_write_of_a_file_sweeps_what_a_dead_writer_left(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    target = tmp_path / "metrics.json"
    left = temporary_path(target).with_name(
        temporary_path(target).name.rsplit("-", 1)[0] + f"-{dead.stdout.strip()}"
    )
    left.write_text('{"half": ')
    live = temporary_path(tmp_path / "other.json")  # this process's: alive, so kept
    live.write_text("{}")
    write_json(target, {"done": True})
    assert json.loads(target.read_text()) == {"done": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "metrics.json"]
    assert remove_stale_temporaries(tmp_path) == []


def test_load_refuses_missing_tampered_and_misshapen_checkpoints(tiny_data, tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        checkpoint.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        checkpoint.load(tmp_path / "empty")

    run = tmp_path / "run"
    train(tiny_train_config(tiny_data, run, epochs=1))
    info = json.loads((run / "config.json").read_text())
    info["model"]["latent_dim"] = 9
    (run / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        checkpoint.load(run)

    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        checkpoint.load(run)


def test_cli_trains_from_a_config_file_and_refuses_to_overwrite_a_run(tiny_data, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(
        json.dumps({"preset": "small64", "model": TINY_MODEL, "train": {"batch_size": 16}})
    )
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tiny_data),
        "--out",
        str(run),
        "--config",
        str(config),
        "--epochs",
        "1",
    ]
    assert main(args + ["--json"]) == 0
    assert '"best_epoch": 1' in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["model"]["latent_dim"] == 8
    assert main(args) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume", "--epochs", "2"]) == 0
    assert [e["epoch"] for e in read_metrics(run)] == [1, 2]


def test_cli_resume_needs_only_the_run_folder_and_keeps_its_settings(tiny_data, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": TINY_MODEL, "train": {"batch_size": 16, "lr": 3e-3}}))
    run = tmp_path / "run"
    first = ["train", "--data", str(tiny_data), "--out", str(run), "--config", str(config)]
    assert main(first + ["--epochs", "1"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["latent_dim"] == 8 and saved["train"]["batch_size"] == 16
    assert saved["train"]["lr"] == 3e-3 and saved["train"]["data"] == str(tiny_data)
    assert [e["epoch"] for e in read_metrics(run)] == [1, 2]
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "pass --data" in capsys.readouterr().err


def test_classifier_epochs_comes_from_the_command_line():
    from dogvae import cli

    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert cli._train_config(args).classifier_epochs == 45
    args = cli.build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--classifier-epochs", "3"]
    )
    assert cli._train_config(args).classifier_epochs == 3


def test_trains_a_few_steps_on_real_kaggle_photos(tmp_path):
    from conftest import shared_path

    data = shared_path("dogs-sample")
    summary = train(tiny_train_config(data, tmp_path / "run", epochs=2, batch_size=32))
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert len(info["breeds"]) == 10 and "golden_retriever" in info["breeds"]
    assert info["data"]["n_images"] == 300
    first, second = read_metrics(tmp_path / "run")
    assert second["val"]["elbo"] < first["val"]["elbo"]
    assert summary["val"]["psnr"] > 10.0  # real photos decode to real pixels, not noise


def test_a_plain_folder_of_unlabelled_photos_trains_and_loads(tiny_data, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for photo in sorted((tiny_data / "train").glob("*.jpg")):
        (plain / photo.name).write_bytes(photo.read_bytes())
    summary = train(tiny_train_config(plain, tmp_path / "run", epochs=1))
    assert summary["best_epoch"] == 1 and math.isfinite(summary["val"]["elbo"])
    assert dogvae.load(tmp_path / "run").breeds == []
    data = Run.load(tmp_path / "run").data_summary
    assert data["layout"] == "plain" and data["n_images"] == 90


def test_too_few_images_for_validation_is_one_line(tiny_data, tmp_path, capsys):
    lone = tmp_path / "lone"
    lone.mkdir()
    photo = next((tiny_data / "train").glob("*.jpg"))
    (lone / photo.name).write_bytes(photo.read_bytes())
    assert main(["train", "--data", str(lone), "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the decoding progress bar
    assert last.startswith("dogvae: error: ") and "no image is left for validation (1 im" in last


def test_batches_made_from_the_device_cache_train_exactly_like_the_loader(tiny_data, tmp_path):
    # on a GPU the cache is held there ("auto"); "on" takes the same path on the CPU
    train(
        tiny_train_config(
            tiny_data, tmp_path / "loader", epochs=2, device="cpu", device_cache="off"
        )
    )
    train(
        tiny_train_config(tiny_data, tmp_path / "device", epochs=2, device="cpu", device_cache="on")
    )
    a = load_file(str(tmp_path / "loader" / "last.safetensors"))
    b = load_file(str(tmp_path / "device" / "last.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_compile_flag_runs_the_compiled_model_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    # the "eager" backend traces the model as --compile does, without a minute of C++ builds
    real_compile, compiled = torch.compile, []

    def traced(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", traced)
    config = tmp_path / "tiny.json"
    config.write_text(
        json.dumps({"model": TINY_MODEL, "train": {"batch_size": 16, "device": "cpu"}})
    )
    args = ["train", "--data", str(tiny_data), "--config", str(config), "--epochs", "1"]
    assert main(args + ["--out", str(tmp_path / "compiled"), "--compile"]) == 0
    assert len(compiled) == 1
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    a = load_file(str(tmp_path / "compiled" / "last.safetensors"))
    b = load_file(str(tmp_path / "plain" / "last.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.parametrize(
    "labelled, preset, asked, trained",
    [
        (True, "small64", None, "ssvae"),  # labels of two or more breeds: the breed-aware model
        (False, "small64", None, "vae"),  # a plain folder of images: nothing to know breeds by
        (True, "seed", None, "vae"),  # the Keras replica stays the replica
        (True, "small64", "vae", "vae"),  # asked for
        (True, "small64", "cvae", "cvae"),
    ],
)
def test_the_model_trained_by_default_is_the_one_that_knows_breeds(
    labelled, preset, asked, trained
):
    from types import SimpleNamespace

    import numpy as np

    from dogvae.model import preset_config
    from dogvae.trainer import default_model

    labels = np.array([0, 1, 2, 0] if labelled else [-1, -1, -1, -1])
    overrides = {} if asked is None else {"model": asked}
    cfg = TrainConfig(data="d", out="o", preset=preset, model_overrides=overrides)
    model_cfg = cfg.model_config()
    chosen = default_model(cfg, model_cfg, SimpleNamespace(labels=labels))
    assert chosen.model == trained
    assert chosen.image_size == preset_config(preset).image_size  # nothing else changes


def test_train_on_labelled_data_trains_an_ssvae_and_says_why(tiny_data, tmp_path, caplog):
    cfg = tiny_train_config(tiny_data, tmp_path / "run", epochs=1, model_overrides=dict(TINY_MODEL))
    with caplog.at_level("INFO", logger="dogvae"):
        train(cfg)
    assert checkpoint.load(tmp_path / "run").config.model == "ssvae"
    assert "model: ssvae (the images are labelled with breeds" in caplog.text


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("dogvae: error: "), err
    return err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("id,breed\n", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not list"),
        ('{"trian": {}}', "unknown section 'trian'; it may hold preset, model, train, tune"),
        ('{"train": [16]}', "'train' must be a JSON object"),
        ('{"train": {"batch": 16}}', "unknown train settings batch"),
        ('{"train": {"lr": "fast"}}', 'train.lr must be a number or null, not "fast"'),
        ('{"train": {"epochs": "2"}}', 'train.epochs must be a whole number or null, not "2"'),
        ('{"model": {"latent_dim": "8"}}', 'model.latent_dim must be a whole number, not "8"'),
        ('{"model": {"enc_widths": [8, 1.5]}}', "model.enc_widths must be a list of whole numbers"),
        ('{"train": {"strict": 1}}', "train.strict must be true or false, not 1"),
        ('{"preset": 3}', "preset must be a name, not 3"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, capsys, content, expected):
    config = tmp_path / "settings.json"
    if content is not None:
        config.write_text(content)
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(args + ["--config", str(config)]) == 2
    err = one_error_line(capsys)
    assert expected in err and ("settings.json" in err or "--lr" in err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--batch-size", "0"], "--batch-size must be a whole number >= 1, not 0"),
        (["--lr", "-1"], "--lr must be a positive number, not -1.0"),
        (["--lr", "nan"], "--lr must be a positive number, not nan"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--label-fraction", "0"], "--label-fraction must be in (0, 1], not 0.0"),
        (["--image-size", "0"], "image_size 0 must be a positive multiple of 2^4"),
        (["--image-size", "-32"], "image_size -32 must be a positive multiple of 2^4"),
        (["--latent-dim", "-2"], "latent_dim must be at least 1"),
    ],
)
def test_a_setting_no_run_can_train_with_is_one_line_naming_its_flag(
    tmp_path, capsys, flags, expected
):
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags]
    assert main(args) == 2
    assert expected in one_error_line(capsys)


def test_an_out_folder_that_cannot_be_made_is_one_line(tiny_data, tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    for out in (taken, taken / "run"):
        assert main(["train", "--data", str(tiny_data), "--out", str(out)]) == 2
        assert f"--out {out}: cannot make the run folder there" in one_error_line(capsys)


def test_a_port_outside_0_to_65535_is_refused_before_anything_loads(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no-run"), "--port", "99999"]) == 2
    assert "--port 99999: a port is 0 (any free one) to 65535" in one_error_line(capsys)


def test_training_from_an_array_or_a_dataset_equals_training_from_the_folder(tiny_data, tmp_path):
    from dogvae.data.cache import load_images

    train(tiny_train_config(tiny_data, tmp_path / "folder", epochs=1))
    images = load_images(tiny_data, 32, progress=False)
    names = [images.breeds[b] for b in images.labels]
    pixels = np.array(images.images)  # a writable copy
    train(tiny_train_config("an array", tmp_path / "array", epochs=1), data=pixels, labels=names)

    class Photos(torch.utils.data.Dataset):  # (3, H, W) floats in [0, 1] and breed indices
        def __len__(self):
            return len(pixels)

        def __getitem__(self, i):
            return torch.from_numpy(pixels[i]).permute(2, 0, 1) / 255, int(images.labels[i])

    cfg = tiny_train_config("a dataset", tmp_path / "dataset", epochs=1)
    train(cfg, data=Photos(), breeds=images.breeds)
    reference = load_file(str(tmp_path / "folder" / "last.safetensors"))
    for other in ("array", "dataset"):
        weights = load_file(str(tmp_path / other / "last.safetensors"))
        assert all(torch.equal(reference[k], weights[k]) for k in reference), other
        assert checkpoint.load(tmp_path / other).breeds == images.breeds


def test_python_data_of_the_wrong_kind_is_one_clear_error(tmp_path):
    from dogvae.errors import DataError

    with pytest.raises(DataError, match=r"uint8 \(N, H, W, 3\), not float64"):
        train(tiny_train_config("x", tmp_path / "run"), data=np.zeros((4, 8, 8, 3)))
    with pytest.raises(DataError, match="3 labels for 4 images"):
        train(
            tiny_train_config("x", tmp_path / "run"),
            data=np.zeros((4, 32, 32, 3), np.uint8), labels=["a", "b", "a"],
        )  # fmt: skip


def test_a_callback_added_from_python_sees_every_steps_named_statistics(tiny_data, tmp_path):
    seen, records = [], []

    class Watch(Callback):
        def on_step_end(self, trainer, stats):
            seen.append(stats)

        def on_epoch_end(self, trainer, record):
            records.append(record)

    summary = train(tiny_train_config(tiny_data, tmp_path / "run", epochs=2), callbacks=[Watch()])
    steps = records[0]["step"]
    assert [s.step for s in seen] == list(range(1, 2 * steps + 1))
    assert [(s.epoch, s.batch) for s in seen[:steps]] == [(0, b) for b in range(steps)]
    assert all(s.images == 16 and not (s.sigint or s.sigterm) for s in seen)
    # the epoch's training figures are the image-weighted means of its steps' figures
    for epoch, record in enumerate(records):
        mine = [s for s in seen if s.epoch == epoch]
        for name in ("loss", "recon", "kl"):
            mean = sum(getattr(s, name) * s.images for s in mine) / sum(s.images for s in mine)
            assert record["train"][name] == pytest.approx(mean, rel=1e-12)
    assert seen[-1].recon < seen[0].recon  # it learns
    assert summary["best_epoch"] in (1, 2)


def test_a_callback_can_stop_a_run_that_then_resumes(tiny_data, tmp_path):
    class StopAfterThree(Callback):
        def on_step_end(self, trainer, stats):
            if stats.step == 3:
                trainer.request_stop("enough")

    cfg = tiny_train_config(tiny_data, tmp_path / "run", epochs=2)
    result = train(cfg, callbacks=[StopAfterThree()])
    assert result == {"stopped": True, "epoch": 0, "batch_in_epoch": 3, "signal": "enough"}
    done = train(tiny_train_config(tiny_data, tmp_path / "run", epochs=2, resume=True))
    assert done["epochs"] == 2


def test_a_callback_that_stops_at_an_epochs_end_leaves_that_epochs_checkpoint(tiny_data, tmp_path):
    class StopAfterTheFirstEpoch(Callback):
        def on_epoch_end(self, trainer, record):
            trainer.request_stop("one epoch is enough")

    run = tmp_path / "run"
    result = train(tiny_train_config(tiny_data, run), callbacks=[StopAfterTheFirstEpoch()])
    assert result == {"stopped": True, "epoch": 1, "batch_in_epoch": 0,
                      "signal": "one epoch is enough"}  # fmt: skip
    assert Run.load(run).epoch == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
