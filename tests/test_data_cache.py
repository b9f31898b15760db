"""load_images: decode once into a memmap, reuse it, rebuild it when it cannot be trusted."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from test_data_corpus import (
    BREED_COLOURS,
    BROKEN_COUNTS,
    GOOD_PER_BREED,
    make_broken_kaggle,
    make_kaggle,
    solid_image,
)

import dogvae.atomic as atomic
import dogvae.data.cache as cache
from dogvae.atomic import CRASH_ENV
from dogvae.data.cache import ImageSet, load_images
from dogvae.errors import BadImage, DataError


@pytest.fixture
def dogs(tmp_path) -> Path:
    return make_kaggle(tmp_path / "dogs", {"beagle": 3, "pug": 2})


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    """Records every file the cache decodes (in-process: the tests use one worker)."""
    calls: list[str] = []
    real = cache.decode_file

    def counting(path, size, crop="center"):
        calls.append(Path(path).name)
        return real(path, size, crop)

    monkeypatch.setattr(cache, "decode_file", counting)
    return calls


def load(root: Path, size: int = 8, **kwargs) -> ImageSet:
    return load_images(root, size, progress=False, workers=1, **kwargs)


def cache_files(suffix: str) -> list[Path]:
    return sorted(Path(os.environ["DOGVAE_CACHE"]).glob(f"*{suffix}"))


def warnings_logged(caplog) -> list[str]:
    """What the cache told the "dogvae" logger at WARNING, message by message."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("dogvae") and r.levelno == logging.WARNING
    ]


def test_images_are_a_read_only_uint8_memmap_with_labels(dogs):
    images = load(dogs, size=8)
    assert isinstance(images.images, np.memmap)
    assert images.images.shape == (5, 8, 8, 3) and images.images.dtype == np.uint8
    assert not images.images.flags.writeable
    assert images.ids == ["beagle000", "beagle001", "beagle002", "pug000", "pug001"]
    assert images.breeds == ["beagle", "pug"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1]
    assert images.labels.dtype == np.int64
    assert np.abs(images.images[0].astype(int) - BREED_COLOURS["beagle"]).max() <= 2
    assert np.abs(images.images[4].astype(int) - BREED_COLOURS["pug"]).max() <= 2
    assert len(images) == 5


def test_summary_is_json_ready_and_counts_right(dogs):
    solid_image(dogs / "test" / "x.jpg")
    summary = load(dogs, size=8).summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_images"] == 6
    assert (summary["n_labelled"], summary["n_unlabelled"], summary["n_breeds"]) == (5, 1, 2)
    assert (summary["image_size"], summary["crop"], summary["layout"]) == (8, "center", "kaggle")
    assert summary["skipped_by_reason"] == {}


def test_unlabelled_images_get_label_minus_one_and_can_be_left_out(dogs):
    solid_image(dogs / "test" / "x.jpg")
    assert load(dogs).labels.tolist()[-1] == -1
    assert (load(dogs, include_unlabelled=False).labels >= 0).all()


def test_cache_lives_in_dogvae_cache_never_beside_the_data(dogs):
    before = sorted(p.relative_to(dogs) for p in dogs.rglob("*"))
    images = load(dogs)
    assert sorted(p.relative_to(dogs) for p in dogs.rglob("*")) == before
    assert images.cache_path.parent == Path(os.environ["DOGVAE_CACHE"])
    assert len(cache_files(".npy")) == 1 and len(cache_files(".json")) == 1


def test_explicit_cache_dir_wins_over_the_environment(dogs, tmp_path):
    images = load(dogs, cache_dir=tmp_path / "mine")
    assert images.cache_path.parent == tmp_path / "mine"


def test_second_load_reads_the_cache_without_decoding(dogs, decode_calls):
    first = load(dogs)
    assert len(decode_calls) == 5
    second = load(dogs)
    assert len(decode_calls) == 5
    assert np.array_equal(first.images, second.images)
    assert second.ids == first.ids and second.labels.tolist() == first.labels.tolist()


