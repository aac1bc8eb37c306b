"""A node's cache of a set in object storage: fetched once, checked, evicted in rank order (fetch time,
or the loader's plan), never while open, never a file it did not fetch; and an epoch order that a
half-size cache serves half of."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import time

import fsspec
import numpy as np
import pytest

from pipeline.building.publish import publish
from pipeline.common.config import PreprocessConfig, StorageConfig
from pipeline.common.errors import DiskFullError
from pipeline.reading.loader import create_loader
from pipeline.shardset.sets import open_set
from pipeline.storage import store as store_module
from pipeline.storage.cache import CacheFullError, ShardCache, fetch_log
from pipeline.storage.store import Store, StoreError
from tests.conftest import make_easy_set


@pytest.fixture(scope="module")
def shared_set(s3_module, tmp_path_factory):
    """A 4-class set of 16 small train shards, published once for the module: its URL (never altered)."""
    tmp = tmp_path_factory.mktemp("published")
    url = f"{s3_module}/set"
    publish(make_easy_set(tmp / "data"), url, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.015),
            StorageConfig(cache_dir=str(tmp / "publisher")), workers=1)
    return url


@pytest.fixture()
def published(shared_set, s3):
    """The module's set, this test pointed at the store."""
    return shared_set


def _reader(tmp_path, limit=0, name="cache"):
    return StorageConfig(cache_dir=str(tmp_path / name), cache_limit=limit)


def test_each_shard_is_fetched_once_and_a_changed_copy_again(published, tmp_path):
    storage = _reader(tmp_path)
    split = open_set(published, storage=storage).split("train")
    first = split.load_all()
    assert np.array_equal(open_set(published, storage=storage).split("train").load_all(), first)
    log = fetch_log(tmp_path / "cache")
    assert sorted(sha for sha, _ in log) == sorted(s.source.entry["sha256"] for s in split.shards)
    victim = split.shards[0].source.entry["sha256"]
    path = tmp_path / "cache" / "objects" / f"{victim}.h5"
    path.write_bytes(path.read_bytes())   # same bytes, a new file: not what the cache checked
    assert np.array_equal(open_set(published, storage=storage).split("train").load_all(), first)
    assert [sha for sha, _ in fetch_log(tmp_path / "cache")].count(victim) == 2


def test_an_altered_object_is_fetched_again_once_then_refused(published, s3, tmp_path):
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    copy = f"{s3}/copy"   # the module's set stays as published: the test alters its own copy
    for p in fs.ls(published[5:]):
        fs.copy(p, f"{copy[5:]}/{p.rsplit('/', 1)[1]}")
    sset = open_set(copy, storage=_reader(tmp_path))
    entry = sset.manifest["shards"][0]
    path = f"{copy[5:]}/{entry['file']}"
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with pytest.raises(StoreError, match="differ from the manifest's SHA-256 on two fetches"):
        sset.cache.ensure(sset.store, entry["file"], entry["sha256"], entry["bytes"])
    assert not list((tmp_path / "cache" / "objects").glob("*.ok"))   # nothing trusted
    assert not list((tmp_path / "cache" / "objects").glob("*.h5*"))  # nor kept


