"""How much does the ssvae's breed classifier gain from a higher-resolution input, for the
same training time? (Issue 17, part 4: the idea of feeding the classifier a larger copy of the
photo than the VAE half reads.)

The classifier alone (`dogvae.model.BreedClassifier`, the ssvae's default shape and recipe:
one-cycle AdamW at the small64 learning rate, its weight decay, label smoothing, the training
shifts and flips, bf16 where the CPU has it) trains on the same breed-stratified split `dogvae
train` uses, for about `--minutes` at each `--sizes`: the number of epochs is what fits the
budget at the measured speed. Validation top-1 / top-5 over the photo and its mirror, as the
ssvae validates every epoch.

    python bench/classifier_resolution.py ../shared/data/dogs-full --sizes 64,96 --minutes 12
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F

from dogvae.data.cache import load_images
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.split import stratified_split
from dogvae.model import BreedClassifier, VAEConfig, augment_for_classifier, photo_views
from dogvae.optim import one_cycle_factor
from dogvae.precision import cpu_has_native_bf16
from dogvae.recipes import TRAINING_RECIPES
from dogvae.validation import top_k_hits


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16())


def train_step(model, optimizer, x, y, smoothing: float) -> float:
    with autocast():
        loss = F.cross_entropy(
            model(augment_for_classifier(x)).float(), y, label_smoothing=smoothing
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(model, loader) -> tuple[float, float]:
    model.eval()
    hits, n = torch.zeros(2), 0
    for x, y in loader:
        with autocast():
            logits = sum(torch.log_softmax(model(v).float(), 1) for v in photo_views(x, 2))
        hits += torch.stack([top_k_hits(logits, y, k) for k in (1, 5)]).float()
        n += int((y >= 0).sum())
    model.train()
    return float(hits[0] / n), float(hits[1] / n)


def run_size(data: str, size: int, minutes: float, seed: int) -> dict:
    images = load_images(data, size, progress=False)
    train_idx, val_idx = stratified_split(images.labels, 0.1, seed)
    cfg = VAEConfig(image_size=size, n_breeds=len(images.breeds), model="ssvae")
    torch.manual_seed(seed)
    model = BreedClassifier(cfg)
    recipe = TRAINING_RECIPES["small64"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=cfg.classifier_weight_decay
    )
    loader = make_loader(
        CachedImages(images, train_idx, flip=True, seed=seed), recipe.batch_size, shuffle=True,
        seed=seed, drop_last=True,
    )  # fmt: skip
    val = make_loader(CachedImages(images, val_idx), 256, shuffle=False)
    # the speed, on a throw-away copy, decides how many epochs fit the budget
    probe = BreedClassifier(cfg)
    probe_opt = torch.optim.AdamW(probe.parameters())
    batches = list(itertools.islice(loader, 6))
    train_step(probe, probe_opt, *batches[0], cfg.label_smoothing)  # warm-up
    t0 = time.perf_counter()
    for x, y in batches[1:]:
        train_step(probe, probe_opt, x, y, cfg.label_smoothing)
    step_s = (time.perf_counter() - t0) / max(1, len(batches) - 1)
    epochs = max(1, math.floor(minutes * 60 / (step_s * len(loader))))
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle_factor(s, total))
    started = time.perf_counter()
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for x, y in loader:
            train_step(model, optimizer, x, y, cfg.label_smoothing)
            schedule.step()
    seconds = time.perf_counter() - started
    top1, top5 = accuracy(model, val)
    return {"size": size, "epochs": epochs, "train_minutes": seconds / 60, "top1": top1,
            "top5": top5, "step_seconds": step_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--sizes", default="64,96")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [run_size(args.data, int(s), args.minutes, args.seed) for s in args.sizes.split(",")]
    for r in results:
        print(
            f"{r['size']:>4} px: {r['epochs']} epochs in {r['train_minutes']:.1f} min "
            f"({r['step_seconds'] * 1000:.0f} ms/step): top-1 {r['top1']:.1%}, top-5 {r['top5']:.1%}"
        )
    base = results[0]
    for r in results[1:]:
        print(f"{r['size']} px vs {base['size']} px: top-1 x{r['top1'] / base['top1']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
