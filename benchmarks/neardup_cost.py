"""What the near-duplicate split costs preprocess, and how grouping scales.

    python benchmarks/neardup_cost.py --data-dir ../shared/data/simpsons-sample --size 128 --rounds 3
    python benchmarks/neardup_cost.py --scaling          # group() on 10k..1M random hashes

Preprocess part: full builds (``force``) with ``--near-dup 0`` (no grouping)
and the default, alternated in one process for ``--rounds`` rounds; prints
the median images/s of each, their ratio, and from the manifests' timings
the share of the run spent grouping and the share of the workers' CPU time
spent on the perceptual hash (computed in both variants, so the ratio alone
does not show it).

Scaling part: N random 64-bit hashes with 1% planted near-copies at
distance <= K; the time of :func:`pipeline.imaging.neardup.group` and whether every
planted copy joined its original.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.common.config import PreprocessConfig  # noqa: E402
from pipeline.imaging.neardup import group  # noqa: E402
from pipeline.building.preprocess import preprocess  # noqa: E402


def preprocess_cost(data_dir: Path, size: int, rounds: int, workers: int) -> None:
    runs: dict[int, list[dict]] = {0: [], 6: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for k in ((0, 6) if r % 2 == 0 else (6, 0)):
                m = preprocess(data_dir, Path(tmp) / f"k{k}", PreprocessConfig(size=size, near_dup=k),
                               workers=workers, force=True)
                runs[k].append(m["timings"] | {"workers": m["workers"]})
    rate = {k: statistics.median(t["images_per_s"] for t in v) for k, v in runs.items()}
    ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[0], runs[6])]
    t6 = runs[6]
    group_share = statistics.median(t["group_s"] / t["total_s"] for t in t6)
    hash_share = statistics.median(t["phash_cpu_s"] / (t["decode_s"] * t["workers"]) for t in t6)
    print(f"{data_dir} at {size} px, {workers} workers, {rounds} rounds")
    print(f"  --near-dup 0: {rate[0]:.0f} img/s   --near-dup 6: {rate[6]:.0f} img/s   "
          f"ratio (median of rounds) {statistics.median(ratios):.3f}  per round {[round(x, 3) for x in ratios]}")
    print(f"  grouping: {group_share:.2%} of the run; perceptual hash: {hash_share:.2%} of the workers' decode time")


def scaling(k: int) -> None:
    rng = np.random.default_rng(0)
    for n in (10_000, 100_000, 1_000_000):
        h = rng.integers(0, 2 ** 63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        h ^= rng.integers(0, 2, n).astype(np.uint64)
        src = rng.choice(n, n // 50, replace=False)
        a, b = src[: n // 100], src[n // 100:]
        flips = np.array([sum(1 << int(x) for x in rng.choice(64, int(rng.integers(1, k + 1)), replace=False))
                          for _ in range(len(a))], dtype=np.uint64)
        h[b] = h[a] ^ flips
        t = time.perf_counter()
        g = group(h, k)
        dt = time.perf_counter() - t
        print(f"  N={n:>9,}  K={k}: {dt:6.2f} s ({dt / n * 1e6:.1f} us/hash), planted joined "
              f"{np.mean(g.labels[a] == g.labels[b]):.0%}, groups {g.num_groups:,}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args()
    if args.data_dir:
        preprocess_cost(args.data_dir, args.size, args.rounds, args.workers)
    if args.scaling:
        scaling(args.k)


if __name__ == "__main__":
    main()
