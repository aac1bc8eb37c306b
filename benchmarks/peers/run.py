"""The project against its peers, in one run: write one folder with each system, then read shuffled epochs.

    benchmarks/peers/.venv/bin/python benchmarks/peers/run.py --data-dir ../shared/data/simpsons-real-80 --size 64

Runs in the peers' environment (``setup.sh``): FFCV 1.0.2, LitData,
MosaicML Streaming and WebDataset beside the project (which runs on the
plain Pillow there, so every system stores the very same decoded pixels).

Writing: each system stores every image of the folder squash-resized to
``--size`` as raw uint8 pixels with its label, the way its docs recommend,
with ``--workers`` processes decoding (the project's own decode function
for all, so the pixels agree). Each write runs in a fresh process: its
time, images/s, disk size and peak memory (the process and its children).

Reading: a shuffled epoch of batches of ``--batch`` with ``--workers``
worker processes, the page cache warm. In each of ``--repeats`` rounds,
every system in turn (the order rotating from round to round) opens its
data (open time), reads epoch 1 (first use: compiles, maps, warms) and
epoch 2 (steady state); figures are medians over the rounds. A pixel check
reads every stored image back and compares the multiset of (label, pixel
SHA-256) with the project's. ``memory-limit`` is no loader: the resident
path's gathers alone (random batches from RAM into one reused buffer), the
ceiling the resident path runs against.

``--cold`` (root) then measures the disk (sequential 4 MB reads and random
row-sized reads on 2 threads, each from a dropped page cache) and reads
the project's DataLoader path and FFCV with ``os_cache=False`` with the
page cache dropped before every epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.imaging.decode import decode_file  # noqa: E402
from pipeline.building.discover import discover  # noqa: E402

SHARD_BYTES = 64 << 20   # every system's shard/chunk size where it has one (the project's default shard_mb)


def _decode(task: tuple[str, int, int]) -> tuple[np.ndarray, int]:
    path, label, size = task
    return decode_file(path, size), label


class Folder:
    """The images every system stores: paths, labels, and the decode they share."""

    def __init__(self, root: Path, size: int) -> None:
        disc = discover(root)
        self.root, self.size = root, size
        self.paths = [str(root / rel) for rel, _ in disc.files]
        self.labels = [int(lab) for _, lab in disc.files]
        self.classes = disc.classes

    def tasks(self) -> list[tuple[str, int, int]]:
        return [(p, lab, self.size) for p, lab in zip(self.paths, self.labels)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:   # FFCV's indexed dataset
        return _decode((self.paths[i], self.labels[i], self.size))


# --- the systems -----------------------------------------------------------------------------------

class Project:
    name = "project DataLoader path (cache=none)"
    cache = "none"
    maps_held = True   # persistent workers keep the shards mapped (what --cold must undo between epochs)

    def write(self, folder: Folder, out: Path, workers: int) -> int:
        from pipeline.common.config import PreprocessConfig
        from pipeline.building.preprocess import preprocess

        m = preprocess(folder.root, out, PreprocessConfig(size=folder.size, val_frac=0.0), workers=workers)
        return m["counts"]["train"]

    def open(self, out: Path, batch: int, workers: int, seed: int):
        from pipeline.common.config import LoaderConfig
        from pipeline.reading.loader import create_loader
        from pipeline.shardset.shard_format import open_set

        loader = create_loader(open_set(out).split("train"), LoaderConfig(
            batch_size=batch, workers=workers, cache=self.cache, seed=seed, reuse_buffers=True), train=True)
        epochs = iter(range(1 << 30))

        def epoch():
            loader.set_epoch(next(epochs))
            return loader
        return epoch, loader.close

    def stored(self, out: Path):
        from pipeline.shardset.shard_format import open_set

        split = open_set(out).split("train")
        yield from zip(split.load_all(), split.labels)


class ProjectResident(Project):
    name = "project resident (cache=ram)"
    cache = "ram"


class ProjectShardDataset(Project):
    name = "project ShardDataset + torch DataLoader"

    def open(self, out: Path, batch: int, workers: int, seed: int):
        import torch
        from torch.utils.data import DataLoader

        from pipeline.reading.dataset import ShardDataset
        from pipeline.shardset.shard_format import open_set

        ds = ShardDataset(open_set(out).split("train"))
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True,
                            generator=torch.Generator().manual_seed(seed))
        return (lambda: loader), (lambda: None)


class MemoryLimit(Project):
    """Not a loader: the resident path's work alone, for the ceiling it runs against. A shuffled
    epoch of batches gathered with ``torch.index_select`` from the set in RAM into one reused
    buffer, nothing else (no labels, no loader)."""

    name = "memory limit (random batch gathers from RAM, one process)"

    def open(self, out: Path, batch: int, workers: int, seed: int):
        import torch

        from pipeline.shardset.shard_format import open_set

        images = torch.from_numpy(open_set(out).split("train").load_all())
        buf = torch.empty((batch,) + tuple(images.shape[1:]), dtype=torch.uint8)
        gen = torch.Generator().manual_seed(seed)

        def epoch():
            order = torch.randperm(len(images), generator=gen)
            for i in order.split(batch):
                yield (torch.index_select(images, 0, i, out=buf[: len(i)]),)
        return epoch, (lambda: None)


_GATHER: dict = {}   # a stream-limit process's maps of the shards and its reused message buffer


def _gather_init(root: str) -> None:
    import torch

    from pipeline.reading.dataset import ShardMaps
    from pipeline.shardset.shard_format import open_set

    torch.set_num_threads(1)   # forked from a process with an OpenMP pool: one thread, as DataLoader workers do

    split = open_set(root).split("train")
    _GATHER.update(maps=ShardMaps(split.shards, as_tensor=True), offsets=split.offsets, buf=None)


def _gather_messages(messages: list) -> int:
    """Gather each message's rows, run by run of one shard, into one reused buffer: the loader
    worker's work, without the DataLoader around it."""
    import torch

    maps, offsets = _GATHER["maps"], _GATHER["offsets"]
    n = 0
    for idx in messages:
        if _GATHER["buf"] is None or len(_GATHER["buf"]) < len(idx):
            _GATHER["buf"] = torch.empty((len(idx),) + tuple(maps[0].shape[1:]), dtype=torch.uint8)
        out = _GATHER["buf"]
        sid = np.searchsorted(offsets, idx, side="right") - 1
        cuts = np.flatnonzero(sid[1:] != sid[:-1]) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(idx)]):
            torch.index_select(maps[int(sid[a])], 0, torch.from_numpy(idx[a:b] - offsets[sid[a]]), out=out[a:b])
        n += len(idx)
    return n


