"""Faults when using a model: stray and hostile images, foreign checkpoints, a set without val.

Every test asserts the exit code, the one-line message and the files left on
disk (byte-identical where they must not change). Data is made in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image

from pipeline.common.config import PreprocessConfig
from pipeline.building.preprocess import preprocess
from tests.conftest import make_easy_set
from tests.helpers import run


def test_evaluate_class_folders_with_a_stray_image(finished, tmp_path):
    data = make_easy_set(tmp_path / "raw", classes=4, per_class=3, seed=9)
    shutil.copy(next(data.rglob("*.jpg")), data / "stray.jpg")
    r = run("evaluate", finished / "best.pt", "--data-dir", data, "--out", tmp_path / "ev", "--json",
            tmp_path / "ev.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev.json").read_text())
    assert rep["images"] == 12 and rep["layout"] == "folders" and rep["stray_files"] == ["stray.jpg"]
    assert "1 file(s) outside the class folders, not scored: stray.jpg" in r.output


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


def test_predict_skips_what_preprocess_skips_and_reports_broken_links(finished, tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    good = make_easy_set(tmp_path / "g", classes=1, per_class=1)
    r = run("predict", finished / "best.pt", tmp_path)
    assert r.exit_code == 2
    out = r.output
    assert "dot.png: ERROR too small (1x1 < 16 px)" in out and "link.jpg: ERROR broken symbolic link" in out
    assert f"{next(good.rglob('*.jpg'))}: " in out and out.count("ERROR") == 2
