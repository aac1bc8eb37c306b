"""A per-sample, map-style view of one split, for plain PyTorch code.

``ShardDataset(split)[i] -> (uint8 tensor (3, H, W), int label)``: the
convenient path. It works unchanged with ``torch.utils.data.DataLoader``
(shuffle, ``num_workers > 0`` under fork or spawn) and with
``DistributedSampler``, because it pickles as metadata only (shard paths,
offsets, labels) and maps the shards lazily in each process that reads.

It costs what per-sample loading always costs: a Python call, a tensor and
a collate per image. Measured by ``python cli.py bench`` (BENCHMARKS.md),
it delivers about a tenth of the images per second of the batch loader
(:func:`pipeline.reading.loader.create_loader`), which gathers a whole batch with
one copy per shard run; use that one when the loader is the bottleneck.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..shardset.shard_format import SplitSet


class ShardMaps:
    """Each shard's images, opened lazily, once per process that reads them.

    A contiguous shard is a read-only memory map of its file (no copy); a
    compressed one is decompressed into RAM, of which only the ``keep``
    most recently used are held. Maps and HDF5 handles must not cross a
    fork, so a process that finds maps opened by another (its parent)
    opens its own; pickled (spawn), this is metadata only.

    Args:
        shards: the split's shards (``split.shards``).
        as_tensor: give torch tensors over the arrays (for ``index_select``).
        keep: decompressed shards held at once.
    """

    def __init__(self, shards, as_tensor: bool = False, keep: int = 2) -> None:
        self.shards, self.as_tensor, self.keep = shards, as_tensor, keep
        self._maps: list = []
        self._loaded: list[int] = []
        self._pid: Optional[int] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": [], "_loaded": [], "_pid": None}

    def _bounded(self, s: int) -> bool:
        source = self.shards[s].source
        if source is not None:   # a shard in object storage: held open, it cannot be evicted
            return source.cache.limit is not None
        return self.shards[s].offset is None

    def __getitem__(self, s: int):
        if self._pid != os.getpid():  # first read in this process: nothing inherited is valid
            self._maps, self._loaded, self._pid = [None] * len(self.shards), [], os.getpid()
        if self._maps[s] is None:
            images = self.shards[s].images_map()
            if self.as_tensor:
                with warnings.catch_warnings():
                    # The map is read-only and torch warns that its tensors are
                    # writable; these are only ever the source of a gather.
                    warnings.simplefilter("ignore", UserWarning)
                    images = torch.from_numpy(images)
            self._maps[s] = images
            if self._bounded(s):   # decompressed into RAM, or holding a bounded cache's room: bound how many
                self._loaded.append(s)
                while len(self._loaded) > self.keep:
                    self._maps[self._loaded.pop(0)] = None
        return self._maps[s]


class ShardDataset(Dataset):
    """One split as ``(image, label)`` samples.

    Args:
        split: an opened split (``open_set(root).split("train")``).
        transform: optional callable on the uint8 CHW tensor (e.g. a
            torchvision-style transform); None returns it as stored.

    Example::

        ds = ShardDataset(open_set("shards").split("train"))
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
    """

    def __init__(self, split: SplitSet, transform=None) -> None:
        self.maps = ShardMaps(split.shards)
        self.offsets = np.asarray(split.offsets, dtype=np.int64)
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.class_names = list(split.class_names)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a split of {n} images")
        i %= n
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        row = self.maps[s][i - self.offsets[s]]
        with warnings.catch_warnings():  # the map is read-only; the copy below is what is returned
            warnings.simplefilter("ignore", UserWarning)
            image = torch.from_numpy(np.ascontiguousarray(row.transpose(2, 0, 1)))  # one copy, HWC -> CHW
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
