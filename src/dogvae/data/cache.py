"""Decode a data set once into one memory-mapped uint8 array: `load_images(root, size)`.

In the cache folder (`cache_dir`, else `$DOGVAE_CACHE`, else `~/.cache/dogvae`; never beside the
data, which may be read-only) each decoded set is three files named by its key:

- `<key>.npy`: the pixels, (N, size, size, 3) uint8, read back as a read-only memmap;
- `<key>.json`: ids, labels, breeds, decode-time skips and a blake2b checksum of the pixels;
- `<key>.skipped.json`: the files left out and why (only while some are).

The key hashes the cache format, the layout, every file's relative path, size and mtime, the
labels, the image size and the crop, so any change to those decodes afresh. Files are written
with `dogvae.atomic` (a temporary, flushed to disk, renamed into place), the metadata last; a
cache that fails any check (header, shape, byte size, metadata, checksum) is rebuilt, never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from dogvae.atomic import (
    atomic_path,
    crash_point,
    json_text,
    remove_stale_temporaries,
    temporary_path,
)
from dogvae.data.decode import CROPS, decode_file
from dogvae.data.scan import Catalog, ImageRecord, Skip, count_by_reason, scan
from dogvae.errors import BadImage, DataError
from dogvae.progress import progress_bar

CACHE_FORMAT = 1
# Images per job sent to a worker: large enough that process overhead vanishes, small enough
# that the progress bar moves and two workers finish together.
CHUNK_IMAGES = 64
_CHECKSUM_BLOCK = 1 << 24

Job = TypeVar("Job")
Result = TypeVar("Result")
log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """A decoded data set: `images[i]` is the photo `ids[i]` with label `labels[i]` (-1: none),
    an index into `breeds`."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    breeds: list[str]
    skipped: list[Skip]
    root: str
    layout: str
    image_size: int
    crop: str
    notes: list[str] = field(default_factory=list)
    cache_path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> dict[str, Any]:
        n_labelled = int(np.count_nonzero(self.labels >= 0))
        return {
            "root": self.root,
            "layout": self.layout,
            "n_images": len(self),
            "n_labelled": n_labelled,
            "n_unlabelled": len(self) - n_labelled,
            "n_breeds": len(self.breeds),
            "breeds": list(self.breeds),
            "image_size": self.image_size,
            "crop": self.crop,
            "skipped_by_reason": count_by_reason(self.skipped),
            "notes": list(self.notes),
        }


def default_cache_dir() -> Path:
    return Path(os.environ.get("DOGVAE_CACHE") or Path.home() / ".cache" / "dogvae").expanduser()