class StreamLimit(Project):
    """Not a loader: the streaming path's gathers alone, on as many processes as it has workers.
    A shuffled epoch in the loader's order and message size, its messages dealt to the processes
    in turn, each gathered from the process's maps of the shards into one reused buffer."""

    name = "streaming limit (the workers' gathers alone, no DataLoader)"

    def open(self, out: Path, batch: int, workers: int, seed: int):
        from pipeline.reading.loader import message_plan
        from pipeline.reading.sampler import epoch_order
        from pipeline.shardset.shard_format import open_set

        split = open_set(out).split("train")
        k = message_plan(batch * split.image_size ** 2 * 3, workers, 4)[0]
        pool = mp.get_context("fork").Pool(workers, _gather_init, (str(out),))
        epochs = iter(range(1 << 30))

        def epoch():
            order = epoch_order(split.offsets, split.labels, seed, next(epochs))
            messages = [order[i: i + k * batch] for i in range(0, len(order), k * batch)]
            n = sum(pool.map(_gather_messages, [messages[w::workers] for w in range(workers)], chunksize=1))
            return [(range(n),)]   # one "batch" of n: what _epoch counts
        return epoch, pool.terminate


class FFCV:
    name = "FFCV 1.0.2 (os_cache=True, RANDOM)"
    os_cache = True
    maps_held = False   # --cold reads it with os_cache=False: its own reads, nothing mapped

    def write(self, folder: Folder, out: Path, workers: int) -> int:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

        out.mkdir(parents=True)
        writer = DatasetWriter(str(out / "set.beton"), {"image": RGBImageField(write_mode="raw",
                                                                                max_resolution=folder.size),
                                                         "label": IntField()}, num_workers=workers)
        writer.from_indexed_dataset(folder)
        return len(folder)

    def _loader(self, out: Path, batch: int, workers: int, seed: int, order):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import ToTensor

        pipelines = {"image": [SimpleRGBImageDecoder(), ToTensor()], "label": [IntDecoder(), ToTensor()]}
        return Loader(str(out / "set.beton"), batch_size=batch, num_workers=workers, os_cache=self.os_cache,
                      order=order, seed=seed, drop_last=False, pipelines=pipelines)

    def open(self, out: Path, batch: int, workers: int, seed: int):
        from ffcv.loader import OrderOption

        loader = self._loader(out, batch, workers, seed, OrderOption.RANDOM)
        return (lambda: loader), (lambda: None)

    def stored(self, out: Path):
        from ffcv.loader import OrderOption

        for x, y in self._loader(out, 256, 1, 0, OrderOption.SEQUENTIAL):
            yield from zip(x.numpy(), y.numpy().reshape(-1))


