"""Trust under bad input and faults: each numbered case of the trust issue, and its weaker list.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline.building import preprocess as pp
from pipeline.training import runtime
from pipeline.shardset import shard_format
from pipeline.training import train as train_mod
from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, PreprocessConfig, RunConfig
from pipeline.common.files import FolderLock
from pipeline.building.preprocess import preprocess
from pipeline.building.reuse import STAGING
from pipeline.building.commit import BUILD
from pipeline.training.optim import lr_at
from pipeline.training.train import TrainingError, TrainPlan, train
from tests.conftest import make_class_tree, make_easy_set

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


@pytest.fixture()
def shards(easy_shards, tmp_path) -> Path:
    """A private copy of the 4-class set (tests corrupt it)."""
    return Path(shutil.copytree(easy_shards, tmp_path / "shards"))


@pytest.fixture(scope="module")
def finished(easy_shards, tmp_path_factory):
    """A finished 2-epoch cnn4conv run."""
    out = tmp_path_factory.mktemp("finished")
    train(easy_shards, plan(out, epochs=2))
    return out


# 1. Resume ---------------------------------------------------------------------------------------

def _sigint_at(epoch: int, step: int):
    """An on_step hook that sends this process a real SIGINT (Ctrl-C) after that step."""
    def hook(e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signal.SIGINT)
    return hook


@pytest.mark.parametrize("cache,workers", [("ram", 0), ("none", 2)])
def test_ctrl_c_mid_epoch_then_resume_equals_the_uninterrupted_run(easy_shards, tmp_path, cache, workers):
    full = train(easy_shards, plan(tmp_path / "full", cache=cache, workers=workers))["history"]
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(easy_shards, plan(out, cache=cache, workers=workers), on_step=_sigint_at(1, 2))
    ck = load_checkpoint(out / "interrupted.pt", for_resume=True)
    assert ck["position"]["epoch"] == 1 and ck["position"]["step"] == 2 and ck["epoch"] == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 0  # untouched by the interrupt
    resumed = train(easy_shards, plan(out, cache=cache, workers=workers), resume=out / "interrupted.pt")["history"]
    assert [[r[k] for k in KEYS] for r in resumed] == [[r[k] for k in KEYS] for r in full]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]  # every epoch once
    assert not (out / "interrupted.pt").exists()  # superseded by last.pt


def _signal_at(epoch: int, step: int, signum=signal.SIGTERM):
    def hook(e, s):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signum)
    return hook


def test_sigterm_mid_epoch_stops_at_a_step_writes_interrupted_and_resume_equals_the_full_run(easy_shards, tmp_path):
    full = train(easy_shards, plan(tmp_path / "full"))["history"]
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt) as info:
        train(easy_shards, plan(out), on_step=_signal_at(1, 3))
    assert info.value.signum == signal.SIGTERM
    ck = load_checkpoint(out / "interrupted.pt", for_resume=True)
    assert ck["position"]["epoch"] == 1 and ck["position"]["step"] == 3
    resumed = train(easy_shards, plan(out), resume=out / "interrupted.pt")["history"]
    assert [[r[k] for k in KEYS] for r in resumed] == [[r[k] for k in KEYS] for r in full]


def test_cli_sigterm_exits_143_with_a_line_saying_where_to_resume(easy_shards, tmp_path, monkeypatch):
    real = train_mod.Trainer._train_epoch

    def preempted(self, epoch, stop, on_step):   # the scheduler's SIGTERM arrives after step 2 of epoch 1
        return real(self, epoch, stop, on_step or _signal_at(0, 2))
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


# 2. evaluate --data-dir prefers class folders -----------------------------------------------------

def test_evaluate_class_folders_with_a_stray_image(finished, tmp_path):
    data = make_easy_set(tmp_path / "raw", classes=4, per_class=3, seed=9)
    shutil.copy(next(data.rglob("*.jpg")), data / "stray.jpg")
    r = run("evaluate", finished / "best.pt", "--data-dir", data, "--out", tmp_path / "ev", "--json",
            tmp_path / "ev.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev.json").read_text())
    assert rep["images"] == 12 and rep["layout"] == "folders" and rep["stray_files"] == ["stray.jpg"]
    assert "1 file(s) outside the class folders, not scored: stray.jpg" in r.output


# 3. A flipped byte, out-of-range labels -----------------------------------------------------------

def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_a_flipped_pixel_byte_stops_train_and_evaluate_and_preprocess_rebuilds(shards, finished, tmp_path):
    shard = shard_format.open_split(shards, "train").shards[1]
    _flip(shard.path, shard.offset + 77)
    r = run("train", "--shards", shards, "--model", "cnn4conv", "--epochs", 1, "--device", "cpu",
            "--out", tmp_path / "r")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert f"{shard.path}: SHA-256 differs from the manifest" in r.output and "preprocess --force" in r.output
    assert not (tmp_path / "r").exists()
    r = run("evaluate", finished / "best.pt", "--shards", shards, "--out", tmp_path / "ev")
    assert r.exit_code == 1 and shard.path.name in r.output
    r = run("bench", "--quick", "--data-dir", tmp_path / "none")
    assert r.exit_code == 1 and "no such folder" in r.output


def test_preprocess_rebuilds_a_corrupt_set_instead_of_calling_it_up_to_date(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "out"
    args = ("preprocess", "--data-dir", root, "--out", out, "--size", 16, "--workers", 1)
    assert run(*args).exit_code == 0
    good = snapshot(out)
    shard = shard_format.open_split(out, "val").shards[0]
    _flip(shard.path, shard.offset + 5)
    r = run(*args)
    assert r.exit_code == 0 and "up to date" not in r.output
    assert f"rebuilt the shard set ({shard.path}: SHA-256 differs" in r.output
    again = snapshot(out)
    assert [again[k] == good[k] for k in good if k.endswith(".h5")] == [True, True]  # same seed, same bytes
    assert "up to date" in run(*args).output


def test_out_of_range_labels_are_refused_on_open(shards):
    entry = next(e for e in json.loads((shards / "manifest.json").read_text())["shards"] if e["split"] == "train")
    path = shards / entry["file"]
    with h5py.File(path, "r+") as f:
        f["labels"][0] = 99
    m = json.loads((shards / "manifest.json").read_text())  # a consistent manifest: the checksum passes
    for e in m["shards"]:
        if e["file"] == entry["file"]:
            e["sha256"], e["bytes"] = shard_format.file_sha256(path), path.stat().st_size
    shard_format.write_manifest(shards, m)
    with pytest.raises(shard_format.ShardError, match=f"{entry['file']}: labels outside 0..3"):
        shard_format.open_set(shards).split("train")
    r = run("train", "--shards", shards, "--epochs", 1, "--device", "cpu", "--out", shards.parent / "r")
    assert r.exit_code == 1 and "labels outside 0..3" in r.output and "Traceback" not in r.output


def test_a_manifest_naming_files_outside_the_set_is_not_trusted(shards):
    m = json.loads((shards / "manifest.json").read_text())
    m["shards"][0]["file"] = "../../etc/passwd"
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(shard_format.ShardError, match="manifest entries are malformed"):
        shard_format.open_set(shards)


# 4. Symlinks and undecodable names ----------------------------------------------------------------

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


# 5. Non-finite shard size ---------------------------------------------------------------------------

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


# 6. Decompression bombs in predict / evaluate ----------------------------------------------------

def _png_bomb(path: Path, side: int = 40_000) -> None:
    """A PNG header claiming side x side pixels (1.6 GP): PIL refuses it on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_bad_image_in_predict_and_evaluate(finished, tmp_path):
    data = make_easy_set(tmp_path / "raw", classes=4, per_class=2, seed=3)
    _png_bomb(data / next(p.name for p in data.iterdir()) / "bomb.png")
    r = run("predict", finished / "best.pt", data)
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 9 and sum("ERROR decompression bomb" in line for line in lines) == 1
    r = run("evaluate", finished / "best.pt", "--data-dir", data, "--out", tmp_path / "ev")
    assert r.exit_code == 0 and "8 images" in r.output and "bomb.png: decompression bomb" in r.output


