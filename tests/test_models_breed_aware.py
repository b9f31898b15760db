"""The breed-aware models: cvae and ssvae shapes and losses, the M2 loss by hand, label
fractions, save/load, and a trained cvae drawing the breed it is asked for."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL
from PIL import Image

from dogvae import checkpoint
from dogvae.cli import main
from dogvae.data.cache import load_images
from dogvae.data.split import hold_back_labels, stratified_split
from dogvae.errors import DogvaeError
from dogvae.latents import STORE_FILE
from dogvae.losses import kl_per_dim, reconstruction_nll
from dogvae.model import (
    SemiSupervisedOutput,
    VAEConfig,
    augment_for_classifier,
    breed_candidates,
    build_model,
    mix_images,
    photo_views,
)
from dogvae.optim import (
    clip_gradients,
    group_schedules,
    make_optimizer,
    one_cycle_factor,
)
from dogvae.synth import synthesize
from dogvae.tasks import mix, sample_dogs
from dogvae.train import TrainConfig, train

TINY = {**TINY_MODEL, "classifier_widths": [8, 16, 32], "breed_embed_dim": 8}
BREEDS = 3


def tiny_model(kind: str, n_breeds: int = BREEDS, **overrides):
    torch.manual_seed(0)
    return build_model(VAEConfig(**{**TINY, **overrides}, model=kind, n_breeds=n_breeds))


@pytest.fixture(scope="session")
def breed_synth(tmp_path_factory):
    """3 synthetic breeds x 40 dogs at 32 px."""
    data = tmp_path_factory.mktemp("breed-synth")
    synthesize(data, breeds=BREEDS, per_breed=40, size=32, mutts=0, seed=3, progress=False)
    return data


def _train(data, out, kind: str, epochs: int, **train_settings):
    train(
        TrainConfig(
            data=str(data), out=str(out), epochs=epochs, batch_size=16, lr=3e-3,
            warmup_steps=5, progress=False, model_overrides={**TINY, "model": kind},
            **train_settings,
        )
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def breed_cvae_run(breed_synth, tmp_path_factory):
    return _train(breed_synth, tmp_path_factory.mktemp("breed-cvae") / "run", "cvae", 8)


@pytest.fixture(scope="session")
def breed_ssvae_run(breed_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("breed-ssvae") / "run"
    return _train(breed_synth, out, "ssvae", 1, label_fraction=0.5)


@pytest.mark.parametrize("kind", ["cvae", "ssvae"])
def test_breed_aware_models_give_images_codes_and_finite_losses(kind):
    model = tiny_model(kind)
    x, labels = torch.rand(5, 3, 32, 32), torch.tensor([0, 2, -1, 1, -1])
    out = model.loss(x, breed=labels)
    out.total.backward()
    assert math.isfinite(float(out.total.detach())) and float(out.elbo) > 0
    assert model.conditional and model.has_classifier == (kind == "ssvae")
    model.eval()
    assert model.embed(x).shape == (5, 8)
    assert model.reconstruct(x, labels.clamp(min=0)).shape == x.shape
    assert model.sample(4, breed=1).shape == (4, 3, 32, 32)
    assert model.decode(torch.zeros(2, 8), torch.tensor([[0.5, 0.5, 0.0]] * 2)).shape == (
        2,
        3,
        32,
        32,
    )


def test_plain_vae_is_not_conditional_and_old_configs_load_as_vae():
    config = VAEConfig.from_dict({k: v for k, v in TINY.items() if not k.startswith(("cl", "br"))})
    model = build_model(config)
    assert config.model == "vae" and not model.conditional and not model.has_classifier
    with pytest.raises(NotImplementedError, match="no breed classifier"):
        model.classify(torch.rand(1, 3, 32, 32))


def test_a_cvae_decodes_differently_for_different_breeds():
    model = tiny_model("cvae").eval()
    z = torch.zeros(1, 8)
    assert not torch.allclose(
        model.decode(z, torch.tensor([0])), model.decode(z, torch.tensor([1]))
    )
    # weights (1, 0, 0) are breed 0 itself; -1 and None are the same "unknown breed"
    assert torch.allclose(
        model.decode(z, torch.tensor([[1.0, 0.0, 0.0]])), model.decode(z, torch.tensor([0]))
    )
    assert torch.equal(model.decode(z, torch.tensor([-1])), model.decode(z))


def _m2_by_hand(model, x, eps, labels):
    """The M2 objective summed over every breed: no estimator, just the definition."""
    cfg = model.config
    log_q = torch.log_softmax(model.classifier(x), 1)  # q(y|x) as training sees it: no mirror
    total, elbo = 0.0, 0.0
    for i in range(len(x)):
        costs = []
        for y in range(cfg.n_breeds):
            e = model.breed_embedding.weight[y][None]
            mu, logvar = model.encoder(x[i : i + 1], e)
            z = mu + eps[i : i + 1] * torch.exp(0.5 * logvar)
            recon = reconstruction_nll(
                x[i : i + 1], model.decoder(z, e), "gaussian", model.log_scale
            )
            costs.append(recon[0] + kl_per_dim(mu, logvar).sum() + math.log(cfg.n_breeds))
        costs = torch.stack(costs)
        if labels[i] >= 0:
            bound = costs[labels[i]]
            target = labels[i : i + 1]
            ce = F.cross_entropy(log_q[i : i + 1], target, label_smoothing=cfg.label_smoothing)
            total += bound + cfg.classifier_weight * ce
        else:
            q = log_q[i].exp()
            bound = (q * costs).sum() + (q * log_q[i]).sum()  # minus the entropy
            total += bound
        elbo += bound
    return total / len(x), elbo / len(x)


def test_m2_loss_matches_the_full_marginalisation_by_hand_when_top_k_plus_one_covers_all():
    model = tiny_model("ssvae", classifier_top_k=2, classifier_weight=3.0).eval()
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([-1, 2, -1, 0])
    eps = torch.randn(4, 8)
    with torch.no_grad():
        out = model.objective(x, model.noisy_forward(x, eps, labels), beta=1.0, breed=labels)
        total, elbo = _m2_by_hand(model, x, eps, labels)
    assert float(out.total) == pytest.approx(float(total), rel=1e-5)
    assert float(out.elbo) == pytest.approx(float(elbo), rel=1e-5)


def test_the_top_k_plus_one_sample_estimator_is_unbiased_over_the_draw():
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    cost = torch.tensor([3.0, -1.0, 7.0, 2.0, 11.0])
    estimates = []
    for u in torch.linspace(0.0005, 0.9995, 1000):
        pairs = breed_candidates(probs, None, 2, u[None])
        assert len(pairs.rows) == 3  # two exact breeds and one drawn from the rest
        estimates.append(float((pairs.weights * cost[pairs.breeds]).sum()))
    assert np.mean(estimates) == pytest.approx(float((probs[0] * cost).sum()), abs=0.01)
    assert np.std(estimates) > 0  # the drawn breed does vary


def test_labelled_images_are_scored_with_their_own_breed_only():
    probs = torch.softmax(torch.randn(3, 6), 1)
    pairs = breed_candidates(probs, torch.tensor([4, -1, 1]), 3, torch.rand(3))
    assert pairs.rows.tolist() == [0, 2, 1, 1, 1, 1]
    assert pairs.breeds[:2].tolist() == [4, 1] and pairs.weights[:2].tolist() == [1.0, 1.0]
    assert float(pairs.weights[2:].sum()) == pytest.approx(1.0)


def test_an_ssvae_forward_names_its_pairs_and_the_objective_scores_those_pairs():
    model = tiny_model("ssvae", classifier_top_k=1).eval()
    x, labels = torch.rand(3, 3, 32, 32), torch.tensor([2, -1, 0])
    eps = torch.randn(3, 8)
    with torch.no_grad():
        out = model.noisy_forward(x, eps, labels)
        loss = model.objective(x, out, beta=1.0, breed=labels)
        recon = reconstruction_nll(x[out.candidates.rows], out.logits, "gaussian", model.log_scale)
    pairs = out.candidates
    assert isinstance(out, SemiSupervisedOutput) and out.class_logits.shape == (3, BREEDS)
    assert pairs.rows.tolist() == [0, 2, 1, 1], "labelled first, then the top-1 and one drawn"
    assert pairs.breeds[:2].tolist() == [2, 0]
    assert len(out.logits) == len(out.posterior.mean) == len(pairs.rows)
    kl = out.posterior.kl()
    assert float(loss.reconstruction) == pytest.approx(float((pairs.weights * recon).sum() / 3))
    assert float(loss.kl) == pytest.approx(float((pairs.weights * kl).sum() / 3), rel=1e-5)


@pytest.mark.parametrize("views", [2, 10])
def test_ssvae_classify_averages_its_views_of_a_photo_out_of_training(views):
    torch.manual_seed(0)
    model = tiny_model("ssvae", classifier_views=views).eval()
    x = torch.rand(4, 3, 32, 32)
    log_q = model.classify(x)
    seen = photo_views(x, views)
    probs = [torch.softmax(model.classifier(v), 1) for v in seen]
    assert len(seen) == views and torch.equal(seen[0], x)
    assert torch.allclose(log_q.exp(), sum(probs) / views, atol=1e-6)
    assert torch.allclose(log_q, model.classify(x.flip(3)), atol=1e-6), "a mirror, the same answer"
    assert not torch.allclose(probs[0], probs[1], atol=1e-5), "the classifier alone varies"
    model.train()
    assert not torch.equal(model.classifier(x), model.classifier(x)), "dropout in training"
    model.eval()
    assert torch.equal(model.classifier(x), model.classifier(x)), "and none out of it"


def test_the_ten_test_time_views_are_the_photo_and_four_diagonal_shifts_each_mirrored():
    x = torch.rand(2, 3, 64, 64)
    views = photo_views(x, 10)
    inner = (slice(None), slice(None), slice(3, 61), slice(3, 61))
    for view, (dy, dx) in zip(views[1:5], ((3, 3), (-3, 3), (3, -3), (-3, -3)), strict=True):
        assert torch.equal(view[inner], x[:, :, 3 + dy : 61 + dy, 3 + dx : 61 + dx])
    assert all(torch.equal(m, v.flip(3)) for v, m in zip(views[:5], views[5:], strict=True))
    assert len(photo_views(x, 1)) == 1
    with pytest.raises(ValueError, match="classifier_views"):
        VAEConfig(classifier_views=3)


def test_the_classifier_has_its_own_activation_and_old_runs_keep_theirs():
    def activations(model):
        return {type(m).__name__ for m in model.classifier.modules() if not list(m.children())}

    model = tiny_model("ssvae", activation="relu")
    assert "SiLU" in activations(model) and "ReLU" not in activations(model)
    assert "ReLU" in {type(m).__name__ for m in model.encoder.modules()}
    saved = model.config.to_dict()
    del saved["classifier_activation"]  # a run saved before the field existed
    old = build_model(checkpoint.model_config_from(saved))
    assert "ReLU" in activations(old) and "SiLU" not in activations(old)


def test_classifier_augmentation_is_a_whole_pixel_shift_and_maybe_a_mirror():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    seen = augment_for_classifier(x, max_shift=1 / 8)  # up to 4 pixels
    inner = (slice(None), slice(4, 28), slice(4, 28))
    moves = set()
    for original, out in zip(x, seen, strict=True):
        matches = [
            (mirrored, dx, dy)
            for mirrored, image in ((False, original), (True, original.flip(2)))
            for dx in range(-4, 5)
            for dy in range(-4, 5)
            if torch.allclose(out[inner], image[:, 4 + dy : 28 + dy, 4 + dx : 28 + dx], atol=1e-5)
        ]
        assert len(matches) == 1, "each image is one exact shift, mirrored or not"
        moves.add(matches[0])
    assert len(moves) > 4, "the shifts and flips vary from image to image"


def test_cutmix_pastes_one_box_of_the_partner_and_its_share_is_the_area_kept():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    labelled = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    mixed = mix_images(x, "cutmix", among=labelled)
    partner = mixed.partner
    assert sorted(partner[labelled].tolist()) == torch.nonzero(labelled).flatten().tolist()
    assert partner[~labelled].tolist() == [2, 5], "unlabelled images are their own partner"
    for i in range(8):
        from_self = torch.isclose(mixed.images[i], x[i]).all(0)
        from_partner = torch.isclose(mixed.images[i], x[partner[i]]).all(0)
        assert bool((from_partner | from_self).all()), "every pixel comes from one of the two"
        pasted = (~from_self).nonzero()
        if int(partner[i]) == i:
            continue
        assert len(pasted) / 256 == pytest.approx(1 - mixed.share), "the share is the area kept"
        if len(pasted):  # one rectangle
            rows, cols = pasted[:, 0], pasted[:, 1]
            assert len(pasted) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_mixup_blends_each_image_with_its_partner_by_the_share():
    torch.manual_seed(1)
    x = torch.rand(6, 3, 8, 8)
    mixed = mix_images(x, "mixup", alpha=0.4)
    expected = mixed.share * x + (1 - mixed.share) * x[mixed.partner]
    assert torch.allclose(mixed.images, expected)
    assert 0.0 < mixed.share < 1.0


def test_a_mixed_classifier_target_is_the_same_mix_of_the_two_labels():
    model = tiny_model(
        "ssvae", classifier_mix="cutmix", classifier_augment=False, classifier_dropout=0.0
    ).train()
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(3)
    out = model.noisy_forward(x, torch.randn(4, 8), labels)
    mix = out.class_mix
    assert mix is not None and torch.equal(out.class_logits, model.classifier(mix.images))
    cfg = model.config
    loss = model.objective(x, out, beta=1.0, breed=labels)
    without = dataclasses.replace(out, class_mix=None)
    plain = model.objective(x, without, beta=1.0, breed=labels)

    def ce(target):
        return F.cross_entropy(out.class_logits.float(), target,
                               label_smoothing=cfg.label_smoothing, reduction="sum") / 4  # fmt: skip

    expected = mix.share * ce(labels) + (1 - mix.share) * ce(labels[mix.partner])
    extra = float(loss.total - plain.total)
    assert extra == pytest.approx(cfg.classifier_weight * float(expected - ce(labels)), abs=5e-3)
    assert model.eval().noisy_forward(x, torch.randn(4, 8), labels).class_mix is None


def test_ssvae_classifier_has_its_own_weight_decay_and_is_not_clipped():
    model = tiny_model("ssvae", classifier_weight_decay=0.3)
    optimizer = make_optimizer(model, 1e-3, 1e-4, torch.device("cpu"))
    generative, classifier = optimizer.param_groups
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.3]
    assert {id(p) for p in classifier["params"]} == {id(p) for p in model.classifier.parameters()}
    assert len(generative["params"]) + len(classifier["params"]) == len(list(model.parameters()))
    for group in (generative, classifier):
        for p in group["params"]:
            p.grad = torch.full_like(p, 1000.0)
    clip_gradients(optimizer, 1.0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in generative["params"]]))
    assert norm == pytest.approx(1.0, rel=1e-4), "the generative half is clipped to the limit"
    assert all(torch.all(p.grad == 1000.0) for p in classifier["params"]), (
        "the classifier's cross-entropy gradient is left as it is, for Adam to scale"
    )


def test_ssvae_classifier_learns_over_its_own_epochs_then_stays_fixed():
    model = tiny_model("ssvae")
    optimizer = make_optimizer(model, 1e-3, 1e-4, torch.device("cpu"))
    cfg = TrainConfig(data="d", out="o", epochs=6, warmup_steps=2, classifier_epochs=2).resolved()
    generative, classifier = group_schedules(optimizer, cfg, steps_per_epoch=10)
    assert classifier(0) == pytest.approx(1 / 25) and generative(0) == 0.5, "its own warm-up"
    assert classifier(3) == 1.0 > classifier(4) > classifier(15) > 0, "peak at 15%, then down"
    assert classifier(20) == classifier(59) == 0.0, "fixed after its 2 epochs"
    assert generative(59) > 0.05 - 1e-9, "the generative half goes on to the end"
    whole = dataclasses.replace(cfg, classifier_epochs=0)
    assert group_schedules(optimizer, whole, 10)[1](40) == one_cycle_factor(40, 60) > 0
    for too_many in (6, 100):
        last = group_schedules(optimizer, dataclasses.replace(cfg, classifier_epochs=too_many), 10)
        assert last[1](30) > 0 and last[1](60) == 0.0


def test_a_resumed_run_from_before_the_classifier_schedule_keeps_one_schedule():
    from dogvae.runtime import Runtime
    from dogvae.trainer import _optimisation

    model = tiny_model("ssvae")
    cfg = TrainConfig(data="d", out="o", epochs=6, warmup_steps=2, classifier_epochs=2).resolved()
    rt = Runtime(device=torch.device("cpu"))
    fresh = _optimisation(cfg, model, rt, 10, None)[0]
    assert [g.get("classifier", False) for g in fresh.param_groups] == [False, True]
    saved = {"optimizer": fresh.state_dict()}
    for group in saved["optimizer"]["param_groups"]:
        group.pop("classifier", None)  # as an optimizer saved before the mark existed
    # as set-up builds a resumed run's: the schedules must follow the saved marks
    scheduler = _optimisation(cfg, model, rt, 10, saved)[1]
    generative, classifier = scheduler.lr_lambdas
    assert all(classifier(t) == generative(t) for t in (0, 5, 30, 59))


def test_label_fraction_keeps_that_share_of_each_breed_deterministically():
    labels = np.repeat(np.arange(4), [20, 10, 3, 1])
    labels = np.concatenate([labels, [-1, -1]])
    train_rows, val_rows = stratified_split(labels, 0.1, seed=0)
    kept = hold_back_labels(labels, train_rows, 0.3, seed=0)
    for breed in range(4):
        members = train_rows[labels[train_rows] == breed]
        assert (kept[members] == breed).sum() == max(1, math.floor(0.3 * len(members) + 0.5))
    assert np.array_equal(kept[val_rows], labels[val_rows])  # validation keeps its labels
    assert np.array_equal(kept, hold_back_labels(labels, train_rows, 0.3, seed=0))
    assert not np.array_equal(kept, hold_back_labels(labels, train_rows, 0.3, seed=1))
    with pytest.raises(ValueError, match="label_fraction"):
        hold_back_labels(labels, train_rows, 0.0)


def test_ssvae_trains_reports_accuracy_and_loads_back_with_its_classifier(breed_ssvae_run):
    records = [json.loads(line) for line in (breed_ssvae_run / "metrics.jsonl").open()]
    assert all(0.0 <= r["val"]["top1"] <= r["val"]["top5"] <= 1.0 for r in records)
    model = checkpoint.load(breed_ssvae_run)
    assert model.config.model == "ssvae" and model.config.n_breeds == BREEDS
    again = checkpoint.load(breed_ssvae_run)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.classify(x), again.classify(x))
    assert torch.equal(model.reconstruct(x), again.reconstruct(x))


def test_cvae_refuses_a_folder_without_labels(tmp_path):
    for i in range(20):
        Image.new("RGB", (32, 32), (10 * i, 80, 120)).save(tmp_path / f"dog{i}.png")
    with pytest.raises(DogvaeError, match="cvae model needs labelled images"):
        _train(tmp_path, tmp_path / "run", "cvae", 1)


def test_a_trained_cvae_draws_the_breed_it_is_asked_for(breed_cvae_run, breed_synth, tmp_path):
    """Judged by a logistic regression on the 8x8 thumbnails of the real training dogs."""
    from sklearn.linear_model import LogisticRegression

    def thumbnails(x: torch.Tensor) -> np.ndarray:
        return F.avg_pool2d(x, 4).flatten(1).numpy()

    images = load_images(breed_synth, 32, progress=False)
    real = torch.from_numpy(images.images).permute(0, 3, 1, 2).float() / 255.0
    judge = LogisticRegression(max_iter=1000).fit(thumbnails(real), images.labels)
    model = checkpoint.load(breed_cvae_run)
    hits = []
    for breed in range(BREEDS):
        drawn = model.sample(20, breed=breed, generator=torch.Generator().manual_seed(breed))
        hits.append(judge.predict(thumbnails(drawn)) == breed)
    assert np.mean(hits) >= 0.8, f"{np.mean(hits, axis=1)} of each breed's samples judged right"


def test_cli_samples_a_breed_from_the_cvae_decoder_without_a_latent_store(
    breed_cvae_run, tmp_path, capsys
):
    model = checkpoint.load(breed_cvae_run)
    out = tmp_path / "breed.png"
    assert main(["sample", str(breed_cvae_run), "--breed", model.breeds[1], "--source", "prior",
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == model.breeds[1] and result["method"] == "decoder"
    assert result["sampler"] == "prior"
    assert out.exists() and not (breed_cvae_run / STORE_FILE).exists()


def test_cvae_breed_mix_keeps_z_and_walks_the_breed_embedding(breed_cvae_run, tmp_path):
    model = checkpoint.load(breed_cvae_run)
    a, b = model.breeds[0], model.breeds[2]
    result = mix(model, None, a, b, tmp_path / "mix.png", steps=4, breed_as="centroid")
    assert result["kinds"] == ["breed embedding", "breed embedding"]
    start = sample_dogs(model, tmp_path / "a.png", n=1, breed=a, temperature=0.0)
    assert start["method"] == "decoder"
    with torch.no_grad():
        first = model.decode(torch.zeros(1, 8), torch.tensor([0]))
        halfway = model.decode(torch.zeros(1, 8), torch.tensor([[0.5, 0.0, 0.5]]))
    single = mix(model, None, a, b, tmp_path / "t.png", t=0.5, breed_as="centroid")
    assert single["n_images"] == 1
    assert not torch.allclose(first, halfway)


def test_the_web_page_mixes_cvae_breeds_and_restyles_a_photo_through_the_decoder(
    breed_cvae_run, breed_synth
):
    pytest.importorskip(
        "fastapi", reason="the web extra is not installed (pip install 'dogvae[web]')"
    )
    from dogvae.app.service import ServedRun
    from dogvae.pictures import to_uint8

    served = ServedRun(breed_cvae_run)
    model = served.model
    a = served.mix_end(f"breed:{model.breeds[0]}", "centroid")
    b = served.mix_end(model.breeds[2], "centroid")
    assert a.kind == b.kind == "breed" and a.point.code is None, "the embedding alone"
    with torch.no_grad():
        halfway = model.decode(torch.zeros(1, 8), torch.tensor([[0.5, 0.0, 0.5, 0.0]]))
    assert np.array_equal(served.mix_frames(a, b, [0.5])[0], to_uint8(halfway)[0])
    photo = served.add_photo(next((breed_synth / "train").iterdir()).read_bytes(), "dog.jpg")
    end = served.mix_end(photo.ref)
    assert end.point.breed[-1] == 1.0, "a cvae reads a photo as an unknown breed"
    restyled = served.mix_frames(end, b, [1.0])[0]
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(end.point.code[None]), torch.tensor([2]))
    assert np.array_equal(restyled, to_uint8(expected)[0]), "the photo's z, drawn as breed b"
    medoid = served.mix_end(model.breeds[0])  # the default: the breed's typical training dog
    row = served.knowledge.medoid_rows[0]
    assert served.store.labels[row] == 0 and row in served.store.train_rows
    assert np.array_equal(medoid.point.code, served.store.mu[row])
    with torch.no_grad():
        drawn = model.decode(torch.from_numpy(served.store.mu[row][None]), torch.tensor([0]))
    assert np.array_equal(served.mix_frames(medoid, b, [0.0])[0], to_uint8(drawn)[0])
