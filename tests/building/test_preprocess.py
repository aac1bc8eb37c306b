import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline.shardset import shard_format
from pipeline.common.config import PreprocessConfig
from pipeline.imaging.decode import RESAMPLE
from pipeline.building.preprocess import preprocess
from pipeline.building.reuse import RESUME_PREFIX
from tests.conftest import make_class_tree


def test_round_trip_pixels_labels_and_attributes(shards32, lookalike):
    manifest = shard_format.read_manifest(shards32)
    classes = manifest["class_names"]
    assert len(classes) == 42 and classes == sorted(classes)
    for split in ("train", "val"):
        ss = shard_format.open_split(shards32, split)
        assert len(ss) == manifest["counts"][split] and len(ss.shards) >= 2
        images = ss.load_all()
        assert images.shape == (len(ss), 32, 32, 3) and images.dtype == np.uint8
        seen = 0
        for shard in ss.shards:
            shard_obj, attrs, labels = shard_format.open_shard(shard.path)
            assert attrs["split"] == split and attrs["image_size"] == 32
            assert attrs["class_names"] == classes
            np.testing.assert_allclose(attrs["mean"], manifest["mean"])
            import h5py
            with h5py.File(shard.path, "r") as f:
                paths = [p.decode() for p in f["paths"][...]]
                hashes = [h.decode() for h in f["hashes"][...]]
            px = shard.images_map()
            for j in range(0, shard.count, 7):  # a sample of every shard
                src = lookalike / paths[j]
                data = src.read_bytes()
                assert hashlib.sha256(data).hexdigest() == hashes[j]
                assert classes[labels[j]] == paths[j].split("/")[0]
                plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), RESAMPLE))
                assert np.abs(px[j].astype(int) - plain.astype(int)).mean() < 4.0
                seen += 1
        assert seen == sum(-(-s.count // 7) for s in ss.shards)   # every sampled row was checked


def test_quirks_are_skipped_or_kept_with_reasons(shards32):
    m = shard_format.read_manifest(shards32)
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons[".DS_Store"] == "hidden file"
    assert "not an image" in reasons["agnes_skinner/notes.txt"]
    assert any("empty file" in r for r in reasons.values())
    assert any("truncated" in r for r in reasons.values())
    assert len(m["duplicates"]) >= 1
    dup = m["duplicates"][0]
    assert dup["same_as"].endswith("pic_0000.jpg")
    kept = m["counts"]["train"] + m["counts"]["val"]
    assert kept == m["files_found"] - len(m["duplicates"]) - sum(
        1 for s in m["skipped"] if s["path"].endswith((".jpg", ".png")))
    # every class with >= 2 images is in both splits, no hash in both
    assert all(v >= 1 for v in m["class_counts"]["val"])


def test_mean_std_are_the_training_split_pixel_statistics(shards32):
    train = shard_format.open_split(shards32, "train").load_all().reshape(-1, 3) / 255.0
    manifest = shard_format.read_manifest(shards32)
    # taken from 1/16 of the pixels: within 1% of the all-pixel figures
    np.testing.assert_allclose(manifest["mean"], train.mean(0), rtol=0.01)
    np.testing.assert_allclose(manifest["std"], train.std(0), rtol=0.01)
    val = shard_format.open_split(shards32, "val").load_all().reshape(-1, 3) / 255.0
    assert not np.allclose(manifest["mean"], val.mean(0), rtol=1e-4)  # the train split's, not val's


def test_no_duplicate_leaks_between_splits(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6})
    for i in range(4):  # four byte-identical copies in a
        shutil.copy(root / "a" / "img_000.jpg", root / "a" / f"copy_{i}.jpg")
    m = preprocess(root, tmp_path / "out", PreprocessConfig(size=16, val_frac=0.5), workers=1)
    assert len(m["duplicates"]) == 4
    import h5py
    hashes = {}
    for e in m["shards"]:
        with h5py.File(tmp_path / "out" / e["file"], "r") as f:
            hashes[e["split"]] = set(f["hashes"][...].tolist()) | hashes.get(e["split"], set())
    assert not (hashes["train"] & hashes["val"])


def test_same_seed_same_shard_bytes(tmp_path, lookalike):
    cfg = PreprocessConfig(size=16, shard_mb=1, seed=7)
    a = preprocess(lookalike, tmp_path / "a", cfg, workers=2)
    b = preprocess(lookalike, tmp_path / "b", cfg, workers=1)
    c = preprocess(lookalike, tmp_path / "c", PreprocessConfig(size=16, shard_mb=1, seed=8), workers=2)
    digests = lambda m: [(e["file"], e["sha256"]) for e in m["shards"]]
    assert digests(a) == digests(b)
    assert digests(a) != digests(c)


def test_up_to_date_force_and_changed_inputs(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    cfg = PreprocessConfig(size=16)
    assert preprocess(root, out, cfg, workers=1)["up_to_date"] is False
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert preprocess(root, out, cfg, workers=1)["up_to_date"] is True
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    assert preprocess(root, out, cfg, workers=1, force=True)["up_to_date"] is False
    assert preprocess(root, out, PreprocessConfig(size=32), workers=1)["up_to_date"] is False
    make_class_tree(tmp_path / "data", {"c": 3}, seed=5)
    m = preprocess(root, out, PreprocessConfig(size=32), workers=1)
    assert m["up_to_date"] is False and m["class_names"] == ["a", "b", "c"]


def test_a_failed_rebuild_keeps_the_previous_set_whole(tmp_path, monkeypatch):
    root = make_class_tree(tmp_path / "data", {"a": 30, "b": 30})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)  # an old, complete set
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = shard_format.write_shard
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("writer crashed (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(shard_format, "write_shard", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        preprocess(root, out, PreprocessConfig(size=16, shard_mb=1, val_frac=0.5), workers=1, force=True)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    kept = {n for n in after if n.startswith(RESUME_PREFIX)}   # the decoded rows, kept for the next run
    assert kept == {RESUME_PREFIX + "0.u8", RESUME_PREFIX + "0.journal"}
    assert {n: b for n, b in after.items() if n not in kept} == before  # manifest and shards byte-identical
    assert not [p for p in out.iterdir() if p.is_dir()]               # no build folder, no other temporary
    assert shard_format.verify(out) == []
    monkeypatch.setattr(shard_format, "write_shard", real)
    assert preprocess(root, out, PreprocessConfig(size=16), workers=1)["up_to_date"] is True
    assert not list(out.glob(RESUME_PREFIX + "*"))                     # an up-to-date set needs none
    m = preprocess(root, out, PreprocessConfig(size=16, shard_mb=1, val_frac=0.5), workers=1)
    assert m["up_to_date"] is False and shard_format.verify(out) == []


def test_verify_catches_one_flipped_byte(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 5, "b": 5})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)
    assert shard_format.verify(out) == []
    shard = shard_format.open_split(out, "train").shards[0]
    with open(shard.path, "r+b") as fh:
        fh.seek(shard.offset + 100)
        b = fh.read(1)
        fh.seek(shard.offset + 100)
        fh.write(bytes([b[0] ^ 0xFF]))
    problems = shard_format.verify(out)
    assert len(problems) == 1 and "train-00000.h5" in problems[0] and "SHA-256" in problems[0]
    result = CliRunner().invoke(cli.main, ["verify", "--out", str(out)])
    assert result.exit_code == 1 and "train-00000.h5" in result.output


