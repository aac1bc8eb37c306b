"""Pairs of stored images at given perceptual-hash distances, side by side (a picture to judge ``--near-dup``).

    python benchmarks/neardup_pairs.py SHARDS OUT.png [--distances 5 6 7 8] [--pairs 6]

Each row holds pairs at one Hamming distance (the first column says which),
drawn from the whole set (train and val), chosen with a fixed seed. Prints
the paths, distances and the 16x16-thumbnail mean absolute difference of
every pair shown. The picture stays outside the repository (it is made of
the data's images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.imaging.neardup import popcount  # noqa: E402
from pipeline.shardset.shard_format import open_set  # noqa: E402


def load(root: Path):
    s = open_set(root)
    images, hashes, paths = [], [], []
    for e in s.manifest["shards"]:
        with h5py.File(root / e["file"], "r") as f:
            images.append(f["images"][...])
            hashes.append(f["dhash"][...].astype(np.uint64))
            paths += [p.decode() for p in f["paths"][...]]
    return np.concatenate(images), np.concatenate(hashes), paths


def thumb_mad(a: np.ndarray, b: np.ndarray) -> float:
    s = a.shape[0] // 16
    ta = a.reshape(16, s, 16, s, 3).mean(axis=(1, 3))
    tb = b.reshape(16, s, 16, s, 3).mean(axis=(1, 3))
    return float(np.abs(ta - tb).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--distances", type=int, nargs="+", default=[5, 6, 7, 8])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    images, hashes, paths = load(args.shards)
    rng = np.random.default_rng(args.seed)
    size = images.shape[1]
    rows = []
    for d in args.distances:
        found = []
        for i in rng.permutation(len(hashes)):
            j = np.flatnonzero(popcount(hashes ^ hashes[i]) == d)
            j = j[j != i]
            if len(j):
                found.append((int(i), int(j[0])))
            if len(found) == args.pairs:
                break
        rows.append((d, found))
        for i, j in found:
            print(f"d={d}  mad16={thumb_mad(images[i], images[j]):5.1f}  {paths[i]}  {paths[j]}")
    label_w, gap = 40, 6
    width = label_w + args.pairs * (2 * size + gap)
    sheet = Image.new("RGB", (width, len(rows) * (size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (d, found) in enumerate(rows):
        y = r * (size + gap)
        draw.text((4, y + size // 2 - 5), f"d={d}", fill="black")
        for k, (i, j) in enumerate(found):
            x = label_w + k * (2 * size + gap)
            sheet.paste(Image.fromarray(images[i]), (x, y))
            sheet.paste(Image.fromarray(images[j]), (x + size, y))
    sheet.save(args.out)


if __name__ == "__main__":
    main()