def test_adding_a_file_gives_a_new_cache(dogs, decode_calls):
    load(dogs)
    solid_image(dogs / "test" / "new.jpg")
    assert len(load(dogs)) == 6
    assert len(decode_calls) == 5 + 6


def test_removing_a_file_gives_a_new_cache(dogs, decode_calls):
    load(dogs)
    (dogs / "labels.csv").write_text("id,breed\nbeagle000,beagle\npug000,pug\n")
    for stale in ["beagle001", "beagle002", "pug001"]:
        (dogs / "train" / f"{stale}.jpg").unlink()
    assert load(dogs).ids == ["beagle000", "pug000"]
    assert len(decode_calls) == 5 + 2


def test_changed_file_size_gives_a_new_cache(dogs, decode_calls):
    load(dogs)
    solid_image(dogs / "train" / "pug001.jpg", (0, 0, 255), size=(40, 30))
    images = load(dogs)
    assert len(decode_calls) == 10
    assert np.abs(images.images[4].astype(int) - (0, 0, 255)).max() <= 2


def test_changed_label_gives_a_new_cache(dogs):
    load(dogs)
    text = (dogs / "labels.csv").read_text().replace("pug001,pug", "pug001,beagle")
    (dogs / "labels.csv").write_text(text)
    assert load(dogs).labels.tolist() == [0, 0, 0, 1, 0]


def test_image_size_and_crop_each_get_their_own_cache(dogs, decode_calls):
    load(dogs, size=8)
    assert load(dogs, size=12).images.shape[1:] == (12, 12, 3)
    assert load(dogs, size=8, crop="squash").crop == "squash"
    assert len(decode_calls) == 15
    assert len(cache_files(".npy")) == 3


def corrupt_and_reload(root: Path, damage) -> tuple[np.ndarray, ImageSet]:
    """The pixels as first cached, and the set loaded again after `damage` to the cache."""
    first = load(root)
    pixels = np.array(first.images)
    path = first.cache_path
    del first  # let go of the memmap before damaging its file
    damage(path)
    return pixels, load(root)


def truncate_array(npy: Path) -> None:
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 10)


def append_bytes(npy: Path) -> None:
    with open(npy, "ab") as f:
        f.write(b"\0" * 64)


def garble_header(npy: Path) -> None:
    with open(npy, "r+b") as f:
        f.write(b"garbage!")


def flip_a_pixel(npy: Path) -> None:
    with open(npy, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))


def garble_meta(npy: Path) -> None:
    npy.with_suffix(".json").write_text("{not json")


def delete_meta(npy: Path) -> None:
    npy.with_suffix(".json").unlink()


def wrong_shape_in_meta(npy: Path) -> None:
    meta_path = npy.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["shape"][1] = 9
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [
        truncate_array,
        append_bytes,
        garble_header,
        flip_a_pixel,
        garble_meta,
        delete_meta,
        wrong_shape_in_meta,
    ],
)
def test_damaged_cache_is_rebuilt_with_a_note(dogs, decode_calls, caplog, damage):
    pixels, second = corrupt_and_reload(dogs, damage)
    assert len(decode_calls) == 10  # decoded twice: the damaged cache was not trusted
    assert "rebuilding the image cache" in warnings_logged(caplog)[0]
    assert np.array_equal(pixels, np.asarray(second.images))
    assert len(load(dogs)) == 5 and len(decode_calls) == 10  # and the rebuilt one is reused


KILLED_BUILD = """
import sys
from dogvae.data.cache import load_images
load_images(sys.argv[1], 8, progress=False, workers=1)
"""


