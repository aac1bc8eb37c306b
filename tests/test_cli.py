"""The command line under bad input: options checked where they enter, wrong kinds of path, a bug keeps its traceback.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import os

import pytest

from pipeline.common.errors import UserError
from pipeline.training import train as train_mod
from tests.helpers import run


def test_sizes_batch_and_epochs_are_validated_where_they_enter(easy_shards, tmp_path):
    for args, msg in ((("train", "--batch-size", 0), "0 is not a whole number in [1, 65536]"),
                      (("train", "--epochs", 0), "0 is not a whole number in [1, 100000]"),
                      (("train", "--lr", "nan"), "not a finite number"),
                      (("preprocess", "--val-frac", "inf"), "not a finite number"),
                      (("predict", "x.pt", "y.jpg", "--top-k", 0), "0 is not a whole number in [1, 1000]")):
        r = run(*args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
    r = run("preprocess", "--size", 24, "--data-dir", tmp_path, "--out", tmp_path / "o")  # what train would refuse
    assert r.exit_code == 1 and "size must be a multiple of 16" in r.output and not (tmp_path / "o").exists()


def test_a_bug_keeps_its_traceback(easy_shards, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_mod, "train", oom)
    r = run("train", "--shards", easy_shards, "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError) and "error:" not in r.output


def test_every_path_option_of_the_wrong_kind_is_one_line(finished, easy_shards, tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine\n")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    cases = [
        (["synth", "--out", a_file, "--scale", "0.001"], "is a file, not a folder"),
        (["preprocess", "--data-dir", a_file, "--out", tmp_path / "o"], "no such folder"),
        (["preprocess", "--data-dir", tmp_path, "--out", a_file], "is a file, not a folder"),
        (["verify", "--out", a_file], "is a file, not a shard folder"),
        (["train", "--shards", a_file], "is a file, not a shard folder"),
        (["train", "--shards", easy_shards, "--out", a_file], "is a file, not a folder"),
        (["train", "--shards", easy_shards, "--out", easy_shards], "inside the shard folder"),
        (["train", "--shards", easy_shards, "--out", easy_shards / "run"], "inside the shard folder"),
        (["train", "--resume", finished], f"is a run folder, not a checkpoint; pass {finished / 'last.pt'}"),
        (["evaluate", finished, "--shards", easy_shards], "is a run folder, not a checkpoint"),
        (["evaluate", finished / "best.pt", "--shards", a_file], "is a file, not a shard folder"),
        (["evaluate", finished / "best.pt", "--shards", easy_shards, "--out", a_file], "is a file, not a folder"),
        (["evaluate", finished / "best.pt", "--shards", easy_shards, "--json", a_dir], "is a folder"),
        (["predict", finished, a_file], "is a run folder, not a checkpoint"),
        (["export", finished / "best.pt", "--out", a_dir], "is a folder"),
        (["bench", "--quick", "--data-dir", tmp_path, "--json", a_dir], "is a folder"),
    ]
    for args, said in cases:
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1 and said in r.output, (args, r.output)
    assert a_file.read_text() == "mine\n" and list(a_dir.iterdir()) == []
    assert not (easy_shards / "run").exists() and not (easy_shards / "last.pt").exists()


def test_a_url_where_a_folder_belongs_is_one_line_and_writes_no_folder_named_after_it(easy_shards, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)   # where `s3:` would have appeared
    from pipeline.shardset.shard_format import open_set
    cases = [(("preprocess", "--data-dir", "https://example.com/data", "--out", "o"), "https://example.com/data",
              "a URL where --data-dir needs a local folder"),
             (("train", "--shards", easy_shards, "--device", "cpu", "--out", "s3://bucket/run"), "s3://bucket/run",
              "a URL where --out, the run folder needs a local folder"),
             (("verify", "--out", "ftp://bucket/set"), "ftp://bucket/set", "not a location this tool reads"),
             (("train", "--shards", "webdav://host/set", "--device", "cpu", "--out", "r"), "webdav://host/set",
              "not a location this tool reads")]
    for args, url, said in cases:
        r = run(*args)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {url}"), r.output
        assert said in lines[0], r.output
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(UserError, match="file:///tmp/set: a URL"):
        open_set("file:///tmp/set")


def test_a_url_without_the_remote_extra_is_one_line_saying_how_to_get_it(tmp_path, monkeypatch):
    import sys

    import fsspec  # noqa: F401  (its registry module, below, is shadowed by a mapping of the same name)

    known = sys.modules["fsspec.registry"]._registry
    for name in ("s3fs", "gcsfs"):   # as if the [remote] extra were not installed
        monkeypatch.setitem(sys.modules, name, None)
    for protocol in ("s3", "s3a", "gs", "gcs"):   # nor imported earlier by another test
        if protocol in known:
            monkeypatch.delitem(known, protocol)
    for url, package in (("s3://bucket/set", "s3fs"), ("gs://bucket/set", "gcsfs")):
        r = run("verify", "--out", url, "--cache-dir", tmp_path / "cache")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert lines[0].startswith(f"error: {url}") and package in lines[0] and "[remote]" in lines[0], lines[0]
