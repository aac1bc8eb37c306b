"""The train/val split as a pure function of content, and the class-interleaved shard plan.

The split rule (version :data:`SPLIT_RULE`, recorded in the manifest):

1. Images are grouped: byte-identical files are kept once, and images
   whose perceptual hashes are within ``K`` bits are one group, also across
   classes (:mod:`pipeline.neardup`).
2. A group's key is the smallest SHA-256 among its members. Its score is
   ``u = SHA-256(seed, key)`` read as a number in [0, 1); the group goes to
   val when ``u < val_frac``. That depends on the group alone, never on
   which other images exist, so adding images never moves an image from
   train to val, and a set grown in steps has the split of one built at once.
3. Small classes: a class with 2+ groups and none in val sends its
   lowest-scoring group to val; one with every group in val keeps its
   highest-scoring group in train; a class of one group is train only.
   These fall-backs are the only choices that look at other images, so
   they are listed in the manifest (``split.fallbacks``): growing such a
   class can move its fall-back group (a class going from one group to two
   is the one case where an image can move from train to val).

The shard plan is a pure function of (split, labels, seed), so the same
inputs always give the same shard contents in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SPLIT_RULE = 2  # 1: per-class permutation of one RNG stream (reshuffled whenever the folder changed)


def group_score(key: str, seed: int) -> float:
    """A group's position in [0, 1): a function of its key and the seed only."""
    digest = hashlib.sha256(f"simpsons-shards split {seed} {key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@dataclass
class Split:
    """The outcome of :func:`content_split`.

    Attributes:
        train, val: sample indices, sorted ascending.
        single_group_classes: classes of one group (train only).
        fallbacks: (group members, split, why) of the groups the small-class
            rule placed instead of their score.
    """

    train: np.ndarray
    val: np.ndarray
    single_group_classes: list[int] = field(default_factory=list)
    fallbacks: list[tuple[np.ndarray, str, str]] = field(default_factory=list)


def content_split(keys: list[str], labels: np.ndarray, groups: np.ndarray, num_classes: int,
                  val_frac: float, seed: int) -> Split:
    """Split samples by group, each group placed by its own content.

    Args:
        keys: per sample, a content hash (SHA-256 hex of the file's bytes).
        labels: (N,) class of each sample.
        groups: (N,) group id of each sample (:func:`pipeline.neardup.group`).
        num_classes: number of classes.
        val_frac: the share of groups that go to val (0: everything is train).
        seed: seeds the scores.

    Returns:
        :class:`Split`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    n = len(labels)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Split(empty, empty)
    num_groups = int(groups.max()) + 1
    order = np.lexsort((np.asarray(keys), groups))     # within a group, the smallest key first
    first = order[np.r_[True, groups[order][1:] != groups[order][:-1]]]
    group_key = np.empty(num_groups, dtype=object)
    group_key[groups[first]] = [keys[i] for i in first]
    score = np.array([group_score(k, seed) for k in group_key])
    is_val = score < val_frac
    forced: dict[int, tuple[bool, str]] = {}
    singles = []
    for c in range(num_classes):
        gs = np.unique(groups[labels == c])
        if len(gs) == 0:
            continue
        if len(gs) == 1:
            singles.append(c)
            forced[int(gs[0])] = (False, "the only group of its class (train only)")
        elif val_frac > 0 and not is_val[gs].any():
            g = int(gs[np.argmin(score[gs])])
            forced.setdefault(g, (True, "its class had no val group (lowest score)"))
        elif is_val[gs].all():
            g = int(gs[np.argmax(score[gs])])
            forced[g] = (False, "its class had no train group (highest score)")
    fallbacks = []
    for g, (val, why) in sorted(forced.items()):
        if is_val[g] != val:
            is_val[g] = val
            fallbacks.append((np.flatnonzero(groups == g), "val" if val else "train", why))
    sample_val = is_val[groups]
    return Split(np.flatnonzero(~sample_val), np.flatnonzero(sample_val), singles, fallbacks)


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
