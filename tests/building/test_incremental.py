"""Builds that only do new work: an incremental or resumed build equals a build from scratch, byte for byte."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from pipeline.shardset import shard_format
from pipeline.common.config import PreprocessConfig
from pipeline.building.preprocess import preprocess, write_set
from pipeline.building.reuse import ROW_JOURNAL, RESUME_PREFIX, STAGING
from pipeline.building.commit import BUILD
from tests.building.test_honest_split import save, scene, scenes_tree

ROOT = Path(__file__).resolve().parents[2]
# what a manifest may differ by between equal builds (placed_before: how many sides a grown set kept;
# sources: the files' stats, which differ between copies of a folder)
VARYING = ("timings", "environment", "workers", "placed_before", "sources")


def counts(manifest: dict) -> dict:
    """The work a build did, less how many files it knew unchanged by their stat (that depends on how
    long ago a test wrote them: tests/building/test_unread.py sets their times)."""
    return {k: v for k, v in manifest["work"].items() if k != "unread"}


def fingerprint_of(out: Path) -> tuple[dict, dict]:
    """(shard file -> SHA-256 of its bytes, the manifest without what varies between equal builds)."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.h5"))}
    manifest = {k: v for k, v in json.loads((out / "manifest.json").read_text()).items() if k not in VARYING}
    return files, manifest


def scratch(data: Path, out: Path, cfg: PreprocessConfig) -> tuple[dict, dict]:
    preprocess(data, out, cfg, workers=1)
    return fingerprint_of(out)


def test_incremental_equals_scratch_after_adding_removing_renaming_and_changing_files(tmp_path):
    data = scenes_tree(tmp_path / "data", per_class=12)
    out = tmp_path / "shards"
    cfg = PreprocessConfig(size=32)
    first = preprocess(data, out, cfg, workers=2)
    assert counts(first) == {"decoded": 36, "reused": 0, "removed": 0}
    for i in range(3):                                                     # added: 3 new files
        save(scene(500 + i), data / "lisa" / f"new{i}.jpg")
    (data / "bart" / "s0000.jpg").unlink()                                 # removed
    os.replace(data / "homer" / "s0024.jpg", data / "homer" / "renamed.jpg")   # renamed: same bytes, reused
    save(scene(900), data / "bart" / "s0001.jpg")                          # changed: other bytes, same path
    again = preprocess(data, out, cfg, workers=2)
    assert again["rebuilt_because"] == "the images changed"
    assert counts(again) == {"decoded": 4, "reused": 34, "removed": 2}
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch", cfg)
    assert shard_format.verify(out) == []
    assert not list(out.glob(RESUME_PREFIX + "*"))


def test_options_that_change_pixels_decode_everything_again(tmp_path):
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=8)
    out = tmp_path / "shards"
    preprocess(data, out, PreprocessConfig(size=32), workers=1)
    bigger = preprocess(data, out, PreprocessConfig(size=48), workers=1)
    assert bigger["rebuilt_because"] == "the options changed"
    assert bigger["work"]["reused"] == 0 and bigger["work"]["decoded"] == 16
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch", PreprocessConfig(size=48))
    # a split option keeps the pixels: every row is read back, the shards are the new split's
    resplit = preprocess(data, out, PreprocessConfig(size=48, val_frac=0.3, seed=1), workers=1)
    assert counts(resplit) == {"decoded": 0, "reused": 16, "removed": 0}
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch2", PreprocessConfig(size=48, val_frac=0.3, seed=1))


def test_force_decodes_everything(tmp_path):
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=6)
    out = tmp_path / "shards"
    preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert preprocess(data, out, PreprocessConfig(size=32), workers=1, force=True)["work"]["reused"] == 0


def test_a_damaged_row_is_decoded_again_not_trusted(tmp_path):
    """A stored row that does not match its shard's recorded SHA-256 is never read back."""
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=6)
    out = tmp_path / "shards"
    preprocess(data, out, PreprocessConfig(size=32), workers=1)
    shard = sorted(out.glob("train-*.h5"))[0]
    first, _, _ = shard_format.open_shard(shard)
    with open(shard, "r+b") as fh:                       # flip pixels of the first row
        fh.seek(first.offset)
        fh.write(b"\xff" * 64)
    save(scene(700), data / "a" / "more.jpg")
    again = preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert again["work"]["reused"] == 0                  # the set failed its check: nothing reused
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch", PreprocessConfig(size=32))