class FFCVNoCache(FFCV):
    """FFCV reading through its own process cache instead of the OS's: its choice for sets larger than RAM."""

    name = "FFCV 1.0.2 (os_cache=False, RANDOM)"
    os_cache = False


def _litdata_sample(task):
    image, label = _decode(task)
    return {"image": image, "label": label}


class LitData:
    name = "LitData 0.2.76"

    def write(self, folder: Folder, out: Path, workers: int) -> int:
        import litdata

        litdata.optimize(fn=_litdata_sample, inputs=folder.tasks(), output_dir=str(out), num_workers=workers,
                         chunk_bytes=SHARD_BYTES)
        return len(folder)

    def open(self, out: Path, batch: int, workers: int, seed: int):
        import litdata

        ds = litdata.StreamingDataset(str(out), shuffle=True, seed=seed)
        loader = litdata.StreamingDataLoader(ds, batch_size=batch, num_workers=workers)
        return (lambda: loader), (lambda: None)

    def stored(self, out: Path):
        import litdata

        for s in litdata.StreamingDataset(str(out)):
            yield np.asarray(s["image"]), int(s["label"])


class Streaming:
    name = "MosaicML Streaming 0.13.0"

    def write(self, folder: Folder, out: Path, workers: int) -> int:
        from streaming import MDSWriter

        # MDSWriter writes from one process; the decodes run on the workers
        with MDSWriter(out=str(out), columns={"image": "ndarray:uint8", "label": "int"},
                       size_limit=SHARD_BYTES) as writer, mp.get_context("fork").Pool(workers) as pool:
            for image, label in pool.imap(_decode, folder.tasks(), chunksize=32):
                writer.write({"image": image, "label": label})
        return len(folder)

    def open(self, out: Path, batch: int, workers: int, seed: int):
        from streaming import StreamingDataset
        from torch.utils.data import DataLoader

        ds = StreamingDataset(local=str(out), shuffle=True, shuffle_seed=seed, batch_size=batch)
        loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=True)
        return (lambda: loader), (lambda: None)

    def stored(self, out: Path):
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(out), shuffle=False)
        for i in range(len(ds)):
            s = ds[i]
            yield np.asarray(s["image"]), int(s["label"])


class WebDataset:
    name = "WebDataset 1.0.2"

    def write(self, folder: Folder, out: Path, workers: int) -> int:
        import webdataset as wds

        out.mkdir(parents=True)
        with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=SHARD_BYTES, verbose=0) as sink, \
                mp.get_context("fork").Pool(workers) as pool:
            for k, (image, label) in enumerate(pool.imap(_decode, folder.tasks(), chunksize=32)):
                sink.write({"__key__": f"{k:08d}", "npy": image, "cls": label})
        return len(folder)

    def _dataset(self, out: Path, shuffle: bool):
        import webdataset as wds

        urls = sorted(str(p) for p in out.glob("shard-*.tar"))
        ds = wds.WebDataset(urls, shardshuffle=shuffle, empty_check=False)
        if shuffle:
            ds = ds.shuffle(1000)
        return ds.decode().to_tuple("npy", "cls")

    def open(self, out: Path, batch: int, workers: int, seed: int):
        import webdataset as wds

        loader = wds.WebLoader(self._dataset(out, True).batched(batch), batch_size=None, num_workers=workers,
                               persistent_workers=True)
        return (lambda: loader), (lambda: None)

    def stored(self, out: Path):
        for image, label in self._dataset(out, False):
            yield np.asarray(image), int(label)


SYSTEMS = {"project": Project, "project-resident": ProjectResident, "project-shard-dataset": ProjectShardDataset,
           "memory-limit": MemoryLimit, "stream-limit": StreamLimit, "ffcv": FFCV, "ffcv-nocache": FFCVNoCache,
           "litdata": LitData, "streaming": Streaming, "webdataset": WebDataset}
WRITERS = ("project", "ffcv", "litdata", "streaming", "webdataset")   # the project's readers share one set
STORE = {"project-resident": "project", "project-shard-dataset": "project", "memory-limit": "project",
         "stream-limit": "project",
         "ffcv-nocache": "ffcv"}