def load_images(
    root: str | Path,
    size: int,
    *,
    crop: str = "center",
    cache_dir: str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
    workers: int | None = None,
    include_unlabelled: bool = True,
) -> ImageSet:
    """Scan `root`, decode every image once at `size` x `size`, and return the cached set.

    Unusable files are skipped and counted (one warning in the log); `strict=True` raises
    `BadImage` for the first of them instead. Raises `DataError` when nothing is usable.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    catalog = scan(root, include_unlabelled=include_unlabelled)
    if strict and catalog.skipped:
        raise _as_error(catalog.skipped[0])
    files = _CacheFiles(_writable_cache_dir(cache_dir), cache_key(catalog, size, crop))
    meta = _read_valid_meta(files)
    if meta is None:
        try:
            meta = _build_cache(catalog, files, size, crop, strict, progress, workers)
        except OSError as exc:
            raise DataError(
                f"cannot write the image cache in {files.folder} ({exc.strerror or exc}); "
                "set DOGVAE_CACHE to a writable folder"
            ) from exc
    image_set = _image_set(catalog, files, meta)
    if strict and image_set.skipped:
        raise _as_error(image_set.skipped[0])
    _report_skips(image_set, files, n_candidates=len(catalog.records) + len(catalog.skipped))
    return image_set


def cache_key(catalog: Catalog, size: int, crop: str) -> str:
    """A hash of everything the decoded pixels and labels depend on."""
    files = sorted(
        (_relative(r.path, catalog.root), *_size_and_mtime(r.path), r.id, r.breed)
        for r in catalog.records
    )
    payload = {
        "format": CACHE_FORMAT,
        "layout": catalog.layout,
        "files": files,
        "size": size,
        "crop": crop,
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()[:32]


@contextmanager
def parallel_map(
    fn: Callable[[Job], Result],
    jobs: Sequence[Job],
    *,
    weights: Sequence[int],
    workers: int | None,
    progress: bool,
    desc: str,
) -> Iterator[Iterator[Result]]:
    """`fn` over `jobs` in order, in a process pool when there is more than one job, with a
    progress bar advanced by each job's weight. Leaving the block early stops the workers.

    Workers are forked on Linux (cheap, and they run only Pillow and numpy, never torch) and
    spawned elsewhere; `fn` must be a module-level function and results must pickle.
    """
    n_workers = min(max(1, workers or os.cpu_count() or 1), len(jobs))
    with ExitStack() as stack:
        if n_workers > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            pool = stack.enter_context(multiprocessing.get_context(method).Pool(n_workers))
            results = pool.imap(fn, jobs)
        else:
            results = map(fn, jobs)
        bar = stack.enter_context(
            progress_bar(total=sum(weights), desc=desc, unit="img", show=progress)
        )
        yield _advancing(results, weights, bar)


def _advancing(results: Iterator[Result], weights: Sequence[int], bar: tqdm) -> Iterator[Result]:
    for weight, result in zip(weights, results, strict=True):
        bar.update(weight)
        yield result


@dataclass(frozen=True)
class _CacheFiles:
    folder: Path
    key: str

    @property
    def array(self) -> Path:
        return self.folder / f"{self.key}.npy"

    @property
    def meta(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def skip_report(self) -> Path:
        return self.folder / f"{self.key}.skipped.json"

    def temporary(self, suffix: str) -> Path:
        return temporary_path(self.folder / f"{self.key}{suffix}", _writer_tag())


def _writer_tag() -> str:
    """Tells temporaries apart when two threads build the same cache."""
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class _DecodeJob:
    """Decode `items` ((row, path) pairs) into those rows of the .npy file at `array_path`."""

    array_path: str
    size: int
    crop: str
    items: list[tuple[int, str]]


def _decode_job(job: _DecodeJob) -> list[tuple[int, str, str]]:
    """Runs in a worker: write each decoded image into its row, return (row, reason, detail)
    for the files that could not be used."""
    rows = np.load(job.array_path, mmap_mode="r+")
    failures = []
    for row, path in job.items:
        try:
            rows[row] = decode_file(path, job.size, job.crop)
        except BadImage as exc:
            failures.append((row, exc.reason, exc.detail))
    rows.flush()
    return failures


def _build_cache(
    catalog: Catalog,
    files: _CacheFiles,
    size: int,
    crop: str,
    strict: bool,
    progress: bool,
    workers: int | None,
) -> dict[str, Any]:
    """Decode every record into the cache's pixels, then write the metadata that vouches for
    them: a crash in between leaves pixels that no metadata's checksum accepts unless it fits."""
    records = catalog.records
    log.debug("writing the image cache %s", files.array)
    with atomic_path(files.array, tag=_writer_tag()) as pixels:
        np.lib.format.open_memmap(
            pixels, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3)
        ).flush()
        failures = _decode_all(pixels, records, size, crop, strict, progress, workers)
        failed_rows = {row for row, _, _ in failures}
        kept = [row for row in range(len(records)) if row not in failed_rows]
        if not kept:
            raise DataError(_all_bad_message(catalog, failures))
        if failures:
            _keep_rows(pixels, kept, files)
        meta = _meta(catalog, files.key, size, crop, kept, failures, _checksum(pixels))
        crash_point("cache_pixels")
    with atomic_path(files.meta, tag=_writer_tag()) as tmp:
        tmp.write_text(json.dumps(meta))
    return meta


def _decode_all(
    array_path: Path,
    records: list[ImageRecord],
    size: int,
    crop: str,
    strict: bool,
    progress: bool,
    workers: int | None,
) -> list[tuple[int, str, str]]:
    items = [(row, str(r.path)) for row, r in enumerate(records)]
    jobs = [
        _DecodeJob(str(array_path), size, crop, items[i : i + CHUNK_IMAGES])
        for i in range(0, len(items), CHUNK_IMAGES)
    ]
    weights = [len(job.items) for job in jobs]
    desc = f"decoding {len(records)} images at {size}px"
    failures = []
    with parallel_map(
        _decode_job, jobs, weights=weights, workers=workers, progress=progress, desc=desc
    ) as results:
        for job_failures in results:
            if strict and job_failures:
                row, reason, detail = job_failures[0]
                raise BadImage(records[row].path, reason, detail)
            failures += job_failures
    return failures


def _keep_rows(pixels: Path, rows: list[int], files: _CacheFiles) -> None:
    """Rewrite the .npy at `pixels` holding only `rows`."""
    kept = files.temporary(".npy")
    try:
        _copy_rows(pixels, kept, rows)
        os.replace(kept, pixels)
    finally:
        with suppress(OSError):
            kept.unlink(missing_ok=True)


def _copy_rows(source: Path, target: Path, rows: list[int]) -> None:
    """Write `source[rows]` as a new .npy, a block at a time so memory stays small."""
    src = np.load(source, mmap_mode="r")
    dst = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.uint8, shape=(len(rows), *src.shape[1:])
    )
    for start in range(0, len(rows), 1024):
        block = rows[start : start + 1024]
        dst[start : start + len(block)] = src[block]
    dst.flush()


def _checksum(array_path: Path) -> str:
    flat = np.load(array_path, mmap_mode="r").reshape(-1)
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, flat.size, _CHECKSUM_BLOCK):
        digest.update(flat[start : start + _CHECKSUM_BLOCK])
    return "blake2b:" + digest.hexdigest()