def test_a_build_killed_before_its_rename_leaves_nothing_once_the_next_load_runs(dogs):
    env = {**os.environ, CRASH_ENV: "cache_pixels"}  # SIGKILL with the pixels written
    killed = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(dogs)], env=env)
    pid = killed.pid
    assert killed.wait(120) == -signal.SIGKILL
    folder = Path(os.environ["DOGVAE_CACHE"])
    left = [p.name for p in folder.iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp-" + socket.gethostname() + f"-{pid}"), left
    images = load(dogs)  # builds again, and sweeps the dead build's temporary
    assert images.images.shape == (5, 8, 8, 3)
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_every_cache_file_is_flushed_to_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    flushed = []
    real = atomic.fsync_file

    def recording(path):
        flushed.append(Path(path).name)
        real(path)

    monkeypatch.setattr(atomic, "fsync_file", recording)
    load(make_broken_kaggle(tmp_path / "dogs"))
    named = sorted(p.name for p in Path(os.environ["DOGVAE_CACHE"]).iterdir())
    assert sorted(name.split(".", 1)[1] for name in named) == ["json", "npy", "skipped.json"]
    for file in named:  # `.NAME.TAG.tmp-HOST-PID`: written under a temporary name, then renamed
        assert any(f.startswith(f".{file}.") and ".tmp-" in f for f in flushed), (file, flushed)


def test_linked_photos_and_breed_folders_load_and_a_link_to_nowhere_is_a_skip(dogs, tmp_path):
    linked = tmp_path / "linked"
    (linked / "beagle").mkdir(parents=True)
    for photo in sorted((dogs / "train").glob("beagle*.jpg")):
        (linked / "beagle" / photo.name).symlink_to(photo)
    (linked / "beagle" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    pugs = tmp_path / "pugs-elsewhere"
    pugs.mkdir()
    for photo in sorted((dogs / "train").glob("pug*.jpg")):
        (pugs / photo.name).write_bytes(photo.read_bytes())
    (linked / "pug").symlink_to(pugs, target_is_directory=True)
    images = load(linked)
    assert images.layout == "folders" and images.breeds == ["beagle", "pug"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1]
    assert np.array_equal(images.images, load(dogs).images)  # the same photos, the same pixels
    [skip] = images.skipped
    assert skip.path.endswith("gone.jpg") and skip.reason == "unreadable"


def test_bad_files_are_skipped_counted_on_one_warning_and_listed(tmp_path, caplog):
    root = make_broken_kaggle(tmp_path / "dogs")
    images = load(root)
    n_good = 2 * GOOD_PER_BREED
    assert len(images) == n_good and images.images.shape[0] == n_good
    assert images.summary()["skipped_by_reason"] == BROKEN_COUNTS
    err_lines = [line for line in warnings_logged(caplog) if "skipped" in line]
    n_skipped = sum(BROKEN_COUNTS.values())
    assert len(err_lines) == 1
    assert err_lines[0].startswith(f"skipped {n_skipped} of {n_good + 4 + 4} files: 1 empty_file, ")
    assert "(see `dogvae inspect`" in err_lines[0]
    (report,) = cache_files(".skipped.json")
    listed = json.loads(report.read_text())["skipped"]
    assert {entry["reason"] for entry in listed} == set(BROKEN_COUNTS)
    truncated = next(e for e in listed if e["reason"] == "truncated")
    assert truncated["path"] == str(root / "train" / "truncated.jpg")


def test_bad_files_stay_skipped_when_the_cache_is_reused(tmp_path, decode_calls):
    root = make_broken_kaggle(tmp_path / "dogs")
    first = load(root)
    second = load(root)
    assert len(decode_calls) == 2 * GOOD_PER_BREED + 4
    assert second.summary() == first.summary()
    assert second.skipped == first.skipped


def test_strict_names_the_first_bad_file_and_its_reason(tmp_path):
    root = make_kaggle(tmp_path / "dogs", {"pug": 2})
    (root / "train" / "pug001.jpg").write_text("text")
    with pytest.raises(BadImage, match=r"pug001\.jpg: not_an_image") as caught:
        load(root, strict=True)
    assert caught.value.reason == "not_an_image"
    assert not cache_files(".npy")


def test_strict_refuses_a_cached_set_that_has_skips(tmp_path):
    root = make_kaggle(tmp_path / "dogs", {"pug": 2})
    (root / "train" / "pug001.jpg").write_bytes(b"")
    assert len(load(root)) == 1
    with pytest.raises(BadImage, match="empty_file"):
        load(root, strict=True)


def test_strict_raises_on_scan_time_skips_too(dogs):
    with open(dogs / "labels.csv", "a") as f:
        f.write("gone,pug\n")
    assert len(load(dogs)) == 5
    with pytest.raises(BadImage, match="missing_file"):
        load(dogs, strict=True)


def test_every_file_bad_is_a_data_error(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    (root / "b.png").write_text("no")
    with pytest.raises(DataError, match=r"all 2 failed to decode \(1 empty_file, 1 not_an_image\)"):
        load(root)
    assert not cache_files(".npy") and not list(Path(os.environ["DOGVAE_CACHE"]).glob(".*tmp*"))


def test_unknown_crop_or_size_is_refused_before_scanning(tmp_path):
    with pytest.raises(ValueError, match="crop"):
        load_images(tmp_path / "nowhere", 8, crop="zoom")
    with pytest.raises(ValueError, match="size"):
        load_images(tmp_path / "nowhere", 0)


def test_parallel_workers_give_the_same_cache_as_one_process(tmp_path):
    many = cache.CHUNK_IMAGES + 20
    root = make_kaggle(tmp_path / "dogs", {"beagle": many // 2, "pug": many - many // 2}, (6, 5))
    (root / "train" / "pug003.jpg").write_bytes(b"")
    serial = load_images(root, 4, cache_dir=tmp_path / "one", workers=1, progress=False)
    parallel = load_images(root, 4, cache_dir=tmp_path / "two", workers=2, progress=False)
    assert len(parallel) == many - 1
    assert parallel.ids == serial.ids
    assert np.array_equal(np.asarray(parallel.images), np.asarray(serial.images))
    assert [s.reason for s in parallel.skipped] == ["empty_file"]


def test_real_sample_photos_load_with_thirty_per_breed():
    images = load_images(shared_path("dogs-sample"), 16, progress=False)
    assert images.images.shape == (300, 16, 16, 3)
    assert len(images.breeds) == 10
    assert np.bincount(images.labels).tolist() == [30] * 10
    assert images.skipped == []


@pytest.fixture
def read_only_cache(monkeypatch):
    """Make every write, rename and delete inside $DOGVAE_CACHE fail as a read-only folder does
    (the tests run as root, whom a chmod does not stop)."""
    folder = Path(os.environ["DOGVAE_CACHE"]).resolve()

    def refuse_inside(real):
        def guarded(path, *args, **kwargs):
            if kwargs.get("mode") != "r" and Path(path).resolve().is_relative_to(folder):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return guarded

    def read_only():
        monkeypatch.setattr(Path, "unlink", refuse_inside(Path.unlink))
        monkeypatch.setattr(Path, "write_text", refuse_inside(Path.write_text))
        monkeypatch.setattr(cache.os, "replace", refuse_inside(os.replace))
        monkeypatch.setattr(np.lib.format, "open_memmap", refuse_inside(np.lib.format.open_memmap))

    return read_only


@pytest.mark.parametrize("broken", [False, True])
def test_a_valid_cache_in_a_read_only_folder_loads(tmp_path, caplog, read_only_cache, broken):
    root = (
        make_broken_kaggle(tmp_path / "dogs")
        if broken
        else make_kaggle(tmp_path / "dogs", {"pug": 2})
    )
    first = load(root)
    read_only_cache()
    again = load(root)
    assert np.array_equal(again.images, first.images) and again.skipped == first.skipped
    if broken:
        assert "no list: " in warnings_logged(caplog)[-1]


def test_a_read_only_cache_folder_that_must_be_built_is_one_line(dogs, read_only_cache):
    read_only_cache()
    with pytest.raises(DataError, match="cannot write the image cache in .*set DOGVAE_CACHE"):
        load(dogs)
