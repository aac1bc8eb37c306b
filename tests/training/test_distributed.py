"""Two CPU processes with gloo under the real launcher (torchrun)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.shardset import shard_format

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_ranks_split_the_epoch_and_stay_in_sync(easy_shards, tmp_path):
    run, trace = tmp_path / "run", tmp_path / "trace"
    trace.mkdir()
    r = _torchrun(easy_shards, run, trace)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [json.loads((trace / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [x["world"] for x in ranks] == [2, 2]
    n = len(shard_format.open_split(easy_shards, "train"))
    per_rank = [[i for b in x["samples"] for i in b[1:]] for x in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == n // 2          # equal length
    assert not set(per_rank[0]) & set(per_rank[1])                 # disjoint
    assert len(set(per_rank[0]) | set(per_rank[1])) == 2 * (n // 2)  # the epoch, each sample once
    assert ranks[0]["weights"] == ranks[1]["weights"]              # DDP kept the replicas identical
    metrics = lambda h: [(r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["val_f1"]) for r in h]
    assert metrics(ranks[0]["history"]) == metrics(ranks[1]["history"])  # reduced over both ranks
    files = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))  # .lock: the run folder's lock
    assert files == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv"]  # rank 0 alone
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["epoch"] == 0

    # --resume with the same world size continues from epoch 2 (shard streaming per rank this time)
    r = _torchrun(easy_shards, run, trace, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = json.loads((trace / "rank0-resumed.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert [b[0] for b in resumed["samples"]] == [1]  # epoch 2 only
    other = json.loads((trace / "rank1-resumed.json").read_text())
    per_rank = [[i for b in x["samples"] if b[0] == 1 for i in b[1:]] for x in (resumed, other)]
    assert not set(per_rank[0]) & set(per_rank[1]) and len(per_rank[0]) == len(per_rank[1]) == n // 2
    assert resumed["weights"] == other["weights"]


def test_sigterm_on_one_rank_stops_both_at_the_same_step_and_resume_equals_the_full_run(easy_shards, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    r = _torchrun(easy_shards, tmp_path / "full", trace, "--full")
    assert r.returncode == 0, r.stdout + r.stderr
    full = json.loads((trace / "rank0-full.json").read_text())["history"]
    run = tmp_path / "run"
    r = _torchrun(easy_shards, run, trace, "--sigterm")
    assert r.returncode != 0                                          # the job stopped...
    # rank 1 got the signal; both stopped at the step they agreed on (the checkpoint gathered both RNG
    # states in one collective there). torchrun may end rank 0 once rank 1 has exited, so only rank 1's
    # own record is certain.
    assert json.loads((trace / "rank1-stopped.json").read_text())["signum"] == 15
    ck = torch.load(run / "interrupted.pt", weights_only=True)        # written by rank 0 alone
    assert ck["position"]["epoch"] == 1 and ck["position"]["step"] == 1 and len(ck["rng"]) == 2  # the next boundary
    r = _torchrun(easy_shards, run, trace, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = json.loads((trace / "rank0-resumed.json").read_text())["history"]
    assert [h["epoch"] for h in resumed] == [1, 2]
    for a, b in zip(resumed, full):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)   # sums added in another order
        assert [a[k] for k in ("train_acc", "val_loss", "val_acc", "val_f1")] == \
            [b[k] for k in ("train_acc", "val_loss", "val_acc", "val_f1")]
