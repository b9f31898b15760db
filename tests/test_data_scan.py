"""scan(): layouts, labels, and the label-file problems that become skips."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_corpus import make_kaggle

from dogvae.data.scan import Skip, breed_from_folder, count_by_reason, scan
from dogvae.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # scan never reads pixels
    return path


def write_labels(root: Path, text: str, encoding: str = "utf-8") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text(text, encoding=encoding)


def reasons(skipped: list[Skip]) -> dict[str, int]:
    return count_by_reason(skipped)


def test_kaggle_layout_reads_labels_sorted_by_id(tmp_path):
    make_kaggle(tmp_path, {"pug": 2, "beagle": 2})
    catalog = scan(tmp_path)
    assert catalog.layout == "kaggle"
    assert [r.id for r in catalog.records] == ["beagle000", "beagle001", "pug000", "pug001"]
    assert [r.breed for r in catalog.records] == ["beagle", "beagle", "pug", "pug"]
    assert catalog.breeds == ["beagle", "pug"]
    assert catalog.breed_to_index == {"beagle": 0, "pug": 1}
    assert catalog.skipped == [] and catalog.notes == []


def test_kaggle_test_folder_is_unlabelled_and_can_be_left_out(tmp_path):
    make_kaggle(tmp_path, {"pug": 1})
    touch(tmp_path / "test" / "b.jpg")
    touch(tmp_path / "test" / "a.png")
    catalog = scan(tmp_path)
    assert [(r.id, r.breed) for r in catalog.records] == [
        ("pug000", "pug"),
        ("a", None),
        ("b", None),
    ]
    assert [r.id for r in catalog.unlabelled] == ["a", "b"]
    assert [r.id for r in catalog.labelled] == ["pug000"]
    assert [r.id for r in scan(tmp_path, include_unlabelled=False).records] == ["pug000"]


def test_kaggle_id_matches_any_image_extension_in_any_case(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\nb,pug\nc,pug\nd,pug\n")
    for name in ["a.JPG", "b.png", "c.Webp", "d.TIFF"]:
        touch(tmp_path / "train" / name)
    catalog = scan(tmp_path)
    assert [r.path.name for r in catalog.records] == ["a.JPG", "b.png", "c.Webp", "d.TIFF"]


def test_label_row_whose_file_is_missing_is_skipped(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\ngone,pug\n")
    touch(tmp_path / "train" / "a.jpg")
    catalog = scan(tmp_path)
    assert [r.id for r in catalog.records] == ["a"]
    assert [(Path(s.path).name, s.reason) for s in catalog.skipped] == [("gone", "missing_file")]


def test_file_without_label_row_is_skipped_as_no_label(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\n")
    touch(tmp_path / "train" / "a.jpg")
    stray = touch(tmp_path / "train" / "stray.jpg")
    catalog = scan(tmp_path)
    assert catalog.skipped == [Skip(str(stray), "no_label", "stray has no row in labels.csv")]


def test_duplicate_id_keeps_the_first_row(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\na,beagle\n")
    touch(tmp_path / "train" / "a.jpg")
    catalog = scan(tmp_path)
    assert [(r.id, r.breed) for r in catalog.records] == [("a", "pug")]
    (skip,) = catalog.skipped
    assert skip.reason == "duplicate_id"
    assert skip.path.endswith("labels.csv:3") and "line 2" in skip.detail


def test_two_files_with_one_id_are_a_duplicate(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\n")
    touch(tmp_path / "train" / "a.jpg")
    touch(tmp_path / "train" / "a.png")
    catalog = scan(tmp_path)
    assert [r.path.name for r in catalog.records] == ["a.jpg"]
    assert [(Path(s.path).name, s.reason) for s in catalog.skipped] == [("a.png", "duplicate_id")]


def test_rows_with_empty_id_or_breed_are_bad_label_rows(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\n,pug\nb,\nc\n\n")
    for name in ["a", "b", "c"]:
        touch(tmp_path / "train" / f"{name}.jpg")
    catalog = scan(tmp_path)
    assert [r.id for r in catalog.records] == ["a"]
    assert reasons(catalog.skipped) == {"no_label": 2, "bad_label_row": 3}


def test_extra_columns_become_a_note_not_a_skip(tmp_path):
    write_labels(tmp_path, "id,breed,source,weight\na,pug,web,7\n")
    touch(tmp_path / "train" / "a.jpg")
    catalog = scan(tmp_path)
    assert [r.breed for r in catalog.records] == ["pug"]
    assert catalog.skipped == []
    assert len(catalog.notes) == 1 and "source, weight" in catalog.notes[0]


def test_labels_without_breed_column_name_the_file_and_its_columns(tmp_path):
    write_labels(tmp_path, "id,dog_type\na,pug\n")
    touch(tmp_path / "train" / "a.jpg")
    with pytest.raises(DataError, match=r"labels\.csv.*breed.*found columns: 'id', 'dog_type'"):
        scan(tmp_path)


def test_empty_labels_file_is_a_data_error(tmp_path):
    write_labels(tmp_path, "")
    with pytest.raises(DataError, match="found columns: none"):
        scan(tmp_path)


def test_bom_whitespace_and_capitals_in_header_are_accepted(tmp_path):
    write_labels(tmp_path, " ID , Breed \r\n a , pug \r\n", encoding="utf-8-sig")
    touch(tmp_path / "train" / "a.jpg")
    assert [(r.id, r.breed) for r in scan(tmp_path).records] == [("a", "pug")]


def test_label_ids_written_with_an_extension_still_match(tmp_path):
    write_labels(tmp_path, "id,breed\na.jpg,pug\n")
    touch(tmp_path / "train" / "a.jpg")
    assert [r.breed for r in scan(tmp_path).records] == ["pug"]


def test_breed_folders_drop_the_wordnet_prefix_and_lower_case():
    assert breed_from_folder("n02085620-Chihuahua") == "chihuahua"
    assert breed_from_folder("German_short-haired_pointer") == "german_short-haired_pointer"


def test_breed_folder_layout_labels_by_folder(tmp_path):
    touch(tmp_path / "n02085620-Chihuahua" / "n02085620_1.jpg")
    touch(tmp_path / "Pug" / "1.JPEG")
    touch(tmp_path / "Pug" / "readme.txt")
    touch(tmp_path / ".hidden" / "x.jpg")
    catalog = scan(tmp_path)
    assert catalog.layout == "folders"
    assert [(r.id, r.breed) for r in catalog.records] == [
        ("Pug/1", "pug"),
        ("n02085620-Chihuahua/n02085620_1", "chihuahua"),
    ]
    assert catalog.breeds == ["chihuahua", "pug"]


def test_stanford_images_parent_folder_is_accepted(tmp_path):
    touch(tmp_path / "Images" / "n02085620-Chihuahua" / "a.jpg")
    (tmp_path / "Annotation" / "n02085620-Chihuahua").mkdir(parents=True)
    catalog = scan(tmp_path)
    assert catalog.layout == "folders"
    assert catalog.root == tmp_path / "Images"
    assert catalog.breeds == ["chihuahua"]


def test_loose_images_beside_breed_folders_are_unlabelled_with_a_note(tmp_path):
    touch(tmp_path / "pug" / "1.jpg")
    touch(tmp_path / "loose.jpg")
    catalog = scan(tmp_path)
    assert [(r.id, r.breed) for r in catalog.records] == [("pug/1", "pug"), ("loose", None)]
    assert "unlabelled" in catalog.notes[0]


def test_plain_folder_is_unlabelled_and_ignores_other_files(tmp_path):
    touch(tmp_path / "b.webp")
    touch(tmp_path / "a.Png")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".DS_Store")
    catalog = scan(tmp_path)
    assert catalog.layout == "plain"
    assert [(r.id, r.breed) for r in catalog.records] == [("a", None), ("b", None)]
    assert catalog.breeds == []
    with pytest.raises(DataError, match="no labelled images"):
        scan(tmp_path, include_unlabelled=False)


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_folder_without_images_is_a_data_error(tmp_path):
    touch(tmp_path / "readme.txt")
    with pytest.raises(DataError, match="no images found"):
        scan(tmp_path)


def test_kaggle_folder_whose_files_are_all_missing_says_why(tmp_path):
    write_labels(tmp_path, "id,breed\na,pug\n")
    with pytest.raises(DataError, match=r"1 entries skipped \(missing_file\)"):
        scan(tmp_path)


def test_skip_counts_follow_the_reason_order():
    skips = [Skip("a", "no_label"), Skip("b", "truncated"), Skip("c", "no_label")]
    assert list(count_by_reason(skips).items()) == [("truncated", 1), ("no_label", 2)]


@pytest.mark.parametrize("layout", ["plain", "folders"])
def test_a_link_back_to_the_data_folder_is_a_skip_not_a_breed(tmp_path, layout):
    root = tmp_path / "data"
    touch(root / ("a.jpg" if layout == "plain" else "pug/a.jpg"))
    (root / "loop").symlink_to(".")
    (root / "up").symlink_to("..")
    catalog = scan(root)
    assert catalog.layout == layout
    assert [r.id for r in catalog.records] == ["a" if layout == "plain" else "pug/a"]
    assert catalog.breeds == ([] if layout == "plain" else ["pug"])
    assert reasons(catalog.skipped) == {"link_loop": 2}
