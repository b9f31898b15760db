"""How fast dogvae answers: photos encoded per second, and one identify once the store exists.

Encoding (`dogvae.latents.encode_images`) is what `dogvae encode`, the first question on a run
and `dogvae identify FOLDER --csv` wait for: per photo, the classifier's views (ssvae), the
encoder on the photo and its mirror, one decode and a PNG length. It prints photos/s for the
vae and the ssvae at small64's shape with 120 breeds, in float32 and in bf16 autocast (what
dogvae uses where it is fast), the ssvae also with fewer classifier views, each beside the
preset's training throughput measured the same way; then the seconds one `answer_identify`
takes after the latent store and its probe exist. Weights are random: speed does not depend
on them. Variants alternate batch by batch in one process, so other work on a shared machine
slows them alike.

    python bench/encode_throughput.py                  # 2,048 random photos
    python bench/encode_throughput.py --images 4096 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import numpy as np
import torch

from dogvae.latents import Encoded, LatentStore, encode_images
from dogvae.model import build_model, preset_config
from dogvae.tasks.identify import answer_identify
from dogvae.tasks.knowledge import BreedKnowledge

BREEDS = 120


def model_of(kind: str, views: int = 10):
    cfg = dataclasses.replace(
        preset_config("small64"), model=kind, n_breeds=BREEDS, classifier_views=views
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.breeds = [f"breed_{i:03d}" for i in range(BREEDS)]
    return model


def fp32(model, pixels):
    with forced_fp32():
        return encode_images(model, pixels)


@contextlib.contextmanager
def forced_fp32():
    import dogvae.latents as latents

    original = latents.inference_autocast
    latents.inference_autocast = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        latents.inference_autocast = original


def training_rate(kind: str, batch: int = 64, steps: int = 3) -> float:
    """Images/s of forward + backward + step in bf16 where fast, as training runs."""
    from dogvae.precision import inference_autocast

    model = model_of(kind).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.rand(batch, 3, 64, 64)
    labels = torch.randint(BREEDS, (batch,))
    breed = labels if kind != "vae" else None
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        with inference_autocast(x.device):
            loss = model.loss(x, breed=breed).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def fake_store(model, encoded: Encoded, rng) -> LatentStore:
    n = len(encoded.mu)
    labels = rng.integers(BREEDS, size=n)
    return LatentStore(
        encoded.mu, encoded.logvar, encoded.mu_mirror, labels, np.arange(n).astype(str),
        rng.random(n) < 0.1, encoded.recon_mse, encoded.code_gap, encoded.class_log_probs,
        model.breeds, "bench", "bench",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
    variants = {
        "vae fp32": (model_of("vae"), fp32),
        "vae bf16-where-fast": (model_of("vae"), encode_images),
        "ssvae 10 views fp32": (model_of("ssvae"), fp32),
        "ssvae 10 views bf16-where-fast": (model_of("ssvae"), encode_images),
        "ssvae 2 views bf16-where-fast": (model_of("ssvae", views=2), encode_images),
        "ssvae 1 view bf16-where-fast": (model_of("ssvae", views=1), encode_images),
    }
    seconds = dict.fromkeys(variants, 0.0)
    chunk = 256
    with torch.no_grad():
        for model, encode in variants.values():
            encode(model, pixels[:chunk])  # warm-up
        for _ in range(args.rounds):
            for start in range(0, args.images, chunk):
                for name, (model, encode) in variants.items():
                    began = time.perf_counter()
                    encode(model, pixels[start : start + chunk])
                    seconds[name] += time.perf_counter() - began
    print(f"encoding {args.images} photos x {args.rounds} rounds, small64 shape, {BREEDS} breeds,"
          f" {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'variant':34} {'photos/s':>9} {'vs fp32':>8}")
    for name, spent in seconds.items():
        rate = args.images * args.rounds / spent
        base = (
            name.split(" bf16")[0].replace(" 2 views", " 10 views").replace(" 1 view", " 10 views")
        )
        ratio = seconds[f"{base} fp32"] / spent if f"{base} fp32" in seconds else 1.0
        print(f"{name:34} {rate:9.0f} {ratio:7.2f}x")
    for kind in ("vae", "ssvae"):
        print(f"training, {kind} (forward + backward + step, bf16 where fast): "
              f"{training_rate(kind):.0f} img/s")  # fmt: skip

    model = variants["ssvae 10 views bf16-where-fast"][0]
    store = fake_store(model, encode_images(model, pixels), rng)
    knowledge = BreedKnowledge(model, store).warm()  # as a served run has it
    began = time.perf_counter()
    answer_identify(knowledge, encode_images(model, pixels[:1]))
    print(f"one identify (ssvae, store of {len(store)} and its probe ready): "
          f"{time.perf_counter() - began:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
