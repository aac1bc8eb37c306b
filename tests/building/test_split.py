import numpy as np

from pipeline.building.split import content_split, group_score, shard_plan
from pipeline.tools.synth import CLASS_COUNTS


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def _keys(n, salt=""):
    return [f"{salt}{i:064x}" for i in range(n)]


def _split(labels, val_frac=0.15, seed=42, groups=None, keys=None):
    n = len(labels)
    return content_split(keys or _keys(n), labels, np.arange(n) if groups is None else groups,
                         int(labels.max()) + 1, val_frac, seed)


def test_tiny_classes_get_both_splits_and_single_images_train():
    counts = [1, 2, 3, 7, 100]
    labels = _labels(counts)
    sp = _split(labels)
    assert sp.single_group_classes == [0]
    assert len(np.intersect1d(sp.train, sp.val)) == 0 and len(sp.train) + len(sp.val) == len(labels)
    for c, n in enumerate(counts):
        n_tr, n_va = (labels[sp.train] == c).sum(), (labels[sp.val] == c).sum()
        if n == 1:
            assert (n_tr, n_va) == (1, 0)
        else:
            assert n_tr >= 1 and n_va >= 1


def test_two_image_classes_always_split_one_one():
    labels = _labels([2] * 200)   # every seed draws some classes with no val (or no train) by score
    sp = _split(labels, seed=3)
    assert np.all(np.bincount(labels[sp.val], minlength=200) == 1)
    assert any(why.startswith("its class had no val") for _, _, why in sp.fallbacks)


def test_real_counts_every_class_in_both_splits_and_the_share_holds():
    labels = _labels([n for _, n in CLASS_COUNTS])
    sp = _split(labels)
    assert sp.single_group_classes == []
    assert np.all(np.bincount(labels[sp.val], minlength=42) >= 1)
    assert np.all(np.bincount(labels[sp.train], minlength=42) >= 1)
    assert abs(len(sp.val) / len(labels) - 0.15) < 0.01


def test_an_image_is_placed_by_its_own_key_not_by_the_others():
    labels = _labels([300, 300])
    keys = _keys(600)
    full = _split(labels, keys=keys)
    # drop a third of the images: every remaining image keeps its side (classes stay large)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(600, 400, replace=False))
    part = content_split([keys[i] for i in keep], labels[keep], np.arange(400), 2, 0.15, 42)
    in_val = np.zeros(600, bool)
    in_val[full.val] = True
    assert np.array_equal(in_val[keep][part.val], np.ones(len(part.val), bool))
    assert not in_val[keep][part.train].any()
    # and the side is the score's
    assert all((group_score(keys[i], 42) < 0.15) == in_val[i] for i in range(600))


def test_a_group_is_never_split_even_across_classes():
    labels = _labels([40, 40])
    groups = np.arange(80)
    groups[[1, 2, 3, 45]] = 1           # one shot filed under both classes
    groups[[10, 11]] = 10
    sp = _split(labels, groups=groups, val_frac=0.3)
    side = np.zeros(80, bool)
    side[sp.val] = True
    assert len(set(side[[1, 2, 3, 45]])) == 1 and side[10] == side[11]
    # the group's key is its smallest member key: renaming the others changes nothing
    keys = _keys(80)
    keys[2] = "f" * 64
    assert np.array_equal(_split(labels, groups=groups, val_frac=0.3, keys=keys).val, sp.val)


def test_a_class_of_one_group_is_train_only():
    labels = _labels([5, 30])
    groups = np.concatenate([np.zeros(5, int), np.arange(1, 31)])
    sp = _split(labels, groups=groups)
    assert sp.single_group_classes == [0]
    assert set(labels[sp.val]) == {1}


def test_split_is_a_function_of_the_seed():
    labels = _labels([5, 9, 30])
    a, b, c = _split(labels, 0.2, 1), _split(labels, 0.2, 1), _split(labels, 0.2, 2)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.val, c.val)


def test_val_frac_zero_is_all_train():
    labels = _labels([3, 9])
    sp = _split(labels, val_frac=0.0)
    assert len(sp.val) == 0 and len(sp.train) == 12


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


def test_scores_computed_by_the_caller_give_the_same_split():
    rng = np.random.default_rng(3)
    labels = _labels([5, 40, 300])
    keys = [f"{k:064x}" for k in rng.permutation(10 ** 6)[: len(labels)]]
    groups = rng.integers(0, 200, len(labels))   # groups of several samples: each scored by its smallest key
    _, groups = np.unique(groups, return_inverse=True)
    plain = content_split(keys, labels, groups, 3, 0.2, 7)
    given = content_split(keys, labels, groups, 3, 0.2, 7, scores=np.array([group_score(k, 7) for k in keys]))
    assert np.array_equal(plain.train, given.train) and np.array_equal(plain.val, given.val)
    wrong = content_split(keys, labels, groups, 3, 0.2, 7, scores=np.array([group_score(k, 8) for k in keys]))
    assert not np.array_equal(plain.val, wrong.val)   # the scores decide: another seed's differ