COLD = ("project", "ffcv-nocache")   # what --cold reads (the systems that stream a set larger than RAM)


# --- measuring -------------------------------------------------------------------------------------

def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_child(conn, key: str, data_dir: str, size: int, out: str, workers: int) -> None:
    folder = Folder(Path(data_dir), size)
    t = time.perf_counter()
    n = SYSTEMS[key]().write(folder, Path(out), workers)
    dt = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    conn.send((n, dt, peak))


def write_all(args, work: Path, writers: list[str]) -> dict:
    res = {}
    for key in writers:
        out = work / key
        shutil.rmtree(out, ignore_errors=True)
        recv, send = mp.get_context("spawn").Pipe(duplex=False)
        proc = mp.get_context("spawn").Process(target=_write_child,
                                               args=(send, key, str(args.data_dir), args.size, str(out), args.workers))
        proc.start()
        n, dt, peak = recv.recv()
        proc.join()
        res[key] = {"images": n, "seconds": dt, "images_per_s": n / dt, "disk_mb": _du(out) / 1e6,
                    "peak_mb": peak}
        print(f"write {key:12s} {n} images in {dt:.1f} s: {n / dt:,.0f} img/s, {_du(out) / 1e6:,.0f} MB on disk, "
              f"peak {peak:,.0f} MB", flush=True)
    return res


