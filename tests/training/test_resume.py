"""Resume equals the uninterrupted run: one matrix of reader x interruption kind.

The plan exercises every piece of state a resume must carry: progressive
resizing (the side of each epoch), the moving average of the weights, the
augmentation and sampler RNGs, the optimiser and the schedule.
"""

import os
import signal

import pytest
import torch

from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig, TrainPlan
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.train import train

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "res")
READERS = {"resident": {"cache": "ram", "workers": 0}, "streaming": {"cache": "none", "workers": 2}}
# where each kind stops: (epoch, step) for a signal; epoch-end stops after two whole epochs
KINDS = {"epoch-end": None, "ctrl-c": (1, 2, signal.SIGINT), "sigterm": (2, 3, signal.SIGTERM)}


def plan(out, reader: str) -> TrainPlan:
    return TrainPlan(ModelConfig(name="resnet"),
                     OptimConfig(lr=3e-3, epochs=4, min_res=16, ramp=(0.5, 0.75), ema=0.9),
                     LoaderConfig(batch_size=16, seed=0, **READERS[reader]),
                     RunConfig(seed=0, device="cpu", out=str(out)))


@pytest.fixture(scope="module")
def uninterrupted(easy_shards, tmp_path_factory):
    """reader -> (history, last.pt) of the run that never stopped."""
    runs = {}
    for reader in READERS:
        out = tmp_path_factory.mktemp(f"full-{reader}")
        runs[reader] = (train(easy_shards, plan(out, reader))["history"], load_checkpoint(out / "last.pt"))
    return runs


def _signal_at(epoch: int, step: int, signum: int):
    def hook(e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signum)
    return hook


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_resume_equals_the_uninterrupted_run(easy_shards, tmp_path, uninterrupted, reader, kind):
    out = tmp_path / "cut"
    if KINDS[kind] is None:
        train(easy_shards, plan(out, reader), stop_after=2)
        checkpoint = out / "last.pt"
        assert load_checkpoint(checkpoint)["epoch"] == 1
    else:
        epoch, step, signum = KINDS[kind]
        with pytest.raises(KeyboardInterrupt) as stopped:
            train(easy_shards, plan(out, reader), on_step=_signal_at(epoch, step, signum))
        assert stopped.value.signum == signum
        checkpoint = out / "interrupted.pt"
        position = load_checkpoint(checkpoint, for_resume=True)["position"]
        assert (position["epoch"], position["step"]) == (epoch, step)
        assert load_checkpoint(out / "last.pt")["epoch"] == epoch - 1   # untouched by the interrupt
    resumed = train(easy_shards, plan(out, reader), resume=checkpoint)["history"]
    full, full_last = uninterrupted[reader]
    assert [[r[k] for k in KEYS] for r in resumed] == [[r[k] for k in KEYS] for r in full]
    assert [r["res"] for r in resumed] == [16, 16, 24, 32]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]   # every epoch once
    assert not (out / "interrupted.pt").exists()                        # superseded by last.pt
    last = load_checkpoint(out / "last.pt")
    assert last["ema"]["updates"] == full_last["ema"]["updates"]
    assert all(torch.equal(v, full_last["ema"]["weights"][k]) for k, v in last["ema"]["weights"].items())
    assert all(torch.equal(v, full_last["model"][k]) for k, v in last["model"].items())
