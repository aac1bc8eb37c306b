import numpy as np

from pipeline.split import shard_plan, stratified_split
from pipeline.synth import CLASS_COUNTS


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_tiny_classes_get_both_splits():
    labels = _labels([1, 2, 3, 7, 100])
    tr, va, singles = stratified_split(labels, 6, 0.15, seed=42)
    assert singles == [0]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    for c, n in enumerate([1, 2, 3, 7, 100]):
        n_tr, n_va = (labels[tr] == c).sum(), (labels[va] == c).sum()
        if n == 1:
            assert (n_tr, n_va) == (1, 0)
        else:
            assert n_tr >= 1 and n_va >= 1
    assert (labels[va] == 4).sum() == 15


def test_real_counts_every_class_in_both_splits():
    counts = [n for _, n in CLASS_COUNTS]
    labels = _labels(counts)
    tr, va, singles = stratified_split(labels, 42, 0.15, seed=42)
    assert singles == []
    assert np.all(np.bincount(labels[va], minlength=42) >= 1)
    assert np.all(np.bincount(labels[tr], minlength=42) >= 2)
    assert abs(len(va) / len(labels) - 0.15) < 0.005


def test_split_is_a_function_of_the_seed():
    labels = _labels([5, 9, 30])
    a = stratified_split(labels, 3, 0.2, seed=1)
    b = stratified_split(labels, 3, 0.2, seed=1)
    c = stratified_split(labels, 3, 0.2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2]))
    assert not np.array_equal(a[1], c[1])


def test_shards_carry_the_class_mix_within_one_image():
    counts = [n for _, n in CLASS_COUNTS]
    labels = _labels(counts)
    idx = np.arange(len(labels))
    plan = shard_plan(idx, labels, per_shard=1000, seed=0)
    assert len(plan) == 17
    assert sorted(np.concatenate(plan).tolist()) == idx.tolist()
    sizes = [len(p) for p in plan]
    assert max(sizes) - min(sizes) <= 1
    for p in plan:
        share = np.bincount(labels[p], minlength=42)
        expected = np.array(counts) / len(plan)
        assert np.all(np.abs(share - expected) < 1.0)
