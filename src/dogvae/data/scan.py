"""Find the images and labels in a folder: `scan(root) -> Catalog`.

Three layouts are recognised, tried in this order:

- `kaggle`: `root/labels.csv` (`id,breed`) with `root/train/<id>.<ext>`; `root/test/*` are
  unlabelled.
- `folders`: `root/<breed>/*` (Stanford Dogs `Images/n02085620-Chihuahua/` gives `chihuahua`);
  `root` may also be the parent of `Images/`.
- `plain`: images directly in `root`, unlabelled.

Scanning reads names and the label file only, never pixels; files that decode badly are found
later (`decode.py`). Label problems become `Skip`s with reasons `missing_file`, `no_label`,
`duplicate_id` and `bad_label_row`; a folder linking back to the data folder or above is a
`link_loop`, never a breed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dogvae.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("id", "breed")
_WORDNET_PREFIX = re.compile(r"^n\d{8}-")
# Every reason a file or label row can be skipped for, decode-time first, in reporting order.
SKIP_REASONS = (
    "empty_file",
    "truncated",
    "not_an_image",
    "too_many_pixels",
    "unreadable",
    "missing_file",
    "no_label",
    "duplicate_id",
    "bad_label_row",
    "link_loop",
)


@dataclass(frozen=True)
class ImageRecord:
    """One usable-looking image file; `breed` is None when it is unlabelled."""

    path: Path
    id: str
    breed: str | None


@dataclass(frozen=True)
class Skip:
    """A file (or label row, `labels.csv:LINE`) left out, with a stable `reason` key."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class Catalog:
    """What `scan` found: labelled records first, then unlabelled, each sorted by id."""

    root: Path
    layout: str
    records: list[ImageRecord]
    breeds: list[str]
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> list[ImageRecord]:
        return [r for r in self.records if r.breed is not None]

    @property
    def unlabelled(self) -> list[ImageRecord]:
        return [r for r in self.records if r.breed is None]

    @property
    def breed_to_index(self) -> dict[str, int]:
        return {breed: i for i, breed in enumerate(self.breeds)}


