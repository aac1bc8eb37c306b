"""A build at a million images: a scratch build, then the folder grown by 1%, with time and peak memory.

    python benchmarks/scale.py --work /tmp/scale --images 1000000 --grow 0.01

Generates ``--images`` distinct tiny images (random 24x24 RGB noise saved as
JPEG, so every file's bytes and nearly every perceptual hash differ) in 42
class folders under WORK/data (kept between runs: generating is not what is
measured), builds them into WORK/shards at 16 px from scratch, adds
``--grow`` more files (after RACY_NS, as a folder that has lain a while),
and builds again into the same folder. Each build runs in a fresh process,
so its peak memory (the main process's and the largest worker's, from
``getrusage``) is its own. Prints and writes WORK/scale.json: images,
seconds, img/s, the main process's CPU per image and peak memory of each
build, what the grown build did, and the grown build's time against the
scratch build's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.building.reuse import RACY_NS  # noqa: E402

CLASSES = 42


def _write(task: tuple[str, int, int]) -> int:
    root, start, count = task
    rng = np.random.default_rng(start)
    for k in range(start, start + count):
        px = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(px, "RGB").save(f"{root}/c{k % CLASSES:02d}/img{k:07d}.jpg", quality=90)
    return count


def generate(root: Path, first: int, count: int, workers: int) -> None:
    for c in range(CLASSES):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    step = 5000
    tasks = [(str(root), s, min(step, first + count - s)) for s in range(first, first + count, step)]
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write, tasks):
            pass


def _build(conn, data: str, out: str, size: int, workers: int) -> None:
    from pipeline.building.preprocess import preprocess
    from pipeline.common.config import PreprocessConfig

    t, cpu = time.perf_counter(), time.process_time()
    m = preprocess(Path(data), Path(out), PreprocessConfig(size=size), workers=workers)
    seconds, main_cpu = time.perf_counter() - t, time.process_time() - cpu
    images = m["counts"]["train"] + m["counts"]["val"]
    conn.send({"images": images, "files": m["files_found"], "seconds": seconds, "images_per_s": images / seconds,
               "main_cpu_us_per_image": 1e6 * main_cpu / max(images, 1),
               "peak_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "peak_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
               "work": m.get("work"), "timings": m["timings"],
               "manifest_mb": (Path(out) / "manifest.json").stat().st_size / 1e6})


def build(data: Path, out: Path, size: int, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_build, args=(send, str(data), str(out), size, workers))
    proc.start()
    result = recv.recv()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--grow", type=float, default=0.01)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data, out = args.work / "data", args.work / "shards"
    added = int(args.images * args.grow)
    have = sum(1 for _ in data.rglob("*.jpg")) if data.is_dir() else 0
    if have < args.images:
        t = time.perf_counter()
        generate(data, have, args.images - have, args.workers)
        print(f"generated {args.images - have} images in {time.perf_counter() - t:.0f} s", flush=True)
    for p in data.rglob("*.jpg"):
        if int(p.stem[3:]) >= args.images:
            p.unlink()          # what a previous run added
    if out.exists():
        import shutil
        shutil.rmtree(out)
    time.sleep(RACY_NS / 1e9)
    scratch = build(data, out, args.size, args.workers)
    print("scratch:", json.dumps({k: v for k, v in scratch.items() if k != "timings"}), flush=True)
    generate(data, args.images, added, args.workers)
    time.sleep(RACY_NS / 1e9)
    grown = build(data, out, args.size, args.workers)
    print("grown:", json.dumps({k: v for k, v in grown.items() if k != "timings"}), flush=True)
    ratio = grown["seconds"] / scratch["seconds"]
    print(f"{args.images:,} images, +{added:,}: scratch {scratch['seconds']:.1f} s "
          f"(peak {scratch['peak_main_mb']:.0f} MB main, {scratch['peak_worker_mb']:.0f} MB a worker), grown "
          f"{grown['seconds']:.1f} s (peak {grown['peak_main_mb']:.0f} / {grown['peak_worker_mb']:.0f} MB): "
          f"{ratio:.1%} of scratch")
    (args.work / "scale.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "scratch": scratch, "grown": grown, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
