"""`dogvae inspect`: what a data set holds and what is wrong with it, without training.

`inspect_dataset(root)` scans the folder and decodes every file in full with the same checks as
the cache (so it finds the same bad files), but keeps no pixels. It returns a JSON-able dict
whose keys are stable (`schema_version` changes if they ever do):

- `schema_version` (int, 1)
- `root` (str): the folder that holds the images (for Stanford Dogs, the `Images` folder)
- `layout` (str): `kaggle`, `folders` or `plain`
- `n_images` (int): usable images, labelled + unlabelled
- `n_labelled`, `n_unlabelled` (int): usable images with and without a breed
- `n_breeds` (int): breeds named by the labels (or folders)
- `images_per_breed` ({breed: int}): usable images per breed, breeds sorted by name
- `n_skipped` (int): files and label rows left out
- `skipped` ({reason: {"count": int, "examples": [str]}}): per reason, up to 5 paths relative to
  `root` (label rows as `labels.csv:LINE`); reasons: `empty_file`, `truncated`,
  `not_an_image`, `too_many_pixels`, `unreadable`, `missing_file`, `no_label`, `duplicate_id`,
  `bad_label_row`, `link_loop`
- `sizes` ({"width": {"min", "median", "max"}, "height": {...}}): pixels of the usable images as
  shown (after EXIF rotation); the median is the lower median, a real image's size; all null
  when no image is usable
- `modes` ({mode: int}): Pillow modes as stored (`RGB`, `L`, `RGBA`, `CMYK`, ...)
- `formats` ({format: int}): formats read from the content (`JPEG`, `PNG`, `WEBP`, ...)
- `notes` ([str]): things worth knowing that are not errors (e.g. ignored label columns)
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from dogvae.data.cache import CHUNK_IMAGES, parallel_map
from dogvae.data.decode import ImageFacts, probe
from dogvae.data.scan import Catalog, Skip, count_by_reason, scan
from dogvae.errors import BadImage

SCHEMA_VERSION = 1
N_EXAMPLES = 5
TOP_BREEDS = 20


def inspect_dataset(
    root: str | Path, *, strict: bool = False, progress: bool = True, workers: int | None = None
) -> dict[str, Any]:
    """Scan and fully decode every image under `root`; return the report described above.

    `strict=True` raises `BadImage` for the first unusable file or label row instead.
    """
    catalog = scan(root)
    if strict and catalog.skipped:
        first = catalog.skipped[0]
        raise BadImage(first.path, first.reason, first.detail)
    facts, decode_skipped = _probe_all(catalog, strict=strict, progress=progress, workers=workers)
    usable = [r for r, f in zip(catalog.records, facts, strict=True) if f is not None]
    found = [f for f in facts if f is not None]
    per_breed = Counter(r.breed for r in usable if r.breed is not None)
    skipped = catalog.skipped + decode_skipped
    n_labelled = sum(per_breed.values())
    return {
        "schema_version": SCHEMA_VERSION,
        "root": str(catalog.root),
        "layout": catalog.layout,
        "n_images": len(usable),
        "n_labelled": n_labelled,
        "n_unlabelled": len(usable) - n_labelled,
        "n_breeds": len(catalog.breeds),
        "images_per_breed": {breed: per_breed.get(breed, 0) for breed in catalog.breeds},
        "n_skipped": len(skipped),
        "skipped": _skipped_by_reason(skipped, catalog.root),
        "sizes": {
            "width": _spread([f.width for f in found]),
            "height": _spread([f.height for f in found]),
        },
        "modes": dict(Counter(f.mode for f in found).most_common()),
        "formats": dict(Counter(f.format for f in found).most_common()),
        "notes": list(catalog.notes),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    lines = _aligned(
        [
            ("root", report["root"]),
            ("layout", report["layout"]),
            (
                "images",
                f"{report['n_images']} usable ({report['n_labelled']} labelled, "
                f"{report['n_unlabelled']} unlabelled)",
            ),
            ("breeds", str(report["n_breeds"])),
            ("skipped", str(report["n_skipped"])),
            ("width", _spread_text(report["sizes"]["width"])),
            ("height", _spread_text(report["sizes"]["height"])),
            ("formats", _counts_text(report["formats"])),
            ("modes", _counts_text(report["modes"])),
        ],
        indent="",
    )
    lines += _breed_lines(report["images_per_breed"])
    lines += _skip_lines(report["skipped"])
    if report["notes"]:
        lines += ["", "notes"] + [f"  - {note}" for note in report["notes"]]
    return "\n".join(lines)


def _probe_job(paths: list[str]) -> list[ImageFacts | tuple[str, str]]:
    """Runs in a worker: facts per file, or (reason, detail) when it cannot be used."""
    results: list[ImageFacts | tuple[str, str]] = []
    for path in paths:
        try:
            results.append(probe(path))
        except BadImage as exc:
            results.append((exc.reason, exc.detail))
    return results


def _probe_all(
    catalog: Catalog, *, strict: bool, progress: bool, workers: int | None
) -> tuple[list[ImageFacts | None], list[Skip]]:
    paths = [str(r.path) for r in catalog.records]
    jobs = [paths[i : i + CHUNK_IMAGES] for i in range(0, len(paths), CHUNK_IMAGES)]
    facts: list[ImageFacts | None] = []
    skipped: list[Skip] = []
    with parallel_map(
        _probe_job,
        jobs,
        weights=[len(job) for job in jobs],
        workers=workers,
        progress=progress,
        desc=f"checking {len(paths)} images",
    ) as results:
        for job, outcomes in zip(jobs, results, strict=True):
            for path, outcome in zip(job, outcomes, strict=True):
                if isinstance(outcome, ImageFacts):
                    facts.append(outcome)
                    continue
                if strict:
                    raise BadImage(path, *outcome)
                facts.append(None)
                skipped.append(Skip(path, *outcome))
    return facts, skipped


def _skipped_by_reason(skipped: list[Skip], root: Path) -> dict[str, dict[str, Any]]:
    return {
        reason: {
            "count": count,
            "examples": [_shown(s.path, root) for s in skipped if s.reason == reason][:N_EXAMPLES],
        }
        for reason, count in count_by_reason(skipped).items()
    }


def _shown(path: str, root: Path) -> str:
    """A path relative to the data root when it is inside it (label rows keep `:LINE`)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def _spread(values: list[int]) -> dict[str, int | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median_low(values), "max": max(values)}


def _spread_text(spread: dict[str, int | None]) -> str:
    if spread["min"] is None:
        return "-"
    return f"min {spread['min']}, median {spread['median']}, max {spread['max']} px"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def _aligned(rows: list[tuple[str, str]], indent: str) -> list[str]:
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{indent}{label:<{width}}  {value}" for label, value in rows]


def _breed_lines(images_per_breed: dict[str, int]) -> list[str]:
    if not images_per_breed:
        return []
    ranked = sorted(images_per_breed.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ranked[:TOP_BREEDS]
    title = f"images per breed (top {len(shown)} of {len(ranked)})"
    lines = ["", title] + _aligned([(breed, f"{n:>6}") for breed, n in shown], indent="  ")
    if len(ranked) > len(shown):
        lines.append(f"  ... and {len(ranked) - len(shown)} more")
    return lines


def _skip_lines(skipped: dict[str, dict[str, Any]]) -> list[str]:
    if not skipped:
        return []
    rows = [
        (reason, f"{entry['count']:>6}  e.g. {', '.join(entry['examples'])}")
        for reason, entry in skipped.items()
    ]
    return ["", "skipped files"] + _aligned(rows, indent="  ")
