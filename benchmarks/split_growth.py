"""Does growing a folder move any image from train to val? The split rule measured on real images.

    python benchmarks/split_growth.py --data-dir ../shared/data/simpsons-real-80 --size 64 --work /tmp/growth

Builds a folder of links to every file but every ``--every``-th of each
class (sorted by name) into ``WORK/set``, then adds the rest and builds
``WORK/set`` again (a grown set), and builds the whole folder from scratch
into ``WORK/scratch``. Prints, per image path: train -> val and val -> train
moves between the two builds of the grown set, where the grown set differs
from the scratch build (and whether ``split.kept`` lists exactly those), the
val share, the classes with 2+ groups and no val image; then the
content-only alternative (a group is val when every member's own score is
under a threshold, which needs no committed set) at several thresholds on
the same images: its val share, the share of val made of grouped images
and the per-class deviation. Leaks of the grown set: run
``benchmarks/neardup_leaks.py WORK/set``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.shardset import shard_format  # noqa: E402
from pipeline.common.config import PreprocessConfig  # noqa: E402
from pipeline.imaging.neardup import group  # noqa: E402
from pipeline.building.preprocess import preprocess  # noqa: E402
from pipeline.building.split import group_score  # noqa: E402


def rows(out: Path) -> dict:
    """path -> (split, sha256, dhash, label) of every stored image."""
    found = {}
    for e in shard_format.read_manifest(out)["shards"]:
        with h5py.File(out / e["file"], "r") as f:
            for p, h, d, lab in zip(f["paths"][...], f["hashes"][...], f["dhash"][...], f["labels"][...]):
                found[p.decode()] = (e["split"], h.decode(), int(d), int(lab))
    return found


def link_tree(src: Path, dst: Path, every: int, held_out: bool) -> None:
    """Links to the files of ``src`` in ``dst``: all but every ``every``-th of each class, or (held_out) those."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(p for p in cls.iterdir() if p.is_file())):
            if (i % every == every - 1) == held_out:
                (dst / cls.name).mkdir(parents=True, exist_ok=True)
                os.symlink(f.resolve(), dst / cls.name / f.name)


def content_only(stored: dict, near_dup: int, seed: int, val_frac: float, thresholds) -> None:
    """The alternative rule on the same images: val when every member's own score is under t."""
    names = sorted(stored)
    labels = np.array([stored[p][3] for p in names])
    g = group(np.array([stored[p][2] for p in names], dtype=np.uint64), near_dup)
    grouped = g.sizes()[g.labels] > 1
    worst = np.zeros(g.num_groups)
    np.maximum.at(worst, g.labels, [group_score(stored[p][1], seed) for p in names])
    print(f"content-only rule ({grouped.mean():.1%} of the images are in near-duplicate groups):")
    for t in thresholds:
        val = worst[g.labels] < t
        dev = [abs(val[labels == c].mean() - val_frac) for c in np.unique(labels)]
        print(f"  t={t:.2f}: val share {val.mean():.2%}, grouped share of val {grouped[val].mean():.1%}, "
              f"class deviation mean {np.mean(dev):.3f} max {np.max(dev):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cfg = PreprocessConfig(size=args.size)
    folder, grown, fresh = args.work / "folder", args.work / "set", args.work / "scratch"
    link_tree(args.data_dir, folder, args.every, held_out=False)
    preprocess(folder, grown, cfg, workers=args.workers)
    before = rows(grown)
    link_tree(args.data_dir, folder, args.every, held_out=True)
    m = preprocess(folder, grown, cfg, workers=args.workers)
    after = rows(grown)
    preprocess(args.data_dir, fresh, cfg, workers=args.workers)
    scratch = rows(fresh)
    to_val = sorted(p for p, r in before.items() if r[0] == "train" and after[p][0] == "val")
    to_train = sorted(p for p, r in before.items() if r[0] == "val" and after[p][0] == "train")
    differ = {p for p, r in after.items() if scratch[p][0] != r[0]}
    listed = {p for k in m["split"]["kept"] for p in k["paths"]}
    print(f"{args.data_dir} at {args.size} px: {len(before)} images, then {len(after)} (every {args.every}th "
          f"file of each class added)")
    print(f"  train -> val: {len(to_val)} {to_val[:5]}; val -> train: {len(to_train)}")
    print(f"  grown vs scratch: {len(differ)} images differ in {len(m['split']['kept'])} kept groups; "
          f"split.kept lists exactly them: {differ == listed}")
    labels = np.array([r[3] for r in after.values()])
    val = np.array([r[0] == "val" for r in after.values()])
    g = group(np.array([r[2] for r in after.values()], dtype=np.uint64), cfg.near_dup)
    multi = [c for c in np.unique(labels) if len(np.unique(g.labels[labels == c])) > 1]
    print(f"  val share {val.mean():.2%} (scratch {np.mean([r[0] == 'val' for r in scratch.values()]):.2%}); "
          f"classes with 2+ groups and no val image: {sum(not val[labels == c].any() for c in multi)} of {len(multi)}")
    dev = [abs(val[labels == c].mean() - cfg.val_frac) for c in np.unique(labels)]
    print(f"  grouped share of val {(g.sizes()[g.labels] > 1)[val].mean():.1%}, class deviation mean "
          f"{np.mean(dev):.3f} max {np.max(dev):.3f}")
    content_only(after, cfg.near_dup, cfg.seed, cfg.val_frac, (0.15, 0.18, 0.20, 0.22))


if __name__ == "__main__":
    main()
