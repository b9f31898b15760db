"""Which breeds, in what shares, best explain a dog.

A cvae or ssvae answers by analysis-by-synthesis (`dogvae.tasks.synthesis`: the breed
mixture under which its decoder finds the photo likeliest). A plain VAE, and the `latent`
method of any model, fits a sparse mixture of breed points, as follows.

A dog's features x are modelled as a convex combination of one, two or three breed points,
sum_k s_k c_k with s_k > 0 and sum s_k = 1, fitted by least squares in whitened coordinates
(distances under the pooled within-breed covariance, so a direction in which dogs of one breed
already vary a lot counts for little). The features come from the part of the model that knows
breeds (`BreedKnowledge.ancestry_features`): a model with a classifier gives its calibrated
breed probabilities, and each breed's point is its training dogs' mean probabilities; a model
without one gives its facing-invariant code, and each breed's point is its centroid.

Every single breed, every pair and every triple among the most promising breeds is fitted in
closed form from the Gram matrix of the points; the answer is the fit with the lowest residual
plus `parent_penalty` per extra parent, so a purebred stays one breed and a third parent must
earn its place. Breeds are then ranked: the chosen parents by share, then the rest by the best
penalised fit that includes them. `bench/ancestry_ceiling.py` measures the fit on synthetic
mutts with known parents, on the dogs' true looks and on a run's codes, beside
nearest-centroid.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dogvae.errors import DataError, DogvaeError
from dogvae.latents import (
    Encoded,
    LatentStore,
    encode_images,
)
from dogvae.model import BaseVAE
from dogvae.pictures import image_grid, save_png, to_uint8
from dogvae.tasks.inputs import as_tensor, find_breed, read_photos
from dogvae.tasks.knowledge import BreedKnowledge
from dogvae.tasks.synthesis import explain_by_synthesis

MAX_PARENTS = 3
TRIPLE_POOL = 24  # triples are searched among this many best-fitting breeds


def parent_penalty(n_breeds: int) -> float:
    """What an extra parent must save in squared whitened distance: 2 ln(number of breeds),
    the risk inflation criterion (Foster & George 1994) for choosing among that many."""
    return 2.0 * float(np.log(max(n_breeds, 2)))


@dataclass
class MixtureFits:
    """Every candidate mixture for one dog: `parents[f]` (-1 pads), `shares[f]`, `residual[f]`
    (squared whitened distance from the dog to the mixture)."""

    parents: np.ndarray  # (F, MAX_PARENTS) int
    shares: np.ndarray  # (F, MAX_PARENTS) float
    residual: np.ndarray  # (F,) float
    n_breeds: int

    @property
    def sizes(self) -> np.ndarray:
        return (self.parents >= 0).sum(1)

    def scores(self, penalty: float) -> np.ndarray:
        """Residual plus `penalty` for each parent beyond the first."""
        return self.residual + penalty * (self.sizes - 1)

    def best(self, penalty: float) -> int:
        return int(np.argmin(self.scores(penalty)))

    def ranking(self, penalty: float) -> np.ndarray:
        """All breeds: the best fit's parents by share, then the rest by the best penalised
        score of any fit that includes them."""
        chosen, scores = self.best(penalty), self.scores(penalty)
        parents, shares = self.parents[chosen], self.shares[chosen]
        first = parents[parents >= 0][np.argsort(-shares[parents >= 0], kind="stable")]
        best_score = np.full(self.n_breeds, np.inf)
        for column in range(self.parents.shape[1]):
            used = self.parents[:, column] >= 0
            np.minimum.at(best_score, self.parents[used, column], scores[used])
        best_score[first] = -np.inf
        rest = np.argsort(best_score, kind="stable")[len(first) :]
        return np.concatenate([first, rest]).astype(np.int64)


def mixture_fits(
    x: np.ndarray, centroids: np.ndarray, max_parents: int = MAX_PARENTS, pool: int = TRIPLE_POOL
) -> MixtureFits:
    """Fit x (D,) by every single centroid, every pair, and every triple within the `pool`
    breeds whose best single or pair fit is closest; x and centroids already whitened.

    Each fit is the least-squares point on the segment or triangle spanned by its centroids,
    found in closed form; fits whose best point lies on an edge are left out, since the smaller
    fit on that edge is already there.
    """
    x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    gram, cross, norm = centroids @ centroids.T, centroids @ x, float(x @ x)
    groups = [_single_fits(gram, cross, norm)]
    if max_parents >= 2 and len(centroids) >= 2:
        groups.append(_pair_fits(gram, cross, norm))
    if max_parents >= 3 and len(centroids) >= 3:
        so_far = MixtureFits(*_stack(groups), n_breeds=len(centroids))
        candidates = np.sort(so_far.ranking(0.0)[:pool])
        groups.append(_triple_fits(gram, cross, norm, candidates))
    return MixtureFits(*_stack(groups), n_breeds=len(centroids))


def _stack(groups):
    parents = np.concatenate([_pad(p, -1) for p, _, _ in groups])
    shares = np.concatenate([_pad(s, 0.0) for _, s, _ in groups])
    residual = np.maximum(np.concatenate([r for _, _, r in groups]), 0.0)
    return parents, shares, residual


def _pad(a: np.ndarray, value) -> np.ndarray:
    out = np.full((len(a), MAX_PARENTS), value, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _single_fits(gram, cross, norm):
    n = len(gram)
    residual = norm - 2 * cross + np.diag(gram)
    return np.arange(n)[:, None], np.ones((n, 1)), residual


def _pair_fits(gram, cross, norm):
    """s c_i + (1 - s) c_j: with d = c_i - c_j and r = x - c_j, s = <r, d> / |d|^2."""
    i, j = np.triu_indices(len(gram), 1)
    d_d = gram[i, i] - 2 * gram[i, j] + gram[j, j]
    r_d = cross[i] - cross[j] - gram[i, j] + gram[j, j]
    r_r = norm - 2 * cross[j] + gram[j, j]
    share = r_d / np.maximum(d_d, 1e-12)
    residual = r_r - 2 * share * r_d + share**2 * d_d
    inside = (share > 0) & (share < 1) & (d_d > 1e-12)
    shares = np.stack([share, 1 - share], 1)
    return np.stack([i, j], 1)[inside], shares[inside], residual[inside]


def _triple_fits(gram, cross, norm, candidates):
    """Least squares on the plane through three centroids (weights sum to one), via KKT."""
    triples = np.asarray(list(itertools.combinations(candidates, 3)), np.int64).reshape(-1, 3)
    g = gram[triples[:, :, None], triples[:, None, :]]
    g = g + np.eye(3) * 1e-9 * np.abs(np.diagonal(g, axis1=1, axis2=2)).mean(1)[:, None, None]
    kkt = np.zeros((len(triples), 4, 4))
    kkt[:, :3, :3] = 2 * g
    kkt[:, :3, 3] = kkt[:, 3, :3] = 1.0
    rhs = np.concatenate([2 * cross[triples], np.ones((len(triples), 1))], 1)
    shares = np.linalg.solve(kkt, rhs[..., None])[:, :3, 0]
    residual = (
        norm - 2 * (shares * cross[triples]).sum(1) + np.einsum("ti,tij,tj->t", shares, g, shares)
    )
    inside = (shares > 0).all(1)
    return triples[inside], shares[inside], residual[inside]


@dataclass
class Explanation:
    """A dog explained: parents (breed indices) with shares summing to one, breeds ranked, the
    residual of the chosen fit (squared whitened distance; by synthesis the -ELBO in nats),
    and the code to draw it from (the breeds' mixture; by synthesis the photo's own)."""

    parents: list[int]
    shares: list[float]
    ranking: list[int]
    residual: float
    mixture: np.ndarray


def explain(
    x: np.ndarray,
    centroids: np.ndarray,
    whitener: np.ndarray | None = None,
    penalty: float | None = None,
    max_parents: int = MAX_PARENTS,
) -> Explanation:
    """The sparse convex mixture of `centroids` (B, D) that best explains the latent `x` (D,);
    `penalty` defaults to `parent_penalty(B)`."""
    w = np.eye(len(x)) if whitener is None else whitener
    fits = mixture_fits(x @ w, centroids @ w, max_parents)
    penalty = parent_penalty(len(centroids)) if penalty is None else penalty
    chosen = fits.best(penalty)
    keep = fits.parents[chosen] >= 0
    parents, shares = fits.parents[chosen][keep], fits.shares[chosen][keep]
    order = np.argsort(-shares, kind="stable")
    parents, shares = parents[order], shares[order]
    return Explanation(
        parents=[int(p) for p in parents],
        shares=[float(s) for s in shares / shares.sum()],
        ranking=[int(b) for b in fits.ranking(penalty)],
        residual=float(fits.residual[chosen]),
        mixture=shares @ centroids[parents],
    )


def nearest_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The baseline: breeds ranked by Euclidean distance from x to their centroid."""
    return np.argsort(np.linalg.norm(centroids - x, axis=1), kind="stable")


