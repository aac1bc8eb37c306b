"""Growth moves no image from train to val (split rule 3): the cases that broke rule 2, and a property test."""

import hashlib
import io
import shutil

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.common.config import PreprocessConfig
from pipeline.building.preprocess import preprocess
from pipeline.building.split import content_split, group_score
from tests.building.test_honest_split import scene, scenes_tree, sides

VAL_FRAC, SEED = 0.15, 42


def key(prefix: str, want_val: bool, start: int = 0) -> str:
    """A 64-hex key starting with ``prefix`` whose own score is under VAL_FRAC or not, as asked."""
    i = start
    while True:
        k = prefix + hashlib.sha256(str(i).encode()).hexdigest()[len(prefix):]
        if (group_score(k, SEED) < VAL_FRAC) == want_val:
            return k
        i += 1


def build(keys, labels, groups, before=None):
    """Split samples (keys, labels, groups) growing the sides ``before`` (key -> is val): (Split, key -> is val)."""
    prior = None if before is None else [before.get(k) for k in keys]
    sp = content_split(keys, np.asarray(labels), np.asarray(groups), int(max(labels)) + 1, VAL_FRAC, SEED, prior)
    side = {keys[i]: False for i in sp.train}
    side.update({keys[i]: True for i in sp.val})
    return sp, side


def filler(n=40):
    """Singleton images of class 0 that keep the small-class fall-backs out of the way."""
    return [f"f{i:063x}" for i in range(n)]


def test_a_new_file_with_the_smallest_sha256_joining_a_train_group_keeps_it_train():
    members = [key("8", False), key("9", False, 100)]   # the group's key (the smallest) scores train
    newcomer = key("0", True)                           # smaller than both, and its score is val's
    base = filler()
    _, before = build(base + members, [0] * 42, list(range(40)) + [40, 40])
    assert before[members[0]] is False and before[members[1]] is False
    keys = base + members + [newcomer]
    scratch, scratch_side = build(keys, [0] * 43, list(range(40)) + [40, 40, 40])
    assert scratch_side[members[0]] is True             # rule 2 alone moves the group to val
    grown, side = build(keys, [0] * 43, list(range(40)) + [40, 40, 40], before)
    assert side[members[0]] is False and side[members[1]] is False and side[newcomer] is False
    assert [(sorted(m.tolist()), s) for m, s, _ in grown.kept] == [([40, 41, 42], "train")]
    assert grown.kept[0][2].startswith("kept in train")
    assert grown.placed_before == 42
    assert scratch.kept == []


def test_a_new_file_bridging_a_train_group_and_a_val_group_makes_one_train_group():
    train_group, val_group = [key("5", False), key("6", False, 50)], [key("7", True), key("8", True, 70)]
    base = filler()
    _, before = build(base + train_group + val_group, [0] * 44, list(range(40)) + [40, 40, 41, 41])
    assert [before[k] for k in train_group + val_group] == [False, False, True, True]
    bridge = key("0", True, 300)
    keys = base + train_group + val_group + [bridge]
    grown, side = build(keys, [0] * 45, list(range(40)) + [40] * 5, before)
    assert [side[k] for k in train_group + val_group + [bridge]] == [False] * 5   # val -> train only
    assert len(grown.kept) == 1 and grown.kept[0][1] == "train"


def test_growth_in_several_steps_never_moves_a_train_image_to_val():
    rng = np.random.default_rng(0)
    keys = [hashlib.sha256(f"img{i}".encode()).hexdigest() for i in range(400)]
    labels = rng.integers(0, 4, 400)
    groups = np.arange(400)
    for a, b in rng.integers(0, 400, (120, 2)):          # near-duplicate pairs, merged transitively below
        groups[groups == groups[b]] = groups[a]
    order = rng.permutation(400)
    side = None
    for n in (100, 180, 260, 330, 400):
        present = np.sort(order[:n])
        _, ids = np.unique(groups[present], return_inverse=True)
        _, now = build([keys[i] for i in present], labels[present], ids, side)
        if side is not None:
            assert not [k for k, v in side.items() if v is False and now[k] is True]
        side = now


