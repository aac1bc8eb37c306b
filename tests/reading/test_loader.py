import numpy as np
import pytest
import torch

from pipeline.shardset import shard_format
from pipeline.common.config import LoaderConfig
from pipeline.reading.loader import create_loader
from pipeline.reading.sampler import EpochBatchSampler, epoch_order
from pipeline.reading.transform import DeviceTransform


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_epoch_order_is_a_function_of_seed_and_epoch():
    offsets = np.array([0, 10, 25, 40])
    labels = np.zeros(40, dtype=np.int64)
    a = epoch_order(offsets, labels, seed=1, epoch=0)
    assert np.array_equal(a, epoch_order(offsets, labels, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(offsets, labels, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(offsets, labels, seed=2, epoch=0))
    assert sorted(a.tolist()) == list(range(40))
    # samples stay grouped by shard: each shard's 10-15 indices are consecutive in the order
    shard_of = np.searchsorted(offsets, a, side="right") - 1
    assert (np.diff(shard_of) != 0).sum() == 2


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_equal_and_cover_the_epoch(world):
    offsets = np.array([0, 17, 40, 61])
    labels = np.arange(61) % 5
    parts = []
    for rank in range(world):
        s = EpochBatchSampler(offsets, labels, batch_size=8, seed=3, rank=rank, world_size=world)
        s.set_epoch(2)
        parts.append(np.concatenate(list(s)))
        assert len(list(s)) == len(s)
    assert len({len(p) for p in parts}) == 1
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union) == (61 // world) * world
    full = epoch_order(offsets, labels, 3, 2)
    assert set(union.tolist()) == set(full[: len(union)].tolist())  # the single-process epoch, truncated
    # evaluation order: every sample exactly once over the ranks, in order
    ev = [np.concatenate(list(EpochBatchSampler(offsets, labels, 8, rank=r, world_size=world, shuffle=False)))
          for r in range(world)]
    assert sorted(np.concatenate(ev).tolist()) == list(range(61))


def test_balanced_sampling_evens_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    s = EpochBatchSampler(np.array([0, 100]), labels, batch_size=100, seed=0, balance=True)
    drawn = np.concatenate(list(s))
    share = (labels[drawn] == 1).mean()
    assert 0.35 < share < 0.65


@pytest.mark.parametrize("workers,cache", [(0, "none"), (2, "none"), (0, "ram")])
def test_batches_identical_across_runs_and_cover_each_sample_once(easy_shards, workers, cache):
    split = shard_format.open_split(easy_shards, "train")
    assert len(split.shards) >= 3
    make = lambda: create_loader(split, LoaderConfig(batch_size=7, workers=workers, cache=cache, seed=5),
                                 device=torch.device("cpu"), train=True)
    ref = _batches(create_loader(split, LoaderConfig(batch_size=7, workers=0, cache="none", seed=5),
                                 device=torch.device("cpu"), train=True), 1)
    got = _batches(make(), 1)
    assert len(got) == len(ref)
    for (x, y), (rx, ry) in zip(got, ref):
        assert x.dtype == torch.uint8 and x.shape[1:] == (32, 32, 3)  # uint8 NHWC until the device
        assert torch.equal(x, rx) and torch.equal(y, ry)
    images = split.load_all()
    seen = torch.cat([x for x, _ in got]).reshape(len(split), -1)
    # every sample exactly once: the multiset of rows equals the split's rows
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, images.reshape(len(split), -1)))
    labels = torch.cat([y for _, y in got])
    assert torch.equal(torch.bincount(labels, minlength=4), torch.from_numpy(np.bincount(split.labels, minlength=4)))


@pytest.mark.parametrize("workers,train,balance,batch", [(0, True, False, 7), (2, True, False, 7),
                                                          (2, False, False, 7), (2, True, True, 7), (0, True, True, 32)])
def test_each_batch_holds_the_rows_and_labels_of_its_planned_indices(easy_shards, workers, train, balance, batch):
    # shards of ~20 images: batches of 7 often span two shards; balanced
    # batches of 32 mix every shard (the gather-then-scatter path)
    split = shard_format.open_split(easy_shards, "train")
    images = split.load_all()
    loader = create_loader(split, LoaderConfig(batch_size=batch, workers=workers, cache="none", seed=3,
                                               balance=balance), device=torch.device("cpu"), train=train)
    loader.set_epoch(2)
    idx = loader.sampler.indices(2)
    shards_per_batch = []
    for k, (x, y) in enumerate(loader):
        want = idx[k * batch: (k + 1) * batch]
        shards_per_batch.append(len(np.unique(np.searchsorted(split.offsets, want, side="right"))))
        assert np.array_equal(x.numpy(), images[want])
        assert np.array_equal(y.numpy(), split.labels[want])
    assert len(shards_per_batch) == -(-len(idx) // batch) and max(shards_per_batch) > 1


def test_device_transform_normalises_and_augments_reproducibly():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    t = DeviceTransform(mean, std, torch.device("cpu"), channels_last=True, seed=1)
    y = t(x)
    assert y.shape == (6, 3, 16, 16) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    expect = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(y, expect, atol=1e-5)
    a1 = DeviceTransform(mean, std, torch.device("cpu"), seed=7)(x, augment=True)
    a2 = DeviceTransform(mean, std, torch.device("cpu"), seed=7)(x, augment=True)
    assert torch.equal(a1, a2) and not torch.allclose(a1, expect)
    assert a1.shape == expect.shape


def test_compressed_shards_give_the_same_batches(tmp_path):
    from pipeline.common.config import PreprocessConfig
    from pipeline.building.preprocess import preprocess
    from tests.conftest import make_easy_set

    root = make_easy_set(tmp_path / "data", classes=3, per_class=10)
    batches = {}
    for comp in (None, "lzf"):
        out = tmp_path / f"s-{comp}"
        preprocess(root, out, PreprocessConfig(size=16, shard_mb=0.005, compression=comp), workers=1)
        split = shard_format.open_split(out, "train")
        assert len(split.shards) >= 3
        assert (split.shards[0].offset is None) == (comp is not None)
        loader = create_loader(split, LoaderConfig(batch_size=4, workers=0, cache="none"),
                               device=torch.device("cpu"), train=True)
        batches[comp] = _batches(loader, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[None], batches["lzf"]))


