"""`dogvae evaluate` and `dogvae compare` on a tiny model trained once per session; SSIM."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, train_tiny_run

from dogvae.checkpoint import load
from dogvae.cli import main
from dogvae.data.cache import load_images
from dogvae.eval_report import SECTIONS, format_comparison
from dogvae.evaluate import (
    METRICS_KEYS,
    SCHEMA_VERSION,
    best_of,
    compare_runs,
    comparison_notes,
    confusion_table,
    evaluate_run,
    read_metrics,
    split_rows,
)
from dogvae.metrics import gaussian_window, ssim_per_image
from dogvae.run import Run
from dogvae.train import TrainConfig, train

EVAL_BREEDS = 4


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory):
    """4 synthetic breeds x 30 dogs and 8 mutts at 32 px; a tiny VAE trained 3 epochs."""
    return train_tiny_run(
        tmp_path_factory.mktemp("eval"), breeds=EVAL_BREEDS, per_breed=30, mutts=8, seed=2, epochs=3
    )


@pytest.fixture(scope="session")
def eval_metrics(eval_run):
    run, data = eval_run
    return evaluate_run(run, data, progress=False)


class PageParser(HTMLParser):
    """Collects section ids, image sources and external references of an HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external, self.svgs = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "svg":
            self.svgs += 1
        for name in ("src", "href"):
            if attrs.get(name, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[name])