def test_a_truncated_fetch_is_tried_again_and_then_used(published, tmp_path, monkeypatch):
    sset = open_set(published, storage=_reader(tmp_path))
    entry = sset.manifest["shards"][0]
    real, calls = Store.download, []

    def truncating(self, name, dest, chunk=8 << 20):
        got = real(self, name, dest, chunk)
        calls.append(name)
        if len(calls) == 1:   # the connection closed early: a short file
            with open(dest, "r+b") as fh:
                fh.truncate(entry["bytes"] // 2)
            return entry["bytes"] // 2, "0" * 64
        return got

    monkeypatch.setattr(Store, "download", truncating)
    path = sset.cache.ensure(sset.store, entry["file"], entry["sha256"], entry["bytes"])
    assert len(calls) == 2 and path.stat().st_size == entry["bytes"]


def test_eviction_goes_by_rank_never_an_open_shard_never_a_file_it_did_not_fetch(published, tmp_path):
    sset = open_set(published, storage=_reader(tmp_path))
    entries = [e for e in sset.manifest["shards"] if e["split"] == "train"][:4]
    biggest = max(e["bytes"] for e in entries)
    cache = ShardCache(tmp_path / "cache", limit=2 * biggest + 1)
    objects = tmp_path / "cache" / "objects"
    foreign = [objects / "mine.h5", objects / f"{entries[3]['sha256']}.h5.bak"]
    for f in foreign:
        f.write_bytes(b"a user's file")
    a, b, c = entries[:3]
    held = cache.use(a["sha256"])             # open: a reader maps it
    cache.ensure(sset.store, a["file"], a["sha256"], a["bytes"])
    cache.ensure(sset.store, b["file"], b["sha256"], b["bytes"])
    cache.ensure(sset.store, c["file"], c["sha256"], c["bytes"])   # over the limit: b goes, not the open a
    assert cache.cached(a["sha256"], a["bytes"]) and cache.cached(c["sha256"], c["bytes"])
    assert not cache.path(b["sha256"]).exists()
    held.close()
    cache.rank(c["sha256"], time.time_ns())   # c ranked newest (a loader reads it next): a goes first
    cache.ensure(sset.store, b["file"], b["sha256"], b["bytes"])
    assert not cache.path(a["sha256"]).exists() and cache.cached(c["sha256"], c["bytes"])
    assert all(f.read_bytes() == b"a user's file" for f in foreign)


def test_a_cache_too_small_for_one_shard_is_one_line_naming_the_limit_and_the_set(published, tmp_path):
    sset = open_set(published, storage=_reader(tmp_path, limit=1000))
    with pytest.raises(CacheFullError) as exc:
        sset.split("train").load_all()
    text = str(exc.value)
    assert "\n" not in text and "--cache-limit 1,000 bytes" in text and "the set is" in text


def test_a_full_disk_while_fetching_is_one_line_naming_the_cache(published, tmp_path, monkeypatch):
    sset = open_set(published, storage=_reader(tmp_path))
    entry = sset.manifest["shards"][0]
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".part"):
            fh.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return fh

    monkeypatch.setattr(store_module, "open", full, raising=False)
    with pytest.raises(DiskFullError, match="the shard cache.*--cache-limit"):
        sset.cache.ensure(sset.store, entry["file"], entry["sha256"], entry["bytes"])
    assert not list((tmp_path / "cache" / "objects").glob("*.part"))


def _load(url, storage, queue):
    queue.put(len(open_set(url, storage=storage).split("train").load_all()))


def test_processes_of_one_node_share_the_cache_and_fetch_each_shard_once(published, tmp_path):
    storage = _reader(tmp_path)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(published, storage, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    counts = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(counts)) == 1 and counts[0] > 0
    shas = [sha for sha, _ in fetch_log(tmp_path / "cache")]
    assert len(shas) == len(set(shas)) == len(open_set(published, storage=storage).split("train").shards)


def _epoch_fetches(url, tmp_path, windows: bool, epochs=5):
    """(bytes fetched in each epoch through a cache of half the train split, the split's bytes, its biggest shard)."""
    split = open_set(url, storage=_reader(tmp_path)).split("train")
    sizes = [s.source.entry["bytes"] for s in split.shards]
    storage = _reader(tmp_path, limit=sum(sizes) // 2, name=f"half-{windows}")
    split = open_set(url, storage=storage).split("train")
    loader = create_loader(split, batch_size=4, workers=0, cache="none", seed=3)
    if not windows:   # a plain shuffle through a plain least-recently-fetched cache: no plan, no ranks
        loader.sampler.windows = 0
        loader.prefetch.close()
        loader.prefetch = None
    per_epoch, seen = [], 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        assert sum(len(y) for _, y in loader) == len(split)
        log = fetch_log(tmp_path / f"half-{windows}")
        per_epoch.append(sum(b for _, b in log[seen:]))
        seen = len(log)
    loader.close()
    return per_epoch, sum(sizes), max(sizes)


def test_a_half_size_cache_refetches_half_the_set_an_epoch(published, tmp_path):
    per_epoch, total, shard = _epoch_fetches(published, tmp_path, windows=True)
    assert per_epoch[0] == total
    # what the cache cannot hold, give or take the one shard that does not fit whole: half the set
    assert all(n <= total - total // 2 + shard for n in per_epoch[1:]), (per_epoch, total, shard)
    shuffled, _, _ = _epoch_fetches(published, tmp_path, windows=False)
    assert sum(shuffled[1:]) > 1.5 * sum(per_epoch[1:]), (shuffled, per_epoch)   # what that costs instead
