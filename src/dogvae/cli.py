"""Command line: parse arguments, call one library function, print the result.

No logic lives here that a notebook user could not reach through the library. The library's
log (the "dogvae" logger) goes to stderr: INFO and up, `--quiet` warnings only and no progress
bars, `--verbose` DEBUG too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dogvae.errors import DogvaeError
from dogvae.model import MODELS, PRESETS
from dogvae.progress import set_progress


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


TRAIN_FLAGS = (
    "data", "preset", "epochs", "batch_size", "lr", "device", "precision", "seed", "crop",
    "label_fraction", "classifier_epochs", "compile", "deterministic",
    "image_size", "latent_dim", "beta", "model",
)  # fmt: skip


def _train_config(args):
    from dogvae.train import TrainConfig, read_settings_file

    settings = read_settings_file(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in TRAIN_FLAGS}
    if args.resume:
        return TrainConfig.from_run(args.out, settings, flags, strict=args.strict)
    if args.data is None:
        raise DogvaeError("train needs --data DIR (only --resume reads it from the run)")
    return TrainConfig.from_settings(settings, flags, out=args.out, strict=args.strict)


def cmd_train(args) -> int:
    from dogvae.callbacks import EXIT_STATUS, quality_line
    from dogvae.train import train

    summary = train(_train_config(args))
    if args.json and summary:  # under torchrun only rank 0 returns a summary
        _print_json(summary)
    elif summary and not summary.get("stopped"):
        print(quality_line(summary))
    if summary.get("stopped"):  # saved and resumable, but stopped by Ctrl-C (130) or SIGTERM
        return EXIT_STATUS[summary["signal"]]
    return 0


def cmd_demo(args) -> int:
    from dogvae.demo import format_demo, run_demo

    print(format_demo(run_demo(args.out, epochs=args.epochs)))
    return 0


def cmd_tune(args) -> int:
    from dogvae.train import TUNE_SECTIONS, read_settings_file
    from dogvae.tune import format_tune, tune

    base = read_settings_file(args.config, TUNE_SECTIONS) if args.config else {}
    if args.presets:
        base.setdefault("search", {})["preset"] = args.presets.split(",")
    result = tune(
        args.data, args.out, trials=args.trials, storage=args.storage, study_name=args.study,
        timeout=args.timeout, epochs=args.epochs, metric=args.metric, base=base, seed=args.seed,
    )  # fmt: skip
    return _emit(args, result, format_tune)


# --- latent tasks ---------------------------------------------------------------------------


def _open_model(args):
    from dogvae.checkpoint import load

    return load(args.run)


def _open_store(args, model):
    from dogvae.latents import open_store

    return open_store(model, args.run, args.data, progress=not args.json)


def _emit(args, result: dict, format_text) -> int:
    if args.json:
        _print_json(result)
    else:
        print(format_text(result))
    return 0


def cmd_encode(args) -> int:
    from dogvae.latents import STORE_FILE, open_store
    from dogvae.tasks.report import format_store

    model = _open_model(args)
    store = open_store(model, args.run, args.data, rebuild=args.rebuild, progress=not args.json)
    return _emit(args, {"path": str(args.run / STORE_FILE), **store.summary()}, format_store)


def cmd_reconstruct(args) -> int:
    from dogvae.tasks import reconstruct_photos
    from dogvae.tasks.report import format_reconstruction

    result = reconstruct_photos(_open_model(args), args.images, args.out)
    return _emit(args, result, format_reconstruction)


def cmd_mix(args) -> int:
    from dogvae.tasks.mixing import check_mix_options, mix, needs_store
    from dogvae.tasks.report import format_mix

    check_mix_options(args.steps, args.method, args.t, args.grid)
    model = _open_model(args)
    ends = [args.a, args.b, *(args.grid or [])]
    store = _open_store(args, model) if needs_store(model, ends, args.breed_as) else None
    result = mix(
        model, store, args.a, args.b, args.out, steps=args.steps, method=args.method, t=args.t,
        grid=tuple(args.grid) if args.grid else None, breed_as=args.breed_as,
    )  # fmt: skip
    return _emit(args, result, format_mix)


def _knowledge(args):
    """The model and what its run knows about breeds; a bad photo fails before the store is
    opened (or encoded)."""
    from dogvae.tasks.inputs import read_photos
    from dogvae.tasks.knowledge import BreedKnowledge

    model = _open_model(args)
    image = getattr(args, "image", None)
    if image is not None and not image.is_dir():
        read_photos(model, [image])
    return BreedKnowledge(model, _open_store(args, model), args.run)


def cmd_ancestry(args) -> int:
    from dogvae.tasks import ancestry, evaluate_ancestry
    from dogvae.tasks.report import format_ancestry, format_ancestry_evaluation

    if (args.image is None) == (args.eval_mutts is None):
        raise DogvaeError("give either an image or --eval-mutts DATA (a `dogvae synth` folder)")
    knowledge = _knowledge(args)
    model, store = knowledge.model, knowledge.store
    if args.eval_mutts is not None:
        report = evaluate_ancestry(model, store, args.eval_mutts, knowledge=knowledge)
        return _emit(args, report, format_ancestry_evaluation)
    result = ancestry(model, store, args.image, top=args.top, out=args.out, knowledge=knowledge)
    return _emit(args, result, format_ancestry)


def cmd_identify(args) -> int:
    from dogvae.tasks import evaluate_identify, identify
    from dogvae.tasks.identify import identify_folder
    from dogvae.tasks.report import (
        format_identify,
        format_identify_evaluation,
        format_identify_folder,
    )

    if (args.image is None) == (not args.eval):
        raise DogvaeError("give either an image (or a folder of them) or --eval")
    folder = args.image is not None and args.image.is_dir()
    if folder != (args.csv is not None):
        raise DogvaeError("--csv FILE goes with a folder of photos, and a folder needs --csv")
    knowledge = _knowledge(args)
    if args.eval:
        return _emit(args, evaluate_identify(knowledge), format_identify_evaluation)
    if folder:
        return _emit(args, identify_folder(knowledge, args.image, args.csv), format_identify_folder)
    result = identify(
        knowledge.model, knowledge.store, args.image, top=args.top, out=args.out,
        knowledge=knowledge,
    )  # fmt: skip
    return _emit(args, result, format_identify)


def cmd_clusters(args) -> int:
    from dogvae.tasks import cluster_latents
    from dogvae.tasks.report import format_clusters

    store = _open_store(args, _open_model(args))
    out = None if args.no_map else (args.out or args.run / "clusters.png")
    return _emit(args, cluster_latents(store, out, seed=args.seed), format_clusters)


def cmd_sample(args) -> int:
    from dogvae.tasks import sample_dogs
    from dogvae.tasks.inputs import find_breed
    from dogvae.tasks.report import format_sample
    from dogvae.tasks.sample import latent_mixture, needs_mixture

    model = _open_model(args)
    if args.breed is not None:
        find_breed(args.breed, model.breeds)  # an unknown name fails before any encoding
    mixture_codes = needs_mixture(model, args.breed, args.source)
    # a conditional model draws the breed from its decoder; a plain VAE from the store
    around_breed = args.breed is not None and not model.conditional
    try:
        store = _open_store(args, model) if mixture_codes or around_breed else None
    except DogvaeError as exc:
        if not mixture_codes or around_breed:
            raise
        raise DogvaeError(f"{exc}; or draw from the prior: --source prior needs no store") from exc
    result = sample_dogs(
        model, args.out, n=args.n, breed=args.breed, store=store,
        temperature=args.temperature, seed=args.seed,
        mixture=latent_mixture(store, args.run) if mixture_codes else None,
    )  # fmt: skip
    return _emit(args, result, format_sample)


def _task_parser(sub, name: str, help: str, store: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument("run", type=Path, help="run folder made by `dogvae train`")
    if store:
        p.add_argument(
            "--data", type=Path, help="labelled images for the latent store (default: the run's)"
        )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def add_task_parsers(sub) -> None:
    """The latent tasks' subcommands."""
    from dogvae.tasks.sample import DEFAULT_SOURCE, SOURCES

    p = _task_parser(sub, "encode", "encode the labelled images once into RUN/latents.npz")
    p.add_argument("--rebuild", action="store_true", help="encode again even if up to date")
    p.set_defaults(func=cmd_encode)

    p = _task_parser(sub, "reconstruct", "photos beside their reconstructions, with PSNR", False)
    p.add_argument("images", nargs="+", type=Path, metavar="IMG")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=cmd_reconstruct)

    p = _task_parser(sub, "mix", "mix two photos or breeds (strip, single mix or grid)")
    p.add_argument("a", metavar="A", help="image path or breed name")
    p.add_argument("b", metavar="B", help="image path or breed name")
    p.add_argument("--steps", type=int, default=8, help="images along the strip (grid side)")
    p.add_argument("--method", choices=["lerp", "slerp"], default="lerp")
    p.add_argument("--t", type=float, help="write only the mix at this point (0 = A, 1 = B)")
    p.add_argument("--grid", nargs=2, metavar=("C", "D"), help="bottom corners of a 2-D mix")
    p.add_argument(
        "--breed-as", choices=["medoid", "centroid"], default="medoid",
        help="a breed is its typical training dog (default), or its centroid (a cvae or "
        "ssvae: its breed embedding drawn with the other end's code)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=cmd_mix)

    p = _task_parser(sub, "ancestry", "which breeds, in what shares, make this dog")
    p.add_argument("image", nargs="?", type=Path, metavar="IMG")
    p.add_argument("--top", type=int, default=3, help="breeds to rank")
    p.add_argument("--out", type=Path, help="PNG: dog, reconstruction, mixture, parents")
    p.add_argument("--eval-mutts", type=Path, metavar="DATA", help="score on synthetic mutts")
    p.set_defaults(func=cmd_ancestry)

    p = _task_parser(sub, "identify", "the breed, with probabilities, or 'unlike any dog'")
    p.add_argument("image", nargs="?", type=Path, metavar="IMG", help="a photo or a folder")
    p.add_argument(
        "--csv", type=Path, metavar="FILE",
        help="with a folder: write a probability per breed per photo (Kaggle submission layout)",
    )  # fmt: skip
    p.add_argument("--top", type=int, default=5, help="breeds to list")
    p.add_argument("--out", type=Path, help="PNG: photo, reconstruction, top breeds")
    p.add_argument("--eval", action="store_true", help="validation figures of the identifiers")
    p.set_defaults(func=cmd_identify)

    p = _task_parser(sub, "clusters", "cluster the latent space; score against breeds; map it")
    p.add_argument("--out", type=Path, help="PNG map (default RUN/clusters.png)")
    p.add_argument("--no-map", action="store_true", help="scores only (t-SNE takes a while)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_clusters)

    p = _task_parser(
        sub, "sample", "new dogs from the training codes' mixture, the prior or a breed"
    )
    p.add_argument("--n", type=int, default=16)
    p.add_argument(
        "--source", choices=SOURCES, default=DEFAULT_SOURCE,
        help="codes from a Gaussian mixture fitted to the training codes (gmm, the default; "
        "fitted once into RUN/sampler.npz) or from the prior N(0, I)",
    )  # fmt: skip
    p.add_argument(
        "--breed",
        help="this breed: from the decoder (cvae, ssvae), else around its latent centroid",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the spread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=cmd_sample)


# --- evaluation ------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from dogvae.eval_report import format_evaluation
    from dogvae.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.data, split=args.split, progress=not args.json)
    return _emit(args, metrics, format_evaluation)


def cmd_compare(args) -> int:
    from dogvae.eval_report import format_comparison
    from dogvae.evaluate import compare_runs, write_comparison

    table = compare_runs(args.runs)
    if args.out is not None:
        table["page"] = str(write_comparison(table, args.out))
    return _emit(args, table, format_comparison)


def add_evaluation_parsers(sub) -> None:
    p = _task_parser(sub, "evaluate", "every figure beside its baseline: RUN/eval/report.html")
    p.add_argument("--split", choices=["val", "train"], default="val", help="images to score")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="evaluated runs side by side, the best of each row marked")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="runs made by `evaluate`")
    p.add_argument("--out", type=Path, help="also write the table as an HTML page")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_compare)


