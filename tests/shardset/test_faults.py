"""A shard set that is not what its manifest says: a flipped byte, labels out of range, names outside the set.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import json
import re

import h5py
import pytest

from pipeline.shardset import shard_format
from tests.helpers import flip_byte, run


def test_a_flipped_pixel_byte_stops_train_and_evaluate_and_preprocess_rebuilds(shards, finished, tmp_path):
    shard = shard_format.open_split(shards, "train").shards[1]
    flip_byte(shard.path, shard.offset + 77)
    r = run("train", "--shards", shards, "--model", "cnn4conv", "--epochs", 1, "--device", "cpu",
            "--out", tmp_path / "r")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert f"{shard.path}: SHA-256 differs from the manifest" in r.output and "preprocess --force" in r.output
    assert not (tmp_path / "r").exists()
    r = run("evaluate", finished / "best.pt", "--shards", shards, "--out", tmp_path / "ev")
    assert r.exit_code == 1 and shard.path.name in r.output
    r = run("bench", "--quick", "--data-dir", tmp_path / "none")
    assert r.exit_code == 1 and "no such folder" in r.output


def test_out_of_range_labels_are_refused_on_open(shards):
    entry = next(e for e in json.loads((shards / "manifest.json").read_text())["shards"] if e["split"] == "train")
    path = shards / entry["file"]
    with h5py.File(path, "r+") as f:
        f["labels"][0] = 99
    m = json.loads((shards / "manifest.json").read_text())  # a consistent manifest: the checksum passes
    for e in m["shards"]:
        if e["file"] == entry["file"]:
            e["sha256"], e["bytes"] = shard_format.file_sha256(path), path.stat().st_size
    shard_format.write_manifest(shards, m)
    with pytest.raises(shard_format.ShardError, match=f"{entry['file']}: labels outside 0..3"):
        shard_format.open_set(shards).split("train")
    r = run("train", "--shards", shards, "--epochs", 1, "--device", "cpu", "--out", shards.parent / "r")
    assert r.exit_code == 1 and "labels outside 0..3" in r.output and "Traceback" not in r.output


def test_a_manifest_naming_files_outside_the_set_is_not_trusted(shards):
    m = json.loads((shards / "manifest.json").read_text())
    good = m["shards"][0]["file"]
    for name in ("../../etc/passwd", "/etc/passwd", "s3://bucket/" + good, "https://host/" + good,
                 "../" + shards.name + "/" + good, good.replace("0", "\u0660")):
        m["shards"][0]["file"] = name
        (shards / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(shard_format.ShardError, match=f"shard 0 names '{re.escape(name)}', not train-NNNNN.h5"):
            shard_format.open_set(shards)
