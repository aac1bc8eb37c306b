"""The CUDA path without host syncs: what CPU runs can check, and the CUDA test itself (skipped here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.common import env
from pipeline.shardset import shard_format
from pipeline.training import train as train_mod
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig
from pipeline.reading.loader import BatchLoader, create_loader
from pipeline.training.runtime import amp_dtype
from pipeline.training.train import TrainingError, TrainPlan, train


@pytest.mark.parametrize("cache,workers", [("ram", 0), ("device", 0), ("none", 0), ("none", 2)])
def test_an_epochs_indices_are_built_once_and_batches_are_slices_of_them(easy_shards, monkeypatch, cache, workers):
    split = shard_format.open_split(easy_shards, "train")
    calls = []
    real = BatchLoader.epoch_indices

    def counting(self):
        idx = real(self)
        calls.append(idx)
        return idx

    monkeypatch.setattr(BatchLoader, "epoch_indices", counting)
    ld = create_loader(split, LoaderConfig(batch_size=8, workers=workers, cache=cache, seed=3),
                       device=torch.device("cpu"), train=True)
    for epoch in range(2):
        ld.set_epoch(epoch)
        batches = [(x.clone(), y.clone()) for x, y in ld]
        assert len(calls) == epoch + 1 and len(batches) == len(ld) > 3  # once per epoch, not per batch
        idx = calls[-1]
        images = split.load_all()
        for k, (x, y) in enumerate(batches):
            rows = idx[8 * k: 8 * (k + 1)]
            assert torch.equal(y, torch.from_numpy(split.labels)[rows])
            assert np.array_equal(x.numpy(), images[rows.numpy()])


def test_drop_last_gives_whole_batches_and_says_how_many_are_left_out(easy_shards):
    split = shard_format.open_split(easy_shards, "train")
    ld = create_loader(split, LoaderConfig(batch_size=10, workers=0, cache="ram", drop_last=True),
                       device=torch.device("cpu"), train=True)
    ld.set_epoch(0)
    sizes = [len(y) for _, y in ld]
    assert sizes == [10] * (len(split) // 10) and ld.sampler.dropped() == len(split) % 10 > 0


def test_one_worker_default_per_process(monkeypatch):  # the CLI's --workers default is the same function
    monkeypatch.setattr(env, "cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert env.default_workers() == 2 and LoaderConfig().workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert LoaderConfig().workers == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert LoaderConfig().workers == 16


def test_amp_picks_bf16_only_where_the_gpu_runs_it_natively(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype(cuda, True) == torch.float16  # a T4/V100: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(cuda, True) == torch.bfloat16  # Ampere and later
    assert amp_dtype(cuda, False) is None


def _plan(out, epochs=2, cache="ram", workers=0, device="cpu", amp=False):
    return TrainPlan(ModelConfig(name="cnn4conv"), OptimConfig(lr=3e-3, epochs=epochs),
                     LoaderConfig(batch_size=16, workers=workers, cache=cache, seed=0),
                     RunConfig(seed=0, device=device, amp=amp, out=str(out)))


def test_the_nan_check_ignores_steps_the_scaler_skipped(easy_shards, tmp_path, monkeypatch):
    class ScaledPrecision(train_mod.Precision):  # an fp16-style GradScaler, on the CPU
        def __init__(self, device, amp):
            super().__init__(device, amp)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

    real = torch.nn.functional.cross_entropy
    calls = []

    def first_step_overflows(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("inf") if len(calls) == 1 else loss

    plain = train_mod.Precision
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", first_step_overflows)
    monkeypatch.setattr(train_mod, "Precision", ScaledPrecision)
    s = train(easy_shards, _plan(tmp_path / "a", epochs=1))  # skipped by the scaler: not a divergence
    assert np.isfinite(s["history"][0]["train_loss"])
    calls.clear()
    monkeypatch.setattr(train_mod, "Precision", plain)  # no scaler: the same inf is a divergence
    with pytest.raises(TrainingError, match="loss became nan or inf in epoch 1"):
        train(easy_shards, _plan(tmp_path / "b", epochs=1))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cache,workers", [("device", 0), ("none", 2)])
def test_cuda_epochs_have_no_host_sync_in_the_step_loop_and_resume(easy_shards, tmp_path, cache, workers):
    out = tmp_path / cache
    s = train(easy_shards, _plan(out, epochs=2, cache=cache, workers=workers, device="cuda", amp=True),
              stop_after=1, sync_debug="error")  # any sync inside the step loop raises
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert s["amp"] == ("bfloat16" if native else "float16")
    assert s["device"].startswith("cuda") and np.isfinite(s["history"][0]["train_loss"])
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    r = train(easy_shards, _plan(out, epochs=2, cache=cache, workers=workers, device="cuda", amp=True),
              resume=out / "last.pt", sync_debug="error")
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert r["history"][1]["train_loss"] < r["history"][0]["train_loss"]
