"""Faults of a training run: preemption, resume from the command line, a full disk, a NaN loss, foreign run folders.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.training import runtime
from pipeline.training import train as train_mod
from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.common.config import OptimConfig, PreprocessConfig
from pipeline.building.preprocess import preprocess
from pipeline.training.optim import lr_at
from pipeline.training.train import TrainingError, train
from tests.conftest import make_easy_set
from tests.helpers import plan, run, signal_at, snapshot


def test_cli_sigterm_exits_143_with_a_line_saying_where_to_resume(easy_shards, tmp_path, monkeypatch):
    real = train_mod.Trainer._train_epoch

    def preempted(self, epoch, stop, on_step):   # the scheduler's SIGTERM arrives after step 2 of epoch 1
        return real(self, epoch, stop, on_step or signal_at(0, 2))
    monkeypatch.setattr(train_mod.Trainer, "_train_epoch", preempted)
    out = tmp_path / "run"
    r = run("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 2, "--device", "cpu",
            "--workers", 0, "--batch-size", 16, "--out", out)
    assert r.exit_code == 143, r.output
    assert f"continue with --resume {out / 'interrupted.pt'}" in r.output and "stopped by SIGTERM" in r.output
    assert "Traceback" not in r.output
    monkeypatch.undo()
    r = run("train", "--resume", out / "interrupted.pt", "--workers", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [h["epoch"] for h in load_checkpoint(out / "last.pt")["history"]] == [1, 2]


def test_cli_resume_takes_model_and_recipe_from_the_checkpoint_and_extends(finished, tmp_path, monkeypatch):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    r = run("train", "--resume", out / "last.pt", "--epochs", 2, "--workers", 0, "--device", "cpu")
    assert r.exit_code == 1 and "trained 2 of 2 epochs already" in r.output and "--epochs N" in r.output
    r = run("train", "--resume", out / "last.pt", "--model", "bart")
    assert r.exit_code == 1 and r.output.strip() == (
        f"error: {out / 'last.pt'} was trained with --model 'cnn4conv', not 'bart'; --resume continues the "
        f"checkpoint's own recipe: drop --model (or start a new run with another --out)")
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(str(f)) or real_load(f, *a, **k))
    r = run("train", "--resume", out / "last.pt", "--epochs", 4, "--workers", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert reads.count(str(out / "last.pt")) == 1  # the CLI's plan and the run share one read
    assert "cnn4conv" in r.output and "resumed from" in r.output  # no --model, --shards given
    ck = load_checkpoint(out / "last.pt", for_resume=True)
    assert ck["config"]["model"]["name"] == "cnn4conv" and ck["config"]["optim"]["epochs"] == 4
    assert [h["epoch"] for h in ck["history"]] == [1, 2, 3, 4] and ck["position"] == {"epoch": 4, "step": 0,
                                                                                       "sums": None}


def test_resume_on_another_precision_and_another_machine(easy_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(easy_shards, plan(out, epochs=2, amp=True), stop_after=1)
    ck = torch.load(out / "last.pt", weights_only=True)
    ck["precision"] = "bfloat16"                                  # trained where bf16 is native
    ck["rng"][0]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]   # on a machine with a GPU
    torch.save(ck, out / "last.pt")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)  # this one has neither
    said = []
    s = train(easy_shards, plan(out, epochs=2, amp=True), resume=out / "last.pt", say=said.append)
    assert s["amp"] == "fp32" and [h["epoch"] for h in s["history"]] == [1, 2]
    assert any("trained in bfloat16; this machine continues in fp32" in m for m in said)


def test_disk_full_during_train_is_one_line_and_leaves_the_last_good_files(easy_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(easy_shards, plan(out, epochs=3), stop_after=1)
    before = snapshot(out)
    real = Path.write_bytes

    def full(self, data):   # checkpoints are serialised in memory, then written here: the disk fills mid-file
        if not self.name.endswith(".pt.tmp"):
            return real(self, data)
        real(self, b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    r = run("train", "--resume", out / "last.pt", "--workers", 0, "--device", "cpu")
    monkeypatch.setattr(Path, "write_bytes", real)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (f"error: no space left on device: {out / 'last.pt'}; free some "
                                                 f"space and run again")
    after = snapshot(out)
    assert not [k for k in after if k.endswith(".tmp")]
    for name in ("last.pt", "best.pt", "curves.png", "metrics.csv"):
        assert after[name] == before[name] and len(after[name]) > 0, name


def test_disk_full_while_plotting_keeps_the_previous_plot(tmp_path, monkeypatch):
    from pipeline.training.plots import plot_curves

    hist = [{"epoch": 1, "train_loss": 1.0, "train_acc": .5, "val_loss": 1.1, "val_acc": .4, "val_f1": .3}]
    plot_curves(hist, tmp_path / "curves.png")
    before = (tmp_path / "curves.png").read_bytes()

    def full(self, fp, *a, **k):
        Path(fp).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError, match="no space left on device: .*curves.png"):
        plot_curves(hist * 2, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_a_tiny_schedule_trains(tmp_path):
    root = make_easy_set(tmp_path / "data", classes=2, per_class=4)
    preprocess(root, tmp_path / "s", PreprocessConfig(size=32, val_frac=0.25), workers=1)
    r = run("train", "--shards", tmp_path / "s", "--model", "cnn4conv", "--epochs", 2, "--batch-size", 512,
            "--workers", 0, "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 100])
def test_the_schedule_is_torchs_onecycle_and_never_crashes(total):
    o = OptimConfig(lr=2e-3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=o.lr)
    try:
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total, pct_start=0.25,
                                                  div_factor=20.0, final_div_factor=200.0)
    except ZeroDivisionError:
        ref = None  # torch cannot build this one; ours still can
    for step in range(total):
        lr, beta1 = lr_at(o, step, total)
        assert np.isfinite(lr) and 0 < lr <= o.lr and 0.85 <= beta1 <= 0.95
        if ref is not None and total >= 8:
            assert (lr, beta1) == (opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0])
            opt.step()
            ref.step()
    assert lr_at(o, total + 5, total) == lr_at(o, total, total)  # past the end: the final value


def test_nan_in_the_first_epoch_names_no_checkpoint_that_does_not_exist(easy_shards, tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match=r"no checkpoint was written yet"):
        train(easy_shards, plan(tmp_path / "r", epochs=1))
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_new_run_never_overwrites_another_runs_files(finished, easy_shards, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    r = run("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 1, "--device", "cpu", "--out", out)
    assert r.exit_code == 1 and "already holds a run" in r.output and f"--resume {out / 'last.pt'}" in r.output
    assert snapshot(out) == before
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(out / "nothing.pt")


def test_a_folder_holding_only_a_config_json_is_not_a_run_to_protect(finished, easy_shards, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    shutil.copy(finished / "config.json", out / "config.json")     # killed before its first checkpoint
    r = run("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 1, "--device", "cpu",
            "--workers", 0, "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").is_file()
    # a config.json this tool did not write is the user's: refused, and the advice works
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"learning_rate": 1}')
    r = run("train", "--shards", easy_shards, "--epochs", 1, "--out", mine)
    assert r.exit_code == 1 and "pass another --out" in r.output and "--resume" not in r.output
    assert (mine / "config.json").read_text() == '{"learning_rate": 1}'
    # a real run: the advice (--resume its checkpoint) is a command that works
    r = run("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 1, "--out", out)
    assert r.exit_code == 1 and f"continue it with --resume {out / 'interrupted.pt'}" not in r.output
    advice = r.output.split("--resume ")[1].split(" ")[0]
    r = run("train", "--resume", advice, "--epochs", 2, "--device", "cpu", "--workers", 0)
    assert r.exit_code == 0, r.output


def test_resume_accepts_its_own_recipe_options_and_names_both_values_of_a_different_one(finished, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    ck = load_checkpoint(out / "last.pt")
    lr = ck["config"]["optim"]["lr"]
    r = run("train", "--resume", out / "last.pt", "--model", "cnn4conv", "--lr", lr, "--batch-size", 16,
            "--seed", 0, "--epochs", 3, "--device", "cpu", "--workers", 0)
    assert r.exit_code == 0, r.output
    r = run("train", "--resume", out / "last.pt", "--lr", 0.5, "--epochs", 4)
    assert r.exit_code == 1 and f"was trained with --lr {lr!r}, not 0.5" in r.output and "drop --lr" in r.output
    r = run("train", "--resume", out / "last.pt", "--ema", 0.9, "--epochs", 4)
    assert r.exit_code == 1 and "was trained with --ema 0.0, not 0.9" in r.output and "drop --ema" in r.output


def test_resume_after_the_shard_folder_moved_says_how_to_point_at_its_new_place(easy_shards, tmp_path):
    shards = Path(shutil.copytree(easy_shards, tmp_path / "shards"))
    out = tmp_path / "run"
    train(shards, plan(out, epochs=1))
    moved = shards.rename(tmp_path / "elsewhere")
    r = run("train", "--resume", out / "last.pt", "--epochs", 2, "--device", "cpu", "--workers", 0)
    assert r.exit_code == 1 and "not there (moved or deleted)" in r.output and "preprocess" not in r.output
    assert f"--resume {out / 'last.pt'} --shards NEW_PLACE" in r.output
    r = run("train", "--resume", out / "last.pt", "--shards", moved, "--epochs", 2, "--device", "cpu",
            "--workers", 0)
    assert r.exit_code == 0, r.output
    assert [h["epoch"] for h in load_checkpoint(out / "last.pt")["history"]] == [1, 2]
