"""Perceptual hash and near-duplicate groups: exactness, robustness, the all-pairs answer."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.imaging.neardup import dhash, group, popcount


def scene(seed: int, size=(160, 120), dx: int = 0, dy: int = 0) -> Image.Image:
    """A smooth random picture (blobs of colour, like a cartoon frame), distinct per seed.

    ``dx``, ``dy`` move the camera by that many pixels (new content comes in at the edges).
    """
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    w, h = size
    big = Image.fromarray(small).resize((w + 16, h + 16), Image.Resampling.BICUBIC)
    return big.crop((8 + dx, 8 + dy, 8 + dx + w, 8 + dy + h))


def stored(im: Image.Image, size: int = 64) -> np.ndarray:
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_dhash_bits_are_left_brighter_than_right():
    img = np.zeros((1, 64, 72, 3), np.uint8)
    img[0, :, :8] = 255                                   # the first of 9 columns bright
    h = int(dhash(img)[0])
    for r in range(8):
        assert [(h >> (8 * r + c)) & 1 for c in range(8)] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert dhash(np.zeros((2, 32, 32, 3), np.uint8)).tolist() == [0, 0]
    assert dhash(img).dtype == np.uint64


@pytest.mark.parametrize("h,w", [(48, 48), (50, 45), (64, 64), (128, 96), (9, 12),
                                 (2064, 10)])   # 2064: over 257 rows a band, the int32 path
def test_dhash_is_exact_integer_arithmetic(h, w):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8)
    luma = imgs[..., 0].astype(np.int64) * 299 + imgs[..., 1].astype(np.int64) * 587 + imgs[..., 2].astype(np.int64) * 114
    rows, cols = (np.arange(9) * h) // 8, (np.arange(10) * w) // 9
    for n in range(5):
        bits = 0
        for r in range(8):
            band = luma[n, rows[r]:rows[r + 1]]
            means = [band[:, cols[c]:cols[c + 1]].sum() / (band.shape[0] * (cols[c + 1] - cols[c])) for c in range(9)]
            for c in range(8):
                bits |= int(means[c] > means[c + 1]) << (8 * r + c)
        assert int(dhash(imgs[n:n + 1])[0]) == bits


def test_copies_stay_near_and_other_scenes_stay_far():
    """Rescaled and re-encoded copies stay within a few bits, camera moves of 1-2 source pixels mostly
    within the default 6; other scenes are far (BENCHMARKS.md "Near-duplicates" has the real frames)."""
    near_moves = 0
    for seed in range(40):
        base = scene(seed)
        h0 = dhash(stored(base)[None])[0]
        for v in (base.resize((320, 240)), base.resize((97, 73)), jpeg(base, 40), jpeg(base, 95), scene(seed, dx=1)):
            assert popcount(dhash(stored(v)[None])[0] ^ h0) <= 6
        near_moves += popcount(dhash(stored(scene(seed, dx=2, dy=1))[None])[0] ^ h0) <= 6
        other = dhash(stored(scene(seed + 1000))[None])[0]
        assert popcount(other ^ h0) > 8
    assert near_moves >= 36


def test_popcount():
    x = np.array([0, 1, 3, 2 ** 63, 2 ** 64 - 1], dtype=np.uint64)
    assert popcount(x).tolist() == [0, 1, 2, 1, 64]


def _brute(h, k):
    n = len(h)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i in range(n):
        d = popcount(h[i] ^ h[i + 1:])
        for j in np.flatnonzero(d <= k) + i + 1:
            parent[find(int(j))] = find(i)
    roots = [find(i) for i in range(n)]
    return roots


def _same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs_a = {(x, y) for x, y in zip(a, b)}
    return len(pairs_a) == len(set(a)) == len(set(b))


def test_groups_equal_the_all_pairs_answer():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2 ** 63, 600, dtype=np.int64).astype(np.uint64)
    # plant chains and clusters: flips of 1..8 bits of earlier hashes, and exact copies
    h = list(base)
    for _ in range(400):
        src = h[int(rng.integers(len(h)))]
        flips = rng.choice(64, int(rng.integers(0, 9)), replace=False)
        h.append(np.uint64(int(src) ^ sum(1 << int(b) for b in flips)))
    h = np.array(h, dtype=np.uint64)
    for k in (1, 2, 3, 4, 5, 6, 7, 8):
        g = group(h, k)
        assert _same_partition(g.labels, _brute(h, k)), k
        assert g.num_groups == len(set(g.labels.tolist()))
        assert g.labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(g.labels)) <= 1)  # numbered by first use


def test_zero_radius_groups_nothing():
    h = np.array([5, 5, 7], dtype=np.uint64)
    assert group(h, 0).labels.tolist() == [0, 1, 2]
    assert group(h, 1).labels.tolist() == [0, 0, 0]
    assert group(np.zeros(0, np.uint64), 6).num_groups == 0
