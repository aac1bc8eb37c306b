"""What the fault tests share: the CLI runner, folder snapshots, a small plan, a signal hook, a byte flip."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from click.testing import CliRunner

import cli
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig
from pipeline.training.train import TrainPlan

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1")


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def plan(out, epochs=3, workers=0, cache="ram", batch=16, amp=False, lr=3e-3):
    return TrainPlan(ModelConfig(name="cnn4conv"), OptimConfig(lr=lr, epochs=epochs),
                     LoaderConfig(batch_size=batch, workers=workers, cache=cache, seed=0),
                     RunConfig(seed=0, device="cpu", amp=amp, out=str(out)))


def signal_at(epoch: int, step: int, signum=signal.SIGTERM):
    """An on_step hook that sends this process a real signal after that step (SIGTERM: a preemption)."""
    def hook(e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signum)
    return hook


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