def test_a_byte_identical_copy_of_a_train_image_under_another_name_stays_train(tmp_path):
    root = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=20)
    out = tmp_path / "shards"
    cfg = PreprocessConfig(size=32, val_frac=0.2)
    preprocess(root, out, cfg, workers=1)
    before = sides(out)
    name = next(p for p, s in sorted(before.items()) if s == "train")
    shutil.copy(root / name, root / "b" / "copy_of_a_train_image.jpg")
    m = preprocess(root, out, cfg, workers=1)
    assert {"path": "b/copy_of_a_train_image.jpg", "same_as": name} in m["duplicates"]
    assert sides(out) == before and m["split"]["kept"] == [] and m["placed_before"] == 40


def encoded(im, quality):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_end_to_end_a_near_copy_with_the_smallest_sha256_does_not_pull_its_train_group_into_val(tmp_path):
    root = scenes_tree(tmp_path / "data", classes=("a", "b", "c"), per_class=15)
    cfg = PreprocessConfig(size=64, val_frac=0.3)
    # a planted scene whose file (the group's only member) scores train, and a re-encoded copy of it
    # whose SHA-256 is smaller and scores val: under rule 2 the grown group went to val
    for s in range(1000, 1200):
        original = encoded(scene(s), 90)
        k = hashlib.sha256(original).hexdigest()
        if group_score(k, SEED) < 0.3:
            continue
        copy = next((b for q in range(50, 96) for b in [encoded(scene(s), q)]
                     if hashlib.sha256(b).hexdigest() < k and group_score(hashlib.sha256(b).hexdigest(), SEED) < 0.3),
                    None)
        if copy is not None:
            break
    (root / "a" / "planted.jpg").write_bytes(original)
    out = tmp_path / "shards"
    preprocess(root, out, cfg, workers=1)
    assert sides(out)["a/planted.jpg"] == "train"
    before = sides(out)
    (root / "a" / "planted_copy.jpg").write_bytes(copy)
    m = preprocess(root, out, cfg, workers=2)
    after = sides(out)
    assert after["a/planted.jpg"] == after["a/planted_copy.jpg"] == "train"
    assert all(after[p] == s for p, s in before.items())
    assert [k["paths"] for k in m["split"]["kept"]] == [["a/planted.jpg", "a/planted_copy.jpg"]]
    # a build from scratch of the grown folder places that group in val: the one difference, as listed
    fresh = tmp_path / "fresh"
    preprocess(root, fresh, cfg, workers=1)
    differ = {p for p, s in sides(fresh).items() if after[p] != s}
    assert differ == {"a/planted.jpg", "a/planted_copy.jpg"}
    # another seed is another split: the sides are drawn anew, nothing kept
    resplit = preprocess(root, out, PreprocessConfig(size=64, val_frac=0.3, seed=7), workers=1)
    assert resplit["placed_before"] == 0 and resplit["split"]["kept"] == []


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_no_image_ever_moves_from_train_to_val(data):
    n = data.draw(st.integers(2, 40), label="images")
    keys = [hashlib.sha256(f"{data.draw(st.integers(0, 10**6))}-{i}".encode()).hexdigest() for i in range(n)]
    labels = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n))
    order = data.draw(st.permutations(range(n)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n), min_size=1, max_size=5))) | {n})
    side = None
    for cut in cuts:
        present = sorted(order[:cut])
        # groups among the present images: the near-duplicate graph restricted to them, transitively
        parent = {i: i for i in present}

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i
        for a, b in edges:
            if a in parent and b in parent:
                parent[find(a)] = find(b)
        _, ids = np.unique([find(i) for i in present], return_inverse=True)
        sp, now = build([keys[i] for i in present], labels[present], ids, side)
        if side is not None:
            assert not [k for k, v in side.items() if v is False and now[k] is True]
        # where it differs from a build from scratch, the split says so
        _, scratch = build([keys[i] for i in present], labels[present], ids)
        listed = {keys[present[j]] for members, _, _ in sp.kept for j in members}
        assert {k for k in now if now[k] != scratch[k]} == listed
        side = now
