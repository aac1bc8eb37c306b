"""A shard set read from object storage against the store's own rate and the same set on local disk.

    python benchmarks/remote.py --shards shards-r80-64 --workers 2 --batch-size 256 --epochs 3

Starts moto's S3 server on 127.0.0.1 (the test extra), uploads a local
shard set to it as it is, and measures in one run:

* the store's own read rate: every shard object read with plain fsspec
  (``cat_file``) on as many connections as the loader's prefetcher uses
  (pipeline.reading.prefetch.CONNECTIONS), as images per second;
* epoch 1 from the store through an empty cache (the loader's streaming
  path, no model), epoch 2 from the warm cache, and the same loader over
  the local set (best of two epochs): images per second;
* time to first batch from an empty cache, against one shard's fetch (and
  the local set's, which has the same loader start: workers, their ring);
* a cache limit of half the set: shards fetched in each epoch after the
  first (the bound is half the set).

Prints one JSON object (the configs included) and the ratios the issue
sets targets for: epoch 1 / store rate >= 0.90, epoch 2 / local >= 0.95,
first batch <= one shard's fetch + 1 s, half cache <= 50% per epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.common.config import LoaderConfig, StorageConfig  # noqa: E402
from pipeline.reading.loader import create_loader  # noqa: E402
from pipeline.reading.prefetch import CONNECTIONS  # noqa: E402
from pipeline.shardset import shard_format  # noqa: E402
from pipeline.shardset.sets import open_set  # noqa: E402
from pipeline.storage.cache import fetch_log  # noqa: E402
from tests.servers import MotoServer, s3_env  # noqa: E402


def epoch_rate(split, cfg: LoaderConfig, epochs: int, first_batch: bool = False) -> tuple[list[float], float]:
    """Images per second of each epoch of the streaming loader (and the first batch's delay, when asked)."""
    t0 = time.perf_counter()
    loader = create_loader(split, cfg, cache="none")
    rates, first = [], 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        n = 0
        for _, y in loader:
            if first_batch and not first:
                first = time.perf_counter() - t0
            n += len(y)
        rates.append(n / (time.perf_counter() - t))
    loader.close()
    return rates, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, required=True, help="a local shard set to upload and read back")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    manifest = shard_format.check_set(args.shards)
    train = [e for e in manifest["shards"] if e["split"] == "train"]
    images = sum(e["count"] for e in train)
    nbytes = sum(e["bytes"] for e in train)
    server = MotoServer()
    os.environ.update({k: v for k, v in s3_env(server.endpoint).items() if k.startswith("AWS_")})
    work = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        for p in sorted(args.shards.iterdir()):
            if p.name == "manifest.json" or shard_format.SHARD_NAME.match(p.name):
                fs.put_file(str(p), f"bench/set/{p.name}")
        url = "s3://bench/set"
        cfg = LoaderConfig(batch_size=args.batch_size, workers=args.workers, augment=False, seed=0)

        # the store's own rate: every train shard object, plain fsspec, CONNECTIONS at once
        reader = fsspec.filesystem("s3", skip_instance_cache=True)
        t = time.perf_counter()
        with ThreadPoolExecutor(CONNECTIONS) as ex:
            got = sum(len(b) for b in ex.map(lambda e: reader.cat_file(f"bench/set/{e['file']}"), train))
        store_s = time.perf_counter() - t
        assert got == nbytes
        t = time.perf_counter()
        reader.cat_file(f"bench/set/{train[0]['file']}")
        one_shard_s = time.perf_counter() - t

        storage = StorageConfig(cache_dir=str(work / "cache"))
        t = time.perf_counter()
        split = open_set(url, storage=storage).split("train")
        open_s = time.perf_counter() - t
        remote_rates, first = epoch_rate(split, cfg, 2, first_batch=True)
        local_rates, local_first = epoch_rate(shard_format.open_set(args.shards).split("train"), cfg, 2,
                                              first_batch=True)

        half = StorageConfig(cache_dir=str(work / "half"), cache_limit=nbytes // 2)
        hsplit = open_set(url, storage=half).split("train")
        loader = create_loader(hsplit, cfg, cache="none")
        fetched, seen = [], 0
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for _ in loader:
                pass
            log = fetch_log(work / "half")
            fetched.append(sum(b for _, b in log[seen:]))
            seen = len(log)
        loader.close()
        store_rate = images / store_s
        result = {
            "shards": str(args.shards), "train_images": images, "train_bytes": nbytes, "train_shards": len(train),
            "loader": dataclasses.asdict(cfg), "connections": CONNECTIONS,
            "store_img_s": store_rate, "store_mb_s": nbytes / store_s / 1e6, "one_shard_fetch_s": one_shard_s,
            "open_s": open_s, "first_batch_s": first, "local_first_batch_s": local_first,
            "epoch1_img_s": remote_rates[0], "epoch2_img_s": remote_rates[1], "local_img_s": max(local_rates),
            "half_cache_fetched_share": [f / nbytes for f in fetched],
            "ratios": {"epoch1_vs_store": remote_rates[0] / store_rate,
                       "epoch2_vs_local": remote_rates[1] / max(local_rates),
                       "first_batch_minus_one_shard_s": first - one_shard_s,
                       "half_cache_worst_refetch": max(f / nbytes for f in fetched[1:]) if len(fetched) > 1 else None},
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