# --- the task ----------------------------------------------------------------------------


METHODS = ("synthesis", "latent")


def default_method(model: BaseVAE) -> str:
    """Analysis-by-synthesis where the decoder takes breed weights (cvae, ssvae), else the
    latent mixture."""
    return "synthesis" if model.conditional else "latent"


def answer_ancestry(
    knowledge: BreedKnowledge,
    pixels: np.ndarray | None,
    encoded: Encoded,
    top: int = 3,
    penalty: float | None = None,
    method: str | None = None,
) -> tuple[dict, Explanation]:
    """The breed shares that best explain one photo (pixels (1, S, S, 3), encoded), the
    runners-up, how they were found and the novelty verdict; and the explanation itself (for
    pictures). `method` "synthesis" (`dogvae.tasks.synthesis`) or "latent" (`explain` in
    `knowledge.ancestry_space`); by default `default_method`."""
    method = method or default_method(knowledge.model)
    if method not in METHODS:
        raise DogvaeError(f"unknown ancestry method {method!r}; choose {' or '.join(METHODS)}")
    if method == "synthesis":
        found, gain = _by_synthesis(knowledge, pixels, encoded, penalty)
    else:
        found, gain = (
            explain(
                knowledge.ancestry_features(encoded)[0],
                knowledge.ancestry_centroids,
                knowledge.ancestry_whitener,
                penalty,
            ),
            None,
        )
    answer = {
        "parents": [
            {"breed": knowledge.breeds[b], "share": round(s, 4)}
            for b, s in zip(found.parents, found.shares, strict=True)
        ],
        "ranking": [knowledge.breeds[b] for b in found.ranking[:top]],
        "residual": found.residual,
        "method": method,
        "space": "decoder" if method == "synthesis" else knowledge.ancestry_space,
        "gain": gain,
        "novelty": knowledge.scorer.score(encoded)[0],
    }
    return answer, found


