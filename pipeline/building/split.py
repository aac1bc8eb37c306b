"""The train/val split: near-duplicate groups placed whole, by content, never moved from train to val.

The split rule (version :data:`SPLIT_RULE`, recorded in the manifest):

1. Images are grouped: byte-identical files are kept once, and images
   whose perceptual hashes are within ``K`` bits are one group, also across
   classes (:mod:`pipeline.imaging.neardup`).
2. A group's key is the smallest SHA-256 among its members. Its score is
   ``u = SHA-256(seed, key)`` read as a number in [0, 1); the group goes to
   val when ``u < val_frac``. In a build from scratch that depends on the
   group alone, never on which other images exist.
3. Small classes: a class with 2+ groups and none in val sends its
   lowest-scoring group to val; one with every group in val keeps its
   highest-scoring group in train; a class of one group is train only.
   These fall-backs are listed in the manifest (``split.fallbacks``).
4. Growth (rule 3): a build that finds a committed set with the same seed
   and ``val_frac`` keeps the side of every image already in it (``prior``):
   a group holding any image that was train is train; else a group holding
   any image that was val is val; only groups of new images are placed by
   2 and 3, and the fall-back sends only such a group to val. So growth
   (new files, groups growing or merging, byte-identical copies) can move
   an image from val to train, never from train to val.

Rule 2 was 1-3 alone, which broke that promise whenever a new file joined a
train group with a smaller SHA-256 than its members (its key, so its score,
changed). A grown set equals one built at once except in the groups listed
in ``split.kept`` (placed by 4 where a build from scratch would place them
otherwise); the content-only alternative (a group is val only when every
member's own score is under a threshold) needs no state but leaves grouped
images out of val (benchmarks/history/split.md "Split under growth").

The shard plan is a pure function of (split, labels, seed), so the same
inputs always give the same shard contents in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

SPLIT_RULE = 3  # 1: per-class shuffle of one RNG stream; 2: rule 3 without keeping a committed set's sides
COMPATIBLE_RULES = (2, 3)   # a rule-2 set is a rule-3 set that kept nothing: growing it needs no rebuild

# A group's standing from the committed set (rule 3, step 4).
FREE, WAS_TRAIN, WAS_VAL = 0, 1, 2


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
            rule places instead of their score in a build from scratch.
        kept: (group members, split, why) of the groups placed otherwise
            than a build from scratch of the same samples would place them,
            because of the committed set's sides (``prior``).
        placed_before: samples whose side the committed set decided.
    """

    train: np.ndarray
    val: np.ndarray
    single_group_classes: list[int] = field(default_factory=list)
    fallbacks: list[tuple[np.ndarray, str, str]] = field(default_factory=list)
    kept: list[tuple[np.ndarray, str, str]] = field(default_factory=list)
    placed_before: int = 0


@dataclass(frozen=True)
class _Groups:
    """What the placement needs of the groups: per-sample ids and labels, per-group scores and standing."""

    ids: np.ndarray       # (N,) group of each sample
    labels: np.ndarray    # (N,) class of each sample
    score: np.ndarray     # (G,) the group's score
    standing: np.ndarray  # (G,) FREE, WAS_TRAIN or WAS_VAL


def _standing(groups: np.ndarray, num_groups: int, prior: Optional[Sequence[Optional[bool]]]) -> np.ndarray:
    """Each group's standing: WAS_TRAIN if any member was train, else WAS_VAL if any was val, else FREE."""
    standing = np.full(num_groups, FREE, dtype=np.int8)
    if prior is None:
        return standing
    side = np.array([-1 if p is None else int(bool(p)) for p in prior], dtype=np.int8)
    standing[groups[side == 1]] = WAS_VAL
    standing[groups[side == 0]] = WAS_TRAIN   # after WAS_VAL: one train member makes the group train
    return standing


