"""The honest split end to end: near-duplicates on one side, a growing folder moves nothing into val."""

import json

import h5py
import numpy as np
from click.testing import CliRunner

import cli
from pipeline.shardset import shard_format
from pipeline.common.config import PreprocessConfig
from pipeline.imaging.neardup import dhash, popcount
from pipeline.building.preprocess import preprocess
from tests.imaging.test_neardup import jpeg, scene, stored


def save(im, path, quality=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.convert("RGB").save(path, "JPEG", quality=quality)


def scenes_tree(root, classes=("bart", "lisa", "homer"), per_class=30, first_seed=0):
    seed = first_seed
    for c in classes:
        for i in range(per_class):
            save(scene(seed), root / c / f"s{seed:04d}.jpg")
            seed += 1
    return root


def sides(out):
    """path -> split of every stored image."""
    m = shard_format.read_manifest(out)
    where = {}
    for e in m["shards"]:
        with h5py.File(out / e["file"], "r") as f:
            for p in f["paths"][...]:
                where[p.decode()] = e["split"]
    return where


def plant(root, seeds_by_class, moves=((1, 0),)):
    """Near-copies of scenes: rescaled, re-encoded at quality 40, moved by a pixel or two. Returns the groups' paths."""
    groups = []
    for c, seed in seeds_by_class:
        base = scene(seed)
        paths = [f"{c}/s{seed:04d}.jpg", f"{c}/big{seed}.jpg", f"{c}/q40_{seed}.jpg"]
        save(base.resize((320, 240)), root / paths[1])
        save(jpeg(base, 40), root / paths[2], quality=40)
        pixels = [stored(scene(seed)), stored(base.resize((320, 240))), stored(jpeg(base, 40))]
        for dx, dy in moves:
            paths.append(f"{c}/moved{dx}{dy}_{seed}.jpg")
            save(scene(seed, dx=dx, dy=dy), root / paths[-1])
            pixels.append(stored(scene(seed, dx=dx, dy=dy)))
        h = dhash(np.stack(pixels))
        assert popcount(h ^ h[0]).max() <= 6          # the copies are near-duplicates by the hash
        groups.append(paths)
    return groups


def test_planted_near_duplicates_land_in_one_split_and_cross_class_groups_are_reported(tmp_path):
    root = scenes_tree(tmp_path / "data")
    groups = plant(root, [("bart", s) for s in range(0, 30, 2)])
    groups += plant(root, [("lisa", s) for s in range(30, 60, 3)], moves=((1, 0), (2, 1)))
    # the same frame filed under two characters
    save(scene(65), root / "bart" / "shared_frame.jpg", quality=80)
    groups.append(["homer/s0065.jpg", "bart/shared_frame.jpg"])
    out = tmp_path / "shards"
    m = preprocess(root, out, PreprocessConfig(size=64, val_frac=0.3, shard_mb=0.05), workers=2)
    where = sides(out)
    assert {where[p] for g in groups for p in g} == {"train", "val"}  # groups do go to both sides...
    for g in groups:
        assert len({where[p] for p in g}) == 1, g                   # ...but each one whole
    sp = m["split"]
    assert sp["rule"] == 3 and sp["near_dup"] == 6 and sp["groups"] >= len(groups)
    assert sp["images_in_groups"] >= sum(len(g) for g in groups)
    assert {"classes": ["bart", "homer"], "paths": ["bart/shared_frame.jpg", "homer/s0065.jpg"]} \
        in sp["cross_class_groups"]
    assert shard_format.verify(out) == []
    # without near-duplicate grouping the same folder splits some of those groups
    loose = preprocess(root, tmp_path / "loose", PreprocessConfig(size=64, val_frac=0.3, shard_mb=0.05,
                                                                    near_dup=0), workers=2)
    assert loose["split"]["groups"] == 0
    where0 = sides(tmp_path / "loose")
    assert any(len({where0[p] for p in g}) == 2 for g in groups)


def test_verify_names_near_duplicates_that_straddle_the_split(tmp_path):
    root = scenes_tree(tmp_path / "data", per_class=20)
    plant(root, [("bart", s) for s in range(20)])
    out = tmp_path / "shards"
    preprocess(root, out, PreprocessConfig(size=64, val_frac=0.3, near_dup=0), workers=1)
    m = json.loads((out / "manifest.json").read_text())
    m["options"]["near_dup"] = 6      # claim a grouping the split did not follow
    (out / "manifest.json").write_text(json.dumps(m))
    problems = shard_format.verify(out)
    assert problems and all("straddle the split" in p and "preprocess --force" in p for p in problems)
    r = CliRunner().invoke(cli.main, ["verify", "--out", str(out)])
    assert r.exit_code == 1 and "straddle" in r.output


def test_a_folder_grown_by_ten_percent_moves_no_training_image_to_val(tmp_path):
    root = scenes_tree(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=25)
    plant(root, [("a", 0), ("b", 30), ("c", 55)])
    out = tmp_path / "shards"
    cfg = PreprocessConfig(size=64, val_frac=0.2, shard_mb=0.05)
    before = sides(out) if preprocess(root, out, cfg, workers=2) else None
    # grow by 10%: new scenes in every class and one more copy of a planted scene
    for k, c in enumerate("abcd"):
        for i in range(3):
            save(scene(500 + 10 * k + i), root / c / f"new{k}{i}.jpg")
    save(scene(0).resize((200, 150)), root / "a" / "another_copy.jpg")
    m = preprocess(root, out, cfg, workers=2)
    assert m["rebuilt_because"] == "the images changed"
    after = sides(out)
    assert len(after) >= 1.1 * len(before) - 1
    moved = [p for p, s in before.items() if s == "train" and after[p] == "val"]
    assert moved == []
    assert all(after[p] == s for p, s in before.items())          # nothing moves the other way either
    assert after["a/another_copy.jpg"] == after["a/s0000.jpg"]
    # a set built in one go from the grown folder has the same split, and the same bytes
    fresh = tmp_path / "fresh"
    m2 = preprocess(root, fresh, cfg, workers=1)
    assert sides(fresh) == after
    assert [e["sha256"] for e in m2["shards"]] == [e["sha256"] for e in m["shards"]]


def test_classes_of_one_and_two_images(tmp_path):
    root = scenes_tree(tmp_path / "data", classes=("big",), per_class=30)
    save(scene(900), root / "solo" / "only.jpg")
    save(scene(901), root / "pair" / "one.jpg")
    save(scene(902), root / "pair" / "two.jpg")
    # a class whose two images are one shot: one group, so train only
    save(scene(903), root / "shot" / "f1.jpg")
    save(scene(903, dx=1), root / "shot" / "f2.jpg")
    out = tmp_path / "shards"
    m = preprocess(root, out, PreprocessConfig(size=64), workers=1)
    where = sides(out)
    assert where["solo/only.jpg"] == "train"
    assert sorted([where["pair/one.jpg"], where["pair/two.jpg"]]) == ["train", "val"]
    assert where["shot/f1.jpg"] == where["shot/f2.jpg"] == "train"
    assert set(m["single_image_classes"]) == {"solo", "shot"}
    r = CliRunner().invoke(cli.main, ["preprocess", "--data-dir", str(root), "--out", str(tmp_path / "cli"),
                                      "--size", "64", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "near-duplicates (within 6 bits): 2 images in 1 groups" in r.output
    assert "val share furthest from --val-frac:" in r.output
    assert "classes of one image or one group (train only): shot, solo" in r.output


def test_a_set_built_under_the_old_split_rule_is_rebuilt_with_that_reason(tmp_path):
    root = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=10)
    out = tmp_path / "shards"
    preprocess(root, out, PreprocessConfig(size=32), workers=1)
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 1
    del m["split_rule"]
    (out / "manifest.json").write_text(json.dumps(m))
    again = preprocess(root, out, PreprocessConfig(size=32), workers=1)
    assert "split rule changed (rule 1 -> 3" in again["rebuilt_because"]
    assert shard_format.read_manifest(out)["split_rule"] == 3 and shard_format.verify(out) == []