def _by_synthesis(knowledge, pixels, encoded, penalty) -> tuple[Explanation, float]:
    """`explain_by_synthesis` with the model's breeds read as the store's."""
    model = knowledge.model
    if not model.conditional:
        raise DogvaeError(
            f"a {model.config.model} model's decoder takes no breed: use the latent method"
        )
    x = as_tensor(model, pixels)
    if penalty is None:
        penalty = knowledge.synthesis_penalty
    if penalty is None:  # no training photos to measure it on
        penalty = parent_penalty(len(knowledge.breeds))
    index = {name: i for i, name in enumerate(knowledge.breeds)}
    known = knowledge.synthesis_breeds
    fit = explain_by_synthesis(model, x, encoded.class_log_probs[0], penalty, allowed=known)
    found = Explanation(
        parents=[index[model.breeds[b]] for b in fit.parents],
        shares=fit.shares,
        ranking=[index[model.breeds[b]] for b in fit.ranking if known[b]],
        residual=fit.nelbo,
        mixture=encoded.mu[0],
    )
    return found, fit.gain


def ancestry(
    model: BaseVAE,
    store: LatentStore,
    photo: str | Path,
    top: int = 3,
    out: str | Path | None = None,
    penalty: float | None = None,
    knowledge: BreedKnowledge | None = None,
) -> dict:
    """`answer_ancestry` for a photo file; with `out`, a picture of the dog, its
    reconstruction, the mixture decoded and a typical training dog of each parent breed."""
    knowledge = knowledge or BreedKnowledge(model, store)
    pixels = read_photos(model, [photo])
    encoded = encode_images(model, pixels)
    answer, found = answer_ancestry(knowledge, pixels, encoded, top, penalty)
    result = {"image": str(photo), **answer}
    if out is not None:
        result["picture"] = str(_ancestry_picture(knowledge, pixels, encoded, found, out))
    return result