def _place(g: _Groups, num_classes: int, val_frac: float, use_standing: bool):
    """Per group: is it val; plus the single-group classes and the fall-backs (rule steps 2-4)."""
    is_val = g.score < val_frac
    free = np.ones(len(g.score), dtype=bool)
    if use_standing:
        is_val[g.standing == WAS_TRAIN] = False
        is_val[g.standing == WAS_VAL] = True
        free = g.standing == FREE
    forced: dict[int, tuple[bool, str]] = {}
    singles = []
    for c in range(num_classes):
        gs = np.unique(g.ids[g.labels == c])
        if len(gs) == 0:
            continue
        if len(gs) == 1:
            singles.append(c)
            forced[int(gs[0])] = (False, "the only group of its class (train only)")
        elif val_frac > 0 and not is_val[gs].any():
            candidates = gs[free[gs]]   # never a group that held a train image
            if len(candidates):
                pick = int(candidates[np.argmin(g.score[candidates])])
                forced.setdefault(pick, (True, "its class had no val group (lowest score)"))
        elif is_val[gs].all():
            pick = int(gs[np.argmax(g.score[gs])])
            forced[pick] = (False, "its class had no train group (highest score)")
    fallbacks = []
    for k, (val, why) in sorted(forced.items()):
        if is_val[k] != val:
            is_val[k] = val
            fallbacks.append((k, "val" if val else "train", why))
    return is_val, singles, fallbacks


def _why_kept(standing: int) -> str:
    if standing == WAS_TRAIN:
        return "kept in train: it holds images that were train in the set this build grew"
    if standing == WAS_VAL:
        return "kept in val: its images were val in the set this build grew"
    return "placed by the small-class fall-back in place of a group kept on its side"


def content_split(keys: list[str], labels: np.ndarray, groups: np.ndarray, num_classes: int,
                  val_frac: float, seed: int, prior: Optional[Sequence[Optional[bool]]] = None,
                  scores: Optional[np.ndarray] = None) -> Split:
    """Split samples by group, each group placed by its own content or by the side it had.

    Args:
        keys: per sample, a content hash (SHA-256 hex of the file's bytes).
        labels: (N,) class of each sample.
        groups: (N,) group id of each sample (:func:`pipeline.imaging.neardup.group`).
        num_classes: number of classes.
        val_frac: the share of groups that go to val (0: everything is train).
        seed: seeds the scores.
        prior: per sample, its side in the committed set this build grows
            (True: val, False: train, None: new); None for a build from scratch.
        scores: per sample, ``group_score(keys[i], seed)`` when the caller
            has it (the decode workers compute it beside the SHA-256, so the
            main process hashes nothing: benchmarks/history/preprocess.md
            "The main process off the per-image path"); None computes it here.

    Returns:
        :class:`Split`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    ids = np.asarray(groups, dtype=np.int64)
    if len(labels) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Split(empty, empty)
    num_groups = int(ids.max()) + 1
    order = np.lexsort((np.asarray(keys), ids))     # within a group, the smallest key first
    first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
    group_scores = np.empty(num_groups, dtype=np.float64)
    group_scores[ids[first]] = (np.asarray(scores, dtype=np.float64)[first] if scores is not None
                                else [group_score(keys[i], seed) for i in first])
    g = _Groups(ids, labels, group_scores, _standing(ids, num_groups, prior))
    # The fall-backs reported are a build from scratch's; where the committed set's sides make this
    # build differ from one, ``kept`` says so: equal sides, equal manifests.
    scratch, singles, fallbacks = _place(g, num_classes, val_frac, use_standing=False)
    is_val, kept = scratch, []
    if prior is not None:
        is_val, _, _ = _place(g, num_classes, val_frac, use_standing=True)
        kept = [(np.flatnonzero(ids == k), "val" if is_val[k] else "train", _why_kept(int(g.standing[k])))
                for k in np.flatnonzero(is_val != scratch)]
    sample_val = is_val[ids]
    placed_before = 0 if prior is None else int(sum(p is not None for p in prior))
    return Split(np.flatnonzero(~sample_val), np.flatnonzero(sample_val), singles,
                 [(np.flatnonzero(ids == k), side, why) for k, side, why in fallbacks], kept, placed_before)


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
