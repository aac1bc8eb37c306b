"""The public Python API: per-sample Dataset, the fast loader's resume and safety, write_set."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import pipeline
from pipeline import DeviceTransform, ShardDataset, create_loader, open_set, write_set
from pipeline.common.config import PreprocessConfig
from pipeline.building.preprocess import preprocess
from tests.conftest import make_class_tree


def test_import_pipeline_is_light_and_exports_the_api():
    import subprocess
    import sys

    code = "import sys, pipeline; assert 'torch' not in sys.modules; print(sorted(pipeline.__all__))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    # the configs, the model tables and the command line's help stay torch-free too (fresh processes:
    # a bench contender, `cli.py --help`)
    light = ("import sys, cli, model, pipeline.common.config, pipeline.building.preprocess; "
             "cli.main(['--help'], standalone_mode=False); assert 'torch' not in sys.modules, 'torch imported'")
    h = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert h.returncode == 0 and "preprocess" in h.stdout, h.stderr
    for name in ("open_set", "ShardDataset", "create_loader", "DeviceTransform", "write_set", "make_plan",
                 "Classifier"):
        assert name in r.stdout and getattr(pipeline, name) is not None


def test_the_per_sample_dataset_equals_the_fast_loader(easy_shards):
    split = open_set(easy_shards).split("train")
    ds = ShardDataset(split)
    assert len(ds) == len(split) and ds[-1][1] == ds[len(ds) - 1][1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    loader = create_loader(split, batch_size=16, workers=0, cache="none", seed=5)
    loader.set_epoch(1)
    idx = loader.epoch_indices()
    for k, (x, y) in enumerate(loader):
        rows = idx[16 * k: 16 * (k + 1)].tolist()
        images = torch.stack([ds[i][0] for i in rows])                    # CHW per sample
        assert torch.equal(images.permute(0, 2, 3, 1), x)                 # the loader's NHWC batch
        assert y.tolist() == [ds[i][1] for i in rows]
    image, label = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and image.is_contiguous()
    assert isinstance(label, int)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_the_dataset_works_with_a_plain_dataloader_and_workers(easy_shards, start):
    ds = ShardDataset(open_set(easy_shards).split("val"))
    dl = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, multiprocessing_context=start,
                    generator=torch.Generator().manual_seed(0))
    seen = torch.cat([y for _, y in dl])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    images = torch.cat([x for x, _ in DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=start)])
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(len(ds))]))


def test_two_ranks_with_a_distributed_sampler_cover_every_index_once(easy_shards):
    ds = ShardDataset(open_set(easy_shards).split("train"))
    parts = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        parts.append(list(sampler))
        assert len(list(DataLoader(ds, batch_size=4, sampler=sampler))) == -(-len(sampler) // 4)
    assert len(ds) % 2 == 0 and sorted(parts[0] + parts[1]) == list(range(len(ds)))  # each index once
    assert not set(parts[0]) & set(parts[1])


@pytest.mark.parametrize("cache,workers", [("ram", 0), ("none", 0), ("none", 2)])
def test_state_dict_resume_yields_exactly_the_remaining_batches(easy_shards, cache, workers):
    sset = open_set(easy_shards)

    def make():
        tf = DeviceTransform(sset.mean, sset.std, "cpu", seed=1)
        return create_loader(sset.split("train"), batch_size=8, workers=workers, cache=cache, seed=2, transform=tf)

    full = make()
    full.set_epoch(3)
    batches = list(full)
    cut = make()
    cut.set_epoch(3)
    it = iter(cut)
    first = [next(it) for _ in range(4)]
    state = cut.state_dict()
    assert state["epoch"] == 3 and state["batch"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(first) + len(rest) == len(batches)
    for (a, b), (c, d) in zip(first + rest, batches):
        assert torch.equal(a, c) and torch.equal(b, d)  # images (augmented) and labels


@pytest.mark.parametrize("cache,workers", [("ram", 0), ("none", 2)])
def test_batches_are_safe_to_keep_unless_reuse_is_asked_for(easy_shards, cache, workers):
    split = open_set(easy_shards).split("train")
    kept = create_loader(split, batch_size=4, workers=workers, cache=cache, seed=0)
    kept.set_epoch(0)
    held = list(kept)
    copies = [(x.clone(), y.clone()) for x, y in held]  # what they held when handed out
    kept.set_epoch(0)
    first = [(x.clone(), y.clone()) for x, y in kept]
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(held, first))
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(held, copies))
    # one batch a message, so the workers' ring wraps within this small epoch
    reused = create_loader(split, batch_size=4, workers=workers, cache=cache, seed=0, reuse_buffers=True,
                           message_batches=1)
    reused.set_epoch(0)
    kept_refs = [x for x, _ in reused]
    changed = sum(not torch.equal(a, c) for a, (c, _) in zip(kept_refs, first))
    assert changed > 0  # reuse means later batches overwrote earlier ones: the documented opt-in


def test_the_resident_split_is_exposed_and_reused_batches_share_one_buffer(easy_shards):
    split = open_set(easy_shards).split("train")
    ram = create_loader(split, batch_size=4, workers=0, cache="ram", seed=0, reuse_buffers=True)
    assert ram.resident is not None and tuple(ram.resident.shape) == (len(split),) + split.load_all().shape[1:]
    assert torch.equal(ram.resident, torch.from_numpy(split.load_all()))
    ram.set_epoch(0)
    pointers = {x.data_ptr() for x, _ in ram}
    assert len(pointers) == 1  # the opt-in: every batch in the one reused buffer
    fresh = create_loader(split, batch_size=4, workers=0, cache="ram", seed=0)
    fresh.set_epoch(0)
    assert len({x.data_ptr() for x, _ in list(fresh)}) == len(fresh)  # kept batches: memory of their own
    assert create_loader(split, batch_size=4, workers=0, cache="none").resident is None


def test_a_user_callable_augments_on_the_device(easy_shards):
    sset = open_set(easy_shards)
    flip = DeviceTransform(sset.mean, sset.std, "cpu", augment=lambda x: x.flip(3))
    plain = DeviceTransform(sset.mean, sset.std, "cpu", augment=None)
    x = torch.from_numpy(sset.split("val").load_all()[:4])
    assert torch.equal(flip(x, augment=True), plain(x).flip(3))
    assert torch.equal(plain(x, augment=True), plain(x))
    with pytest.raises(ValueError, match="augment must be"):
        DeviceTransform(sset.mean, sset.std, "cpu", augment="rotate")


def test_write_set_from_samples_is_byte_equal_to_preprocess(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 7, "b": 5, "c": 4})
    shutil.copy(root / "a" / "img_000.jpg", root / "b" / "dup.jpg")  # a duplicate, dropped by both
    (root / "c" / "bad.jpg").write_bytes(b"not an image")
    cfg = PreprocessConfig(size=16, val_frac=0.25, shard_mb=0.002)
    preprocess(root, tmp_path / "p", cfg, workers=1)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    samples = [((root / rel).read_bytes(), rel.split("/")[0], rel) for rel in files]  # bytes, label by name
    m = write_set(samples, ["a", "b", "c"], tmp_path / "w", cfg, workers=2)
    shards = sorted(p.name for p in (tmp_path / "p").glob("*.h5"))
    assert len(shards) > 2 and shards == sorted(p.name for p in (tmp_path / "w").glob("*.h5"))
    for name in shards:
        assert (tmp_path / "p" / name).read_bytes() == (tmp_path / "w" / name).read_bytes(), name
    assert m["duplicates"] == [{"path": "b/dup.jpg", "same_as": "a/img_000.jpg"}]
    assert [s["path"] for s in m["skipped"]] == ["c/bad.jpg"]
    assert write_set(samples, ["a", "b", "c"], tmp_path / "w", cfg)["up_to_date"] is True


def test_write_set_takes_arrays_and_paths_and_refuses_bad_labels(tmp_path):
    root = make_class_tree(tmp_path / "data", {"x": 2})
    rng = np.random.default_rng(0)
    arrays = [(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), k % 2) for k in range(10)]
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(arrays[0][0]).save(buf, format="PNG")
    samples = arrays + [(root / "x" / "img_000.jpg", 1), (buf.getvalue(), 0, "from-bytes.png"),
                        (np.zeros((20, 30), dtype=np.uint8), 0)]
    m = write_set(samples, ["zero", "one"], tmp_path / "s", PreprocessConfig(size=16, val_frac=0.2))
    assert m["counts"]["train"] + m["counts"]["val"] == 12  # the grey 2-D array is skipped with its reason
    assert any(s["path"] == "sample-000012" and "HxWx3 uint8" in s["reason"] for s in m["skipped"])
    ss = open_set(tmp_path / "s")
    assert ss.class_names == ["zero", "one"] and ss.image_size == 16
    with pytest.raises(pipeline.UserError, match="label 'two' is not one of the 2 classes"):
        write_set([(arrays[0][0], "two")], ["zero", "one"], tmp_path / "t")
