"""Data-layer throughput: cold decode with and without JPEG draft, cached batch reads, and
(`--full`) the time to build the dogs-full cache.

    .venv/bin/python bench/data_throughput.py          # ../shared/data/dogs-sample
    .venv/bin/python bench/data_throughput.py --full   # also the 9,194-photo 128 px cache

Cold decode runs in this one process over files already in the page cache, so it measures
Pillow, not the disk; the cache build uses every core. Without ../shared/data it draws a
synthetic set of photo-sized JPEGs. Prints figures and ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from dogvae.data.cache import load_images
from dogvae.data.decode import decode_file, open_rgb, to_square
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.scan import scan

SIZES = (64, 128)
BATCH = 64
MIN_SECONDS = 1.0


def shared_data() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("DOGVAE_SHARED_DATA", default))


def synthetic_set(root: Path, n: int = 200) -> Path:
    """A Kaggle-layout folder of 500x375 JPEGs with photo-like smooth shapes and grain."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500] / 500
    rows = ["id,breed"]
    (root / "train").mkdir(parents=True)
    for i in range(n):
        phase = rng.uniform(0, 6, 3)
        smooth = 128 + 90 * np.sin(np.stack([4 * x, 5 * y, 3 * (x + y)], -1) + phase)
        grain = rng.normal(0, 12, smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"dog{i:04d}.jpg", quality=90)
        rows.append(f"dog{i:04d},breed{i % 4}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def images_per_second(step: Callable[[], int]) -> float:
    """Repeat `step` (which returns how many images it handled) for at least MIN_SECONDS."""
    images, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < MIN_SECONDS or images == 0:
        images += step()
    return images / elapsed


def cold_rate(paths: list[Path], size: int, draft: bool) -> float:
    def one_pass() -> int:
        for path in paths:
            if draft:
                decode_file(path, size)
            else:
                to_square(open_rgb(path), size)
        return len(paths)

    return images_per_second(one_pass)


def cached_rate(root: Path, size: int, cache_dir: Path) -> float:
    dataset = CachedImages(load_images(root, size, cache_dir=cache_dir, progress=False), flip=True)
    loader = make_loader(dataset, BATCH, shuffle=True)
    epochs = iter(range(10**9))

    def one_epoch() -> int:
        set_epoch(loader, next(epochs))
        return sum(x.shape[0] for x, _ in loader)

    one_epoch()  # the first read pulls the array into the page cache
    return images_per_second(one_epoch)


def bench_sizes(root: Path, cache_dir: Path) -> None:
    paths = [record.path for record in scan(root).records]
    for path in paths:
        path.read_bytes()  # page cache: time decoding, not the disk
    print(f"data: {root} ({len(paths)} photos, one process for cold decode)")
    header = ("size", "cold full", "cold draft", f"cached x{BATCH}", "cached/draft", "cached/full")
    print("{:>5} {:>14} {:>14} {:>16} {:>13} {:>12}".format(*header))
    for size in SIZES:
        full = cold_rate(paths, size, draft=False)
        draft = cold_rate(paths, size, draft=True)
        cached = cached_rate(root, size, cache_dir)
        print(
            f"{size:>5} {full:>10.0f} i/s {draft:>10.0f} i/s {cached:>12.0f} i/s "
            f"{cached / draft:>12.0f}x {cached / full:>11.0f}x"
        )


def bench_full_build(root: Path, cache_dir: Path) -> None:
    start = time.perf_counter()
    images = load_images(root, 128, cache_dir=cache_dir, progress=False)
    build = time.perf_counter() - start
    start = time.perf_counter()
    load_images(root, 128, cache_dir=cache_dir, progress=False)
    reload = time.perf_counter() - start
    print(
        f"dogs-full 128 px cache: {len(images)} photos built in {build:.1f} s "
        f"({len(images) / build:.0f} img/s on {os.cpu_count()} cores); "
        f"reopened and checksum-verified in {reload:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also build the dogs-full cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dogvae-bench-") as scratch:
        scratch = Path(scratch)
        sample = shared_data() / "dogs-sample"
        if not sample.is_dir():
            print(f"{sample} not found: using a synthetic set")
            sample = synthetic_set(scratch / "synthetic")
        bench_sizes(sample, scratch / "cache")
        if args.full:
            full = shared_data() / "dogs-full"
            if full.is_dir():
                bench_full_build(full, scratch / "full-cache")
            else:
                print(f"{full} not found: skipping the full build")


if __name__ == "__main__":
    main()
