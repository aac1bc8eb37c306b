"""Opening a shard set wherever it lives: a local folder, or a URL read through the node's cache.

``open_set("shards")`` checks a local set (:func:`shard_format.open_set`);
``open_set("s3://bucket/set")`` reads the set's manifest from the store,
checks it as a local one's, and opens splits whose shards are fetched into
the node's cache (:class:`~pipeline.storage.cache.ShardCache`) when a
reader first needs them, each checked against the manifest's SHA-256
before use. The labels come from the manifest, so the epoch order, and
with it the first batch, needs no shard but the first one it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..common.config import StorageConfig
from ..common.untrusted import MANIFEST_BYTES, parse_json
from ..storage.cache import ShardCache, default_cache_dir
from ..storage.store import Store, StoreError, is_url, local_folder
from . import shard_format
from .header import identity
from .shard_format import FIX, MANIFEST, SPLITS, Shard, ShardError, ShardSet, SplitSet


def open_set(location, checksums: bool = True, storage: Optional[StorageConfig] = None) -> ShardSet:
    """Check a shard set and open it: a local folder (or ``file://``), or an ``s3://``, ``gs://``,
    ``http(s)://`` URL read through the cache ``storage`` names.

    Raises:
        ShardError: missing, incomplete, stale or corrupt, naming the shard and the fix.
        StoreError: the store unreachable, refusing, or without the object.
    """
    folder = local_folder(str(location) if is_url(str(location)) else location)
    if folder is not None:
        return shard_format.open_set(folder, checksums=checksums)
    return open_remote(str(location), storage or StorageConfig())


def read_remote_manifest(store: Store) -> dict:
    """The manifest at ``store``, checked as a local one is (:func:`shard_format.check_manifest`)."""
    where = store.where(MANIFEST)
    data = store.read(MANIFEST, limit=MANIFEST_BYTES)
    return shard_format.check_manifest(
        parse_json(data, where, "a manifest", error=lambda why: ShardError(f"{why}; {FIX}")), where)


def open_cache(storage: StorageConfig, set_bytes: int = 0) -> ShardCache:
    folder = Path(storage.cache_dir) if storage.cache_dir else default_cache_dir()
    return ShardCache(folder, storage.cache_limit or None, set_bytes)


def open_remote(url: str, storage: StorageConfig) -> "RemoteShardSet":
    """A set in object storage, its manifest checked and every shard's labels read from it."""
    store = Store(url)
    manifest = read_remote_manifest(store)
    for e in manifest["shards"]:   # every label recorded, before anything is fetched
        shard_format.decode_labels(manifest, e, store.where(MANIFEST))
    cache = open_cache(storage, sum(e["bytes"] for e in manifest["shards"]))
    return RemoteShardSet(url, manifest, store=store, cache=cache)


@dataclass
class RemoteShard:
    """A shard in the store: fetched through the cache, checked, then mapped (:meth:`Shard.images_map`)."""

    store: Store
    cache: ShardCache
    entry: dict
    labels: np.ndarray
    class_names: list
    image_size: int
    _expected: str = field(default="", repr=False)

    def fetch(self, wait: bool = True, evict_below: Optional[int] = None, rank: Optional[int] = None) -> Optional[Path]:
        e = self.entry
        return self.cache.ensure(self.store, e["file"], e["sha256"], e["bytes"], wait=wait, evict_below=evict_below,
                                 rank=rank)

    def expected(self) -> str:
        """What the manifest says of this shard's content, as one digest (what a check of the file compared)."""
        h = hashlib.sha256(json.dumps([self.class_names, self.entry["split"], self.image_size]).encode())
        h.update(np.asarray(self.labels, dtype="<i2").tobytes())
        return h.hexdigest()

    def images(self) -> np.ndarray:
        """The shard's images, mapped from the cache; the map holds a lease, so it is never evicted while open.

        The file's header is checked against the manifest once per cached
        file: the result, with the offset of its pixel block, goes into the
        cache's record, so the loader's workers map it without opening HDF5.
        """
        e = self.entry
        lease = self.cache.use(e["sha256"])
        try:
            mark = self.cache.marker(e["sha256"], e["bytes"])   # here and checked: one read of its record
            path = self.cache.path(e["sha256"]) if mark is not None else self.fetch()
            mark = mark or self.cache.marker(e["sha256"], e["bytes"]) or {}
            expected = self._expected or self.expected()
            self._expected = expected
            if mark.get("checked") == expected and isinstance(mark.get("offset"), int):
                shard = Shard(path, int(e["count"]), self.image_size, mark["offset"], identity(os.stat(path)))
            else:
                shard, attrs, labels = shard_format.open_shard(path)
                if attrs.get("class_names") != self.class_names or attrs.get("split") != e["split"] \
                        or shard.image_size != self.image_size or not np.array_equal(labels, self.labels):
                    raise ShardError(f"{self.store.where(e['file'])}: its split, classes, size or labels differ "
                                     f"from the manifest's; {FIX}")
                if shard.offset is not None:
                    self.cache.note(e["sha256"], e["bytes"], checked=expected, offset=int(shard.offset))
            images = shard.images_map()
        except BaseException:
            lease.close()
            raise
        if isinstance(images, np.memmap):
            images._lease = lease   # held as long as the map (and any view of it) lives
        else:
            lease.close()           # read whole into RAM: the file may go
        return images


@dataclass
class RemoteShardSet(ShardSet):
    """A set in object storage (``root`` is its URL); its splits fetch shards on first use."""

    store: Optional[Store] = None
    cache: Optional[ShardCache] = None
    remote: bool = field(default=True, init=False)

    def split(self, name: str) -> SplitSet:
        if name not in SPLITS:
            raise ShardError(f"{self.root}: no split {name!r}; choose one of {SPLITS}")
        m = self.manifest
        shards, labels = [], []
        for e in m["shards"]:
            if e["split"] != name:
                continue
            lab = shard_format.decode_labels(m, e, self.store.where(MANIFEST))
            src = RemoteShard(self.store, self.cache, e, lab, list(m["class_names"]), self.image_size)
            shards.append(Shard(self.cache.path(e["sha256"]), int(e["count"]), self.image_size, None, (), src))
            labels.append(lab)
        offsets = np.concatenate([[0], np.cumsum([s.count for s in shards])]).astype(np.int64)
        return SplitSet(shards=shards, labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
                        offsets=offsets, class_names=list(m["class_names"]), image_size=self.image_size,
                        mean=self.mean, std=self.std, remote=True)


def verify(location, storage: Optional[StorageConfig] = None) -> tuple[list[str], dict]:
    """:func:`shard_format.verify` of a set wherever it lives: (problems, one line each; the manifest).

    A set in object storage is fetched whole into the cache first (each
    shard checked against its SHA-256 as it arrives; one that fails twice is
    a problem), then verified through a view of the cached files under the
    names the manifest gives them.

    Raises:
        ShardError, StoreError: no readable manifest at all, or the store unreachable.
    """
    folder = local_folder(str(location) if is_url(str(location)) else location)
    if folder is not None:
        problems = shard_format.verify(folder)
        return problems, (shard_format.read_manifest(folder) if not problems else {})
    sset = open_remote(str(location), storage or StorageConfig())
    problems, leases = [], []
    view = Path(tempfile.mkdtemp(prefix="verify-", dir=sset.cache.folder))
    try:
        for e in sset.manifest["shards"]:
            leases.append(sset.cache.use(e["sha256"]))
            try:
                path = sset.cache.ensure(sset.store, e["file"], e["sha256"], e["bytes"])
            except StoreError as exc:
                problems.append(str(exc))
                continue
            os.symlink(path, view / e["file"])
        shard_format.write_manifest(view, sset.manifest)
        if not problems:
            problems = [p.replace(str(view), sset.store.url) for p in shard_format.verify(view)]
    finally:
        for lease in leases:
            lease.close()
        shutil.rmtree(view, ignore_errors=True)   # the view's links and manifest only
    return problems, sset.manifest
