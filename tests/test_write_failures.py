"""Writes the operating system refuses, below Python: a file-size limit (RLIMIT_FSIZE) in a child process.

Python ignores SIGXFSZ, so a write past the limit fails with EFBIG inside the
C library (torch's serialiser, HDF5, zlib/PNG, plain writes), the way a quota
or a full disk fails it. Each writer of a file the tool owns must end in one
line naming the file and the reason, leave the previous file intact and
nothing half-written.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WRITERS = {
    "checkpoint": "from pipeline.training.checkpoint import save_checkpoint; import torch\n"
                  "save_checkpoint(path, {'w': torch.zeros(200_000)})",
    "metrics": "from pipeline.common.files import write_text\nwrite_text(path, 'epoch,loss\\n' + '1,0.5\\n' * 100_000)",
    "plot": "from pipeline.training.plots import plot_confusion; import numpy as np\n"
            "plot_confusion(np.arange(900).reshape(30, 30), [f'class_{i}' for i in range(30)], path)",
    "shard": "from pipeline.shardset.shard_format import write_shard; import numpy as np\n"
             "write_shard(path, np.full((40, 64, 64, 3), 7, np.uint8), np.zeros(40, int), ['a'] * 40, ['0' * 64] * 40, {})",
    "manifest": "from pipeline.shardset.shard_format import write_manifest\n"
                "write_manifest(path.parent, {'shards': ['x' * 100] * 2000})",
}
NAMES = {"checkpoint": "last.pt", "metrics": "metrics.csv", "plot": "confusion_matrix.png", "shard": "train-00000.h5",
         "manifest": "manifest.json"}


def limited(code: str, limit: int, cwd: Path, *args) -> subprocess.CompletedProcess:
    """Run python code (or cli.py args) in a child whose files may not grow past ``limit`` bytes."""
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    cmd = [sys.executable, "-c", code] if code else [sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=cap, timeout=300)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_turns_a_refused_write_into_one_line_and_keeps_the_previous_file(writer, tmp_path):
    path = tmp_path / NAMES[writer]
    path.write_bytes(b"previous contents")
    code = (f"from pathlib import Path\npath = Path({str(path)!r})\nfrom pipeline.common.errors import UserError\n"
            f"try:\n" + "".join(f"    {line}\n" for line in WRITERS[writer].splitlines()) +
            "except UserError as exc:\n    print('USER', exc)\n")
    r = limited(code, 60_000, tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("USER "), r.stdout + r.stderr   # no traceback
    assert str(path) in r.stdout and "File too large" in r.stdout and "ulimit -f" in r.stdout
    assert r.stdout.count("\n") == 1
    assert path.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]        # no .tmp left


def test_train_and_preprocess_under_a_file_size_limit_say_so_and_keep_the_previous_files(easy_shards, tmp_path):
    from click.testing import CliRunner

    import cli
    from tests.helpers import snapshot

    run = tmp_path / "run"
    r = CliRunner().invoke(cli.main, ["train", "--shards", str(easy_shards), "--model", "cnn4conv", "--epochs", "1",
                                      "--device", "cpu", "--workers", "0", "--out", str(run)])
    assert r.exit_code == 0, r.output
    before = snapshot(run)
    # checkpoints of this model are ~15 MB: the first one written past the limit fails
    r = limited(None, 1_000_000, tmp_path, "train", "--resume", run / "last.pt", "--epochs", 2, "--workers", 0,
                "--device", "cpu")
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot write {run / 'last.pt'}: File too large") and "Traceback" not in r.stderr
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.endswith(".pt")} == {k: v for k, v in before.items() if k.endswith(".pt")}
    assert not [k for k in after if k.endswith(".tmp")]
    # preprocess: a shard past the limit; the set already there stays whole
    shards = Path(shutil.copytree(easy_shards, tmp_path / "shards"))
    data = tmp_path / "data"
    from tests.conftest import make_easy_set
    make_easy_set(data, per_class=30)
    before = snapshot(shards)
    r = limited(None, 200_000, tmp_path, "preprocess", "--data-dir", data, "--out", shards, "--size", 64,
                "--workers", 1)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "File too large" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(shards) == before
