"""One question, one answer: the library, the CLI (--json) and the web API give the same
breeds, probabilities and shares for the same photo, for every kind of model."""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import train_tiny_run
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'dogvae[web]')")

from dogvae import checkpoint  # noqa: E402
from dogvae.app import create_app  # noqa: E402
from dogvae.app.service import ServedRun  # noqa: E402
from dogvae.cli import main  # noqa: E402
from dogvae.latents import open_store  # noqa: E402
from dogvae.pictures import image_grid  # noqa: E402
from dogvae.tasks import ancestry, identify, reconstruct_photos  # noqa: E402

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module", params=["vae", "cvae", "ssvae"])
def run(request, tmp_path_factory):
    return train_tiny_run(
        tmp_path_factory.getbasetemp() / f"one-answer-{request.param}",
        breeds=3, per_breed=30, mutts=3, seed=5, epochs=3, warmup_steps=2, model=request.param,
    )  # fmt: skip


@pytest.fixture(scope="module")
def doors(run):
    """The library (model and store), a web client, and the photo all three are asked about."""
    run_dir, data = run
    model = checkpoint.load(run_dir)
    store = open_store(model, run_dir, progress=False)
    with TestClient(create_app(ServedRun(run_dir))) as client:
        yield model, store, client, sorted((data / "mutts").glob("*.jpg"))[0]


def cli_json(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def upload(path):
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def breeds_and_probabilities(answer: dict) -> list[tuple[str, float]]:
    return [(t["breed"], t["probability"]) for t in answer["top"]]


def assert_same(pairs_a, pairs_b):
    assert [a for a, _ in pairs_a] == [b for b, _ in pairs_b]
    assert [p for _, p in pairs_a] == pytest.approx([p for _, p in pairs_b], abs=1e-6)


def test_identify_is_one_answer_through_library_cli_and_web(doors, run, capsys):
    model, store, client, photo = doors
    library = identify(model, store, photo, run=run[0])
    command = cli_json(capsys, "identify", run[0], photo)
    page = client.post("/api/identify", files=upload(photo)).json()
    assert library["source"] == ("classifier" if model.has_classifier else "probe")
    for other in (command, page):
        assert_same(breeds_and_probabilities(other), breeds_and_probabilities(library))
        assert other["breed"] == library["breed"] and other["source"] == library["source"]
        assert other["accuracy"]["top1"] == pytest.approx(library["accuracy"]["top1"])
        assert other["novelty"]["score"] == pytest.approx(library["novelty"]["score"], rel=1e-6)


def test_ancestry_is_one_answer_through_library_cli_and_web(doors, run, capsys):
    model, store, client, photo = doors
    library = ancestry(model, store, photo)
    command = cli_json(capsys, "ancestry", run[0], photo)
    page = client.post("/api/ancestry", files=upload(photo)).json()
    assert library["method"] == ("synthesis" if model.conditional else "latent")
    shares = [(p["breed"], p["share"]) for p in library["parents"]]
    for other in (command, page):
        assert_same([(p["breed"], p["share"]) for p in other["parents"]], shares)
        assert other["ranking"] == library["ranking"] and other["method"] == library["method"]


def test_reconstruct_is_one_answer_through_library_and_web(doors, tmp_path):
    model, _, client, photo = doors
    library = reconstruct_photos(model, [photo], tmp_path / "r.png")
    page = client.post("/api/reconstruct", files=upload(photo)).json()
    assert page["psnr"] == pytest.approx(library["mean_psnr"], abs=1e-6)


def test_a_breed_mix_is_one_picture_through_cli_and_web(doors, run, tmp_path, capsys):
    _, store, client, _ = doors
    a, b = store.breeds[0], store.breeds[1]
    out = tmp_path / "strip.png"
    cli_json(capsys, "mix", run[0], a, b, "--steps", "4", "--out", out)
    strip = client.get(f"/api/mix/strip.png?a={a}&b={b}&steps=4")
    assert strip.status_code == 200
    web = np.asarray(Image.open(io.BytesIO(strip.content)))
    assert np.array_equal(np.asarray(Image.open(out)), web)


def test_a_sample_is_one_picture_through_cli_and_web(doors, run, tmp_path, capsys):
    """`dogvae sample` and /api/sample draw the same dogs for the same seed and source: the
    CLI's grid is the web's images laid out."""
    model, _, client, _ = doors
    for source in ("gmm", "prior"):
        out = tmp_path / f"{source}.png"
        command = cli_json(
            capsys, "sample", run[0], "--n", "4", "--seed", "5", "--source", source, "--out", out
        )
        page = client.get("/api/sample", params={"n": 4, "seed": 5, "source": source}).json()
        assert command["source"] == page["source"] == page["sampler"] == source
        tiles = torch.from_numpy(np.stack([data_url_pixels(u) for u in page["images"]]))
        grid = image_grid(tiles.permute(0, 3, 1, 2) / 255, ncols=2, scale=96 // 32)
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(grid))


def data_url_pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_a_store_with_a_breed_the_model_never_saw_still_answers(doors, run, tmp_path):
    """--data with one more breed than the model was trained on: every answer still comes."""
    import shutil

    from dogvae.tasks import ancestry, identify, mix
    from dogvae.tasks.identify import breed_pictures
    from dogvae.tasks.knowledge import BreedKnowledge

    model, store, _, photo = doors
    data = tmp_path / "more"
    shutil.copytree(run[1], data)
    labels = (data / "labels.csv").read_text().splitlines()
    extra = [f"{line.split(',')[0]},zz_new_breed" for line in labels[1:9]]  # relabel 8 dogs
    (data / "labels.csv").write_text("\n".join([labels[0], *extra, *labels[9:]]) + "\n")
    wider = open_store(model, tmp_path / "wider-run-store", data, progress=False)
    assert "zz_new_breed" in wider.breeds and "zz_new_breed" not in model.breeds
    knowledge = BreedKnowledge(model, wider)
    pictures = breed_pictures(knowledge, list(range(len(wider.breeds))))
    assert pictures.shape == (len(wider.breeds), 32, 32, 3)
    answer = identify(model, wider, photo, knowledge=knowledge)
    assert abs(sum(t["probability"] for t in answer["top"]) - 1) < 1e-6
    parents = ancestry(model, wider, photo, knowledge=knowledge)["parents"]
    assert abs(sum(p["share"] for p in parents) - 1) < 1e-3
    if model.conditional:  # the new breed is drawn with the "unknown" embedding
        made = mix(model, wider, "zz_new_breed", wider.breeds[0], tmp_path / "m.png", steps=2,
                   knowledge=knowledge)  # fmt: skip
        assert made["n_images"] == 2