def test_write_set_grows_a_set_by_writing_into_it_again(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), i % 2, f"img{i}") for i in range(20)]
    out = tmp_path / "set"
    write_set(samples[:16], ["a", "b"], out, PreprocessConfig(size=32), workers=1)
    grown = write_set(samples, ["a", "b"], out, PreprocessConfig(size=32), workers=1)
    assert counts(grown) == {"decoded": 4, "reused": 16, "removed": 0}
    write_set(samples, ["a", "b"], tmp_path / "scratch", PreprocessConfig(size=32), workers=1)
    assert fingerprint_of(out) == fingerprint_of(tmp_path / "scratch")


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from pipeline.building import preprocess as preprocess_module
from pipeline.building import reuse
from pipeline.common.config import PreprocessConfig
preprocess_module.decode_run = lambda *a: 8                # journal every 8 rows, so the kill lands mid-build
real = reuse.RowJournal.record
done = [0]
def record(self, start, digests, reasons, *rest):
    real(self, start, digests, reasons, *rest)
    done[0] += len(digests)
    if done[0] >= {after}:
        os.kill(os.getpid(), signal.SIGKILL)   # as a lost node or the OOM killer would
reuse.RowJournal.record = record
preprocess_module.preprocess(Path({data!r}), Path({out!r}), PreprocessConfig(size=32), workers={workers})
"""


def killed_build(data: Path, out: Path, after: int, workers: int = 1) -> None:
    script = KILLER.format(root=str(ROOT), data=str(data), out=str(out), after=after, workers=workers)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr


@pytest.mark.parametrize("kills", [(40,), (5, 70)])
def test_a_killed_build_continues_and_equals_an_uninterrupted_one(tmp_path, kills):
    data = scenes_tree(tmp_path / "data", per_class=40)     # 120 images
    out = tmp_path / "shards"
    for after in kills:                                     # killed once, or twice (the second resumes the first)
        killed_build(data, out, after)
        assert not (out / "manifest.json").exists()         # nothing committed, nothing lost
        assert (out / BUILD / ROW_JOURNAL).stat().st_size > 0   # the killed build's journal, for the next run
    resumed = preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert resumed["work"]["reused"] >= kills[-1] and resumed["work"]["decoded"] + resumed["work"]["reused"] == 120
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch", PreprocessConfig(size=32))
    assert not list(out.glob(RESUME_PREFIX + "*"))           # kept work removed once committed


def test_a_torn_or_foreign_journal_is_ignored(tmp_path):
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=10)
    out = tmp_path / "shards"
    killed_build(data, out, after=1)
    journal = out / BUILD / ROW_JOURNAL
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1] + [lines[-1][:20]]))   # the last line torn mid-write
    staging = out / BUILD / STAGING
    with open(staging, "r+b") as fh:                                 # and a staged row overwritten
        fh.write(b"\x00" * 100)
    resumed = preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert resumed["work"]["decoded"] >= 1                            # the damaged row failed its CRC-32
    assert fingerprint_of(out) == scratch(data, tmp_path / "scratch", PreprocessConfig(size=32))


def test_cli_reports_decoded_reused_removed(tmp_path):
    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=6)
    out = tmp_path / "shards"
    args = ["preprocess", "--data-dir", str(data), "--out", str(out), "--size", "32", "--workers", "1"]
    assert CliRunner().invoke(cli.main, args).exit_code == 0
    save(scene(801), data / "a" / "extra.jpg")
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert "1 decoded, 12 reused, 0 removed" in r.output
    shutil.rmtree(data / "b")
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert "0 decoded, 7 reused, 6 removed" in r.output


def test_a_failed_build_keeps_its_rows_and_says_so(tmp_path, monkeypatch, caplog):
    from pipeline.shardset import shard_format

    data = scenes_tree(tmp_path / "data", classes=("a", "b"), per_class=10)
    out = tmp_path / "shards"

    def broken(*args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(shard_format, "write_shard", broken)
    with pytest.raises(Exception):
        preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert "the images decoded so far are kept" in caplog.text
    assert len(list(out.glob(RESUME_PREFIX + "*"))) == 2
    monkeypatch.undo()
    again = preprocess(data, out, PreprocessConfig(size=32), workers=1)
    assert counts(again) == {"decoded": 0, "reused": 20, "removed": 0}


def test_ctrl_c_stops_a_parallel_build_with_one_line_and_keeps_its_rows(tmp_path):
    import time

    data = tmp_path / "data"
    assert CliRunner().invoke(cli.main, ["synth", "--out", str(data), "--scale", "0.25"]).exit_code == 0
    out = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "preprocess", "--data-dir", str(data), "--out",
                             str(out), "--size", "64", "--workers", "2"], stderr=subprocess.PIPE, text=True,
                            start_new_session=True,   # its own process group, as a terminal's Ctrl-C reaches
                            # as from a terminal: a runner started in the background (CI) ignores SIGINT, and
                            # an ignored signal stays ignored in every program it starts
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = out / BUILD / ROW_JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ForkPoolWorker" not in err
    assert "the images decoded so far are kept" in err and err.rstrip().endswith("interrupted")
    again = CliRunner().invoke(cli.main, ["preprocess", "--data-dir", str(data), "--out", str(out), "--size", "64",
                                          "--workers", "2"])
    assert again.exit_code == 0, again.output
    assert "continuing from the" in again.output or "reused" in again.output
    assert " 0 reused" not in again.output
