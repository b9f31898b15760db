"""Ancestry by analysis-by-synthesis on a tiny ssvae: the penalty per extra parent is measured
on held-out purebreds, kept in the run folder, and keeps purebreds one breed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import train_tiny_run

from dogvae import checkpoint
from dogvae.latents import open_store
from dogvae.tasks import knowledge as knowledge_module
from dogvae.tasks.ancestry import parent_penalty
from dogvae.tasks.inputs import as_tensor
from dogvae.tasks.knowledge import PENALTY_FILE, BreedKnowledge
from dogvae.tasks.synthesis import PENALTY_QUANTILE, explain_by_synthesis


@pytest.fixture(scope="module")
def ssvae(tmp_path_factory):
    run, _ = train_tiny_run(
        tmp_path_factory.getbasetemp() / "one-answer-ssvae",
        breeds=3, per_breed=30, mutts=3, seed=5, epochs=3, warmup_steps=2, model="ssvae",
    )  # fmt: skip
    model = checkpoint.load(run)
    return run, model, open_store(model, run, progress=False)


def fits_of_rows(knowledge, rows, penalty):
    model, store = knowledge.model, knowledge.store
    x = as_tensor(model, knowledge.photos_of_rows(rows))
    return [
        explain_by_synthesis(model, x[i : i + 1], store.class_log_probs[r], penalty)
        for i, r in enumerate(rows)
    ]


def test_the_penalty_is_the_quantile_of_what_mixtures_gain_on_held_out_purebreds(ssvae):
    run, model, store = ssvae
    (run / PENALTY_FILE).unlink(missing_ok=True)
    knowledge = BreedKnowledge(model, store, run)
    rows = knowledge.penalty_rows
    assert set(rows) <= set(store.val_rows) and len(rows) == min(64, len(store.val_rows))
    gains = [fit.gain for fit in fits_of_rows(knowledge, rows, 0.0)]
    assert min(gains) >= 0, "a mixture of one breed is among the fits: it never explains worse"
    assert knowledge.synthesis_penalty == pytest.approx(np.quantile(gains, PENALTY_QUANTILE))
    assert knowledge.synthesis_penalty > parent_penalty(len(store.breeds)), (
        "a photo's many pixels let a mixture gain more nats than 2 ln(breeds)"
    )
    with_penalty = fits_of_rows(knowledge, rows, knowledge.synthesis_penalty)
    single = [len(f.parents) == 1 for f in with_penalty]
    assert single == [g <= knowledge.synthesis_penalty for g in gains], (
        "a purebred is one breed exactly when no mixture gains more than the penalty"
    )
    assert np.mean(single) >= 0.8


def test_the_penalty_is_kept_in_the_run_and_read_back(ssvae, monkeypatch):
    run, model, store = ssvae
    first = BreedKnowledge(model, store, run).synthesis_penalty
    assert (run / PENALTY_FILE).is_file()

    def refit(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(knowledge_module, "calibrated_penalty", refit)
    assert BreedKnowledge(model, store, run).synthesis_penalty == first
