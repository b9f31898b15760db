"""stratified_split, CachedImages and make_loader: the path from the cache to training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dogvae.data.cache import ImageSet
from dogvae.data.loader import CachedImages, make_loader, set_epoch
from dogvae.data.split import stratified_split

# --- split ----------------------------------------------------------------------------------


def labels_of(counts: dict[int, int], unlabelled: int = 0, seed: int = 0) -> np.ndarray:
    labels = np.concatenate(
        [np.full(n, breed) for breed, n in counts.items()] + [np.full(unlabelled, -1)]
    )
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def test_split_sends_round_fraction_of_each_breed_to_validation():
    labels = labels_of({0: 50, 1: 20, 2: 3, 3: 1, 4: 25}, unlabelled=7)
    train, val = stratified_split(labels, val_fraction=0.1, seed=0)
    per_breed = np.bincount(labels[val], minlength=5).tolist()
    assert per_breed == [5, 2, 1, 0, 3]  # 0.3 -> at least 1; a lone image trains; 2.5 -> 3
    assert (labels[train] == -1).sum() == 7 and (labels[val] >= 0).all()


def test_split_is_disjoint_complete_sorted_int64():
    labels = labels_of({0: 30, 1: 17}, unlabelled=4)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.union1d(train, val), np.arange(labels.size))


def test_split_is_deterministic_and_the_seed_changes_it():
    labels = labels_of({0: 40, 1: 40})
    first = stratified_split(labels, 0.25, seed=1)
    again = stratified_split(labels, 0.25, seed=1)
    other = stratified_split(labels, 0.25, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])
    assert other[1].size == first[1].size == 20


def test_split_of_a_breed_does_not_depend_on_the_other_breeds_or_their_order():
    beagles_first = np.array([0] * 10 + [1] * 10)
    pugs_first = np.array([1] * 10 + [0] * 10)
    _, val_a = stratified_split(beagles_first, 0.3, seed=5)
    _, val_b = stratified_split(pugs_first, 0.3, seed=5)
    beagle_ranks_a = val_a[beagles_first[val_a] == 0]
    beagle_ranks_b = val_b[pugs_first[val_b] == 0] - 10
    assert np.array_equal(beagle_ranks_a, beagle_ranks_b)


def test_a_folder_without_labels_is_split_as_one_group():
    labels = np.full(40, -1, dtype=np.int64)
    train, val = stratified_split(labels, 0.1, seed=0)
    assert val.size == 4 and train.size == 36
    assert np.array_equal(np.union1d(train, val), np.arange(40))
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    assert stratified_split(np.full(1, -1), 0.1)[1].size == 0  # a lone image trains


def test_zero_fraction_keeps_everything_in_training():
    train, val = stratified_split(labels_of({0: 5, 1: 5}), 0.0)
    assert val.size == 0 and train.size == 10


def test_fraction_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(np.zeros(4, dtype=np.int64), 1.0)


# --- dataset --------------------------------------------------------------------------------


def image_set(n: int = 10, size: int = 4) -> ImageSet:
    """Each image's pixels encode its row (red) and column (green), so flips are visible."""
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    images[..., 0] = np.arange(n)[:, None, None]
    images[..., 1] = np.arange(size)[None, None, :] * 50
    labels = np.arange(n, dtype=np.int64) % 3
    labels[-1] = -1
    return ImageSet(
        images,
        labels,
        [f"d{i}" for i in range(n)],
        ["a", "b", "c"],
        [],
        "",
        "plain",
        size,
        "center",
    )


def test_batches_are_float_in_unit_range_channels_first():
    data = CachedImages(image_set(), indices=[2, 5, 7])
    x, y = data.__getitems__([2, 0, 1])
    assert x.shape == (3, 3, 4, 4) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [1, 2, 2]
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([7, 2, 5]) / 255.0)  # order kept
    assert torch.allclose(x[0, 1, 0], torch.tensor([0, 50, 100, 150]) / 255.0)


