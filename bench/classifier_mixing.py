"""Does mixing images (mixup, CutMix) help the ssvae's breed classifier within a short CPU
run? (Issue 17, part 4: stronger augmentation for the classifier.)

The classifier alone, as `bench/classifier_resolution.py` trains it (the ssvae's default
shape and recipe, 64 px), for `--epochs` epochs with each `--mix`:
- none: the training shifts and flips only;
- mixup (Zhang et al. 2018): pairs of images blended with a Beta(alpha, alpha) share;
- cutmix (Yun et al. 2019): a box of one image pasted on another, the share its area.
The target is the same mix of the two labels (with the usual label smoothing). Validation
top-1 / top-5 over the photo and its mirror.

    python bench/classifier_mixing.py ../shared/data/dogs-full --mix none,cutmix,mixup --epochs 30
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from classifier_resolution import accuracy, autocast

from dogvae.data.cache import load_images
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.split import stratified_split
from dogvae.model import BreedClassifier, VAEConfig, augment_for_classifier, mix_images
from dogvae.optim import one_cycle_factor
from dogvae.recipes import TRAINING_RECIPES


def train_step(model, optimizer, x, y, smoothing: float, mix: str, alpha: float) -> float:
    x = augment_for_classifier(x)
    mixed = mix_images(x, mix, alpha) if mix != "none" else None
    with autocast():
        logits = model(x if mixed is None else mixed.images).float()
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if mixed is not None:
        other = F.cross_entropy(logits, y[mixed.partner], label_smoothing=smoothing)
        loss = mixed.share * loss + (1 - mixed.share) * other
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def run_mix(images, mix: str, epochs: int, alpha: float, seed: int) -> dict:
    train_idx, val_idx = stratified_split(images.labels, 0.1, seed)
    cfg = VAEConfig(image_size=64, n_breeds=len(images.breeds), model="ssvae")
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
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle_factor(s, total))
    started = time.perf_counter()
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for x, y in loader:
            train_step(model, optimizer, x, y, cfg.label_smoothing, mix, alpha)
            schedule.step()
    minutes = (time.perf_counter() - started) / 60
    top1, top5 = accuracy(model, val)
    return {"mix": mix, "epochs": epochs, "train_minutes": minutes, "top1": top1, "top5": top5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--mix", default="none,cutmix,mixup")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0, help="Beta(alpha, alpha) shares")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = load_images(args.data, 64, progress=False)
    results = []
    for mix in args.mix.split(","):
        results.append(run_mix(images, mix, args.epochs, args.alpha, args.seed))
        r = results[-1]
        print(
            f"{r['mix']:>7}: {r['epochs']} epochs in {r['train_minutes']:.1f} min: "
            f"top-1 {r['top1']:.1%}, top-5 {r['top5']:.1%}",
            flush=True,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
