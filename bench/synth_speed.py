"""How fast `dogvae synth` draws the default data set, in images per second on one process.

Run: .venv/bin/python bench/synth_speed.py [--size 96] [--per-breed 150]
CPU seconds are printed beside wall seconds: on a shared machine they are the steadier figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dogvae.synth import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breeds", type=int, default=8)
    parser.add_argument("--per-breed", type=int, default=150)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--mutts", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = synthesize(
            Path(tmp) / "synth",
            breeds=args.breeds,
            per_breed=args.per_breed,
            size=args.size,
            mutts=args.mutts,
            progress=False,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = summary["n_images"] + summary["n_mutts"]
    print(f"synth {images} images at {args.size} px: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"  {images / wall:.0f} images/s wall, {images / cpu:.0f} images/s per CPU second")


if __name__ == "__main__":
    main()