def scan(root: str | Path, *, include_unlabelled: bool = True) -> Catalog:
    """Catalogue the images under `root`; raise `DataError` when there is nothing to use."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    if (root / LABELS_FILE).is_file():
        catalog = _scan_kaggle(root)
    elif _breed_folders(root):
        catalog = _scan_folders(root)
    elif _breed_folders(root / "Images"):
        catalog = _scan_folders(root / "Images")
    else:
        catalog = _scan_plain(root)
    catalog.skipped += _loop_skips(catalog.root)
    if not catalog.records:
        raise DataError(_nothing_found_message(catalog))
    if not include_unlabelled:
        catalog.records = catalog.labelled
        if not catalog.records:
            raise DataError(f"no labelled images in {root} (layout {catalog.layout})")
    catalog.records.sort(key=lambda r: (r.breed is None, r.id))
    catalog.breeds = sorted({r.breed for r in catalog.records if r.breed is not None})
    return catalog


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files in `folder`; a link to nowhere is kept, so decoding reports it (unreadable)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and is_image_name(p)
    )


def _breed_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    subdirs = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not _links_back(p, root)
    )
    return [d for d in subdirs if _image_files(d)]


def _links_back(folder: Path, root: Path) -> bool:
    """Whether `folder` is a link to `root` or a folder above it (`ln -s . loop`): read as a
    breed it would give the same photos again, under another name."""
    return folder.is_symlink() and root.resolve().is_relative_to(folder.resolve())


def _loop_skips(root: Path) -> list[Skip]:
    return [
        Skip(str(p), "link_loop", f"links back to {p.resolve()}")
        for p in sorted(root.iterdir())
        if p.is_dir() and _links_back(p, root)
    ]


def breed_from_folder(name: str) -> str:
    """`n02085620-Chihuahua` -> `chihuahua` (Stanford Dogs names carry a WordNet id)."""
    return _WORDNET_PREFIX.sub("", name).strip().lower()


def _scan_kaggle(root: Path) -> Catalog:
    labels_path = root / LABELS_FILE
    rows, notes = _read_label_rows(labels_path)
    files_by_id, skipped = _files_by_id(_image_files(root / "train"), root)
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    for line, image_id, breed in rows:
        where = f"{labels_path}:{line}"
        if not image_id or not breed:
            skipped.append(Skip(where, "bad_label_row", "empty id or breed"))
        elif image_id in first_line:
            detail = f"id {image_id} already labelled on line {first_line[image_id]}"
            skipped.append(Skip(where, "duplicate_id", detail))
        else:
            first_line[image_id] = line
            path = files_by_id.pop(image_id, None) or files_by_id.pop(
                _stem_if_image(image_id), None
            )
            if path is None:
                detail = f"no train/{image_id}.* image for this label row"
                skipped.append(Skip(str(root / "train" / image_id), "missing_file", detail))
            else:
                records.append(ImageRecord(path, image_id, breed))
    for path in files_by_id.values():
        skipped.append(Skip(str(path), "no_label", f"{path.stem} has no row in {LABELS_FILE}"))
    records += [ImageRecord(p, p.stem, None) for p in _image_files(root / "test")]
    return Catalog(root, "kaggle", records, [], skipped, notes)


def _read_label_rows(labels_path: Path) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, id, breed) per data row, and notes about ignored columns."""
    try:
        with open(labels_path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {labels_path}: {exc}") from exc
    header = [name.strip().lower() for name in lines[0]] if lines else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        found = ", ".join(repr(c) for c in header) or "none"
        raise DataError(
            f"{labels_path} needs columns 'id' and 'breed' (missing {', '.join(missing)}); "
            f"found columns: {found}"
        )
    notes = []
    extra = [c for c in header if c not in REQUIRED_COLUMNS]
    if extra:
        notes.append(f"{LABELS_FILE}: ignored extra columns {', '.join(extra)}")
    id_col, breed_col = header.index("id"), header.index("breed")
    rows = [
        (line, _cell(cells, id_col), _cell(cells, breed_col))
        for line, cells in enumerate(lines[1:], start=2)
        if any(c.strip() for c in cells)
    ]
    return rows, notes


def _stem_if_image(image_id: str) -> str:
    """Some label files write `abc.jpg` where Kaggle's writes `abc`."""
    return Path(image_id).stem if is_image_name(Path(image_id)) else image_id


def _cell(cells: list[str], column: int) -> str:
    return cells[column].strip() if column < len(cells) else ""


def _files_by_id(files: Iterable[Path], root: Path) -> tuple[dict[str, Path], list[Skip]]:
    """Map file stem -> path; a second file with the same stem (x.jpg, x.png) is a skip."""
    by_id: dict[str, Path] = {}
    skipped = []
    for path in files:
        if path.stem in by_id:
            detail = f"{by_id[path.stem].relative_to(root)} has the same id"
            skipped.append(Skip(str(path), "duplicate_id", detail))
        else:
            by_id[path.stem] = path
    return by_id, skipped


def _scan_folders(root: Path) -> Catalog:
    records, skipped = [], []
    for folder in _breed_folders(root):
        by_id, dupes = _files_by_id(_image_files(folder), root)
        breed = breed_from_folder(folder.name)
        records += [ImageRecord(p, _relative_id(p, root), breed) for p in by_id.values()]
        skipped += dupes
    notes = []
    loose, dupes = _files_by_id(_image_files(root), root)
    if loose:
        records += [ImageRecord(p, p.stem, None) for p in loose.values()]
        skipped += dupes
        notes.append(f"{len(loose)} images directly in {root} are unlabelled")
    return Catalog(root, "folders", records, [], skipped, notes)


def _scan_plain(root: Path) -> Catalog:
    by_id, skipped = _files_by_id(_image_files(root), root)
    records = [ImageRecord(p, p.stem, None) for p in by_id.values()]
    return Catalog(root, "plain", records, [], skipped, [])


def _relative_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _nothing_found_message(catalog: Catalog) -> str:
    extensions = " ".join(sorted(IMAGE_EXTENSIONS))
    message = f"no images found in {catalog.root} (looked for {extensions})"
    if catalog.skipped:
        reasons = sorted({s.reason for s in catalog.skipped})
        message += f"; {len(catalog.skipped)} entries skipped ({', '.join(reasons)})"
    return message


def count_by_reason(skipped: Iterable[Skip]) -> dict[str, int]:
    """{reason: count}, in `SKIP_REASONS` order (unknown reasons last, by name)."""
    counts: dict[str, int] = {}
    for skip in skipped:
        counts[skip.reason] = counts.get(skip.reason, 0) + 1
    order = {reason: i for i, reason in enumerate(SKIP_REASONS)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
