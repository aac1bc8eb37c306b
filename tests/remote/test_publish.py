"""Publishing a set to S3 (a real S3 API on 127.0.0.1) and reading it back: manifest last, one writer."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from pipeline.building import publish as publishing
from pipeline.building.preprocess import preprocess
from pipeline.common.config import PreprocessConfig, StorageConfig
from pipeline.shardset import shard_format
from pipeline.shardset.sets import open_set
from pipeline.storage.store import PreconditionFailed, Store, StoreError
from tests.conftest import make_easy_set

CFG = PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.06)


def _objects(url: str) -> list[str]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return sorted(p.rsplit("/", 1)[1] for p in fs.ls(url[5:]))


def test_a_published_set_reads_back_as_the_local_build(s3, tmp_path):
    data = make_easy_set(tmp_path / "data")
    url = f"{s3}/set"
    report = publishing.publish(data, url, CFG, StorageConfig(cache_dir=str(tmp_path / "cache")), workers=1)
    assert report["published"] and report["uploaded"] == len(report["shards"])
    local = tmp_path / "local"
    preprocess(data, local, CFG, workers=1)
    m = json.loads(Store(url).read("manifest.json"))
    # shards named by their content; the store holds them and the manifest, nothing else
    assert all(shard_format.SHARD_NAME.match(e["file"]) and e["file"].count(".") == 2 for e in m["shards"])
    assert _objects(url) == sorted([e["file"] for e in m["shards"]] + ["manifest.json"])
    remote = open_set(url, storage=StorageConfig(cache_dir=str(tmp_path / "reader")))
    for split in ("train", "val"):
        a, b = remote.split(split), shard_format.open_split(local, split)
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.load_all(), b.load_all())
    assert remote.counts == shard_format.open_set(local).counts


def test_a_failed_upload_commits_nothing_and_a_rerun_publishes(s3, tmp_path, monkeypatch):
    data = make_easy_set(tmp_path / "data")
    url = f"{s3}/set"
    storage = StorageConfig(cache_dir=str(tmp_path / "cache"))
    real, sent = Store.upload, []

    def failing(self, local, name):
        if len(sent) == 2:
            raise StoreError(f"{self.where(name)}: the connection dropped")
        sent.append(name)
        real(self, local, name)

    monkeypatch.setattr(Store, "upload", failing)
    with pytest.raises(StoreError, match="dropped"):
        publishing.publish(data, url, CFG, storage, workers=1)
    assert "manifest.json" not in _objects(url)   # a reader sees no set, not half of one
    with pytest.raises(StoreError, match="no object"):
        open_set(url, storage=storage)
    monkeypatch.setattr(Store, "upload", real)
    report = publishing.publish(data, url, CFG, storage, workers=1)
    assert report["published"] and report["uploaded"] == len(report["shards"])
    assert open_set(url, storage=storage).counts["train"] > 0


def test_of_two_writers_to_one_prefix_one_commits(s3, tmp_path, monkeypatch):
    a, b = make_easy_set(tmp_path / "a", classes=3), make_easy_set(tmp_path / "b", classes=4)
    url = f"{s3}/set"
    import pipeline.building.preprocess as prep   # publish imports it when it runs: patched at its source

    original, raced = prep.preprocess, []

    def racing(data_dir, out, *args, **kwargs):
        report = original(data_dir, out, *args, **kwargs)
        if not raced:   # writer A has read the store (no set) and built; B publishes before A commits
            raced.append(True)
            publishing.publish(b, url, CFG, StorageConfig(cache_dir=str(tmp_path / "cache-b")), workers=1)
        return report

    monkeypatch.setattr(prep, "preprocess", racing)
    with pytest.raises(PreconditionFailed, match="another writer committed it"):
        publishing.publish(a, url, CFG, StorageConfig(cache_dir=str(tmp_path / "cache-a")), workers=1)
    # B's set stands whole: its shards, its manifest (A uploaded under other, content-named objects)
    sset = open_set(url, storage=StorageConfig(cache_dir=str(tmp_path / "reader")))
    assert len(sset.class_names) == 4
    assert len(sset.split("train").load_all()) == sset.counts["train"]


def test_a_commit_is_conditional_on_the_version_read(s3):
    store = Store(f"{s3}/c")
    store.commit("manifest.json", b"{}", None)
    with pytest.raises(PreconditionFailed):
        store.commit("manifest.json", b"{1}", None)          # it exists now
    tag = store.etag("manifest.json")
    store.commit("manifest.json", b"{2}", tag)               # replaces the version read
    with pytest.raises(PreconditionFailed):
        store.commit("manifest.json", b"{3}", tag)           # that version is gone
    assert store.read("manifest.json") == b"{2}"


def test_a_grown_folder_reuses_rows_and_uploads_only_new_shards(s3, tmp_path):
    data = make_easy_set(tmp_path / "data", classes=4, per_class=24)
    url = f"{s3}/set"
    first = publishing.publish(data, url, CFG, StorageConfig(cache_dir=str(tmp_path / "c1")), workers=1)
    before = set(_objects(url))
    make_easy_set(tmp_path / "more", classes=4, per_class=30)   # 6 more images a class
    for cls in (tmp_path / "more").iterdir():
        for img in sorted(cls.iterdir())[24:]:
            img.rename(data / cls.name / img.name)
    # another machine: an empty cache, so the published set is fetched to build on
    grown = publishing.publish(data, url, CFG, StorageConfig(cache_dir=str(tmp_path / "c2")), workers=1)
    assert grown["work"]["reused"] == sum(first["counts"].values()) and grown["work"]["decoded"] == 24
    after = set(_objects(url))
    assert before <= after   # the previous version's shards stay for its readers
    assert grown["uploaded"] == len(after - before)
    sset = open_set(url, storage=StorageConfig(cache_dir=str(tmp_path / "reader")))
    assert sum(sset.counts.values()) == sum(first["counts"].values()) + 24