# 7. One writer per --out ---------------------------------------------------------------------------

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


# 8. Disk full ---------------------------------------------------------------------------------------

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


def test_disk_full_in_preprocess_keeps_the_previous_set(tmp_path, monkeypatch):
    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "out"
    preprocess(root, out, PreprocessConfig(size=16), workers=1)
    before = snapshot(out)
    monkeypatch.setattr(pp.os, "pwrite", lambda fd, buf, off: len(buf) // 2)  # the disk filled up
    r = run("preprocess", "--data-dir", root, "--out", out, "--size", 32, "--workers", 1)
    assert r.exit_code == 1 and "error: no space left on device:" in r.output and "short write" not in r.output
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


# 9. Foreign and truncated checkpoints --------------------------------------------------------------

def test_foreign_and_truncated_checkpoints_are_one_line(finished, easy_shards, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    data = (finished / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    ck = torch.load(finished / "last.pt", weights_only=True)
    ck["model"] = {k: v[..., :1] for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "shapes.pt")
    target = make_easy_set(tmp_path / "imgs", classes=1, per_class=1)
    for name, why in (("dict.pt", "no simpsons-shards format tag"), ("tensor.pt", "a Tensor, not a dict"),
                      ("cut.pt", ""), ("shapes.pt", "weights do not fit a cnn4conv model")):
        p = tmp_path / name
        for args in (("evaluate", p, "--shards", easy_shards), ("predict", p, target),
                     ("train", "--resume", p, "--device", "cpu", "--epochs", 5)):
            r = run(*args)
            assert r.exit_code == 1, (name, args, r.output)
            assert r.output.startswith(f"error: not a checkpoint of this tool: {p} (") and why in r.output, r.output
            assert r.output.count("\n") == 1 and "Traceback" not in r.output


# 10. Empty val split ---------------------------------------------------------------------------------

def test_no_val_split_evaluate_refuses_and_train_says_so(finished, tmp_path):
    root = make_easy_set(tmp_path / "data", classes=4, per_class=6)
    out = tmp_path / "s0"
    preprocess(root, out, PreprocessConfig(size=32, val_frac=0.0), workers=1)
    r = run("evaluate", finished / "best.pt", "--shards", out, "--out", tmp_path / "ev")
    assert r.exit_code == 1 and "the val split is empty" in r.output and "Traceback" not in r.output
    r = run("train", "--shards", out, "--model", "cnn4conv", "--epochs", 1, "--workers", 0, "--device", "cpu",
            "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert "no validation split" in r.output and "best val" not in r.output and "val acc 0" not in r.output
    assert (tmp_path / "r" / "last.pt").is_file() and not (tmp_path / "r" / "best.pt").exists()


# 11. Tiny schedules -----------------------------------------------------------------------------------

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


# 12. Foreign shard-like files ---------------------------------------------------------------------------

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


# The weaker list ---------------------------------------------------------------------------------------

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


def test_sizes_batch_and_epochs_are_validated_where_they_enter(easy_shards, tmp_path):
    for args, msg in ((("train", "--batch-size", 0), "0 is not a whole number in [1, 65536]"),
                      (("train", "--epochs", 0), "0 is not a whole number in [1, 100000]"),
                      (("train", "--lr", "nan"), "not a finite number"),
                      (("preprocess", "--val-frac", "inf"), "not a finite number"),
                      (("predict", "x.pt", "y.jpg", "--top-k", 0), "0 is not a whole number in [1, 1000]")):
        r = run(*args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
    r = run("preprocess", "--size", 24, "--data-dir", tmp_path, "--out", tmp_path / "o")  # what train would refuse
    assert r.exit_code == 1 and "size must be a multiple of 16" in r.output and not (tmp_path / "o").exists()


def test_nan_in_the_first_epoch_names_no_checkpoint_that_does_not_exist(easy_shards, tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match=r"no checkpoint was written yet"):
        train(easy_shards, plan(tmp_path / "r", epochs=1))
    assert not (tmp_path / "r" / "last.pt").exists()


def test_predict_skips_what_preprocess_skips_and_reports_broken_links(finished, tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    good = make_easy_set(tmp_path / "g", classes=1, per_class=1)
    r = run("predict", finished / "best.pt", tmp_path)
    assert r.exit_code == 2
    out = r.output
    assert "dot.png: ERROR too small (1x1 < 16 px)" in out and "link.jpg: ERROR broken symbolic link" in out
    assert f"{next(good.rglob('*.jpg'))}: " in out and out.count("ERROR") == 2


def test_a_bug_keeps_its_traceback(easy_shards, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_mod, "train", oom)
    r = run("train", "--shards", easy_shards, "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError) and "error:" not in r.output


def test_a_new_run_never_overwrites_another_runs_files(finished, easy_shards, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = snapshot(out)
    r = run("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 1, "--device", "cpu", "--out", out)
    assert r.exit_code == 1 and "already holds a run" in r.output and f"--resume {out / 'last.pt'}" in r.output
    assert snapshot(out) == before
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(out / "nothing.pt")


# Paths of the wrong kind, refusals that name a command that works, --resume with one's own options -------

def test_every_path_option_of_the_wrong_kind_is_one_line(finished, easy_shards, tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine\n")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    cases = [
        (["synth", "--out", a_file, "--scale", "0.001"], "is a file, not a folder"),
        (["preprocess", "--data-dir", a_file, "--out", tmp_path / "o"], "no such folder"),
        (["preprocess", "--data-dir", tmp_path, "--out", a_file], "is a file, not a folder"),
        (["verify", "--out", a_file], "is a file, not a shard folder"),
        (["train", "--shards", a_file], "is a file, not a shard folder"),
        (["train", "--shards", easy_shards, "--out", a_file], "is a file, not a folder"),
        (["train", "--shards", easy_shards, "--out", easy_shards], "inside the shard folder"),
        (["train", "--shards", easy_shards, "--out", easy_shards / "run"], "inside the shard folder"),
        (["train", "--resume", finished], f"is a run folder, not a checkpoint; pass {finished / 'last.pt'}"),
        (["evaluate", finished, "--shards", easy_shards], "is a run folder, not a checkpoint"),
        (["evaluate", finished / "best.pt", "--shards", a_file], "is a file, not a shard folder"),
        (["evaluate", finished / "best.pt", "--shards", easy_shards, "--out", a_file], "is a file, not a folder"),
        (["evaluate", finished / "best.pt", "--shards", easy_shards, "--json", a_dir], "is a folder"),
        (["predict", finished, a_file], "is a run folder, not a checkpoint"),
        (["export", finished / "best.pt", "--out", a_dir], "is a folder"),
        (["bench", "--quick", "--data-dir", tmp_path, "--json", a_dir], "is a folder"),
    ]
    for args, said in cases:
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1 and said in r.output, (args, r.output)
    assert a_file.read_text() == "mine\n" and list(a_dir.iterdir()) == []
    assert not (easy_shards / "run").exists() and not (easy_shards / "last.pt").exists()


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