def cmd_export(args) -> int:
    from dogvae.pretrained import export_run

    folder = export_run(args.run, args.out)
    return _emit(
        args,
        {"folder": str(folder)},
        lambda r: f"wrote {r['folder']}: model.safetensors, config.json, README.md",
    )


def cmd_serve(args) -> int:
    try:
        from dogvae.app import serve
    except ImportError as exc:
        raise DogvaeError(
            f"the web page needs the web extra ({exc.name} is missing): pip install 'dogvae[web]'"
        ) from exc
    serve(args.run, host=args.host, port=args.port, data=args.data, device=args.device)
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: identify, mix and sample dogs")
    p.add_argument("run", type=Path, help="run folder made by `dogvae train`")
    p.add_argument(
        "--data", type=Path, help="labelled images for the latent store (default: the run's)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="cpu",
        help="where the model runs (default cpu; auto: a GPU when there is one)",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogvae",
        description="Train a VAE on dog photos and ask its latent space questions.",
        epilog="-q/--quiet and -v/--verbose also work after the command (dogvae encode RUN -q).",
    )
    add_log_flags(parser, logging.INFO)
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
    p.add_argument("--data", type=Path, help="data set folder (any layout; --resume: the run's)")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    p.add_argument("--preset", choices=list(PRESETS), help="model shape (default small64)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--beta", type=float, help="KL weight (1 = the true ELBO)")
    p.add_argument(
        "--model", choices=list(MODELS),
        help="vae (default), cvae (breed-conditional) or ssvae (semi-supervised, with a classifier)",
    )  # fmt: skip
    p.add_argument(
        "--label-fraction", type=float, metavar="F",
        help="ssvae: keep the labels of only this share of each breed's training images",
    )  # fmt: skip
    p.add_argument(
        "--classifier-epochs", type=int, metavar="N",
        help="ssvae: its classifier learns over the first N epochs, then stays fixed "
        "(default 45; 0: the whole run)",
    )  # fmt: skip
    p.add_argument("--config", type=Path, help='JSON: {"preset", "model": {...}, "train": {...}}')
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model's forward pass (default: the preset's choice)",
    )
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        help="on CUDA, deterministic kernels: a resumed run ends bit for bit like an "
        "uninterrupted one (slower; CPU runs already are)",
    )
    p.add_argument("--crop", choices=["center", "squash"])
    p.add_argument("--seed", type=int)
    p.add_argument("--strict", action="store_true", help="fail on the first unusable image")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", help="synthesise dogs, train the small64 ssvae on CPU, write pictures"
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--epochs", type=int, default=40)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tune", help="search model and training settings with Optuna")
    p.add_argument("--data", type=Path, required=True, help="data set folder (any layout)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/tune.db)")
    p.add_argument(
        "--out", type=Path, help="folder for trial-NNN/ and best.json (default: the sqlite file's)"
    )
    p.add_argument("--study", default="dogvae", help="study name in the storage")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    p.add_argument("--metric", choices=["val_elbo", "psnr"], default="val_elbo")
    p.add_argument(
        "--presets", help="comma-separated presets to choose from (default small64,res64)"
    )
    p.add_argument("--config", type=Path, help='base JSON: {"preset", "model", "train", "search"}')
    p.add_argument("--seed", type=int, default=0, help="sampler seed (another per process)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_tune)

    add_task_parsers(sub)
    add_evaluation_parsers(sub)
    p = sub.add_parser("export", help="the run's best model as one shareable folder with a card")
    p.add_argument("run", type=Path, help="run folder made by `dogvae train`")
    p.add_argument("out", type=Path, help="folder to write (dogvae.from_pretrained loads it)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)
    add_serve_parser(sub)
    for command in sub.choices.values():
        add_log_flags(command, argparse.SUPPRESS)
    return parser


def add_log_flags(parser: argparse.ArgumentParser, default) -> None:
    """-q/--quiet and -v/--verbose as `log_level`; each subcommand takes them too, with no
    default there, so that one given before the subcommand holds."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
        default=default, help="only warnings and errors on stderr, no progress bars",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
        default=default, help="the library's debug messages too",
    )  # fmt: skip


@contextmanager
def library_log(level: int) -> Iterator[None]:
    """For one command: the library's messages at `level` and above on stderr as plain lines,
    and its progress bars unless only warnings show. The one place dogvae configures logging;
    the library itself adds no handler."""
    logger = logging.getLogger("dogvae")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved_level, saved_bars = logger.level, set_progress(level <= logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        set_progress(saved_bars)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with library_log(args.log_level):
        try:
            return args.func(args)
        except DogvaeError as exc:
            print(f"dogvae: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("dogvae: interrupted", file=sys.stderr)
            return 130
