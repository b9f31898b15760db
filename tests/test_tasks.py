"""The latent tasks on a tiny model trained once per session: pictures, JSON, seeds, errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import damage_file, train_tiny_run
from PIL import Image, ImageDraw

from dogvae import checkpoint
from dogvae.cli import main
from dogvae.latents import STORE_FILE, encode_images, open_store
from dogvae.metrics import frechet_distance, gaussian_frechet_distance
from dogvae.pictures import to_uint8
from dogvae.tasks import (
    ancestry,
    cluster_latents,
    evaluate_ancestry,
    evaluate_identify,
    identify,
    mix,
    reconstruct_photos,
    sample_dogs,
)
from dogvae.tasks.ancestry import answer_ancestry
from dogvae.tasks.clusters import agreement, cluster_codes
from dogvae.tasks.identify import answer_identify
from dogvae.tasks.inputs import read_photos
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.mixing import decode_codes
from dogvae.tasks.non_dogs import encode_pictures, flag_rates, non_dog_pictures
from dogvae.tasks.probe import PROBE_FILE, breed_probe, fit_probe, load_probe
from dogvae.tasks.reconstruct import reconstruct_pixels
from dogvae.tasks.sample import (
    MIXTURE_COMPONENTS,
    MIXTURE_FILE,
    breed_codes,
    latent_mixture,
    load_mixture,
)

BREEDS = 4


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """4 synthetic breeds x 40 dogs and 12 mutts at 32 px; a tiny VAE trained 6 epochs."""
    return train_tiny_run(
        tmp_path_factory.mktemp("tasks"), breeds=BREEDS, per_breed=40, mutts=12, seed=1, epochs=6
    )


@pytest.fixture(scope="session")
def loaded(tiny_run):
    run, _ = tiny_run
    model = checkpoint.load(run)
    return model, open_store(model, run, progress=False)


@pytest.fixture(scope="session")
def photos(tiny_run, tmp_path_factory):
    """Photos as users have them: RGBA PNG, WebP named .jpeg, EXIF-rotated, odd sizes."""
    _, data = tiny_run
    folder = tmp_path_factory.mktemp("photos")
    dog = Image.open(next((data / "mutts").iterdir())).convert("RGB").resize((90, 61))
    rgba = dog.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "alpha.png")
    dog.save(folder / "webp.jpeg", format="WEBP")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    dog.save(folder / "rotated.jpg", exif=exif)
    (folder / "notes.jpg").write_text("not an image at all")
    return folder


def diagram(path):
    """A diagram: white page, boxes, arrows and text, as unlike a dog as a picture gets."""
    page = Image.new("RGB", (200, 120), "white")
    draw = ImageDraw.Draw(page)
    for left in (10, 80, 150):
        draw.rectangle([left, 40, left + 40, 80], outline="black", width=2)
        draw.text((left + 4, 55), "z=mu", fill="black")
    draw.line([50, 60, 80, 60], fill="black", width=2)
    draw.line([120, 60, 150, 60], fill="black", width=2)
    page.save(path)
    return path


def png_size(path):
    with Image.open(path) as img:
        return img.size


def picture_tiles(path, n_rows: int, n_cols: int, size: int = 32) -> np.ndarray:
    """(rows, cols, size, size, 3) the tiles of a captioned `image_grid` picture, read back at
    the model's size: each tile is drawn 3x (96 px) with a 2 px gap and a 12 px caption."""
    with Image.open(path) as img:
        sheet = np.asarray(img.convert("RGB"))
    scale, pad = 96 // size, 2
    side = size * scale

    def tile(r, c):
        top, left = pad + r * (side + pad + 12), pad + c * (side + pad)
        return sheet[top : top + side : scale, left : left + side : scale]

    return np.stack([np.stack([tile(r, c) for c in range(n_cols)]) for r in range(n_rows)])


