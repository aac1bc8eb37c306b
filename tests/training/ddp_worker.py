"""Run by tests/test_distributed.py under torchrun: train, then record what this rank saw.

Usage: torchrun --nproc_per_node=2 tests/ddp_worker.py SHARDS RUN_DIR TRACE_DIR [--resume] [--sigterm|--full]

SHARDS may be a URL (tests/remote/test_nodes.py: two nodes, each with its cache in TEST_CACHE_DIR).

With --resume it continues RUN_DIR/last.pt (RUN_DIR/interrupted.pt after
--sigterm), streaming from the shards with a DataLoader worker per rank
instead of the resident RAM cache. --full trains both epochs in one go;
--sigterm sends rank 1 alone a SIGTERM after step 1 of epoch 2 (on CPU the
ranks compare stop flags after every step).
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.reading import loader  # noqa: E402
from pipeline.training import steploop
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig, StorageConfig  # noqa: E402
from pipeline.training.train import TrainPlan, train  # noqa: E402

seen = []
_epoch_indices = loader.BatchLoader.epoch_indices


def _recording_epoch_indices(self):  # every cache mode takes an epoch's batches from this one tensor
    idx = _epoch_indices(self)
    if self.sampler.shuffle:  # training epochs only
        seen.append([self.sampler.epoch] + idx.tolist())
    return idx


loader.BatchLoader.epoch_indices = _recording_epoch_indices

# a set in object storage stays a URL (a Path would fold its //); each node's cache from the environment
shards = sys.argv[1] if "://" in sys.argv[1] else Path(sys.argv[1])
run_dir, trace = Path(sys.argv[2]), Path(sys.argv[3])
storage = StorageConfig(cache_dir=os.environ.get("TEST_CACHE_DIR", ""))
rank = int(os.environ["RANK"])
sigterm, full = "--sigterm" in sys.argv, "--full" in sys.argv
resume = (run_dir / ("interrupted.pt" if (run_dir / "interrupted.pt").exists() else "last.pt")
          if "--resume" in sys.argv else None)
epochs = 2
plan = TrainPlan(ModelConfig(name="bart"), OptimConfig(lr=3e-3, epochs=epochs),
                 LoaderConfig(batch_size=8, workers=1 if resume else 0, cache="none" if resume else "ram", seed=0),
                 RunConfig(seed=0, device="cpu", out=str(run_dir)))


def preempt(epoch, step):
    if sigterm and rank == 1 and (epoch, step) == (1, 1):
        os.kill(os.getpid(), signal.SIGTERM)


try:
    summary = train(shards, plan, resume=resume, stop_after=None if (resume or full or sigterm) else 1,
                    on_step=preempt, storage=storage)
except steploop.Stopped as exc:
    (trace / f"rank{rank}-stopped.json").write_text(json.dumps({"signum": exc.signum}))
    sys.exit(128 + exc.signum)
weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in summary["model"].parameters())).hexdigest()
name = f"rank{rank}{'-resumed' if resume else '-full' if full else ''}.json"
(trace / name).write_text(json.dumps({"rank": summary["rank"], "world": summary["world_size"], "samples": seen,
                                      "weights": weights, "history": summary["history"]}))
