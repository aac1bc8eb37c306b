"""Stratified train/val split and the class-interleaved shard plan.

Both are pure functions of (labels, seed), so the same inputs always give
the same split and the same shard contents in the same order.
"""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, num_classes: int, val_frac: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Split sample indices per class.

    Every class with 2+ samples gets at least one in each split (a 3-image
    class gives 2/1, a 7-image class 6/1 at 0.15); a 1-sample class goes to
    train. With ``val_frac == 0`` everything is train.

    Args:
        labels: (N,) int class of each sample.
        num_classes: number of classes (classes with no samples are allowed).
        val_frac: validation share per class, rounded half up.
        seed: seeds the per-class shuffle.

    Returns:
        (train indices, val indices, classes that have a single sample), the
        index arrays sorted ascending.
    """
    rng = np.random.default_rng([seed, 2])
    train, val, singles = [], [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        if n == 0:
            continue
        idx = idx[rng.permutation(n)]
        if n == 1:
            singles.append(c)
            n_val = 0
        elif val_frac == 0:
            n_val = 0
        else:
            n_val = min(max(int(np.floor(n * val_frac + 0.5)), 1), n - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return cat(train), cat(val), singles


def shard_plan(indices: np.ndarray, labels: np.ndarray, per_shard: int, seed: int) -> list[np.ndarray]:
    """Cut one split into shards that each carry the split's class mix.

    Each class's samples are dealt across the S shards so every shard holds
    floor(n_c / S) or one more of class c (within one image of its share);
    the shards that take the extra one rotate from class to class, so shard
    sizes differ by at most one image. Within a shard the order is shuffled.

    Args:
        indices: the split's sample indices.
        labels: (N,) labels of all samples.
        per_shard: target images per shard.
        seed: seeds the deal and the in-shard order.

    Returns:
        One index array per shard.
    """
    n = len(indices)
    if n == 0:
        return []
    num_shards = max(1, -(-n // per_shard))
    rng = np.random.default_rng([seed, 3])
    buckets: list[list[int]] = [[] for _ in range(num_shards)]
    start = 0  # next shard to receive an extra sample
    split_labels = labels[indices]
    for c in np.unique(split_labels):
        members = indices[split_labels == c]
        members = members[rng.permutation(len(members))]
        q, r = divmod(len(members), num_shards)
        pos = 0
        for s in range(num_shards):
            take = q + (1 if (s - start) % num_shards < r else 0)
            buckets[s].extend(members[pos: pos + take].tolist())
            pos += take
        start = (start + r) % num_shards
    return [np.array(b, dtype=np.int64)[rng.permutation(len(b))] for b in buckets]
