"""Command line: parse arguments, call one library function, print the result.

No logic lives here that a notebook user could not reach through the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dogvae.errors import DogvaeError


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_synth(args) -> int:
    from dogvae.synth import synthesize

    summary = synthesize(
        args.out,
        breeds=args.breeds,
        per_breed=args.per_breed,
        size=args.size,
        mutts=args.mutts,
        seed=args.seed,
        progress=not args.json,
    )
    if args.json:
        _print_json(summary)
    else:
        print(
            f"wrote {summary['n_images']} images of {summary['n_breeds']} breeds and "
            f"{summary['n_mutts']} mutts to {args.out}"
        )
    return 0


def cmd_inspect(args) -> int:
    from dogvae.data.report import format_report, inspect_dataset

    report = inspect_dataset(args.data, strict=args.strict)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogvae", description="Train a VAE on dog photos and ask its latent space questions."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="draw the synthetic-breeds data set (Kaggle layout)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--breeds", type=int, default=8)
    p.add_argument("--per-breed", type=int, default=150)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--mutts", type=int, default=100, help="mixed-breed dogs with known parents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="report what a data set holds, without training")
    p.add_argument("data", type=Path, help="Kaggle folder, breed folders, or a plain image folder")
    p.add_argument("--json", action="store_true", help="stable machine-readable output")
    p.add_argument("--strict", action="store_true", help="fail on the first unusable file")
    p.set_defaults(func=cmd_inspect)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DogvaeError as exc:
        print(f"dogvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dogvae: interrupted", file=sys.stderr)
        return 130