def _meta(
    catalog: Catalog,
    key: str,
    size: int,
    crop: str,
    kept: list[int],
    failures: list[tuple[int, str, str]],
    checksum: str,
) -> dict[str, Any]:
    breed_index = catalog.breed_to_index
    records = [catalog.records[row] for row in kept]
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "shape": [len(kept), size, size, 3],
        "crop": crop,
        "checksum": checksum,
        "ids": [r.id for r in records],
        "labels": [breed_index[r.breed] if r.breed is not None else -1 for r in records],
        "breeds": catalog.breeds,
        "decode_skipped": [
            [_relative(catalog.records[row].path, catalog.root), reason, detail]
            for row, reason, detail in failures
        ],
    }


def _read_valid_meta(files: _CacheFiles) -> dict[str, Any] | None:
    """The cache's metadata when every check passes; None (with a note) when it is unusable."""
    if not files.array.exists() and not files.meta.exists():
        return None
    try:
        meta = json.loads(files.meta.read_text())
        _check_cache(files, meta)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("dogvae: rebuilding the image cache %s: %s", files.array, exc)
        return None
    log.debug("reading the image cache %s", files.array)
    return meta


def _check_cache(files: _CacheFiles, meta: dict[str, Any]) -> None:
    """Raise ValueError (or OSError) unless the .npy is exactly what `meta` describes."""
    if meta["format"] != CACHE_FORMAT or meta["key"] != files.key:
        raise ValueError("metadata from another cache format or key")
    n, expected_shape = len(meta["ids"]), tuple(meta["shape"])
    if len(meta["labels"]) != n or expected_shape[0] != n:
        raise ValueError("metadata lists disagree in length")
    array = np.lib.format.open_memmap(files.array, mode="r")  # never unpickles
    if array.dtype != np.uint8 or array.shape != expected_shape:
        raise ValueError(f"array is {array.dtype} {array.shape}, expected uint8 {expected_shape}")
    if files.array.stat().st_size != array.offset + array.nbytes:
        raise ValueError("array file has the wrong byte size")
    if _checksum(files.array) != meta["checksum"]:
        raise ValueError("checksum mismatch")


def _image_set(catalog: Catalog, files: _CacheFiles, meta: dict[str, Any]) -> ImageSet:
    decode_skipped = [
        Skip(str(catalog.root / path), reason, detail)
        for path, reason, detail in meta["decode_skipped"]
    ]
    return ImageSet(
        images=np.load(files.array, mmap_mode="r"),
        labels=np.asarray(meta["labels"], dtype=np.int64),
        ids=list(meta["ids"]),
        breeds=list(meta["breeds"]),
        skipped=catalog.skipped + decode_skipped,
        root=str(catalog.root),
        layout=catalog.layout,
        image_size=int(meta["shape"][1]),
        crop=meta["crop"],
        notes=list(catalog.notes),
        cache_path=files.array,
    )


def _report_skips(image_set: ImageSet, files: _CacheFiles, n_candidates: int) -> None:
    """One warning and a JSON list beside the cache while anything is skipped."""
    if not image_set.skipped:
        with suppress(OSError):  # a read-only cache folder: a stale list stays, unread
            files.skip_report.unlink(missing_ok=True)
        return
    report = {
        "root": image_set.root,
        "skipped": [
            {"path": s.path, "reason": s.reason, "detail": s.detail} for s in image_set.skipped
        ],
    }
    where = f"list in {files.skip_report}"
    try:
        with atomic_path(files.skip_report, tag=_writer_tag()) as tmp:
            tmp.write_text(json_text(report))
    except OSError as exc:  # a read-only cache folder still serves the set
        where = f"no list: {files.folder} is not writable ({exc.strerror or exc})"
    counts = ", ".join(f"{n} {reason}" for reason, n in count_by_reason(image_set.skipped).items())
    log.warning(
        "skipped %d of %d files: %s (see `dogvae inspect`; %s)",
        len(image_set.skipped), n_candidates, counts, where,
    )  # fmt: skip


def _as_error(skip: Skip) -> BadImage:
    return BadImage(skip.path, skip.reason, skip.detail)


def _all_bad_message(catalog: Catalog, failures: list[tuple[int, str, str]]) -> str:
    counts = count_by_reason(Skip("", reason) for _, reason, _ in failures)
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.items())
    return f"no usable images in {catalog.root}: all {len(failures)} failed to decode ({summary})"


def _writable_cache_dir(cache_dir: str | Path | None) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the image cache folder {folder} ({exc.strerror}); "
            "set DOGVAE_CACHE to a writable folder"
        ) from exc
    remove_stale_temporaries(folder)  # a build killed mid-way leaves a whole-set .npy
    return folder


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _size_and_mtime(path: Path) -> tuple[int, int]:
    """A file that vanished since the scan still gets a key; decoding then skips it."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns
