"""Command line: parse arguments, call one library function, print the result.

No logic lives here that a notebook user could not reach through the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dogvae.errors import DogvaeError
from dogvae.model import PRESETS


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


def _train_config(args):
    from dogvae.train import TrainConfig

    file_cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    overrides = dict(file_cfg.get("model", {}))
    for name in ("image_size", "latent_dim", "beta"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    values = {**file_cfg.get("train", {}), "preset": file_cfg.get("preset", "small64")}
    for name in ("preset", "epochs", "batch_size", "lr", "device", "precision", "seed", "crop"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values.update(
        data=str(args.data),
        out=str(args.out),
        resume=args.resume,
        strict=args.strict,
        model_overrides=overrides,
    )
    return TrainConfig(**values)


def cmd_train(args) -> int:
    from dogvae.train import train

    summary = train(_train_config(args))
    if args.json:
        _print_json(summary)
    return 0


def cmd_demo(args) -> int:
    from dogvae.demo import run_demo

    run_demo(args.out, epochs=args.epochs)
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

    p = sub.add_parser("train", help="train a VAE; checkpoints resume")
    p.add_argument("--data", type=Path, required=True, help="data set folder (any layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    p.add_argument("--preset", choices=list(PRESETS), help="model shape (default small64)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--beta", type=float, help="KL weight (1 = the true ELBO)")
    p.add_argument("--config", type=Path, help='JSON: {"preset", "model": {...}, "train": {...}}')
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--crop", choices=["center", "squash"])
    p.add_argument("--seed", type=int)
    p.add_argument("--strict", action="store_true", help="fail on the first unusable image")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="synthesise dogs, train small64 on CPU, write pictures")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--epochs", type=int, default=40)
    p.set_defaults(func=cmd_demo)

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
