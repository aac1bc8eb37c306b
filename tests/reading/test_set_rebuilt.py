"""A set rebuilt while a run reads it: the run reads one consistent set or stops with one line.

``preprocess --force`` (or another ``--size``) commits by renaming new
shard files over the old names. What a reader opened keeps the old bytes;
what it opens afterwards must not silently be the new build's.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import PreprocessConfig, create_loader, open_set
from pipeline.building.preprocess import preprocess
from pipeline.shardset.header import SetChangedError
from tests.conftest import make_easy_set


@pytest.fixture()
def many_shards(tmp_path) -> tuple[Path, Path]:
    """(data folder, shard folder): 4 classes x 24 images at 32 px, about two images a shard."""
    data = make_easy_set(tmp_path / "data")
    out = tmp_path / "set"
    preprocess(data, out, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.007), workers=1)
    return data, out


def epoch_batches(out: Path, **kw) -> list[np.ndarray]:
    loader = create_loader(open_set(out).split("train"), device="cpu", batch_size=8, seed=3, cache="none", **kw)
    loader.set_epoch(0)
    try:
        return [x.clone().numpy() for x, _ in loader]
    finally:
        loader.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_set_rebuilt_mid_epoch_stops_the_reader_before_any_row_of_the_new_build(many_shards, workers):
    data, out = many_shards
    reference = epoch_batches(out, workers=workers)
    split = open_set(out).split("train")
    assert len(split.shards) > 10
    loader = create_loader(split, device="cpu", batch_size=8, seed=3, cache="none", workers=workers,
                           message_batches=1, prefetch_factor=1)
    loader.set_epoch(0)
    got = []
    it = iter(loader)
    try:
        got.append(next(it)[0].clone().numpy())
        # another build commits: same names, other pixels (16 px rows, another seed's order)
        preprocess(data, out, PreprocessConfig(size=16, val_frac=0.25, shard_mb=0.007, seed=9), workers=1,
                   force=True)
        with pytest.raises(SetChangedError) as caught:
            for x, _ in it:
                got.append(x.clone().numpy())
    finally:
        loader.close()
    message = str(caught.value)
    assert "\n" not in message and "replaced since this run opened the set" in message and str(out) in message
    assert "Traceback" not in message and "DataLoader worker" not in message
    assert 1 <= len(got) < len(reference)
    for a, b in zip(got, reference):   # every batch before the stop is the old build's, row for row
        assert np.array_equal(a, b)


def test_a_set_fully_opened_before_the_rebuild_is_read_to_the_end_unchanged(many_shards):
    data, out = many_shards
    split = open_set(out).split("train")
    expected = split.load_all()
    loader = create_loader(split, device="cpu", batch_size=8, seed=3, cache="ram", workers=0)
    preprocess(data, out, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.007, seed=9), workers=1,
               force=True)
    loader.set_epoch(0)
    rows = torch.cat([x for x, _ in loader]).numpy()
    # resident: the whole old split, each row once, none of the new build's order
    assert sorted(map(bytes, rows)) == sorted(map(bytes, expected))


def test_a_split_opened_across_a_commit_is_refused(many_shards, tmp_path):
    data, out = many_shards
    shards = open_set(out)                 # the manifest is read ...
    preprocess(data, out, PreprocessConfig(size=16, val_frac=0.25, shard_mb=0.007), workers=1, force=True)
    with pytest.raises(SetChangedError, match="replaced since this run opened the set"):
        shards.split("train")              # ... the shards opened after another build committed


def test_a_shard_swapped_for_another_builds_file_is_refused_at_its_first_map(many_shards, tmp_path):
    data, out = many_shards
    other = tmp_path / "other"
    preprocess(data, other, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.007, seed=9), workers=1)
    split = open_set(out).split("train")
    victim = split.shards[-1].path
    shutil.copyfile(other / victim.name, victim.with_suffix(".new"))
    victim.with_suffix(".new").replace(victim)      # what a commit does: a rename over the name
    with pytest.raises(SetChangedError, match=victim.name):
        split.shards[-1].images_map()
    split.shards[0].images_map()                    # the untouched ones still map