@torch.no_grad()
def mixture_picture(knowledge: BreedKnowledge, encoded: Encoded, found: Explanation) -> np.ndarray:
    """(S, S, 3) uint8: the explanation drawn. A conditional model draws the dog's own code
    with the parents' breed weights; a plain VAE decodes the mixture of breed centroids."""
    from dogvae.tasks.mixing import decode_codes

    model = knowledge.model
    if not model.conditional:
        return to_uint8(decode_codes(model, found.mixture[None]))[0]
    weights = knowledge.breed_weights(dict(zip(found.parents, found.shares, strict=True)))
    return to_uint8(decode_codes(model, encoded.mu, weights[None]))[0]


def _ancestry_picture(knowledge, pixels, encoded, found: Explanation, out) -> Path:
    from dogvae.tasks.identify import breed_pictures
    from dogvae.tasks.reconstruct import reconstruct_encoded

    model = knowledge.model
    recon = to_uint8(reconstruct_encoded(model, pixels, encoded)[0])
    tiles = np.concatenate(
        [pixels, recon, mixture_picture(knowledge, encoded, found)[None],
         breed_pictures(knowledge, found.parents)]
    )  # fmt: skip
    captions = ["dog", "reconstruction", "mixture"] + [
        f"{knowledge.breeds[b]} {s:.0%}" for b, s in zip(found.parents, found.shares, strict=True)
    ]
    scale = max(1, 128 // model.config.image_size)
    return save_png(image_grid(tiles, ncols=len(tiles), captions=captions, scale=scale), out)


# --- measured on mutts with known parents --------------------------------------------------


@dataclass
class Mutt:
    id: str
    parent_a: int
    parent_b: int
    share_a: float


def read_mutts(mutts_dir: str | Path, breeds: list[str]) -> tuple[list[Mutt], list[Path]]:
    """`mutts.csv` (id,parent_a,parent_b,share_a) and `mutts/<id>.jpg` of a synthetic set."""
    root = Path(mutts_dir)
    table = root / "mutts.csv"
    if not table.is_file():
        raise DataError(f"{table} not found: --eval-mutts wants a `dogvae synth` folder")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    mutts, paths = [], []
    for row in rows:
        path = root / "mutts" / f"{row['id']}.jpg"
        mutts.append(
            Mutt(
                row["id"],
                find_breed(row["parent_a"], breeds),
                find_breed(row["parent_b"], breeds),
                float(row["share_a"]),
            )
        )
        paths.append(path)
    if not mutts:
        raise DataError(f"{table} lists no mutts")
    return mutts, paths


def parent_recovery(
    rankings: np.ndarray, share_of_a: np.ndarray, mutts: list[Mutt]
) -> dict[str, float]:
    """Both parents in the top 2 / top 3 of each ranking, and the mean |share error|."""
    truth = np.array([[m.parent_a, m.parent_b] for m in mutts])
    top2 = [set(t) <= set(r[:2]) for t, r in zip(truth, rankings, strict=True)]
    top3 = [set(t) <= set(r[:3]) for t, r in zip(truth, rankings, strict=True)]
    error = np.abs(share_of_a - np.array([m.share_a for m in mutts]))
    return {
        "both_parents_top2": float(np.mean(top2)),
        "both_parents_top3": float(np.mean(top3)),
        "share_error": float(error.mean()),
    }


def share_of_parent_a(found: list[Explanation], mutts: list[Mutt]) -> np.ndarray:
    """The share each explanation gives the mutt's parent_a (0 where it is not a parent)."""
    return np.array(
        [
            dict(zip(f.parents, f.shares, strict=True)).get(m.parent_a, 0.0)
            for f, m in zip(found, mutts, strict=True)
        ]
    )


def evaluate_ancestry(
    model: BaseVAE,
    store: LatentStore,
    mutts_dir: str | Path,
    penalty: float | None = None,
    knowledge: BreedKnowledge | None = None,
) -> dict:
    """Parent recovery on synthetic mutts by the shipped method (`default_method`), by the
    latent mixture too where that is not it, and by nearest-centroid on the codes; and how
    often a held-out purebred (validation split) is explained as one breed, its own."""
    knowledge = knowledge or BreedKnowledge(model, store)
    mutts, paths = read_mutts(mutts_dir, store.breeds)
    pixels = np.concatenate(
        [read_photos(model, paths[i : i + 64]) for i in range(0, len(paths), 64)]
    )
    encoded = encode_images(model, pixels)
    method = default_method(model)
    report = {
        "n_mutts": len(mutts),
        "n_breeds": len(store.breeds),
        "method": method,
        "ancestry": _recovery(knowledge, pixels, encoded, mutts, penalty, method),
        "nearest_centroid": _nearest_centroid_recovery(knowledge, encoded, mutts),
        "chance_both_parents_top2": 1.0 / (len(store.breeds) * (len(store.breeds) - 1) / 2),
    }
    if method != "latent":
        report["latent"] = _recovery(knowledge, pixels, encoded, mutts, penalty, "latent")
    report.update(_purebreds_as_one(knowledge, store.val_rows, penalty, method))
    return report


def _explain_all(knowledge, pixels, encoded, penalty, method) -> list[Explanation]:
    """Each photo's explanation; `pixels` may be None for the latent method, which reads none."""
    return [
        answer_ancestry(
            knowledge,
            None if pixels is None else pixels[i : i + 1],
            encoded.rows([i]),
            3,
            penalty,
            method,
        )[1]
        for i in range(len(encoded.mu))
    ]


def _recovery(knowledge, pixels, encoded, mutts, penalty, method) -> dict:
    found = _explain_all(knowledge, pixels, encoded, penalty, method)
    rankings = np.array([f.ranking[:3] for f in found])
    recovery = parent_recovery(rankings, share_of_parent_a(found, mutts), mutts)
    return {**recovery, "mean_parents": float(np.mean([len(f.parents) for f in found]))}


def _nearest_centroid_recovery(knowledge, encoded, mutts) -> dict:
    codes, centroids = encoded.codes, knowledge.centroids
    baseline = np.array([nearest_centroids(x, centroids) for x in codes])
    share_a = np.array(
        [
            _inverse_distance_share(x, centroids, r[:2], m.parent_a)
            for x, r, m in zip(codes, baseline, mutts, strict=True)
        ]
    )
    return parent_recovery(baseline, share_a, mutts)


def _purebreds_as_one(knowledge, rows, penalty, method, limit: int = 200) -> dict:
    """The share of held-out purebreds (up to `limit`, not those that measured the synthesis
    penalty) explained as one breed, their own."""
    rows = np.setdiff1d(rows, knowledge.penalty_rows if method == "synthesis" else [])[:limit]
    if len(rows) == 0:
        return {"purebreds_as_one_breed": None, "n_purebreds": 0}
    store = knowledge.store
    pixels = knowledge.photos_of_rows(rows) if method == "synthesis" else None
    if method == "synthesis" and pixels is None:
        return {"purebreds_as_one_breed": None, "n_purebreds": 0}
    found = _explain_all(knowledge, pixels, store.as_encoded(rows), penalty, method)
    own = [f.parents == [store.labels[r]] for f, r in zip(found, rows, strict=True)]
    return {"purebreds_as_one_breed": float(np.mean(own)), "n_purebreds": len(rows)}


def _inverse_distance_share(x, centroids, top2, parent_a) -> float:
    """The baseline's share for parent_a: the top two breeds weighted by inverse distance."""
    inverse = 1.0 / np.maximum(np.linalg.norm(centroids[top2] - x, axis=1), 1e-12)
    shares = dict(zip(top2.tolist(), inverse / inverse.sum(), strict=True))
    return float(shares.get(parent_a, 0.0))