def parse(path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_report_holds_every_section_offline_with_inline_pictures(eval_run, eval_metrics):
    run, _ = eval_run
    page = parse(run / "eval" / "report.html")
    assert page.ids == [anchor for anchor, _ in SECTIONS]
    assert page.external == []
    assert len(page.images) >= 4 and all(
        s.startswith("data:image/png;base64,") for s in page.images
    )
    assert page.svgs == 3  # loss, PSNR and KL curves from the 3-epoch log


def test_metrics_json_has_the_documented_keys_and_the_runs_figures(eval_run, eval_metrics):
    run, _ = eval_run
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert tuple(sorted(saved)) == tuple(sorted(METRICS_KEYS))
    assert saved["schema_version"] == SCHEMA_VERSION and saved["split"] == "val"
    assert saved["reconstruction"]["baselines"]["pca"]["components"] == TINY_MODEL["latent_dim"]
    ident = saved["identification"]
    assert ident["chance"]["top1"] == pytest.approx(1 / EVAL_BREEDS)
    assert ident["classifier"] is None  # a plain VAE has none
    assert set(ident["pixel_pca"]) == {"knn", "logistic"}
    assert len(ident["confusion"]["matrix"]) == len(ident["confusion"]["breeds"])
    assert saved["ancestry"]["n_mutts"] == 8  # the synth folder has mutts.csv
    assert saved["training"]["epochs"] == 3
    assert saved["pictures"]["breed_samples"] is None and saved["pictures"]["mixes"]


def test_reconstruction_figures_are_the_validation_photos_scored_by_hand(eval_run, eval_metrics):
    """SSIM of each validation photo against its decoded posterior mean, and the baselines'
    PSNR: the training photos' mean image, and PCA with as many components as latents (it
    holds the mean image, so it never does worse)."""
    run, data = eval_run
    model = load(run)
    images = load_images(data, 32, progress=False)
    train_rows, val_rows = split_rows(Run.load(run), images, "val", data)
    photos = torch.from_numpy(np.array(images.images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        decoded = model.reconstruct(photos[val_rows])
    rec = eval_metrics["reconstruction"]
    assert rec["ssim"] == pytest.approx(
        float(ssim_per_image(decoded, photos[val_rows]).mean()), rel=1e-5
    )
    mean_image = photos[train_rows].mean(0, keepdim=True).double()
    mse = ((photos[val_rows].double() - mean_image) ** 2).mean((1, 2, 3))  # each photo's
    baselines = rec["baselines"]
    assert baselines["mean_image"]["psnr"] == pytest.approx(
        float((-10 * mse.log10()).mean()), abs=1e-3
    )
    assert baselines["pca"]["psnr"] > baselines["mean_image"]["psnr"]
    assert baselines["pca"]["ssim"] > baselines["mean_image"]["ssim"]


def test_elbo_on_the_validation_split_matches_what_training_reported(eval_run, eval_metrics):
    run, _ = eval_run
    trained = json.loads((run / "metrics.json").read_text())["val"]
    assert eval_metrics["elbo"]["nats_per_image"] == pytest.approx(trained["elbo"], rel=1e-5)
    assert eval_metrics["reconstruction"]["psnr"] == pytest.approx(trained["psnr"], rel=1e-5)


def test_train_split_scores_more_images_than_val(eval_run, eval_metrics, tmp_path):
    run, data = eval_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    on_train = evaluate_run(copy, data, split="train", progress=False)
    assert on_train["split"] == "train" and on_train["n_images"] > eval_metrics["n_images"]


def test_compare_marks_the_best_of_each_row_in_the_right_direction(
    eval_run, eval_metrics, tmp_path
):
    run, _ = eval_run
    worse = tmp_path / "worse"
    shutil.copytree(run, worse)
    metrics = read_metrics(worse)
    metrics["elbo"]["nats_per_image"] += 100.0  # lower is better: run wins
    metrics["reconstruction"]["psnr"] += 3.0  # higher is better: worse wins
    (worse / "eval" / "metrics.json").write_text(json.dumps(metrics))
    table = compare_runs([run, worse])
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["elbo.nats_per_image"]["best"] == [0]
    assert rows["reconstruction.psnr"]["best"] == [1]
    assert rows["active_units.count"]["best"] == []  # not ranked
    text = format_comparison(table)
    assert text.splitlines()[0].split() == ["run", "worse", "better"]
    psnr_line = next(line for line in text.splitlines() if line.startswith("PSNR"))
    assert psnr_line.split()[2:4] == [f"{eval_metrics['reconstruction']['psnr']:.2f}",
                                      f"{metrics['reconstruction']['psnr']:.2f}*"]  # fmt: skip


def test_best_of_handles_ties_missing_values_and_unranked_rows():
    assert best_of([1.0, 2.0, 2.0], "higher") == [1, 2]
    assert best_of([None, 3.0, 1.0], "lower") == [2]
    assert best_of([None, 3.0], "lower") == []  # one value: nothing to compare
    assert best_of([1.0, 2.0], None) == []


def test_compare_warns_when_rows_do_not_compare_like_with_like():
    def evaluated(kind, data="synth"):
        model = {"type": kind, "image_size": 32, "likelihood": "gaussian"}
        return {"data": data, "split": "val", "model": model}

    assert comparison_notes([evaluated("vae"), evaluated("ssvae")]) == []
    notes = comparison_notes([evaluated("vae"), evaluated("cvae", data="photos")])
    assert len(notes) == 2
    assert "data folder (photos, synth)" in notes[0] and "-log p(x | breed)" in notes[1]


def test_confusion_table_puts_the_most_confused_pair_first():
    breeds = ["akita", "beagle", "corgi"]
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([1, 1, 0, 0, 1, 2, 2])
    table = confusion_table(labels, np.eye(3)[predicted], breeds)
    assert [(p["true"], p["predicted"], p["count"]) for p in table["pairs"]] == [
        ("akita", "beagle", 2),
        ("beagle", "akita", 1),
    ]
    assert table["pairs"][0]["share_of_true"] == pytest.approx(2 / 3)
    assert table["matrix"] == [[1, 2, 0], [1, 1, 0], [0, 0, 2]]


@pytest.mark.parametrize("kind", ["cvae", "ssvae"])
def test_breed_aware_models_get_their_own_figures(eval_run, tmp_path, kind):
    """Both draw chosen breeds (their decoders see the breed); the ssvae's own classifier is
    scored and explains the confusions."""
    _, data = eval_run
    run = tmp_path / kind
    train(
        TrainConfig(
            data=str(data), out=str(run), epochs=1, batch_size=16, lr=3e-3, warmup_steps=5,
            progress=False, model_overrides={**TINY_MODEL, "model": kind,
                                             "classifier_widths": [8, 16, 32]},
        )
    )  # fmt: skip
    metrics = evaluate_run(run, data, progress=False)
    ident = metrics["identification"]
    assert (ident["classifier"] is not None) == (kind == "ssvae")
    assert (ident["confusion_source"] == "the model's own classifier") == (kind == "ssvae")
    answering = ident["classifier"] or ident[ident["probe_chosen"]]
    # the log loss of the identifier that answers, from the probabilities identify gives
    from dogvae.checkpoint import load
    from dogvae.latents import open_store
    from dogvae.tasks.knowledge import BreedKnowledge
    from dogvae.tasks.probe import log_loss

    model = load(run)
    knowledge = BreedKnowledge(model, open_store(model, run, data, progress=False), run)
    val = knowledge.store.val_rows
    expected = log_loss(knowledge.store_probabilities(val), knowledge.store.labels[val])
    assert answering["log_loss"] == pytest.approx(expected, rel=1e-9)
    assert expected < np.log(len(knowledge.breeds)) + 0.5  # calibrated: near uniform or better
    if kind == "ssvae":
        assert ident["classifier"]["views"] == 10
        assert (
            "own classifier (10 views of each photo)" in (run / "eval" / "report.html").read_text()
        )
    assert metrics["pictures"]["breed_samples"] is not None
    assert parse(run / "eval" / "report.html").ids == [anchor for anchor, _ in SECTIONS]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_command_prints_the_table_and_writes_a_page(
    eval_run, eval_metrics, capsys, tmp_path
):
    run, _ = eval_run
    code, out, err = run_cli(capsys, "compare", run, run, "--out", tmp_path / "compare.html")
    assert code == 0, err
    assert "negative ELBO, nats/image" in out and "best of the row" in out
    page = (tmp_path / "compare.html").read_text()
    assert "<table>" in page and 'class="best"' in page


@pytest.mark.parametrize(
    "command, message",
    [
        ("evaluate {empty} --data {data}", "no trained dogvae model"),
        ("evaluate {run} --data {tmp}/nowhere", "no such data folder"),
        ("compare {run} {empty}", "has not been evaluated"),
        ("compare {tmp}/gone", "no such run folder"),
    ],
)
def test_bad_inputs_give_one_error_line_and_exit_2(
    eval_run, eval_metrics, tmp_path, capsys, command, message
):
    (tmp_path / "empty").mkdir()
    run, data = eval_run
    values = {"run": run, "data": data, "tmp": tmp_path, "empty": tmp_path / "empty"}
    code, out, err = run_cli(capsys, *command.format(**values).split())
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dogvae: error: ") and message in err
    assert "Traceback" not in err + out


# --- SSIM ----------------------------------------------------------------------------------


def numpy_ssim(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two (C, H, W) images by the definition, window position by window position."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append(
                    (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return float(np.mean(values))


def test_ssim_matches_the_definition_on_a_tiny_case():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 14, 13))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    got = ssim_per_image(torch.from_numpy(x), torch.from_numpy(y))
    want = [numpy_ssim(x[i], y[i]) for i in range(2)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_ssim_is_one_for_identical_images_symmetric_and_falls_with_noise():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0] * 3)
    noisy = [(x + s * torch.randn_like(x)).clamp(0, 1) for s in (0.02, 0.1, 0.3)]
    scores = [float(ssim_per_image(x, n).mean()) for n in noisy]
    assert scores[0] > scores[1] > scores[2]
    assert torch.allclose(ssim_per_image(x, noisy[1]), ssim_per_image(noisy[1], x))


def test_ssim_window_is_a_normalised_gaussian_and_shrinks_for_small_images():
    window = gaussian_window()
    assert len(window) == 11 and float(window.sum()) == pytest.approx(1.0)
    assert torch.equal(window, window.flip(0)) and window.argmax() == 5
    x = torch.rand(1, 3, 6, 6)
    assert float(ssim_per_image(x, x)) == pytest.approx(1.0)
