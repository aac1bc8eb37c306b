"""Files from someone else are data: crafted checkpoints, manifests, shards and special files.

Each case runs the command a user would, in a fresh process under a 4 GB
address-space limit and a time limit: one line naming the file and the
reason, a non-zero exit, nothing executed, nothing written outside the
folders the test named.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.common.untrusted import MANIFEST_BYTES, printable, read_json
from pipeline.common.errors import UserError
from pipeline.shardset import shard_format

ROOT = Path(__file__).resolve().parents[2]


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def cli(*args, timeout=120):
    """``python cli.py ARGS`` in a fresh process under 4 GB of address space: (exit code, output)."""
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, preexec_fn=limited, stdin=subprocess.DEVNULL, cwd=ROOT)
    return r.returncode, r.stdout + r.stderr


_MANY = """
import contextlib, io, json, logging, sys, traceback
sys.path.insert(0, sys.argv[1])
import cli
results = []
for args in json.loads(sys.argv[2]):
    out, code = io.StringIO(), 0
    logging.root.handlers.clear()   # the CLI's handler writes to this case's stderr
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.main(args, prog_name="cli.py")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            code = 99
            traceback.print_exc()
    results.append((code, out.getvalue()))
print(json.dumps(results))
"""


def cli_many(*cases, timeout=300):
    """Several ``python cli.py ARGS`` in one fresh process under 4 GB of address space (one start-up
    for all): [(exit code, output)] in order. A case's exception that escapes the CLI is exit 99."""
    r = subprocess.run([sys.executable, "-c", _MANY, str(ROOT), json.dumps([list(map(str, c)) for c in cases])],
                       capture_output=True, text=True, timeout=timeout, preexec_fn=limited,
                       stdin=subprocess.DEVNULL, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


class RunsACommand:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_would_run_a_command_is_refused_unread(finished, easy_shards, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    ckpt = torch.load(finished / "best.pt", weights_only=True)
    ckpt["history"] = RunsACommand(marker)
    torch.save(ckpt, evil)
    image = next((Path(easy_shards).parent).rglob("*.jpg"), None) or evil
    for args in (("evaluate", evil, "--shards", easy_shards), ("predict", evil, image), ("export", evil),
                 ("train", "--resume", evil)):
        code, out = cli(*args)
        line = one_line(out)
        assert code == 1 and str(evil) in line and "refused unread" in line, out
    assert not marker.exists()


def test_names_carrying_terminal_escapes_are_printed_escaped(finished, easy_shards, tmp_path):
    hostile = "bart\x1b[2J\x1b]0;owned\x07\u202e"
    ckpt = torch.load(finished / "best.pt", weights_only=True)
    ckpt["class_names"] = [hostile] + ckpt["class_names"][1:]
    crafted = tmp_path / "named.pt"
    torch.save(ckpt, crafted)
    image = tmp_path / "img.png"
    from PIL import Image
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)
    code, out = cli("predict", crafted, image, "--top-k", "4")
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "bart\\x1b[2J\\x1b]0;owned\\x07\\u202e" in out
    # a class folder so named: preprocess reports it escaped too
    data = tmp_path / "data"
    for c in (hostile, "lisa"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 40 * i + (c == "lisa") * 7, np.uint8)).save(data / c / f"{i}.png")
    code, out = cli("preprocess", "--data-dir", data, "--out", tmp_path / "set", "--size", 16, "--workers", 1)
    assert code == 0 and "\x1b" not in out and "bart\\x1b[2J" in out
    assert printable("a\tb\nc\x9bd é") == "a\\x09b\\x0ac\\x9bd é"


