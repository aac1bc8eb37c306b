"""A grown folder reads only what changed: files the set holds with the same size, mtime and inode are not read.

The proof that a file was not read: it is overwritten in place with bytes
that do not decode, its size and modification time put back. A build that
trusts the stat keeps the row it had; ``rehash=True`` reads it and skips it.
"""

import json
import os
import time

from pipeline.building.preprocess import preprocess
from pipeline.building.reuse import RACY_NS, decode_sources
from pipeline.common.config import PreprocessConfig
from pipeline.shardset import shard_format
from tests.building.test_honest_split import save, scene, scenes_tree

HOUR_NS = 3600 * 10 ** 9


def age(root, ns_ago=HOUR_NS):
    """Date every file under ``root`` ``ns_ago`` back, as files that have lain in a folder for a while."""
    then = time.time_ns() - ns_ago
    for p in root.rglob("*.jpg"):
        os.utime(p, ns=(then, then))


def rows_by_path(out):
    rows = {}
    for e in json.loads((out / "manifest.json").read_text())["shards"]:
        with shard_format.h5py.File(out / e["file"], "r") as f:
            rows.update(zip((p.decode() for p in f["paths"][...]), (h.decode() for h in f["hashes"][...])))
    return rows


def test_unchanged_files_are_not_read_and_rehash_reads_them_all(tmp_path):
    data = scenes_tree(tmp_path / "data", per_class=6)
    age(data)
    out, cfg = tmp_path / "shards", PreprocessConfig(size=32)
    first = preprocess(data, out, cfg, workers=2)
    recorded = {e["file"]: decode_sources(json.loads((out / "manifest.json").read_text())["sources"][e["file"]],
                                          e["count"]) for e in first["shards"]}
    assert sum(len(v) for v in recorded.values()) == 18 and all((r >= 0).all() for r in recorded.values())
    before = rows_by_path(out)

    victim = data / "lisa" / "s0007.jpg"              # changed behind the stat's back: same size, time, inode
    st = victim.stat()
    with open(victim, "r+b") as fh:
        fh.write(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    touched = data / "bart" / "s0001.jpg"              # same bytes, a new time: read, and its row reused
    os.utime(touched, ns=(time.time_ns() - HOUR_NS // 2,) * 2)
    new = data / "homer" / "new.jpg"                   # new: decoded, and too fresh to be trusted next time
    save(scene(700), new)
    ahead = time.time_ns() + HOUR_NS                   # dated after its reading (a skewed clock): never trusted
    os.utime(new, ns=(ahead, ahead))

    grown = preprocess(data, out, cfg, workers=2)
    assert grown["work"] == {"decoded": 1, "reused": 18, "removed": 0, "unread": 17}   # 18 rows read back, 17 unread
    after = rows_by_path(out)
    assert after["lisa/s0007.jpg"] == before["lisa/s0007.jpg"]   # the old row: the file was not read
    fresh = json.loads((out / "manifest.json").read_text())["sources"]
    by_file = {p: s for e in grown["shards"]
               for p, s in zip(_paths(out / e["file"]), decode_sources(fresh[e["file"]], e["count"]).tolist())}
    assert by_file["homer/new.jpg"] == [-1, -1, -1]              # not older than its reading by RACY_NS
    assert by_file["bart/s0001.jpg"][1] == touched.stat().st_mtime_ns
    assert first["work"]["unread"] == 0 and RACY_NS <= HOUR_NS // 2

    again = preprocess(data, out, cfg, workers=2, rehash=True)
    assert again["rebuilt_because"] == "--rehash" and again["work"]["unread"] == 0
    assert "lisa/s0007.jpg" not in rows_by_path(out)
    assert "lisa/s0007.jpg" in {s["path"] for s in again["skipped"]}


def _paths(path):
    with shard_format.h5py.File(path, "r") as f:
        return [p.decode() for p in f["paths"][...]]


def test_a_renamed_or_replaced_file_is_read_again(tmp_path):
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=5)
    age(data)
    out, cfg = tmp_path / "shards", PreprocessConfig(size=32)
    preprocess(data, out, cfg, workers=1)
    # a new file put in an old one's place keeps the path, size and (set back) time, not the inode
    old = data / "a" / "s0002.jpg"
    st = old.stat()
    tmp = data / "a" / "tmp.jpg"
    tmp.write_bytes(b"\0" * st.st_size)
    os.replace(tmp, old)
    os.utime(old, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(data / "b" / "s0006.jpg", data / "b" / "moved.jpg")   # renamed: read, its row reused by SHA-256
    grown = preprocess(data, out, cfg, workers=1)
    assert grown["work"]["unread"] == 8 and grown["work"]["decoded"] == 0
    assert "a/s0002.jpg" in {s["path"] for s in grown["skipped"]}
