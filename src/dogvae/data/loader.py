"""PyTorch access to a decoded `ImageSet`: batched reads, reproducible flips, one sampler path.

The `DataLoader` runs with `num_workers=0`, on purpose. Decoding already happened once, into
the memory-mapped cache, so a batch costs one fancy-indexed read and one uint8 -> float32
conversion, far below a training step. On a 2-core machine worker processes would only take
cores away from the model's own threads, and each would add start-up time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dogvae.data.cache import ImageSet


class CachedImages(Dataset):
    """`images` (or the `indices` subset of it) as float32 (3, S, S) tensors in [0, 1] with
    int64 breed labels (-1: unlabelled).

    With `flip=True`, position i is mirrored left-right in epoch e exactly when a flip vector
    drawn from (seed, e) says so: a resumed epoch reproduces the same flips whatever the batch
    order or batch size.
    """

    def __init__(
        self,
        images: ImageSet,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        flip: bool = False,
        seed: int = 0,
    ):
        self.images = images
        rows = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and not 0 <= rows.min() <= rows.max() < len(images)):
            raise IndexError(f"indices must be a 1-D list of rows in [0, {len(images)})")
        self.rows = rows
        self.flip = flip
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's flips (call before iterating; `make_loader`'s helper does)."""
        self.epoch = epoch
        if self.flip:
            rng = np.random.default_rng([self.seed, epoch])
            self._flips = rng.random(len(self.rows)) < 0.5
        else:
            self._flips = np.zeros(len(self.rows), dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([position])
        return x[0], y[0]

    def __getitems__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one read: (B, 3, S, S) float32 and (B,) int64."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads of the memmap
        pixels = np.empty((len(rows), *self.images.images.shape[1:]), dtype=np.uint8)
        pixels[order] = self.images.images[rows[order]]
        # numpy, not torch: these small ops must not wait on torch's intra-op thread pool,
        # which on a busy 2-core machine made the conversion 50x slower. Flipping after the
        # transpose reverses contiguous rows, 4x faster than reversing (W, 3) pixel triplets.
        channels_first = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        flipped = np.flatnonzero(self._flips[positions])
        channels_first[flipped] = channels_first[flipped, :, :, ::-1]
        x = channels_first.astype(np.float32)
        x /= np.float32(255.0)
        y = torch.from_numpy(self.images.labels[rows].astype(np.int64, copy=False))
        return torch.from_numpy(x), y


def make_loader(
    dataset: CachedImages,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader that yields ready (x, y) batches from `dataset.__getitems__`.

    The sampler is always a `DistributedSampler`, so one process and a DDP run take the same
    path: with `world_size > 1` each rank sees its own 1/world_size of every epoch (padded by
    repeats when the split is uneven and `drop_last` is False). Call `set_epoch(loader, epoch)`
    before each epoch to reshuffle and redraw the flips.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=0,
        collate_fn=_already_batched,
        drop_last=drop_last,
        # Its own generator: starting an epoch must not draw from the global RNG, or a run
        # resumed mid-epoch would sample different noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell both the sampler (order) and the dataset (flips) which epoch is starting."""
    loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`CachedImages.__getitems__` returns whole batches; there is nothing left to collate."""
    return batch


class DeviceBatches:
    """A loader's batches, made on `device` from a copy of its uint8 images held there.

    On a GPU this takes the loader off the critical path: the pixels cross the bus once, and a
    batch is one gather, flip and conversion on the GPU. The order (the loader's sampler) and the
    flips (the dataset's per-epoch draw) are the loader's own, so the numbers of a run do not
    depend on where its batches were made.
    """

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        data: CachedImages = loader.dataset
        self.pixels = torch.from_numpy(np.ascontiguousarray(data.images.images[data.rows]))
        self.pixels = self.pixels.to(device)  # (n, S, S, 3) uint8
        self.labels = torch.from_numpy(data.images.labels[data.rows].astype(np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        device = self.pixels.device
        # the flips `set_epoch` drew for this epoch (CachedImages keeps them per position)
        flips = torch.from_numpy(self.loader.dataset._flips).to(device)
        # the epoch's order crosses to the device in one copy, not one per batch
        batches = [np.asarray(positions, np.int64) for positions in self.loader.batch_sampler]
        if not batches:
            return
        order = torch.from_numpy(np.concatenate(batches)).to(device)
        ends = np.cumsum([len(b) for b in batches]).tolist()
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            at = order[start:end]
            x = self.pixels[at].permute(0, 3, 1, 2)  # (B, 3, S, S), channels_last in memory
            x = torch.where(flips[at].view(-1, 1, 1, 1), x.flip(3), x)
            yield x.float().div_(255.0), self.labels[at]


def device_batches(loader: DataLoader, device_cache: str, device: torch.device):
    """`loader` itself, or `DeviceBatches` over it when the device cache is "on", or "auto" on
    a GPU where the images take under a quarter of its free memory (see TrainConfig)."""
    data: CachedImages = loader.dataset
    nbytes = len(data) * int(np.prod(data.images.images.shape[1:]))
    fits = device.type == "cuda" and nbytes < torch.cuda.mem_get_info(device)[0] / 4
    if device_cache == "on" or (device_cache == "auto" and fits):
        return DeviceBatches(loader, device)
    return loader
