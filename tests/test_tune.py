"""`dogvae tune`: an Optuna study in SQLite that resumes, and a best.json that trains."""

from __future__ import annotations

import json

import pytest
from conftest import SignalAtStep

optuna = pytest.importorskip("optuna")

from dogvae.cli import main  # noqa: E402
from dogvae.synth import synthesize  # noqa: E402
from dogvae.train import TrainConfig, train  # noqa: E402
from dogvae.tune import SearchSpace, scaled_width, tune  # noqa: E402

TINY_BASE = {
    "preset": "small64",
    "model": {
        "image_size": 32,
        "enc_widths": [8, 16, 16],
        "dec_widths": [16, 8, 8],
        "dec_start_channels": 16,
        "blocks_per_stage": [0, 1, 1],  # res64 spells its blocks per stage: three stages here
    },
    "train": {"warmup_steps": 5, "device": "cpu"},
    "search": {
        "preset": ["small64", "res64"],
        "latent_dim": [4, 8],
        "width": [0.5, 1.0],
        "batch_size": [8, 16],
    },
}


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, breeds=3, per_breed=20, size=32, mutts=0, seed=0, progress=False)
    return out


def finished(storage: str, study: str = "dogvae") -> list:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    return [t for t in trials if t.state.is_finished()]


def test_study_lives_in_sqlite_resumes_to_its_total_and_best_json_trains(
    tiny_data, tmp_path, capsys
):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(TINY_BASE))
    storage = f"sqlite:///{tmp_path / 'search' / 'tune.db'}"
    args = ["tune", "--data", str(tiny_data), "--storage", storage, "--epochs", "1",
            "--config", str(base)]  # fmt: skip
    assert main(args + ["--trials", "3"]) == 0
    assert len(finished(storage)) == 3
    assert sorted(p.name for p in (tmp_path / "search").glob("trial-*")) == [
        "trial-000", "trial-001", "trial-002",
    ]  # fmt: skip
    first = json.loads((tmp_path / "search" / "best.json").read_text())

    # the same command again has nothing left to do; a larger total runs only the difference
    assert main(args + ["--trials", "3"]) == 0
    assert len(finished(storage)) == 3
    assert main(args + ["--trials", "5", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.rindex("\n{") + 1 :])  # the summary printed last
    assert result["finished_trials"] == 5 == len(finished(storage))
    assert len(list((tmp_path / "search").glob("trial-*"))) == 5

    best = json.loads((tmp_path / "search" / "best.json").read_text())
    study = optuna.load_study(study_name="dogvae", storage=storage)
    assert best["tune"]["trial"] == study.best_trial.number
    assert best["tune"]["value"] == study.best_value <= first["tune"]["value"]
    assert best["model"]["latent_dim"] in (4, 8) and best["train"]["epochs"] == 1

    run = tmp_path / "from-best"
    assert main(["train", "--data", str(tiny_data), "--out", str(run),
                 "--config", str(tmp_path / "search" / "best.json")]) == 0  # fmt: skip
    trained = json.loads((run / "config.json").read_text())
    assert trained["preset"] == best["preset"]
    assert trained["model"]["enc_widths"] == best["model"]["enc_widths"]
    assert trained["train"]["lr"] == best["train"]["lr"]


def test_a_study_refuses_other_settings_and_elbos_that_do_not_compare(tiny_data, tmp_path):
    base = {k: v for k, v in TINY_BASE.items() if k != "search"}
    space = SearchSpace.from_dict(TINY_BASE["search"])
    tune(tiny_data, tmp_path, trials=1, epochs=1, base=base, space=space)
    with pytest.raises(Exception, match="was started with other metric"):
        tune(tiny_data, tmp_path, trials=2, epochs=1, base=base, space=space, metric="psnr")
    mixed = SearchSpace.from_dict({**TINY_BASE["search"], "preset": ["small64", "seed"]})
    with pytest.raises(Exception, match="cannot be compared"):
        tune(tiny_data, tmp_path / "mixed", trials=1, epochs=1, base={}, space=mixed)


def test_a_trial_stopped_by_ctrl_c_resumes_from_its_checkpoint(tiny_data, tmp_path, monkeypatch):
    base = {k: v for k, v in TINY_BASE.items() if k != "search"}
    space = SearchSpace.from_dict(TINY_BASE["search"])
    with pytest.raises(KeyboardInterrupt):
        tune(tiny_data, tmp_path, trials=2, epochs=2, base=base, space=space,
             callbacks=[SignalAtStep(3)])  # fmt: skip
    assert (tmp_path / "trial-000" / "state.pt").is_file()

    tune(tiny_data, tmp_path, trials=1, epochs=2, base=base, space=space)
    trials = optuna.load_study(study_name="dogvae", storage=f"sqlite:///{tmp_path}/tune.db")
    stopped, resumed = trials.get_trials()
    assert stopped.state.name == "FAIL" and resumed.state.name == "COMPLETE"
    assert resumed.params == stopped.params
    assert resumed.user_attrs["run"] == str(tmp_path / "trial-000")
    assert not (tmp_path / "trial-001").exists()


def test_on_epoch_sees_each_validated_epoch_and_may_stop_training(tiny_data, tmp_path):
    seen = []

    class Enough(Exception):
        pass

    def on_epoch(record):
        seen.append(record)
        if record["epoch"] == 2:
            raise Enough

    cfg = TrainConfig(
        data=str(tiny_data), out=str(tmp_path / "run"), epochs=5, batch_size=16,
        progress=False, model_overrides={**TINY_BASE["model"], "latent_dim": 4},
    )  # fmt: skip
    with pytest.raises(Enough):
        train(cfg, on_epoch=on_epoch)
    assert [r["epoch"] for r in seen] == [1, 2]
    assert {"elbo", "psnr", "bits_per_dim"} <= seen[0]["val"].keys()
    state = (tmp_path / "run" / "state.pt").stat()  # the epoch was saved before the hook ran
    assert state.st_size > 0


def test_widths_scale_to_sizes_group_norm_can_split():
    assert [scaled_width(w, 0.5) for w in (32, 64, 128, 256)] == [16, 32, 64, 128]
    assert [scaled_width(w, 0.75) for w in (32, 64, 128, 256)] == [24, 48, 96, 192]
    assert scaled_width(192, 1.5) == 288 and 288 % 32 == 0
    assert scaled_width(8, 0.5) == 8
