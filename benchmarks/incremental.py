"""What an incremental build costs against one from scratch, on a folder grown by a few percent.

    python benchmarks/incremental.py --data-dir ../shared/data/simpsons-real-80 --size 64 --grow 0.05 --rounds 3

Each round copies the folder without every ``1/grow``-th file of each class
(a fresh copy, so no round reads another's), builds it, adds the held-back
files and times the incremental build; then times a build of the whole
folder from scratch into another folder, and checks that both hold the same
shards byte for byte and the same manifest apart from its timings. Prints
both times, their ratio, what the incremental build decoded and reused,
and the scratch build's time outside its decode phase: the floor of any
build that writes the same shards. With reading and hashing every file
(the bytes decide what is reused) and the new files' share of the scratch
build's decode phase, that floor gives the best ratio reachable here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.common.config import PreprocessConfig  # noqa: E402
from pipeline.building.preprocess import preprocess  # noqa: E402
from pipeline.building.reuse import RACY_NS  # noqa: E402

# what may differ between equal builds: placed_before (how many sides a grown set kept), sources (file stats)
VARYING = ("timings", "environment", "workers", "placed_before", "sources")


def _sha_of(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def hash_pass(data: Path, workers: int) -> float:
    """Seconds to read and SHA-256 every file on ``workers`` processes: what any build that lets the
    bytes decide pays before it can reuse a row."""
    import multiprocessing as mp

    files = [str(p) for p in sorted(data.rglob("*")) if p.is_file()]
    t = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        list(pool.imap_unordered(_sha_of, files, chunksize=64))
    return time.perf_counter() - t


def same_set(a: Path, b: Path) -> str:
    """Whether two builds hold the same shards and manifest; else whether they hold the same images.

    Under split rule 3 a grown set keeps the sides its images had, where a build from scratch may
    place a few otherwise (benchmarks/history/split.md "Split under growth"): then the shards differ
    and the images they hold do not."""
    def digest(root: Path) -> tuple[dict, dict, list]:
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.h5"))}
        m = {k: v for k, v in json.loads((root / "manifest.json").read_text()).items() if k not in VARYING}
        rows = []
        for p in sorted(root.glob("*.h5")):
            with h5py.File(p, "r") as f:
                rows += [bytes(h) for h in f["hashes"][...]]
        return files, m, sorted(rows)
    (fa, ma, ra), (fb, mb, rb) = digest(a), digest(b)
    if fa == fb and ma == mb:
        return "same shards and manifest"
    return f"same images: {ra == rb}; sides differ where the grown set kept them (split rule 3)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--grow", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    every = round(1 / args.grow)
    cfg = PreprocessConfig(size=args.size)
    ratios, bests = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="incremental-") as tmp:
            data, held = Path(tmp) / "data", []
            for cls in sorted(p for p in args.data_dir.iterdir() if p.is_dir()):
                for k, f in enumerate(sorted(p for p in cls.iterdir() if p.is_file())):
                    (data / cls.name).mkdir(parents=True, exist_ok=True)
                    if k % every == every - 1:
                        held.append((f, data / cls.name / f.name))
                    else:
                        shutil.copyfile(f, data / cls.name / f.name)
            # a folder's files have lain there a while before it grows; files modified within RACY_NS of
            # their reading are read again next time (pipeline/building/reuse.py), as git's racy entries
            time.sleep(RACY_NS / 1e9)
            preprocess(data, Path(tmp) / "grown", cfg, workers=args.workers)
            for src, dst in held:
                shutil.copyfile(src, dst)
            t = time.perf_counter()
            m = preprocess(data, Path(tmp) / "grown", cfg, workers=args.workers)
            incremental = time.perf_counter() - t
            t = time.perf_counter()
            ms = preprocess(data, Path(tmp) / "scratch", cfg, workers=args.workers)
            scratch = time.perf_counter() - t
            # what a build pays however few images it decodes, measured in this scratch run:
            # discovery, grouping, split, statistics, rewriting every shard, the commit
            floor = scratch - ms["timings"]["decode_s"]
            hashing = hash_pass(data, args.workers)
            same = same_set(Path(tmp) / "grown", Path(tmp) / "scratch")
            new = ms["timings"]["decode_s"] * m["work"]["decoded"] / ms["files_found"]
            # files known unchanged by their stat are not read (reuse.ReuseIndex.known): only the rest are hashed
            read = 1 - m["work"]["unread"] / ms["files_found"]
            best = (floor + hashing * read + new) / scratch
            ratios.append(incremental / scratch)
            bests.append(best)
            print(f"round {r + 1}: {len(held)} files added to {m['files_found'] - len(held)}; incremental "
                  f"{incremental:.2f} s ({m['work']['decoded']} decoded, {m['work']['reused']} reused, {m['work']['unread']} "
                  f"unread; "
                  f"decode {m['timings']['decode_s']:.2f} s, write {m['timings']['write_s']:.2f} s), from scratch "
                  f"{scratch:.2f} s: {incremental / scratch:.1%} (a build without its decode phase: {floor:.2f} s, "
                  f"{floor / scratch:.1%}; reading and hashing every file: {hashing:.2f} s, {hashing / scratch:.1%}, "
                  f"{read:.1%} of them read here; with the new files' decodes, {new:.2f} s: best "
                  f"reachable {best:.1%}); {same}", flush=True)
    print(f"median incremental / scratch: {statistics.median(ratios):.1%}; best reachable: "
          f"{statistics.median(bests):.1%}")


if __name__ == "__main__":
    main()
