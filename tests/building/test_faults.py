"""Faults while building a set: bad files, bad options, a busy or foreign --out, a full disk, a killed build.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline.building import preprocess as preprocess_module
from pipeline.shardset import shard_format
from pipeline.common.config import PreprocessConfig
from pipeline.common.files import FolderLock
from pipeline.building.preprocess import preprocess
from pipeline.building.reuse import STAGING
from pipeline.building.commit import BUILD
from tests.conftest import make_class_tree
from tests.helpers import flip_byte, run, snapshot


def test_preprocess_rebuilds_a_corrupt_set_instead_of_calling_it_up_to_date(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "out"
    args = ("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1)
    assert run(*args).exit_code == 0
    good = snapshot(out)
    shard = shard_format.open_split(out, "val").shards[0]
    flip_byte(shard.path, shard.offset + 5)
    r = run(*args)
    assert r.exit_code == 0 and "up to date" not in r.output
    assert f"rebuilt the shard set ({shard.path}: SHA-256 differs" in r.output
    again = snapshot(out)
    assert [again[k] == good[k] for k in good if k.endswith(".h5")] == [True, True]  # same seed, same bytes
    assert "up to date" in run(*args).output


def test_broken_links_loops_and_non_utf8_names_are_skipped_not_fatal(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    os.symlink(root / "a" / "gone.jpg", root / "a" / "dangling.jpg")
    os.symlink(root / "b" / "loop.jpg", root / "b" / "loop.jpg")
    os.symlink(root / "a" / "img_000.jpg", root / "b" / "link_ok.jpg")  # a good link is an image
    bad = os.path.join(os.fsencode(root / "a"), b"caf\xe9.jpg")
    shutil.copy(root / "a" / "img_001.jpg", bad)
    (root / "empty_class").mkdir()
    out = tmp_path / "out"
    r = run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons["a/dangling.jpg"] == "broken symbolic link"
    assert reasons["b/loop.jpg"] == "symbolic link loop"
    assert reasons["a/caf\\xe9.jpg"] == "file name is not valid UTF-8 (rename it)"
    assert reasons["empty_class"] == "class folder with no candidate image, not a class"
    assert m["class_names"] == ["a", "b"]
    assert m["counts"]["train"] + m["counts"]["val"] == 8  # link_ok duplicates a/img_000: kept once
    assert m["duplicates"] == [{"path": "b/link_ok.jpg", "same_as": "a/img_000.jpg"}]


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_non_finite_shard_size_is_refused_before_any_work(tmp_path, value):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    assert run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1).exit_code == 0
    before = snapshot(out)
    r = run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--shard-mb", value, "--force")
    assert r.exit_code == 2 and "--shard-mb" in r.output and "not a finite number" in r.output
    assert snapshot(out) == before
    with pytest.raises(ValueError, match="shard_mb must be a finite number"):
        PreprocessConfig(shard_mb=float(value))


def test_a_second_preprocess_into_the_same_out_is_refused(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    assert run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1).exit_code == 0
    before = snapshot(out)
    with FolderLock(out, "preprocess"):  # the OS lock a running preprocess holds (flock is per open file)
        r = run("preprocess", "--data-dir", root, "--out", out, "--size", 32, "--workers", 1)
    assert r.exit_code == 1 and f"another preprocess (pid {os.getpid()}) is writing here" in r.output
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    assert shard_format.verify(out) == []


def test_disk_full_in_preprocess_keeps_the_previous_set(tmp_path, monkeypatch):
    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)
    before = snapshot(out)
    monkeypatch.setattr(preprocess_module.os, "pwrite", lambda fd, buf, off: len(buf) // 2)  # the disk filled up
    r = run("preprocess", "--data-dir", root, "--out", out, "--size", 32, "--workers", 1)
    assert r.exit_code == 1 and "error: no space left on device:" in r.output and "short write" not in r.output
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_preprocess_never_touches_a_users_files_named_like_shards(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train-00000.h5").write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    for extra in ((), ("--force",)):
        r = run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1, *extra)
        assert r.exit_code == 1 and "named like shards that this tool did not write (train-00000.h5)" in r.output
        assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == before


def test_a_damaged_manifest_is_rebuilt_as_its_error_advises_and_a_foreign_one_is_refused(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)
    (out / "manifest.json").write_text("garbage")
    r = run("train", "--shards", out, "--epochs", 1)
    assert r.exit_code == 1 and "unreadable manifest" in r.output and "preprocess --force" in r.output
    # the advice works: the shards carry the format stamp, so they are the tool's to replace
    r = run("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1, "--force")
    assert r.exit_code == 0, r.output
    assert shard_format.verify(out) == []
    # a manifest.json with no shard of this tool beside it is the user's: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"name": "my own manifest"}')
    before = snapshot(mine)
    for extra in ((), ("--force",)):
        r = run("preprocess", "--data-dir", root, "--out", mine, "--size", 16, "--workers", 1, *extra)
        assert r.exit_code == 1 and "not a manifest this tool wrote" in r.output and "Traceback" not in r.output
        assert {k: v for k, v in snapshot(mine).items() if k != ".lock"} == before


def test_preprocess_replaces_only_its_own_shards(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 30, "b": 30})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16, shard_mb=0.004), workers=1)  # many shards
    many = sorted(p.name for p in out.glob("*.h5"))
    (out / "notes.txt").write_text("keep me")
    preprocess(root, out, PreprocessConfig(size=16), workers=1)  # one shard per split
    assert sorted(p.name for p in out.glob("*.h5")) == ["train-00000.h5", "val-00000.h5"] and len(many) > 2
    assert (out / "notes.txt").read_text() == "keep me" and shard_format.verify(out) == []


def test_two_identical_runs_write_the_same_manifest_apart_from_timings(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 5, "b": 5})
    (root / "a" / "junk.jpg").write_bytes(b"this is not an image")
    ms = []
    for name in ("one", "two"):
        preprocess(root, tmp_path / name, PreprocessConfig(size=16), workers=1)
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        m.pop("timings")
        ms.append(m)
    assert ms[0] == ms[1]
    assert "a/junk.jpg" in {s["path"] for s in ms[0]["skipped"]}
    assert "0x" not in json.dumps(ms[0]["skipped"])
    for name in ("train-00000.h5", "val-00000.h5"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_a_killed_runs_leftovers_are_removed_by_the_next_run(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)
    build = out / BUILD  # what kill -9 in the middle of a run leaves behind
    build.mkdir()
    with open(build / STAGING, "wb") as fh:
        fh.truncate(150 << 20)
    (build / "train-00000.h5.tmp").write_bytes(b"half a shard")
    (out / ".staging-4242.u8").write_bytes(b"an older layout's staging file")
    assert preprocess(root, out, PreprocessConfig(size=16), workers=1)["up_to_date"] is True
    assert not build.exists() and not (out / ".staging-4242.u8").exists()
