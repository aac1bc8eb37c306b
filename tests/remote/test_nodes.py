"""Two "nodes" on this machine under `torchrun --nnodes 2`, each with its own cache folder, training on
a set in the test S3 store: every image once per epoch across the ranks, each shard fetched once per
node, and a SIGTERM on one node saving interrupted.pt from which the run resumes from the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.building.publish import publish
from pipeline.common.config import PreprocessConfig, StorageConfig
from pipeline.shardset.sets import open_set
from pipeline.storage.cache import fetch_log
from tests.conftest import make_easy_set
from tests.servers import free_port

WORKER = Path(__file__).resolve().parents[1] / "training" / "ddp_worker.py"


def two_nodes(url, run, trace, caches, *flags):
    port = free_port()
    procs = []
    for node in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TEST_CACHE_DIR": str(caches[node])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER), url,
               str(run), str(trace), *flags]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], "\n".join(outs)


def test_two_nodes_read_every_image_once_fetch_each_shard_once_and_resume_from_the_store(s3, tmp_path):
    url = f"{s3}/set"
    publish(make_easy_set(tmp_path / "data"), url, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.03),
            StorageConfig(cache_dir=str(tmp_path / "pub")), workers=1)
    caches = [tmp_path / "node0", tmp_path / "node1"]
    trace = tmp_path / "trace"
    trace.mkdir()
    codes, out = two_nodes(url, tmp_path / "full", trace, caches, "--full")
    assert codes == [0, 0], out
    ranks = [json.loads((trace / f"rank{k}-full.json").read_text()) for k in (0, 1)]
    split = open_set(url, storage=StorageConfig(cache_dir=str(caches[0]))).split("train")
    n = len(split)
    for epoch in (0, 1):
        per_rank = [[i for b in x["samples"] if b[0] == epoch for i in b[1:]] for x in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == n // 2 and not set(per_rank[0]) & set(per_rank[1])
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for cache in caches:   # each node fetched each shard once, whatever its ranks and workers did
        shas = [sha for sha, _ in fetch_log(cache)]
        assert len(shas) == len(set(shas)) and {s.source.entry["sha256"] for s in split.shards} <= set(shas)
    full = ranks[0]["history"]

    run = tmp_path / "run"
    codes, out = two_nodes(url, run, trace, caches, "--sigterm")   # node 1's rank is preempted in epoch 2
    assert codes != [0, 0] and (run / "interrupted.pt").exists(), out
    codes, out = two_nodes(url, run, trace, caches, "--resume")
    assert codes == [0, 0], out
    resumed = json.loads((trace / "rank0-resumed.json").read_text())["history"]
    assert [h["epoch"] for h in resumed] == [1, 2]
    for a, b in zip(resumed, full):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
        assert [a[k] for k in ("train_acc", "val_loss", "val_acc", "val_f1")] == \
            [b[k] for k in ("train_acc", "val_loss", "val_acc", "val_f1")]