def pixel_check(work: Path, writers: list[str]) -> dict:
    def digest_of(key):
        return sorted((int(y), hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
                      for x, y in SYSTEMS[key]().stored(work / key))

    ref = digest_of("project")
    same = {}
    for key in writers[1:]:
        got = digest_of(key)
        # the project drops byte-identical files (duplicates); the others keep them
        same[key] = sorted(set(got)) == sorted(set(ref)) and len(got) >= len(ref)
        print(f"pixels {key:12s} {len(got)} images; same (label, pixels) as the project's: {same[key]}", flush=True)
    return same


def _epoch(loader) -> int:
    n = 0
    for batch in loader:   # (images, labels), or LitData's {"image": ..., "label": ...}
        n += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return n


def read_all(args, work: Path, keys: list[str], cold: bool = False) -> dict:
    """Rounds of (open, epoch 1, epoch 2) per system, the order rotating; with ``cold``, the page
    cache dropped before every epoch."""
    rounds = {k: {"open_s": [], "epoch1": [], "epoch2": []} for k in keys}
    for r in range(args.repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:   # rotate who goes first
            system, where = SYSTEMS[key](), work / STORE.get(key, key)
            t = time.perf_counter()
            epoch, close = system.open(where, args.batch, args.workers, args.seed + r)
            rounds[key]["open_s"].append(time.perf_counter() - t)
            for e in ("epoch1", "epoch2"):
                if cold and e == "epoch2" and getattr(system, "maps_held", False):
                    # its workers hold the shards mapped, and the kernel never drops mapped pages:
                    # a fresh loader (its start included) reads the second epoch from the disk
                    close()
                    epoch, close = system.open(where, args.batch, args.workers, args.seed + r)
                if cold:
                    drop_caches()
                t = time.perf_counter()
                n = _epoch(epoch())
                rounds[key][e].append(n / (time.perf_counter() - t))
            close()
            print(f"{'cold ' if cold else ''}round {r + 1} {key:22s} open {rounds[key]['open_s'][-1]:.2f} s, epoch 1 "
                  f"{rounds[key]['epoch1'][-1]:,.0f} img/s, epoch 2 {rounds[key]['epoch2'][-1]:,.0f} img/s", flush=True)
    return {k: {f: statistics.median(v[f]) for f in v} | {"rounds": v} for k, v in rounds.items()}


# --- a cold page cache (--cold) ----------------------------------------------------------------------

def drop_caches() -> None:
    """Write back and drop the page cache (root): the next read of every file comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def disk_limits(files: list[Path], row_bytes: int, reads: int = 4000, threads: int = 2) -> dict:
    """The disk's speed on these files, each measured from a cold cache: sequential (4 MB reads, file
    after file) and random (``reads`` row-sized reads at random row offsets on ``threads`` threads,
    as two loader workers would)."""
    from concurrent.futures import ThreadPoolExecutor

    drop_caches()
    t, total = time.perf_counter(), 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(4 << 20):
                total += len(chunk)
    seq = total / (time.perf_counter() - t)
    drop_caches()
    rng = np.random.default_rng(0)
    sizes = [f.stat().st_size for f in files]
    picks = [(int(k), int(rng.integers(0, max(sizes[k] // row_bytes - 1, 1))) * row_bytes)
             for k in rng.integers(0, len(files), reads)]
    fds = [os.open(f, os.O_RDONLY) for f in files]
    try:
        def one(pick):
            return len(os.pread(fds[pick[0]], row_bytes, pick[1]))
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            got = sum(pool.map(one, picks))
        rand = got / (time.perf_counter() - t)
    finally:
        for fd in fds:
            os.close(fd)
    return {"sequential_mb_s": seq / 1e6, "random_mb_s": rand / 1e6, "random_rows_per_s": rand / row_bytes,
            "sequential_rows_per_s": seq / row_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/peers-bench"), help="where the sets are written")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cold", action="store_true",
                    help="also read with the page cache dropped before every epoch (root), and measure the disk")
    args = ap.parse_args()
    keys = [k for k in args.systems.split(",") if k]
    if args.cold:
        try:
            drop_caches()
        except OSError as exc:
            ap.error(f"--cold drops the page cache through /proc/sys/vm/drop_caches ({exc.strerror}): run as root")
    unknown = set(keys) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    work = args.work / f"{args.size}px"
    work.mkdir(parents=True, exist_ok=True)
    for p in Path(args.data_dir).rglob("*"):   # the page cache warm for every writer
        if p.is_file():
            p.read_bytes()
    # the sets the chosen systems read (the project's always: the pixel check compares with it)
    needed = {STORE.get(k, k) for k in keys} | {"project"} | ({"ffcv"} if args.cold else set())
    writers = [w for w in WRITERS if w in needed]
    writes = write_all(args, work, writers)
    same = pixel_check(work, writers)
    reads = read_all(args, work, keys)
    cold = disk = None
    if args.cold:
        shards = sorted((work / "project").glob("*.h5"))
        disk = disk_limits(shards, args.size * args.size * 3)
        print(f"disk, cold: sequential {disk['sequential_mb_s']:,.0f} MB/s ({disk['sequential_rows_per_s']:,.0f} "
              f"images/s), random row reads on 2 threads {disk['random_mb_s']:,.0f} MB/s "
              f"({disk['random_rows_per_s']:,.0f} images/s)", flush=True)
        cold = read_all(args, work, list(COLD), cold=True)
    result = {"config": vars(args) | {"data_dir": str(args.data_dir), "work": str(args.work),
                                      "json": str(args.json)},
              "writes": writes, "pixels_same": same, "reads": reads, "cold_reads": cold, "disk": disk,
              "versions": _versions(), "cpu": os.cpu_count()}
    print("\n| system | write img/s | disk MB | peak MB (write) | open s | read img/s, epoch 1 | epoch 2 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in keys:
        rd = reads[key]
        w = writes[key] if key in writes else None   # the project's other readers read its one set
        wrote = f"{w['images_per_s']:,.0f} | {w['disk_mb']:,.0f} | {w['peak_mb']:,.0f}" if w else "(same set) | |"
        print(f"| {SYSTEMS[key].name} | {wrote} | {rd['open_s']:.2f} | {rd['epoch1']:,.0f} | {rd['epoch2']:,.0f} |")
    if cold:
        print("\n| cold page cache | read img/s, epoch 1 | epoch 2 |\n| --- | ---: | ---: |")
        for key, rd in cold.items():
            print(f"| {SYSTEMS[key].name} | {rd['epoch1']:,.0f} | {rd['epoch2']:,.0f} |")
    # ratios within each round (the rounds interleave the systems), then their median
    pairs = [("project", "ffcv"), ("project-resident", "ffcv"), ("project-resident", "memory-limit"),
             ("project", "stream-limit"), ("stream-limit", "ffcv")]
    result["ratios_epoch2"] = {}
    for a, b in pairs:
        if a in reads and b in reads:
            within = [x / y for x, y in zip(reads[a]["rounds"]["epoch2"], reads[b]["rounds"]["epoch2"])]
            result["ratios_epoch2"][f"{a}/{b}"] = statistics.median(within)
            print(f"epoch 2, {a} / {b}: {statistics.median(within):.2f}x (rounds: "
                  f"{', '.join(f'{r:.2f}' for r in within)})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ffcv", "litdata", "mosaicml-streaming", "webdataset", "torch", "numpy", "pillow", "pillow-simd"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
