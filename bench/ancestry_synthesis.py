"""Which score lets analysis-by-synthesis find a mutt's two parents? (Issue 17, part 1.)

    .venv/bin/python bench/ancestry_synthesis.py --run R --data D   # R: a cvae/ssvae on synth D

For every synthetic mutt of D, every pair of the run's breeds on a grid of shares (0.1 ... 0.9)
is scored by several variants of the decoder's evidence, and the bench prints how often the
best-scoring pair is exactly the mutt's two parents:
- elbo: -ELBO at the posterior mean, the encoder given the mixed weights (what `dogvae
  ancestry` uses);
- kl x k: the same with the KL term weighted k times, so that the encoder pays more for
  carrying in z the looks the breed weights do not explain;
- nll only: the reconstruction term alone;
- z fixed (classifier / unknown / zero): one code for every mixture, from the encoder given
  the classifier's probabilities, given the "unknown breed", or the prior's mean, so that z
  cannot follow the weights at all;
- pixel mixture: each parent's own decoding (the encoder given that breed alone), and every
  pixel location explained by one parent or the other, with prior odds the shares (a mutt
  takes its ears from one parent and its tail from the other), plus the parents' KL by share;
- the classifier's top two breeds, and the top two single breeds by -ELBO.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from dogvae.losses import kl_per_dim, reconstruction_nll
from dogvae.run import Run
from dogvae.tasks.ancestry import read_mutts
from dogvae.tasks.inputs import as_tensor, read_photos

SHARES = np.linspace(0.1, 0.9, 9)
KL_WEIGHTS = (2, 4, 8)


def all_pairs(n: int) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
    """(singles + pairs x shares, n + 1) breed weights, and each pair row's breeds and share."""
    rows, pairs = list(np.eye(n + 1, dtype=np.float32)[:n]), []
    for a, b in itertools.combinations(range(n), 2):
        for s in SHARES:
            w = np.zeros(n + 1, np.float32)
            w[a], w[b] = s, 1 - s
            rows.append(w)
            pairs.append((a, b, float(s)))
    return torch.from_numpy(np.stack(rows)), pairs


def pixel_mixture(model, x, mu, condition, kl, pairs) -> torch.Tensor:
    """-log of each pair's per-location mixture of its parents' own decodings (singles are
    the first n rows), plus the parents' KL weighted by share; Gaussian likelihood only."""
    n = len(model.breeds)
    mean = torch.sigmoid(model.decoder(mu[:n], condition[:n]).float())
    sigma = torch.exp(model.log_scale.float())
    per_pixel = 0.5 * ((x - mean) / sigma).square() + torch.log(sigma) + 0.5 * np.log(2 * np.pi)
    location = -per_pixel.sum(1)  # (n, H, W) log-likelihood of each location's three values
    a, b, s = (torch.tensor(v) for v in zip(*pairs, strict=True))
    mixed = torch.logsumexp(
        torch.stack([location[a] + s.log()[:, None, None], location[b] + (1 - s).log()[:, None, None]]),
        0,
    )  # fmt: skip
    return -mixed.flatten(1).sum(1) + s * kl[a] + (1 - s) * kl[b]


@torch.no_grad()
def variant_scores(model, x: torch.Tensor, weights: torch.Tensor, pairs) -> dict[str, np.ndarray]:
    """Each variant's score (lower explains better) of photo x (1, 3, S, S) per weights row."""
    cfg, n = model.config, len(model.breeds)
    trunk = model.encoder.trunk(x)
    condition = model.breed_vector(weights, len(weights))
    mu, logvar = model.encoder.heads(trunk.expand(len(weights), *trunk.shape[1:]), condition)

    def nll(z):
        logits = model.decoder(z.expand(len(weights), -1), condition)
        xs = x.expand(len(weights), -1, -1, -1)
        return reconstruction_nll(xs, logits, cfg.likelihood, model.log_scale).float()

    kl = kl_per_dim(mu.float(), logvar.float()).sum(1)
    fitted = nll(mu)
    scores = {"elbo": fitted + kl, "nll only": fitted}
    scores.update({f"kl x {k}": fitted + k * kl for k in KL_WEIGHTS})
    fixed = {"unknown": model.unknown_breed_vector(1), "zero": None}
    if model.has_classifier:
        probs = torch.zeros(1, n + 1)
        probs[0, :n] = torch.softmax(model.classify(x).float(), 1)[0]
        fixed["classifier"] = model.breed_vector(probs, 1)
    for name, given in fixed.items():
        z = torch.zeros(1, mu.shape[1]) if given is None else model.encoder.heads(trunk, given)[0]
        scores[f"z fixed ({name})"] = nll(z)
    scores = {k: v.numpy() for k, v in scores.items()}
    if cfg.likelihood == "gaussian":
        mixture = pixel_mixture(model, x, mu, condition, kl, pairs).numpy()
        scores["pixel mixture"] = np.concatenate([scores["elbo"][:n], mixture])
    return scores


def measure(run: str, data: str) -> dict:
    model = Run.load(run).load_model().eval()
    mutts, paths = read_mutts(data, model.breeds)
    photos = as_tensor(model, read_photos(model, paths))
    n = len(model.breeds)
    weights, pairs = all_pairs(n)
    hits: dict[str, list[bool]] = {}
    for i, mutt in enumerate(mutts):
        x, truth = photos[i : i + 1], {mutt.parent_a, mutt.parent_b}
        scores = variant_scores(model, x, weights, pairs)
        for name, s in scores.items():
            hits.setdefault(name, []).append(set(pairs[int(np.argmin(s[n:]))][:2]) == truth)
        singles = set(np.argsort(scores["elbo"][:n], kind="stable")[:2].tolist())
        hits.setdefault("top two single breeds", []).append(singles == truth)
        if model.has_classifier:
            top = torch.argsort(model.classify(x)[0], descending=True)[:2].tolist()
            hits.setdefault("classifier's top two", []).append(set(top) == truth)
    return {name: float(np.mean(h)) for name, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the `dogvae synth` folder")
    args = parser.parse_args()
    result = measure(args.run, args.data)
    for name, share in result.items():
        print(f"{name:>24}: best pair is the two parents for {share:.0%} of mutts")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
