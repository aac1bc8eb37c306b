"""Publishing a shard set to object storage: build locally, upload the shards, commit the manifest last.

``preprocess(data_dir, "s3://bucket/set", ...)`` lands here. The build runs
in a local copy of the published set (``<cache dir>/builds/<key>/``, the
set as the store holds it), so a grown folder reuses its rows as a local
build does; then:

1. every shard the store does not hold yet is uploaded, under a name that
   carries its SHA-256 (``train-00000.3fa9c0e1d2b4a6f8.h5``): an object
   once written never changes, so a reader of the previous version keeps
   reading it, and two writers never overwrite each other's shards;
2. the manifest is written last, and only if the store's manifest is still
   the one this build started from (S3: ``If-None-Match: *`` for a first
   publish, ``If-Match: <ETag>`` after): of two writers to one prefix, one
   commits and the other is told so and commits nothing. A reader sees the
   old set or the new one, never half of one.

The previous version's shards stay in the store (a run reading them keeps
working); docs/remote.md says what each store guarantees and how to prune.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from ..common.config import PreprocessConfig, StorageConfig
from ..shardset import shard_format
from ..shardset.sets import open_cache, read_remote_manifest
from ..storage.store import Store, StoreError
from .discover import data_folder

logger = logging.getLogger(__name__)


def remote_name(local: str, sha256: str) -> str:
    """``train-00000.h5`` -> ``train-00000.<first 16 hex digits of its SHA-256>.h5``."""
    return f"{local[:-3]}.{sha256[:16]}.h5"


def local_name(remote: str) -> str:
    """The inverse of :func:`remote_name` (a local name is its own)."""
    parts = remote.split(".")
    return f"{parts[0]}.h5" if len(parts) == 3 else remote


def _renamed(manifest: dict, rename) -> dict:
    """``manifest`` with every shard file renamed by ``rename(name, sha256)`` (entries, labels, sources)."""
    names = {e["file"]: rename(e["file"], e["sha256"]) for e in manifest["shards"]}
    out = {**manifest, "shards": [{**e, "file": names[e["file"]]} for e in manifest["shards"]]}
    for key in ("labels", "sources"):
        if isinstance(manifest.get(key), dict):
            out[key] = {names.get(k, k): v for k, v in manifest[key].items()}
    return out


def build_folder(storage: StorageConfig, url: str) -> Path:
    """The local copy of the set at ``url`` that builds for it run in."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return open_cache(storage).folder / "builds" / key


def _sync(folder: Path, store: Store, current: dict, storage: StorageConfig) -> None:
    """Make ``folder`` a local copy of the published set ``current`` (fetching its shards through the cache)."""
    want = _renamed(current, lambda name, sha: local_name(name))
    try:
        have = shard_format.read_manifest(folder)
        if [(e["file"], e["sha256"]) for e in have["shards"]] == [(e["file"], e["sha256"]) for e in want["shards"]]:
            return   # the copy is what the store holds (the last publish from here)
    except shard_format.ShardError:
        pass
    logger.warning("%s: fetching the published set to build on it", store.url)
    shutil.rmtree(folder, ignore_errors=True)   # a folder of this tool's cache, never a user's
    folder.mkdir(parents=True)
    cache = open_cache(storage)
    for e, mine in zip(current["shards"], want["shards"]):
        path = cache.ensure(store, e["file"], e["sha256"], e["bytes"])
        shutil.copyfile(path, folder / mine["file"])
    shard_format.write_manifest(folder, want)


def publish(data_dir: Path, url: str, cfg: PreprocessConfig, storage: Optional[StorageConfig] = None,
            workers: Optional[int] = None, force: bool = False, progress: bool = False, rehash: bool = False) -> dict:
    """Build the set of ``data_dir`` and publish it at ``url`` (see the module's notes).

    Returns:
        :func:`~pipeline.building.preprocess.preprocess`'s report, with
        ``published`` (False: the store held this set already), ``uploaded``
        (shards sent) and ``url``.

    Raises:
        StoreError: the store unreachable or refusing; PreconditionFailed when another writer committed first.
    """
    from .preprocess import preprocess

    storage = storage or StorageConfig()
    data_dir = data_folder(data_dir)   # the user's first mistake first: before the store is asked anything
    store = Store(url)
    if not store.writable:
        raise StoreError(f"{url}: {store.scheme}:// is read-only; publish to s3://, gs:// or a local folder")
    tag = store.etag(shard_format.MANIFEST)
    current = read_remote_manifest(store) if tag is not None else None
    folder = build_folder(storage, url)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if current is not None:
        _sync(folder, store, current, storage)
    report = preprocess(data_dir, folder, cfg, workers=workers, force=force, progress=progress, rehash=rehash)
    built = shard_format.read_manifest(folder)
    published = _renamed(built, remote_name)
    if current is not None and [e["sha256"] for e in current["shards"]] == \
            [e["sha256"] for e in published["shards"]] and not force and not rehash:
        return {**report, "published": False, "uploaded": 0, "url": url}
    held = {e["file"] for e in current["shards"]} if current else set()
    sent = 0
    for local, e in zip(built["shards"], published["shards"]):
        if e["file"] not in held:   # named by content: an object the store holds is these bytes
            store.upload(folder / local["file"], e["file"])
            sent += 1
    published["source"] = built.get("source")
    store.commit(shard_format.MANIFEST, (json.dumps(published, indent=2, sort_keys=True) + "\n").encode(), tag)
    logger.info("published %s: %d shards, %d uploaded", url, len(published["shards"]), sent)
    return {**report, "published": True, "uploaded": sent, "url": url}