def test_a_batch_stays_intact_while_workers_run_ahead(easy_shards):
    import time

    split = shard_format.open_split(easy_shards, "train")
    cfg = LoaderConfig(batch_size=3, workers=2, cache="none", seed=1, prefetch_factor=2)
    ref = _batches(create_loader(split, LoaderConfig(batch_size=3, workers=0, cache="none", seed=1),
                                 device=torch.device("cpu"), train=True), 0)
    loader = create_loader(split, cfg, device=torch.device("cpu"), train=True)
    loader.set_epoch(0)
    previous = None
    for (x, y), (rx, ry) in zip(loader, ref):
        time.sleep(0.01)  # the workers fill every free slot meanwhile
        assert torch.equal(x, rx) and torch.equal(y, ry)
        if previous is not None:  # the batch before stays valid too (ring = prefetch + 2)
            assert torch.equal(previous[0], previous[1])
        previous = (x, rx)


def test_one_stream_serves_consecutive_epochs_and_jumps(easy_shards):
    split = shard_format.open_split(easy_shards, "train")
    fresh = lambda e: _batches(create_loader(split, LoaderConfig(batch_size=5, workers=0, cache="none", seed=2),
                                             device=torch.device("cpu"), train=True), e)
    loader = create_loader(split, LoaderConfig(batch_size=5, workers=2, cache="none", seed=2),
                           device=torch.device("cpu"), train=True)
    for epoch in (0, 1, 2, 7, 8, 3):  # consecutive epochs reuse the stream; a jump restarts it
        got, ref = _batches(loader, epoch), fresh(epoch)
        assert len(got) == len(ref) == len(loader)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, ref))
    loader.set_epoch(4)
    next(iter(loader))  # abandoned mid-epoch: the next epoch must not continue from there
    got = _batches(loader, 5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, fresh(5)))


@pytest.mark.parametrize("message_batches,balance", [(3, 0.0), (4, 1.0), (1, 0.0)])
def test_several_batches_a_message_give_the_planned_batches_across_epochs_and_resumes(easy_shards,
                                                                                      message_batches, balance):
    # batches of 5 in messages of 3 or 4: an epoch of this split ends mid-message, a resume at batch 4
    # starts mid-message, and consecutive epochs share one worker stream
    split = shard_format.open_split(easy_shards, "train")
    images = split.load_all()
    cfg = LoaderConfig(batch_size=5, workers=2, cache="none", seed=4, balance=balance,
                       message_batches=message_batches)
    loader = create_loader(split, cfg, device=torch.device("cpu"), train=True)
    assert loader.reader.per_message == message_batches
    assert message_batches == 1 or len(loader) % message_batches != 0
    for epoch, start in ((0, 0), (1, 0), (2, 4), (3, 0), (3, len(loader) - 1)):
        loader.set_epoch(epoch, start)
        idx = loader.sampler.indices(epoch)
        got = [(x.clone(), y.clone()) for x, y in loader]
        assert len(got) == len(loader) - start
        for k, (x, y) in enumerate(got, start):
            want = idx[k * 5: (k + 1) * 5]
            assert np.array_equal(x.numpy(), images[want]) and np.array_equal(y.numpy(), split.labels[want])
    state = loader.state_dict()
    assert state["epoch"] == 3 and state["batch"] == len(loader)
    loader.close()


def test_the_message_plan_fits_its_shared_memory():
    from pipeline.reading.loader import RING_BYTES, message_plan

    mb = 1 << 20
    # 64 px batches of 128 (1.5 MB): 21 a message (32 MB), 2 messages in flight, a ring of 4; 16 px: the cap
    k, prefetch, ring = message_plan(128 * 64 * 64 * 3, workers=2, prefetch_factor=4, shm_free=64 << 30)
    assert (k, prefetch, ring) == (21, 2, 4)
    assert message_plan(128 * 16 * 16 * 3, workers=2, prefetch_factor=4, shm_free=64 << 30)[0] == 32
    # a small /dev/shm (Docker's 64 MB) gets a ring within a quarter of it, however many batches that leaves
    for workers, free in ((2, 64 * mb), (16, 8 << 30), (2, 1 * mb)):
        k, prefetch, ring = message_plan(128 * 64 * 64 * 3, workers=workers, prefetch_factor=4, shm_free=free)
        assert k >= 1 and ring == prefetch + 2
        assert k == 1 or workers * ring * k * 128 * 64 * 64 * 3 <= min(RING_BYTES, free // 4)
    assert message_plan(128 * 64 * 64 * 3, workers=2, prefetch_factor=4, shm_free=64 * mb)[0] == 1
    # prefetch_factor counts batches: as many messages as hold them, at least 2
    assert message_plan(100, workers=2, prefetch_factor=40, asked=8) == (8, 5, 7)
    assert message_plan(100, workers=2, prefetch_factor=1, asked=8) == (8, 2, 4)
    from pipeline.common.config import ConfigError

    with pytest.raises(ConfigError, match="message_batches"):
        LoaderConfig(message_batches=-1)
