"""The epoch plan: which samples each batch of each epoch holds, on each rank.

An epoch is a pure function of (seed, epoch): shards in a random order,
samples shuffled within each shard (so a streaming worker's reads stay
inside one 64 MB shard at a time), or class-balanced draws with
replacement. Rank r of W takes every W-th sample, truncated to an equal
length, so ranks never wait on each other at an epoch's end.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np
from torch.utils.data import Sampler


def epoch_order(offsets: np.ndarray, labels: np.ndarray, seed: int, epoch: int, shuffle: bool = True,
                balance: float = 0.0, windows: int = 0) -> np.ndarray:
    """The global sample order of one epoch (every sample once unless ``balance``).

    Args:
        offsets: (S + 1,) first global index of each shard.
        labels: (N,) labels, used by ``balance``.
        seed, epoch: the order is a function of these alone.
        shuffle: False gives 0..N-1 (evaluation).
        balance: > 0 draws N samples with replacement, class c with weight
            n_c ** (1 - balance) (1: each class equally likely; 0.5: the
            square-root middle way; 0: every sample once, unweighted).
        windows: > 0 reads the shards in windows of this many (a set streamed
            from object storage through a bounded cache, :func:`_windowed`).
    """
    n = int(offsets[-1])
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 11])
    if windows and not balance:
        return _windowed(offsets, seed, epoch, rng, windows)
    if balance:
        counts = np.bincount(labels)
        weights = counts[labels].astype(np.float64) ** -float(balance)
        return rng.choice(n, size=n, p=weights / weights.sum())  # already in random order
    parts = [offsets[s] + rng.permutation(offsets[s + 1] - offsets[s]) for s in rng.permutation(len(offsets) - 1)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# Shards per window of the order of a set read through a bounded cache: enough for batches of several
# shards' classes in turn, few enough that a cache of a few windows holds them.
WINDOW_SHARDS = 4


def _windowed(offsets: np.ndarray, seed: int, epoch: int, rng: np.random.Generator, window: int) -> np.ndarray:
    """The order of a set read through a bounded cache: what the last epoch read last is read first.

    The shards fall into windows of ``window`` by a permutation fixed by the
    seed; even epochs take the windows first to last, odd ones last to
    first, each window's shards in a new order every epoch and each shard's
    samples shuffled. A least-recently-used cache that holds a fraction of
    the set still holds the windows the last epoch ended with, so each epoch
    fetches only the rest (a cache of half the set: half), where a plain
    shuffle would fetch nearly everything again (MosaicML Streaming issues
    339, 507, 658). Still a pure function of (seed, epoch).
    """
    counts = np.diff(offsets)
    perm = np.random.default_rng([seed, 12]).permutation(len(counts))
    groups = [perm[k: k + window] for k in range(0, len(perm), window)]
    if epoch % 2:
        groups = groups[::-1]
    parts = [offsets[s] + rng.permutation(counts[s]) for g in groups for s in rng.permutation(g)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


class EpochBatchSampler(Sampler):
    """Yields this rank's batches of global indices for the current epoch.

    Args:
        offsets, labels: the split's shard offsets and labels.
        batch_size: samples per batch (the last batch may be smaller).
        seed: with the epoch, fixes the order.
        rank, world_size: this process's share (disjoint, equal length).
        shuffle: False for evaluation (in order; ranks may differ by one).
        balance: class-balanced sampling strength (see :func:`epoch_order`).
        drop_last: only whole batches (``--compile``: an odd last batch would
            recompile the graph); the rest of the epoch is left out.
        windows: shards per window of a windowed order (0: shards in a random order).
    """

    def __init__(self, offsets: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, balance: float = 0.0,
                 drop_last: bool = False, windows: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.offsets, self.labels = offsets, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.balance, self.drop_last = shuffle, balance, drop_last
        self.windows = windows
        self.epoch = 0
        self.start_batch = 0
        self._cache: dict[int, np.ndarray] = {}  # the last two epochs' indices

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read ``epoch`` from batch ``start_batch`` on (a mid-epoch resume skips the batches done)."""
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """This rank's samples for ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if epoch in self._cache:  # the loader and its stream both ask for the current epoch
            return self._cache[epoch]
        order = epoch_order(self.offsets, self.labels, self.seed, epoch, self.shuffle, self.balance, self.windows)
        mine = order[self.rank::self.world_size]
        if self.shuffle:  # training: equal length on every rank
            mine = mine[: len(order) // self.world_size]
        self._cache = {k: v for k, v in self._cache.items() if k == epoch - 1}
        self._cache[epoch] = mine
        return mine

    def __iter__(self) -> Iterator[np.ndarray]:
        return itertools.islice(self.stream(self.epoch, self.start_batch), len(self) - self.start_batch)

    def stream(self, start_epoch: int, skip: int = 0, per_message: int = 1) -> Iterator[np.ndarray]:
        """Batches of epoch ``start_epoch`` from batch ``skip`` on, then of the next epochs, endlessly.

        One DataLoader iteration over this stream serves every epoch, so the
        workers never drain and refill at an epoch boundary. With
        ``per_message`` > 1, each item is the indices of that many
        consecutive batches of one epoch (fewer at its end): one worker task.
        """
        epoch, step = start_epoch, self.batch_size * per_message
        while True:
            idx = self.indices(epoch)[: len(self) * self.batch_size]
            for start in range(skip * self.batch_size, len(idx), step):
                yield idx[start: start + step]
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _per_rank(self) -> int:
        n = int(self.offsets[-1])
        return n // self.world_size if self.shuffle else -(-(n - self.rank) // self.world_size)

    def dropped(self) -> int:
        """Samples of this rank's epoch that ``drop_last`` leaves out."""
        return self._per_rank() - len(self) * self.batch_size if self.drop_last else 0
