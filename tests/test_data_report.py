"""dogvae inspect: the report's keys, its counts on a broken corpus, and its text form."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path
from test_data_corpus import (
    BROKEN_COUNTS,
    GOOD_PER_BREED,
    make_broken_kaggle,
    make_kaggle,
    solid_image,
)

from dogvae.cli import main
from dogvae.data.report import format_report, inspect_dataset
from dogvae.errors import BadImage

DOCUMENTED_KEYS = {
    "schema_version",
    "root",
    "layout",
    "n_images",
    "n_labelled",
    "n_unlabelled",
    "n_breeds",
    "images_per_breed",
    "n_skipped",
    "skipped",
    "sizes",
    "modes",
    "formats",
    "notes",
}


@pytest.fixture
def broken(tmp_path):
    root = make_broken_kaggle(tmp_path / "dogs")
    solid_image(root / "test" / "unknown.png", size=(30, 40), fmt="PNG")
    with open(root / "labels.csv") as f:
        text = f.read()
    (root / "labels.csv").write_text(text.replace("id,breed", "id,breed,source", 1))
    return root


def test_report_has_exactly_the_documented_keys_and_is_json(broken):
    report = inspect_dataset(broken, progress=False)
    assert set(report) == DOCUMENTED_KEYS
    assert report["schema_version"] == 1
    assert json.loads(json.dumps(report)) == report


def test_report_counts_usable_and_skipped_files_on_a_broken_corpus(broken):
    report = inspect_dataset(broken, progress=False)
    assert (report["layout"], report["root"]) == ("kaggle", str(broken))
    assert report["n_images"] == 2 * GOOD_PER_BREED + 1
    assert (report["n_labelled"], report["n_unlabelled"]) == (2 * GOOD_PER_BREED, 1)
    assert report["n_breeds"] == 2
    assert report["images_per_breed"] == {"beagle": GOOD_PER_BREED, "pug": GOOD_PER_BREED}
    assert report["n_skipped"] == sum(BROKEN_COUNTS.values())
    assert {reason: entry["count"] for reason, entry in report["skipped"].items()} == BROKEN_COUNTS
    assert report["skipped"]["truncated"]["examples"] == ["train/truncated.jpg"]
    assert report["skipped"]["too_many_pixels"]["examples"] == ["train/bomb.png"]
    assert report["skipped"]["no_label"]["examples"] == ["train/stray.jpg"]
    assert report["skipped"]["duplicate_id"]["examples"] == ["labels.csv:13"]
    assert report["formats"] == {"JPEG": 2 * GOOD_PER_BREED, "PNG": 1}
    assert report["modes"] == {"RGB": 2 * GOOD_PER_BREED + 1}
    assert report["sizes"]["width"] == {"min": 24, "median": 24, "max": 30}
    assert report["sizes"]["height"] == {"min": 20, "median": 20, "max": 40}
    assert report["notes"] == ["labels.csv: ignored extra columns source"]


def test_examples_stop_at_five(tmp_path):
    root = make_kaggle(tmp_path / "dogs", {"pug": 1})
    for i in range(7):
        (root / "train" / f"empty{i}.jpg").write_bytes(b"")
    entry = inspect_dataset(root, progress=False)["skipped"]["no_label"]
    assert entry["count"] == 7 and len(entry["examples"]) == 5


def test_strict_raises_on_the_first_bad_file(tmp_path):
    root = make_kaggle(tmp_path / "dogs", {"pug": 3})
    (root / "train" / "pug001.jpg").write_bytes(b"")
    (root / "train" / "pug002.jpg").write_text("text")
    with pytest.raises(BadImage, match=r"pug001\.jpg: empty_file"):
        inspect_dataset(root, strict=True, progress=False)


def test_report_of_only_broken_files_has_null_sizes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    report = inspect_dataset(tmp_path, progress=False)
    assert report["n_images"] == 0 and report["layout"] == "plain"
    assert report["sizes"]["width"] == {"min": None, "median": None, "max": None}
    assert "width    -" in format_report(report)


def test_text_report_aligns_columns_and_lists_skips(broken):
    text = format_report(inspect_dataset(broken, progress=False))
    lines = text.splitlines()
    assert lines[0] == f"root     {broken}"
    assert "images   7 usable (6 labelled, 1 unlabelled)" in lines
    assert "  truncated             1  e.g. train/truncated.jpg" in lines
    assert "  - labels.csv: ignored extra columns source" in lines


def test_text_report_shows_the_top_twenty_breeds_by_count(tmp_path):
    counts = {f"breed{i:02d}": 1 for i in range(25)} | {"zz_most": 3}
    root = make_kaggle(tmp_path / "dogs", counts, size=(4, 4))
    lines = format_report(inspect_dataset(root, progress=False)).splitlines()
    start = lines.index("images per breed (top 20 of 26)")
    assert lines[start + 1].split() == ["zz_most", "3"]
    assert lines[start + 2].split() == ["breed00", "1"]
    assert lines[start + 21] == "  ... and 6 more"


def test_cli_inspect_prints_json_and_strict_fails_with_one_line(broken, capsys):
    assert main(["inspect", str(broken), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_skipped"] == sum(BROKEN_COUNTS.values())
    assert main(["inspect", str(broken), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dogvae: error: ") and "gone: missing_file" in err[-1]


def test_real_sample_photos_report_ten_breeds_of_thirty():
    report = inspect_dataset(shared_path("dogs-sample"), progress=False)
    assert (report["n_images"], report["n_breeds"], report["n_skipped"]) == (300, 10, 0)
    assert set(report["images_per_breed"].values()) == {30}
    assert report["formats"] == {"JPEG": 300}