def psnr_of(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(-10 * np.log10(mse))


def test_reconstruct_reports_the_psnr_of_the_pair_it_draws_for_any_photo_format(
    loaded, photos, tmp_path
):
    model, _ = loaded
    inputs = [photos / "alpha.png", photos / "webp.jpeg", photos / "rotated.jpg"]
    result = reconstruct_photos(model, inputs, tmp_path / "recon.png")
    assert [r["image"] for r in result["images"]] == [str(p) for p in inputs]
    tiles = picture_tiles(tmp_path / "recon.png", n_rows=3, n_cols=2)  # original | decoded
    for row, reported in zip(tiles, result["images"], strict=True):
        assert reported["psnr"] == pytest.approx(psnr_of(row[0], row[1]), abs=0.05)
    assert result["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["images"]]))
    assert tiles[2, 0].shape == (32, 32, 3) and not np.array_equal(tiles[2, 0], tiles[0, 0])


def test_a_reconstruction_resembles_its_own_photo_more_than_the_other_validation_dogs(loaded):
    """The shuffled-pairs baseline: what a decoder that ignored its code would score."""
    model, store = loaded
    knowledge = BreedKnowledge(model, store)
    photos = knowledge.photos_of_rows(store.val_rows)
    decoded, psnr = reconstruct_pixels(model, photos)
    drawn = to_uint8(decoded)
    versus = np.array([[psnr_of(photo, d) for photo in photos] for d in drawn])
    own, others = np.diag(versus), versus[~np.eye(len(photos), dtype=bool)]
    assert own == pytest.approx(psnr, abs=0.05)  # the reported figure is the drawn pair's
    assert own.mean() > others.mean() + 0.2, (own.mean(), others.mean())


def test_mix_strip_single_and_grid_are_deterministic(loaded, tiny_run, tmp_path):
    model, store = loaded
    mutt = str(next((tiny_run[1] / "mutts").iterdir()))
    a, b = store.breeds[0], store.breeds[1].replace("_", " ").upper()  # names match loosely
    strip = mix(model, store, a, mutt, tmp_path / "strip.png", steps=5)
    assert strip["n_images"] == 5 and strip["kinds"] == ["breed medoid", "photo"]
    again = mix(model, store, a, mutt, tmp_path / "again.png", steps=5)
    assert (tmp_path / "strip.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert again["picture"] == str(tmp_path / "again.png")
    single = mix(model, store, a, b, tmp_path / "single.png", t=0.5, method="slerp")
    assert single["n_images"] == 1 and single["mode"] == "single"
    grid = mix(model, store, a, b, tmp_path / "grid.png", steps=3, grid=(mutt, store.breeds[2]))
    assert grid["n_images"] == 9 and grid["mode"] == "grid"
    centroid = mix(model, store, a, b, tmp_path / "m.png", steps=2, breed_as="centroid")
    assert centroid["kinds"] == ["breed centroid", "breed centroid"]


def test_a_mix_of_two_photos_runs_from_one_reconstruction_to_the_other_through_their_mean(
    loaded, tiny_run, tmp_path
):
    model, store = loaded
    a, b = sorted((tiny_run[1] / "mutts").iterdir())[:2]
    strip = mix(model, store, str(a), str(b), tmp_path / "strip.png", steps=3)
    assert strip["kinds"] == ["photo", "photo"]
    tiles = picture_tiles(tmp_path / "strip.png", n_rows=1, n_cols=5)[0]  # a, 3 steps, b
    pixels = read_photos(model, [a, b])
    assert np.array_equal(tiles[0], pixels[0]) and np.array_equal(tiles[4], pixels[1])
    decoded, _ = reconstruct_pixels(model, pixels)
    reconstructions = to_uint8(decoded)
    assert np.abs(tiles[1].astype(int) - reconstructions[0]).max() <= 1  # t = 0
    assert np.abs(tiles[3].astype(int) - reconstructions[1]).max() <= 1  # t = 1
    encoded = encode_images(model, pixels)
    halfway = to_uint8(decode_codes(model, encoded.mu.mean(0, keepdims=True)))[0]
    assert np.abs(tiles[2].astype(int) - halfway).max() <= 1  # lerp at t = 0.5


def code_between(store, a: int, b: int, share_a: float):
    """An `Encoded` dog whose code (both facings) is share_a of breed a's centroid and the
    rest of breed b's, as typical as a validation dog otherwise."""
    centroids = store.centroids()
    z = (share_a * centroids[a] + (1 - share_a) * centroids[b]).astype(np.float32)[None]
    typical = store.as_encoded(store.val_rows[:1])
    return replace(typical, mu=z, mu_mirror=z)


@pytest.mark.parametrize("a, b, share_a", [(0, 1, 0.5), (2, 3, 0.7), (3, 0, 0.4), (1, 2, 0.62)])
def test_ancestry_of_a_code_mixed_from_two_breeds_names_both_and_their_shares(
    loaded, a, b, share_a
):
    model, store = loaded
    answer, _ = answer_ancestry(
        BreedKnowledge(model, store), None, code_between(store, a, b, share_a)
    )
    shares = {p["breed"]: p["share"] for p in answer["parents"]}
    assert set(shares) == {store.breeds[a], store.breeds[b]}
    assert shares[store.breeds[a]] == pytest.approx(share_a, abs=0.02)
    assert set(answer["ranking"][:2]) == {store.breeds[a], store.breeds[b]}
    assert (answer["method"], answer["space"], answer["gain"]) == ("latent", "codes", None)


def test_ancestry_of_a_photo_is_repeatable_and_drawn(loaded, tiny_run, tmp_path):
    model, store = loaded
    mutt = next((tiny_run[1] / "mutts").iterdir())
    result = ancestry(model, store, mutt, top=3, out=tmp_path / "ancestry.png")
    assert sum(p["share"] for p in result["parents"]) == pytest.approx(1.0, abs=1e-3)
    assert len(result["ranking"]) == 3 and (tmp_path / "ancestry.png").is_file()
    assert ancestry(model, store, mutt)["parents"] == result["parents"]


def test_ancestry_finds_the_mutts_parents_more_often_than_chance_and_nearest_centroid(
    loaded, tiny_run
):
    """Measured on this tiny VAE: both parents in the top 2 for 8 of 12 mutts (nearest
    centroid 5, a random pair 2); 14 of 16 held-out purebreds are one breed, their own."""
    model, store = loaded
    _, data = tiny_run
    knowledge = BreedKnowledge(model, store)
    report = evaluate_ancestry(model, store, data, knowledge=knowledge)
    assert report["n_mutts"] == 12 and report["n_breeds"] == BREEDS
    assert report["method"] == "latent" and "latent" not in report  # a plain VAE: one method
    assert report["chance_both_parents_top2"] == pytest.approx(1 / 6)  # 6 pairs of 4 breeds
    found, baseline = report["ancestry"], report["nearest_centroid"]
    assert found["both_parents_top2"] > max(
        2 * report["chance_both_parents_top2"], baseline["both_parents_top2"]
    )
    # the figures are what the answers to each photo say, counted
    import csv

    with open(data / "mutts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    hits = []
    for row in rows:
        photo = data / "mutts" / f"{row['id']}.jpg"
        ranking = ancestry(model, store, photo, knowledge=knowledge)["ranking"]
        hits.append({row["parent_a"], row["parent_b"]} <= set(ranking[:2]))
    assert found["both_parents_top2"] == pytest.approx(np.mean(hits))
    own = []
    for row in store.val_rows:
        photo = data / "train" / f"{store.ids[row]}.jpg"
        answer = ancestry(model, store, photo, knowledge=knowledge)
        own.append([p["breed"] for p in answer["parents"]] == [store.breeds[store.labels[row]]])
    assert report["purebreds_as_one_breed"] == pytest.approx(np.mean(own))
    assert np.mean(own) > 0.5


def test_identify_puts_a_held_out_dogs_own_breed_above_the_base_rate(loaded, tiny_run):
    """Every validation dog through `identify`, as a user asks: its own breed gets more than
    the 1 in 4 the validation split's breed shares would give it blind, for 15 of 16 dogs on
    this model; the top-1 accuracy the answers carry is these answers counted."""
    model, store = loaded
    run, data = tiny_run
    base_rate = np.bincount(store.labels[store.val_rows]) / len(store.val_rows)
    knowledge, own, hits = BreedKnowledge(model, store, run), [], []
    for row in store.val_rows:
        photo = data / "train" / f"{store.ids[row]}.jpg"
        answer = identify(model, store, photo, top=BREEDS, knowledge=knowledge)
        probability = {t["breed"]: t["probability"] for t in answer["top"]}
        breed = store.labels[row]
        own.append(probability[store.breeds[breed]] > base_rate[breed])
        hits.append(answer["top"][0]["breed"] == store.breeds[breed])
        assert sum(probability.values()) == pytest.approx(1.0)
    assert np.mean(own) >= 0.75
    assert answer["source"] == "probe"  # a plain VAE has no classifier of its own
    assert answer["accuracy"]["top1"] == pytest.approx(np.mean(hits))
    assert np.mean(hits) >= 2 * answer["probe"]["chance_top1"]


def test_identify_keeps_its_probe_and_answers_the_same_from_it(loaded, tiny_run, tmp_path):
    model, store = loaded
    run, data = tiny_run
    dog = data / "train" / f"{store.ids[store.val_rows[0]]}.jpg"
    result = identify(model, store, dog, top=BREEDS, run=run, out=tmp_path / "id.png")
    assert "little more breed than the pixels" in result["note"]
    chosen = result["probe"][result["probe"]["chosen"]]
    assert result["accuracy"]["top1"] == chosen["top1"]  # the figures of the probe that answered
    kept = (run / PROBE_FILE).stat().st_mtime_ns
    assert identify(model, store, dog, top=2, run=run)["top"] == result["top"][:2]
    assert (run / PROBE_FILE).stat().st_mtime_ns == kept
    assert (tmp_path / "id.png").is_file()


def test_identify_evaluation_counts_what_the_probes_and_the_novelty_flag_say(loaded):
    model, store = loaded
    knowledge = BreedKnowledge(model, store)
    report = evaluate_identify(knowledge)
    val = store.val_rows
    for kind in ("knn", "logistic"):
        probs = fit_probe(store, kind).predict_proba(store.codes[val])
        hits = probs.argmax(1) == store.labels[val]
        assert report[kind]["top1"] == pytest.approx(hits.mean())
    assert report[report["chosen"]]["top1"] > report["chance_top1"]
    flags = [knowledge.scorer.score(store.as_encoded([r]))[0]["unlike_training_dogs"] for r in val]
    assert report["val_flagged_as_unlike"] == pytest.approx(np.mean(flags))
    assert report["ece_after"] <= report["ece_before"]  # the temperature made it more honest


def test_a_diagram_is_flagged_as_unlike_any_training_dog(loaded, tmp_path):
    model, store = loaded
    page = diagram(tmp_path / "diagram.png")
    named = identify(model, store, page)
    assert named["novelty"]["unlike_training_dogs"] and named["breed"] is None
    assert ancestry(model, store, page)["novelty"]["unlike_training_dogs"]


def test_most_non_dog_pictures_are_flagged_and_keep_their_unreliable_breeds(loaded):
    """20+ distinct pictures of other things: the verdict, through `answer_identify`, calls
    most of them unlike any training dog (no breed named, nearest breeds still listed: 26 of
    36 on this model), while at most one of the 16 validation dogs is (about 1 in 25
    by construction)."""
    model, store = loaded
    knowledge = BreedKnowledge(model, store)
    pictures = non_dog_pictures()
    assert len(pictures) >= 20
    assert len({p.name for p in pictures}) == len({p.data for p in pictures}) == len(pictures)
    encoded = encode_pictures(model, pictures)
    answers = [answer_identify(knowledge, encoded.rows([i])) for i in range(len(pictures))]
    flagged = [a for a in answers if a["novelty"]["unlike_training_dogs"]]
    assert all(a["breed"] is None and len(a["top"]) == BREEDS for a in flagged)
    assert len(flagged) >= 0.6 * len(pictures), [
        p.name for p, a in zip(pictures, answers, strict=True) if a not in flagged
    ]
    rates = flag_rates(knowledge.scorer, encoded)
    assert rates["verdict"] == len(flagged) / len(pictures)
    val = store.val_rows  # 16 dogs: the 96th percentile lies between the two oddest
    assert flag_rates(knowledge.scorer, store.as_encoded(val))["verdict"] * len(val) <= 1


def test_clusters_recover_the_breeds_better_than_shuffled_breeds_and_draw_a_map(loaded, tmp_path):
    """Adjusted Rand index against the breeds, and against the same breeds shuffled among the
    dogs (what clusters blind to breed would score, 0 on average): measured 0.40 (k-means)
    and 0.36 (mixture) against at most 0.02 over 20 shuffles."""
    _, store = loaded
    result = cluster_latents(store, tmp_path / "map.png", seed=0)
    labels = store.labels
    clusters = cluster_codes(store.codes, BREEDS, seed=0)
    rng = np.random.default_rng(0)
    for method in ("kmeans", "gaussian_mixture"):
        assert result[method] == pytest.approx(agreement(labels, clusters[method]))
        shuffled = [agreement(rng.permutation(labels), clusters[method])["ari"] for _ in range(20)]
        assert result[method]["ari"] > max(shuffled) + 0.2, (result[method], max(shuffled))
        assert result[method]["purity"] > np.bincount(labels).max() / len(labels) + 0.2
    assert png_size(tmp_path / "map.png")[0] == 2 * 480
    assert cluster_latents(store, seed=0)["kmeans"] == result["kmeans"]


def test_sample_is_deterministic_with_a_seed(loaded, tmp_path):
    model, store = loaded
    first = sample_dogs(model, tmp_path / "a.png", n=6, seed=3)
    sample_dogs(model, tmp_path / "b.png", n=6, seed=3)
    sample_dogs(model, tmp_path / "c.png", n=6, seed=4)
    assert first["source"] == "prior"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    breed = sample_dogs(model, tmp_path / "d.png", n=4, breed=store.breeds[1], store=store)
    assert breed["source"] == store.breeds[1]


def test_the_latent_mixture_draws_codes_with_the_training_codes_mean_and_spread(loaded):
    """At temperature 1 the mixture's draws have the mean of the training codes (both
    facings) and their covariance plus the mean posterior variance: EM keeps the first two
    moments, and the sampler adds what the posteriors spread around their means."""
    _, store = loaded
    mixture = latent_mixture(store)
    rows = store.train_rows
    codes = np.concatenate([store.mu[rows], store.mu_mirror[rows]]).astype(np.float64)
    spread = np.cov(codes, rowvar=False, bias=True)
    spread += np.diag(np.exp(store.logvar[rows].astype(np.float64)).mean(0))
    mean = mixture.weights @ mixture.means  # the mixture's own moments, exactly
    within = np.einsum("k,kij->ij", mixture.weights, mixture.covariances)
    between = np.einsum("k,ki,kj->ij", mixture.weights, mixture.means - mean, mixture.means - mean)
    assert np.allclose(mean, codes.mean(0), atol=1e-6)
    assert np.allclose(within + between, spread, atol=1e-3)
    draws = mixture.draw(40_000, 1.0, np.random.default_rng(0))
    sd = np.sqrt(np.diag(spread))
    assert np.abs(draws.mean(0) - codes.mean(0)).max() < 0.03 * sd.max()
    assert np.abs(np.cov(draws, rowvar=False) - spread).max() < 0.05 * np.diag(spread).max()


def test_a_breeds_samples_centre_on_its_centroid_with_its_spread_scaled_by_temperature(loaded):
    _, store = loaded
    breed, rng = 2, np.random.default_rng(0)
    draws = breed_codes(store, breed, 40_000, 0.5, rng)
    covariance = store.breed_covariance(breed)
    scale = np.sqrt(np.diag(covariance)).max()
    assert np.abs(draws.mean(0) - store.centroids()[breed]).max() < 0.02 * scale
    assert np.abs(np.cov(draws, rowvar=False) - 0.25 * covariance).max() < 0.02 * scale**2


def test_mixture_samples_repeat_with_a_seed_and_the_mixture_is_kept_as_arrays(loaded, tmp_path):
    model, store = loaded
    mixture = latent_mixture(store, tmp_path)  # fitted, and saved in tmp_path
    assert len(mixture.weights) == MIXTURE_COMPONENTS and mixture.weights.sum() == pytest.approx(1)
    kept = load_mixture(store, tmp_path / MIXTURE_FILE)
    assert np.array_equal(kept.covariances, mixture.covariances)
    rng = np.random.default_rng
    assert np.array_equal(mixture.draw(5, 1.0, rng(3)), kept.draw(5, 1.0, rng(3)))
    assert not np.array_equal(mixture.draw(5, 1.0, rng(3)), mixture.draw(5, 1.0, rng(4)))
    at_zero = mixture.draw(5, 0.0, rng(3))  # temperature 0: the components' means
    assert all(any(np.allclose(z, m) for m in mixture.means) for z in at_zero)
    first = sample_dogs(model, tmp_path / "a.png", n=6, seed=3, mixture=mixture)
    sample_dogs(model, tmp_path / "b.png", n=6, seed=3, mixture=kept)
    sample_dogs(model, tmp_path / "c.png", n=6, seed=3)
    assert first["source"] == first["sampler"] == "gmm"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    other = replace(store, weights_sha256="other weights")
    assert load_mixture(other, tmp_path / MIXTURE_FILE) is None  # fitted on another store


def test_the_frechet_distance_of_known_gaussians():
    """|m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), worked by hand."""
    # N((0, 0), I) against N((3, 4), 4 I): 25 + (2 + 8 - 2 * 4) = 27
    assert gaussian_frechet_distance(
        np.zeros(2), np.eye(2), np.array([3.0, 4.0]), 4 * np.eye(2)
    ) == pytest.approx(27)
    # same means, diag(1, 4) against diag(9, 1): 0 + (5 + 10 - 2 * (3 + 2)) = 5
    assert gaussian_frechet_distance(
        np.ones(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([9.0, 1.0])
    ) == pytest.approx(5)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, 2))
    b = np.array([3.0, 4.0]) + 2 * rng.standard_normal((200_000, 2))
    assert frechet_distance(a, b) == pytest.approx(27, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_prints_the_librarys_answer_as_json(
    loaded, tiny_run, photos, tmp_path, capsys
):
    model, store = loaded
    run, data = tiny_run
    mutt = next((data / "mutts").iterdir())
    knowledge = BreedKnowledge(model, store, run)
    out = {name: tmp_path / f"{name}.png" for name in ("r", "m", "a")}
    commands = {
        ("encode", run): {"path": str(run / STORE_FILE), **store.summary(), "encoded": False},
        ("reconstruct", run, photos / "alpha.png", "--out", out["r"]): reconstruct_photos(
            model, [photos / "alpha.png"], out["r"]
        ),
        ("mix", run, mutt, photos / "webp.jpeg", "--out", out["m"]): mix(
            model, store, str(mutt), str(photos / "webp.jpeg"), out["m"]
        ),
        ("ancestry", run, mutt, "--out", out["a"]): ancestry(model, store, mutt, out=out["a"]),
        ("ancestry", run, "--eval-mutts", data): evaluate_ancestry(model, store, data),
        ("identify", run, mutt, "--top", "2"): identify(model, store, mutt, top=2, run=run),
        ("identify", run, "--eval"): evaluate_identify(knowledge),
        ("clusters", run, "--no-map"): cluster_latents(store, seed=0),
    }
    for argv, answer in commands.items():
        code, printed, err = run_cli(capsys, *argv, "--json")
        assert code == 0, (argv, err)
        assert json.loads(printed) == json.loads(json.dumps(answer)), argv
    code, printed, err = run_cli(capsys, "sample", run, "--out", tmp_path / "s.png", "--json")
    assert code == 0 and json.loads(printed)["source"] == "gmm"  # unseeded: new dogs each time


def test_commands_print_text_by_default(tiny_run, capsys):
    run, data = tiny_run
    code, out, _ = run_cli(capsys, "identify", run, next((data / "mutts").iterdir()))
    assert code == 0 and "the latent probe on" in out and "novelty" in out


@pytest.mark.parametrize(
    "command, message",
    [
        ("reconstruct {run} {missing} --out {tmp}/r.png", "no such file"),
        ("identify {run} {photos}/notes.jpg", "not_an_image"),
        ("mix {run} amber_teriér {breed} --out {tmp}/m.png", "unknown breed"),
        ("sample {run} --breed dingo --out {tmp}/s.png", "unknown breed"),
        ("mix {run} {breed} {breed} --t 0.5 --grid {breed} {breed} --out {tmp}/m.png", "choose"),
        ("ancestry {empty} {photos}/alpha.png", "no trained dogvae model"),
        ("clusters {tmp}/nowhere", "no such run folder"),
        ("ancestry {run}", "either an image or --eval-mutts"),
    ],
)
def test_bad_inputs_give_one_error_line_and_exit_2(
    tiny_run, loaded, photos, tmp_path, capsys, command, message
):
    (tmp_path / "empty").mkdir()
    values = {
        "run": tiny_run[0], "missing": tmp_path / "gone.jpg", "tmp": tmp_path, "photos": photos,
        "empty": tmp_path / "empty", "breed": loaded[1].breeds[0],
    }  # fmt: skip
    code, out, err = run_cli(capsys, *command.format(**values).split())
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dogvae: error: ") and message in err
    assert "Traceback" not in err + out


def test_unknown_breed_error_lists_close_matches(tiny_run, loaded, tmp_path, capsys):
    breed = loaded[1].breeds[0]
    typo = breed[:-1] + ("x" if breed[-1] != "x" else "y")
    code, _, err = run_cli(capsys, "mix", tiny_run[0], typo, breed, "--out", tmp_path / "m.png")
    assert code == 2 and f"did you mean {breed}" in err


def test_identify_folder_writes_the_kaggle_submission_layout(
    tiny_run, loaded, photos, tmp_path, capsys
):
    import csv
    import shutil

    model, store = loaded
    run, data = tiny_run
    folder = tmp_path / "test"
    folder.mkdir()
    mutts = sorted((data / "mutts").glob("*.jpg"))[:3]
    for mutt in mutts:
        shutil.copy(mutt, folder / mutt.name)
    shutil.copy(photos / "notes.jpg", folder / "notes.jpg")  # unreadable: uniform, counted
    out = tmp_path / "submission.csv"
    code, stdout, err = run_cli(capsys, "identify", run, folder, "--csv", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["n_photos"] == 4 and result["skipped"] == {"notes.jpg": "not_an_image"}
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", *sorted(store.breeds)]  # the competition's alphabetical columns
    table = {row[0]: dict(zip(rows[0][1:], map(float, row[1:]), strict=True)) for row in rows[1:]}
    assert sorted(table) == sorted([m.stem for m in mutts] + ["notes"])
    assert all(v == pytest.approx(1 / BREEDS) for v in table["notes"].values())
    one = identify(model, store, mutts[0], top=BREEDS, run=run)
    for entry in one["top"]:  # the same photo alone gets the same probabilities, to 6 digits
        assert table[mutts[0].stem][entry["breed"]] == pytest.approx(entry["probability"], rel=1e-5)
    assert sum(table[mutts[1].stem].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_probe_file_is_refitted(loaded, tiny_run, damage):
    model, store = loaded
    run = tiny_run[0]
    fitted = breed_probe(store, run)
    damage_file(run / PROBE_FILE, damage)
    refitted = breed_probe(store, run)
    assert refitted.kind == fitted.kind and refitted.report == fitted.report
    assert load_probe(store, run / PROBE_FILE).report == fitted.report  # saved again


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_sampler_file_is_fitted_again(loaded, tiny_run, damage):
    _, store = loaded
    run = tiny_run[0]
    fitted = latent_mixture(store, run)
    damage_file(run / MIXTURE_FILE, damage)
    assert load_mixture(store, run / MIXTURE_FILE) is None  # damaged: not read as a mixture
    again = latent_mixture(store, run)
    assert np.allclose(again.means, fitted.means) and np.allclose(again.weights, fitted.weights)
    assert np.array_equal(load_mixture(store, run / MIXTURE_FILE).means, again.means)  # saved