def test_single_item_equals_its_batch_row():
    data = CachedImages(image_set(), flip=True, seed=4)
    x, y = data.__getitems__([6, 3])
    x3, y3 = data[3]
    assert x3.shape == (3, 4, 4) and torch.equal(x3, x[1]) and y3 == y[1]


def test_unlabelled_images_come_with_label_minus_one():
    assert CachedImages(image_set())[9][1].item() == -1


def test_indices_outside_the_set_are_refused():
    with pytest.raises(IndexError):
        CachedImages(image_set(n=4), indices=[0, 4])


def flipped_positions(data: CachedImages, positions: list[int]) -> list[int]:
    x, _ = data.__getitems__(positions)
    return [p for p, image in zip(positions, x, strict=True) if image[1, 0, 0] > image[1, 0, -1]]


def test_flips_mirror_left_right_and_depend_only_on_seed_and_epoch():
    data = CachedImages(image_set(n=64), flip=True, seed=7)
    everyone = list(range(64))
    epoch0 = flipped_positions(data, everyone)
    assert 10 < len(epoch0) < 54
    assert flipped_positions(data, everyone[::-1]) == epoch0[::-1]  # batch order is irrelevant
    assert (
        sorted(flipped_positions(data, everyone[40:]) + flipped_positions(data, everyone[:40]))
        == epoch0
    )
    same = CachedImages(image_set(n=64), flip=True, seed=7)
    assert flipped_positions(same, everyone) == epoch0
    data.set_epoch(1)
    assert flipped_positions(data, everyone) != epoch0
    data.set_epoch(0)
    assert flipped_positions(data, everyone) == epoch0


def test_a_flipped_image_is_the_mirror_of_the_original():
    plain = CachedImages(image_set(n=64))
    flips = CachedImages(image_set(n=64), flip=True, seed=7)
    (p, *_) = flipped_positions(flips, list(range(64)))
    assert torch.equal(flips[p][0], plain[p][0].flip(-1))


def test_no_flips_unless_asked():
    assert flipped_positions(CachedImages(image_set(n=64)), list(range(64))) == []


# --- loader ---------------------------------------------------------------------------------


def test_loader_yields_batches_from_getitems():
    data = CachedImages(image_set(n=10))
    batches = list(make_loader(data, batch_size=4, shuffle=False))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    assert torch.equal(batches[1][0], data.__getitems__([4, 5, 6, 7])[0])
    assert list(make_loader(data, batch_size=4, shuffle=False, drop_last=True))[-1][0].shape[0] == 4


def rows_seen(loader) -> list[int]:
    """Image rows in loader order, read back from the red channel."""
    return [round(v * 255) for x, _ in loader for v in x[:, 0, 0, 0].tolist()]


def test_shuffle_is_seeded_and_changes_with_the_epoch():
    loader = make_loader(CachedImages(image_set(n=30)), 8, shuffle=True, seed=1)
    epoch0 = rows_seen(loader)
    assert sorted(epoch0) == list(range(30)) and epoch0 != list(range(30))
    assert rows_seen(make_loader(CachedImages(image_set(n=30)), 8, shuffle=True, seed=1)) == epoch0
    set_epoch(loader, 1)
    assert rows_seen(loader) != epoch0
    assert loader.dataset.epoch == 1


def test_distributed_ranks_partition_every_index():
    data = CachedImages(image_set(n=10))
    per_rank = [
        rows_seen(make_loader(data, 3, shuffle=True, rank=r, world_size=3)) for r in range(3)
    ]
    assert [len(rows) for rows in per_rank] == [4, 4, 4]  # 10 padded to 12 by repeats
    assert set().union(*per_rank) == set(range(10))
    trimmed = [
        rows_seen(make_loader(data, 3, shuffle=True, rank=r, world_size=3, drop_last=True))
        for r in range(3)
    ]
    assert [len(rows) for rows in trimmed] == [3, 3, 3]  # 10 cut to 9, no repeats
    assert len(set().union(*trimmed)) == 9