def test_cli_exit_codes_and_summary(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 3})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    run = lambda *a: CliRunner().invoke(cli.main, list(a))
    r = run("preprocess", "--data-dir", str(root), "--out", str(out), "--size", "16", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "skipped 1 files" in r.output and "b/broken.jpg" in r.output and "images/s" in r.output
    r = run("preprocess", "--data-dir", str(root), "--out", str(out), "--size", "16", "--workers", "1")
    assert r.exit_code == 0 and "up to date" in r.output
    r = run("preprocess", "--data-dir", str(tmp_path / "missing"), "--out", str(out))
    assert r.exit_code == 1 and "no such folder" in r.output
    r = run("verify", "--out", str(tmp_path / "nothing"))
    assert r.exit_code == 1 and "no manifest.json" in r.output
    r = run("preprocess", "--data-dir", str(root), "--size", "4")
    assert r.exit_code == 2 and "4 is not a whole number in [16, 1024]" in r.output  # a usage error
    r = run("preprocess", "--data-dir", str(root), "--size", "24", "--out", str(tmp_path / "o24"))
    assert r.exit_code == 1 and "size must be a multiple of 16" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("preprocess", "--data-dir", str(root), "--out", str(blocker / "sub"), "--workers", "1")
    assert r.exit_code == 1 and "cannot write shards" in r.output
    json.loads((out / "manifest.json").read_text())


def test_a_file_that_crashes_the_decoder_is_one_skipped_file(tmp_path, monkeypatch):
    import pipeline.building.tasks as tasks_module

    root = make_class_tree(tmp_path / "data", {"a": 4, "b": 4})
    real = tasks_module.decode_bytes

    def flaky(data, *a, **k):
        if data == (root / "b" / "img_002.jpg").read_bytes():
            raise IndexError("decoder bug")
        return real(data, *a, **k)

    monkeypatch.setattr(tasks_module, "decode_bytes", flaky)
    m = preprocess(root, tmp_path / "out", PreprocessConfig(size=16), workers=1)
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons["b/img_002.jpg"] == "cannot decode: IndexError: decoder bug"
    assert m["counts"]["train"] + m["counts"]["val"] == 7