def test_a_fifo_or_a_device_given_as_a_file_is_one_line_not_a_hang(finished, easy_shards, tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    for args, what in ((("evaluate", fifo, "--shards", easy_shards), "is a FIFO"),
                       (("evaluate", "/dev/zero", "--shards", easy_shards), "is a device"),
                       (("predict", "--onnx", fifo, "/dev/null"), "is a FIFO")):
        code, out = cli(*args, timeout=60)
        assert code == 1 and what in one_line(out), out
    code, out = cli("predict", finished / "best.pt", fifo, "/dev/zero", timeout=60)   # as images
    assert code == 2 and f"{fifo}: ERROR a FIFO, not an image file" in out
    assert "/dev/zero: ERROR a device, not an image file" in out


def test_a_manifest_too_large_or_nested_too_deep_is_one_line(easy_shards, tmp_path):
    out = Path(shutil.copytree(easy_shards, tmp_path / "set"))
    manifest = out / "manifest.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    code, text = cli("verify", "--out", out)
    assert code == 1 and "nested deeper than 64 levels" in one_line(text) and str(manifest) in text
    with open(manifest, "wb") as fh:
        fh.truncate(MANIFEST_BYTES + 1)          # sparse: its size is the claim, nothing is read
    code, text = cli("train", "--shards", out, "--device", "cpu")
    assert code == 1 and f"{MANIFEST_BYTES + 1:,} bytes, more than the" in one_line(text)
    with pytest.raises(UserError, match="nested deeper than 3 levels"):
        (tmp_path / "deep.json").write_text('{"a": [[{"b": 1}]]}')
        read_json(tmp_path / "deep.json", "a test file", max_depth=3)


def test_a_shard_header_declaring_huge_shapes_is_refused_before_any_read(easy_shards, tmp_path):
    out = Path(shutil.copytree(easy_shards, tmp_path / "set"))
    m = json.loads((out / "manifest.json").read_text())
    entry = m["shards"][0]
    path = out / entry["file"]
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    path.unlink()
    n, size = 10 ** 9, m["options"]["size"]
    with h5py.File(path, "w") as f:          # a terabyte of pixels declared, nothing stored
        f.create_dataset("images", shape=(n, size, size, 3), dtype=np.uint8)
        f.create_dataset("labels", shape=(n,), dtype=np.int16)
        for k, v in attrs.items():
            f.attrs[k] = v
    entry.update(count=n, bytes=path.stat().st_size, sha256=shard_format.file_sha256(path))
    (out / "manifest.json").write_text(json.dumps(m))
    assert path.stat().st_size < 1 << 20
    for args in (("verify", "--out", out), ("train", "--shards", out, "--device", "cpu", "--epochs", 1)):
        code, text = cli(*args)
        assert code == 1 and "bytes of pixels in a file of" in text and str(path) in text, text


def test_a_symlink_placed_in_a_set_is_never_written_or_deleted_through(tmp_path):
    from tests.building.test_honest_split import scenes_tree
    from pipeline.building.preprocess import preprocess
    from pipeline.common.config import PreprocessConfig

    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=8)
    out = tmp_path / "set"
    preprocess(data, out, PreprocessConfig(size=32), workers=1)
    shard = out / "train-00000.h5"
    victim = tmp_path / "elsewhere" / "victim.h5"           # a file outside the set, with the shard's bytes
    victim.parent.mkdir()
    shutil.copy(shard, victim)
    before = victim.read_bytes(), victim.stat().st_mtime_ns
    shard.unlink()
    shard.symlink_to(victim)                                  # the set still checks: same bytes
    assert shard_format.verify(out) == []
    code, text = cli("preprocess", "--data-dir", data, "--out", out, "--size", 32, "--force", "--workers", 1)
    assert code == 0, text
    assert not shard.is_symlink() and (victim.read_bytes(), victim.stat().st_mtime_ns) == before
    (out / "val-00000.h5").unlink()
    (out / "val-00000.h5").symlink_to(victim)                 # a link the set does not list as it is
    code, text = cli("preprocess", "--data-dir", data, "--out", out, "--size", 48, "--workers", 1)
    assert code == 0, text
    assert victim.is_file() and (victim.read_bytes(), victim.stat().st_mtime_ns) == before


def test_links_placed_in_a_run_folder_are_never_written_or_deleted_through(easy_shards, tmp_path):
    victim = tmp_path / "elsewhere" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("the user's only copy")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt.tmp", "metrics.csv.tmp", "config.json.tmp"):   # where the tool writes before renaming
        (out / name).symlink_to(victim)
    common = ("--workers", 0, "--device", "cpu")
    code, text = cli("train", "--shards", easy_shards, "--model", "cnn4conv", "--epochs", 1, "--out", out, *common)
    assert code == 0, text
    assert victim.read_text() == "the user's only copy"
    assert (out / "last.pt").is_file() and not (out / "last.pt").is_symlink()
    (out / "interrupted.pt").symlink_to(victim)                          # what an epoch's end deletes
    code, text = cli("train", "--resume", out / "last.pt", "--epochs", 2, *common)
    assert code == 0, text
    assert not (out / "interrupted.pt").is_symlink() and victim.read_text() == "the user's only copy"
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)                                   # the lock file itself
    code, text = cli("train", "--resume", out / "last.pt", "--epochs", 3, *common)
    assert code == 1 and "is a symbolic link, not this tool's lock file" in one_line(text)
    assert victim.read_text() == "the user's only copy"


def test_a_fifo_inside_a_class_folder_is_skipped_with_its_reason_not_waited_on(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 30 * i + 9 * (c == "b"), np.uint8)).save(data / c / f"{i}.png")
    os.mkfifo(data / "a" / "pipe.jpg")
    code, out = cli("preprocess", "--data-dir", data, "--out", tmp_path / "set", "--size", 16, "--workers", 1,
                    timeout=60)
    assert code == 0, out
    skipped = json.loads((tmp_path / "set" / "manifest.json").read_text())["skipped"]
    assert {"path": "a/pipe.jpg", "reason": "a FIFO, not an image file"} in skipped
