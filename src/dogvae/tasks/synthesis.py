"""Ancestry by analysis-by-synthesis: the breed mixture whose decoder best explains the photo.

A breed-aware model (cvae, ssvae) encodes and decodes a photo given breed weights, and its
decoder takes mixing weights over the breeds. So a mutt's parents are the weights w, over one,
two or three breeds, under which the model finds the photo likeliest: the negative ELBO
-log p(x | z, w) + KL(q(z | x, w) || p(z)), z the posterior mean, plus a penalty in nats per
extra parent. The candidates are the classifier's likeliest breeds (ssvae) or the breeds that
explain the photo best alone (cvae); pairs are searched on a grid of shares, then refined
around the best share; triples among the very best candidates on a coarse simplex grid.

The penalty is measured, not assumed (`calibrated_penalty`): a photo has thousands of pixels,
so even a purebred is explained a few nats better by some mixture; an extra parent must gain
more than a mixture gains on 95% of purebred training photos.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from dogvae.losses import kl_per_dim, reconstruction_nll
from dogvae.model import BaseVAE

CANDIDATES = 6  # breeds tried as parents
TRIPLE_CANDIDATES = 4  # breeds tried in triples
SHARE_GRID = np.linspace(0.1, 0.9, 9)
REFINE_STEPS = (-0.04, -0.02, 0.02, 0.04)
BATCH = 256
PENALTY_QUANTILE = 0.95  # of purebreds' gains: the share of purebreds kept as one breed


@dataclass
class SynthesisFit:
    """The chosen mixture (breed indices of the model, shares summing to one), every
    candidate breed ranked, and the negative ELBO of the chosen mixture and of the best
    single breed (nats)."""

    parents: list[int]
    shares: list[float]
    ranking: list[int]
    nelbo: float
    single_nelbo: float

    @property
    def gain(self) -> float:
        """How many nats better the chosen mixture explains the photo than one breed."""
        return self.single_nelbo - self.nelbo


@torch.no_grad()
def negative_elbo(model: BaseVAE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(C,) -ELBO of one photo x (1, 3, S, S) under each row of breed weights (C, n_breeds + 1),
    at the posterior mean, in nats; the encoder's trunk runs once."""
    features = model.encoder.trunk(x)
    out = []
    for start in range(0, len(weights), BATCH):
        w = weights[start : start + BATCH]
        condition = model.breed_vector(w, len(w))
        mu, logvar = model.encoder.heads(features.expand(len(w), *features.shape[1:]), condition)
        logits = model.decoder(mu, condition)
        nll = reconstruction_nll(x.expand(len(w), -1, -1, -1), logits, model.config.likelihood,
                                 model.log_scale)  # fmt: skip
        out.append(nll + kl_per_dim(mu.float(), logvar.float()).sum(1))
    return torch.cat(out).float().cpu()


def mixture_weights(n_weights: int, parents, shares) -> np.ndarray:
    w = np.zeros(n_weights, np.float32)
    for p, s in zip(parents, shares, strict=True):
        w[p] += s
    return w


def candidate_breeds(
    model: BaseVAE, x: torch.Tensor, class_log_probs: np.ndarray, allowed: np.ndarray
) -> list[int]:
    """The allowed breeds worth trying: the classifier's likeliest, else the best single
    explainers."""
    n = len(model.breeds)
    if len(class_log_probs):
        scores = np.where(allowed, class_log_probs, -np.inf)
    else:
        scores = -negative_elbo(model, x, torch.eye(n + 1)[:n]).numpy().astype(np.float64)
        scores = np.where(allowed, scores, -np.inf)
    order = [int(b) for b in np.argsort(-scores, kind="stable") if allowed[b]]
    return order[:CANDIDATES]


def _pairs(candidates):
    for a, b in itertools.combinations(candidates, 2):
        for s in SHARE_GRID:
            yield (a, b), (float(s), float(1 - s))


def _triples(candidates):
    grid = [s for s in itertools.product((0.2, 0.4, 0.6), repeat=2) if sum(s) < 1 - 1e-9]
    for trio in itertools.combinations(candidates[:TRIPLE_CANDIDATES], 3):
        for s1, s2 in grid:
            yield trio, (s1, s2, 1 - s1 - s2)


def _refined(parents, shares):
    """Shares near the best pair's (kept inside (0, 1))."""
    if len(parents) != 2:
        return []
    out = []
    for step in REFINE_STEPS:
        s = shares[0] + step
        if 0.0 < s < 1.0:
            out.append((parents, (s, 1 - s)))
    return out


def explain_by_synthesis(
    model: BaseVAE,
    x: torch.Tensor,
    class_log_probs: np.ndarray,
    penalty: float,
    allowed: np.ndarray | None = None,
) -> SynthesisFit:
    """The mixture of one to three breeds (among `allowed`, default all) whose weights make
    the photo x (1, 3, S, S) likeliest under the model, less `penalty` nats per extra parent."""
    n_weights = len(model.breeds) + 1
    allowed = np.ones(len(model.breeds), bool) if allowed is None else allowed
    candidates = candidate_breeds(model, x, class_log_probs, allowed)
    fits = [((b,), (1.0,)) for b in candidates] + list(_pairs(candidates))
    fits += list(_triples(candidates))
    scores = _score(model, x, fits, n_weights)
    best_pair = min(
        (i for i, (p, _) in enumerate(fits) if len(p) == 2), key=lambda i: scores[i], default=None
    )
    if best_pair is not None:
        extra = _refined(*fits[best_pair])
        fits += extra
        scores = np.concatenate([scores, _score(model, x, extra, n_weights)])
    sizes = np.array([len(p) for p, _ in fits])
    penalised = scores + penalty * (sizes - 1)
    chosen = int(np.argmin(penalised))
    parents, shares = fits[chosen]
    order = np.argsort(-np.asarray(shares), kind="stable")
    parents, shares = [int(parents[i]) for i in order], [float(shares[i]) for i in order]
    return SynthesisFit(
        parents=parents,
        shares=shares,
        ranking=_ranking(fits, penalised, parents, candidates, len(model.breeds)),
        nelbo=float(scores[chosen]),
        single_nelbo=float(scores[sizes == 1].min()),
    )


def _score(model, x, fits, n_weights) -> np.ndarray:
    if not fits:
        return np.zeros(0)
    weights = torch.from_numpy(np.stack([mixture_weights(n_weights, p, s) for p, s in fits]))
    return negative_elbo(model, x, weights.to(x.device)).numpy().astype(np.float64)


def _ranking(fits, penalised, parents, candidates, n_breeds) -> list[int]:
    """The chosen parents by share, then the other candidates by the best penalised fit
    that includes them, then the breeds never tried."""
    best = {}
    for (members, _), score in zip(fits, penalised, strict=True):
        for b in members:
            best[b] = min(best.get(b, np.inf), score)
    rest = sorted((b for b in candidates if b not in parents), key=lambda b: best[b])
    tried = set(parents) | set(rest)
    return parents + rest + [b for b in range(n_breeds) if b not in tried]


def calibrated_penalty(
    model: BaseVAE, photos: torch.Tensor, class_log_probs: np.ndarray, allowed: np.ndarray
) -> float:
    """Nats per extra parent: the `PENALTY_QUANTILE` of the gain of the best mixture over the
    best single breed, over purebred photos (N, 3, S, S) with their classifier log-probabilities
    (N, model breeds; zero columns for a cvae)."""
    gains = [
        explain_by_synthesis(model, photos[i : i + 1], class_log_probs[i], 0.0, allowed).gain
        for i in range(len(photos))
    ]
    return float(np.quantile(gains, PENALTY_QUANTILE))
