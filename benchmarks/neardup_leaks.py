"""How much of a shard set's val split has a near-copy in train: by the perceptual hash and by pixels.

    python benchmarks/neardup_leaks.py SHARDS                 # the set as built
    python benchmarks/neardup_leaks.py SHARDS --sweep 4 5 6 7 8 10

For every val image: the smallest Hamming distance between its stored dHash
and any train image's, and, independently of the hash, the smallest mean
absolute difference (0-255) between its 16x16 RGB thumbnail (block means
of the stored pixels) and any train image's. Prints the share of val images
within each distance.

``--sweep K ...`` pools train and val, groups them at each radius K with
:func:`pipeline.imaging.neardup.group`, places whole groups by a uniform random
score (as the split rule does, seed ``--seed``) and prints the same two
leak figures with the group statistics: how the default radius was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.imaging.neardup import dhash, group, popcount  # noqa: E402


def load(root: Path, manifest: dict, split: str) -> np.ndarray:
    """A split's pixels, read with h5py directly so that sets of older format versions (the old split) load too."""
    return np.concatenate([h5py.File(root / e["file"], "r")["images"][...]
                           for e in manifest["shards"] if e["split"] == split])


def thumbs(x: np.ndarray) -> torch.Tensor:
    n, h = x.shape[:2]
    b = h // 16
    return torch.from_numpy(x.reshape(n, 16, b, 16, b, 3).mean(axis=(2, 4), dtype=np.float32).reshape(n, -1))


def nearest(h_val, h_train, t_val, t_train) -> tuple[np.ndarray, np.ndarray]:
    """(smallest hash distance, smallest thumbnail MAD) of each val image to the train images."""
    dist = np.array([popcount(h ^ h_train).min() for h in h_val])
    mad = torch.cat([torch.cdist(t_val[i:i + 256], t_train, p=1).min(1).values
                     for i in range(0, len(t_val), 256)]).numpy() / t_train.shape[1]
    return dist, mad


def report(dist, mad, ks=(0, 2, 4, 6, 8), mads=(1, 2, 3, 4)) -> str:
    return ("dHash " + " ".join(f"<={k}: {np.mean(dist <= k):.2%}" for k in ks) + " | 16x16 MAD "
            + " ".join(f"<={m}: {np.mean(mad <= m):.2%}" for m in mads))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("--sweep", type=int, nargs="*")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-frac", type=float, default=0.15)
    args = ap.parse_args()
    manifest = json.loads((args.shards / "manifest.json").read_text())
    xt, xv = (load(args.shards, manifest, split) for split in ("train", "val"))
    ht, hv = dhash(xt), dhash(xv)
    tt, tv = thumbs(xt), thumbs(xv)
    print(f"{args.shards}: {len(xt)} train / {len(xv)} val, split rule {manifest.get('split_rule', 1)}")
    print("  as built: " + report(*nearest(hv, ht, tv, tt)))
    if not args.sweep:
        return
    h, t = np.concatenate([ht, hv]), torch.cat([tt, tv])
    rng = np.random.default_rng(args.seed)
    for k in args.sweep:
        t0 = time.perf_counter()
        g = group(h, k)
        secs = time.perf_counter() - t0
        sizes = g.sizes()
        val = (rng.random(g.num_groups) < args.val_frac)[g.labels]
        vi, ti = np.flatnonzero(val), np.flatnonzero(~val)
        dist, mad = nearest(h[vi], h[ti], t[vi], t[ti])
        print(f"  K={k:2d}: {int(sizes[sizes > 1].sum())} images in {int((sizes > 1).sum())} groups, largest "
              f"{int(sizes.max())}, grouped in {secs:.2f} s; val {val.mean():.1%}; "
              f"within K {np.mean(dist <= k):.2%}; 16x16 MAD <=2 {np.mean(mad <= 2):.2%}, <=3 {np.mean(mad <= 3):.2%}",
              flush=True)


if __name__ == "__main__":
    main()
