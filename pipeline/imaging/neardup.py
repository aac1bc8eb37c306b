"""Near-duplicate images: a perceptual hash per stored image, and groups of near-equal hashes.

The real set's images are frames of episodes, many of them consecutive
frames of one shot; byte-identical dedup (SHA-256) misses them. Each stored
image gets a 64-bit difference hash (dHash) of its resized pixels, and
images whose hashes are within ``K`` bits of each other are one group,
transitively. The split puts a whole group on one side (``split.py``), so
no shot straddles train and val.

The hash: luma (0.299 R + 0.587 G + 0.114 B, integer weights) summed over
an 8 x 9 grid of blocks (8 equal row bands, 9 column bands of near-equal
width), and bit (r, c) = 1 when block (r, c) is brighter on average than
block (r, c + 1). Block means are compared by cross-multiplying integer
sums, so the hash is exact integer arithmetic: the same pixels give the
same bits on every machine. It survives re-encoding, rescaling and shifts
of a pixel or two (tests/imaging/test_neardup.py); the default ``K`` was chosen on
the real images (benchmarks/history/split.md "Near-duplicates").

Grouping stays near-linear in the number of images (multi-index hashing):
the 64 bits are cut into ``m`` bands, and two hashes within ``K`` bits
differ in at most ``r = K // m`` bits in at least one band (pigeonhole).
So for each band, each hash probes the sorted band keys for every key
within ``r`` bits of its own; only those candidates are compared in full.
Equal hashes are merged first, so a flood of identical hashes (black
frames) costs nothing. ``m`` is chosen to minimise the probes plus the
expected candidates for the given N and K.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

HASH_BITS = 64
ROWS, COLS = 8, 9           # block grid: 8 rows x 9 columns -> 8 x 8 left/right comparisons
LUMA = (299, 587, 114)      # ITU-R 601 luma, integer per mille


def dhash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hashes of a batch of RGB images.

    Args:
        images: (N, H, W, 3) uint8, H >= 8 and W >= 9.

    Returns:
        (N,) uint64; bit ``8 * r + c`` (from the least significant) is block
        (r, c) brighter than block (r, c + 1).
    """
    images = np.asarray(images)
    n, h, w, _ = images.shape
    if h < ROWS or w < COLS:
        raise ValueError(f"dhash needs images of at least {COLS}x{ROWS} px, got {w}x{h}")
    # The workers hash each run of images right after decoding it, with the
    # caches full of the decoder's data, so passes over memory and large
    # temporaries cost most there: the 8 row bands are in-place uint16 adds
    # of whole rows (up to 257 rows of 255), luma is int32 on those sums,
    # and only the (N, 8, 9) block sums are int64 (benchmarks/history/split.md
    # "Near-duplicates": half the time of a reduction with a dtype and
    # int64 luma planes, the same bits).
    if h % ROWS == 0 and h // ROWS <= 257:
        rows = images.reshape(n, ROWS, h // ROWS, w * 3)
        bands = rows[:, :, 0].astype(np.uint16)
        for j in range(1, h // ROWS):
            bands += rows[:, :, j]
    else:
        band_rows = (np.arange(ROWS + 1) * h) // ROWS
        bands = np.add.reduceat(images.reshape(n, h, w * 3), band_rows[:-1], axis=1, dtype=np.int32)
    b = bands.reshape(n, ROWS, w, 3)
    luma = b[..., 0] * np.int32(LUMA[0])                # (N, 8, W); at most 257 x 255 x 1000 < 2^31
    luma += b[..., 1] * np.int32(LUMA[1])
    luma += b[..., 2] * np.int32(LUMA[2])
    col_edges = (np.arange(COLS + 1) * w) // COLS
    blocks = np.add.reduceat(luma, col_edges[:-1], axis=2, dtype=np.int64)          # (N, 8, 9) sums
    widths = np.diff(col_edges).astype(np.int64)
    # mean(c) > mean(c + 1)  <=>  sum(c) * width(c + 1) > sum(c + 1) * width(c): exact integers
    bits = blocks[:, :, :-1] * widths[1:] > blocks[:, :, 1:] * widths[:-1]          # (N, 8, 8)
    return np.packbits(bits.reshape(n, HASH_BITS), axis=1, bitorder="little").view("<u8").reshape(n).astype(np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (bitwise SWAR, no Python loop)."""
    x = np.asarray(x, dtype=np.uint64)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    with np.errstate(over="ignore"):   # the multiply sums the bytes into the top one; wrapping is intended
        return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def _masks(bits: int, radius: int) -> np.ndarray:
    """Every XOR mask of ``bits`` bits with at most ``radius`` bits set."""
    out = [0]
    for k in range(1, radius + 1):
        out += [sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), k)]
    return np.array(out, dtype=np.uint64)


def _plan(n: int, k: int) -> int:
    """Band count m minimising probes + expected candidates for n uniform hashes."""
    best, best_cost = 3, float("inf")
    for m in range(3, min(k + 1, 16) + 1):   # bands of at most 22 bits: bucket tables of <= 4M entries
        bits = HASH_BITS // m
        r = k // m
        probes = sum(math.comb(bits, i) for i in range(r + 1)) if r <= 3 else float("inf")
        cost = m * probes * (1.0 + n / 2.0 ** bits)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _candidate_pairs(h: np.ndarray, k: int, chunk: int = 1 << 20) -> np.ndarray:
    """(P, 2) index pairs i < j of distinct hashes within ``k`` bits (each pair once)."""
    n = len(h)
    m = _plan(n, k)
    r = k // m
    edges = [(b * HASH_BITS) // m for b in range(m + 1)]
    index = np.arange(n)
    found = []
    for b in range(m):
        lo_bit, width = edges[b], edges[b + 1] - edges[b]
        keys = ((h >> np.uint64(lo_bit)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # bucket starts by counting sort: a probe is two gathers, not a binary search
        counts = np.bincount(keys, minlength=1 << width)
        starts = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        for mask in _masks(width, r).astype(np.int64):
            # A pair whose band keys differ by ``mask`` is probed from its key
            # without the mask's top bit only (once, not from both sides); a
            # pair of equal keys from its smaller index.
            ask = index if mask == 0 else np.flatnonzero(keys & (1 << (int(mask).bit_length() - 1)) == 0)
            query = keys[ask] ^ mask
            c_all = counts[query]
            hit = np.flatnonzero(c_all)   # most probes find an empty bucket: expand only the others
            for start in range(0, len(hit), chunk):   # bounded memory on large sets
                q = hit[start:start + chunk]
                c = c_all[q]
                total = int(c.sum())
                qi = np.repeat(ask[q], c)
                first = np.repeat(starts[query[q]], c)
                offset = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                tj = order[first + offset]
                if mask == 0:
                    keep = qi < tj
                    qi, tj = qi[keep], tj[keep]
                close = popcount(h[qi] ^ h[tj]) <= k
                qi, tj = qi[close], tj[close]
                found.append(np.minimum(qi, tj) * n + np.maximum(qi, tj))   # one int64 per pair
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return np.stack([pairs // n, pairs % n], axis=1)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of an edge list: each node's smallest member index (hook and compress)."""
    parent = np.arange(n)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        pa, pb = parent[a], parent[b]
        if np.array_equal(pa, pb):
            return parent
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)      # hook each root under the smaller root it touches
        np.minimum.at(parent, pb, low)
        while True:                          # pointer jumping until every node points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


@dataclass
class Groups:
    """Near-duplicate groups of a list of hashes.

    Attributes:
        labels: (N,) group id of each hash, 0..num_groups-1, numbered by
            first appearance (a function of the hashes and their order).
        num_groups: number of groups (singletons included).
    """

    labels: np.ndarray
    num_groups: int

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_groups)


def group(hashes: np.ndarray, k: int) -> Groups:
    """Connected components of "within ``k`` bits", transitively.

    Args:
        hashes: (N,) uint64.
        k: Hamming radius in bits; 0 groups nothing (every image is its own
            group: byte-identical files are merged before, by SHA-256).

    Returns:
        :class:`Groups`.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n == 0 or k <= 0:
        return Groups(np.arange(n, dtype=np.int64), n)
    uniq, inverse = np.unique(hashes, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) == 1:
        comp = np.arange(len(uniq))
    else:
        comp = _components(len(uniq), _candidate_pairs(uniq, k))
    labels = comp[inverse]
    # number groups by first appearance, so ids do not depend on scipy's numbering
    ids, first = np.unique(labels, return_index=True)
    remap = np.empty(len(ids), dtype=np.int64)
    remap[np.argsort(first, kind="stable")] = np.arange(len(ids))
    return Groups(remap[np.searchsorted(ids, labels)], len(ids))
