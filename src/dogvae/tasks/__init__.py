"""The latent tasks: what users train a dogvae model for.

Each task is a library function taking a loaded model (`dogvae.checkpoint.load`) and, where it
needs the training dogs, the run's latent store (`dogvae.latents.open_store`); each returns a
JSON-ready dict and, given `out`, writes a picture. Breed answers read one
`dogvae.tasks.knowledge.BreedKnowledge` (pass `knowledge=` to reuse it across questions), and
the web page calls the same functions (`answer_identify`, `answer_ancestry`), so one photo
gets one answer through every door.

- `reconstruct_photos`: originals beside reconstructions, with PSNR;
- `mix`: the strip, single mix or four-corner grid between photos and breeds;
- `ancestry`: the breed shares that best explain a dog (`evaluate_ancestry` on known mutts);
- `identify`: the breed with calibrated probabilities, or "unlike any training dog";
- `cluster_latents`: k-means and Gaussian-mixture clusters against breeds, and a 2-D map;
- `sample_dogs`: new dogs from a mixture fitted to the training codes, the prior, or a breed.
"""

from dogvae.tasks.ancestry import ancestry, evaluate_ancestry, explain
from dogvae.tasks.clusters import cluster_latents
from dogvae.tasks.identify import evaluate_identify, identify
from dogvae.tasks.mixing import mix
from dogvae.tasks.reconstruct import reconstruct_photos
from dogvae.tasks.sample import sample_dogs

__all__ = [
    "ancestry",
    "cluster_latents",
    "evaluate_ancestry",
    "evaluate_identify",
    "explain",
    "identify",
    "mix",
    "reconstruct_photos",
    "sample_dogs",
]
