"""Run by tests/test_distributed.py under torchrun: train, then record what this rank saw.

Usage: torchrun --nproc_per_node=2 tests/ddp_worker.py SHARDS RUN_DIR TRACE_DIR [--resume]

With --resume it continues RUN_DIR/last.pt, streaming from the shards with a
DataLoader worker per rank instead of the resident RAM cache.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import loader  # noqa: E402
from pipeline.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig  # noqa: E402
from pipeline.train import TrainPlan, train  # noqa: E402

seen = []
_epoch_indices = loader.BatchLoader.epoch_indices


def _recording_epoch_indices(self):  # every cache mode takes an epoch's batches from this one tensor
    idx = _epoch_indices(self)
    if self.sampler.shuffle:  # training epochs only
        seen.append([self.sampler.epoch] + idx.tolist())
    return idx


loader.BatchLoader.epoch_indices = _recording_epoch_indices

shards, run_dir, trace = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
resume = run_dir / "last.pt" if "--resume" in sys.argv else None
epochs = 2
plan = TrainPlan(ModelConfig(name="bart"), OptimConfig(lr=3e-3, epochs=epochs),
                 LoaderConfig(batch_size=8, workers=1 if resume else 0, cache="none" if resume else "ram", seed=0),
                 RunConfig(seed=0, device="cpu", out=str(run_dir)))
summary = train(shards, plan, resume=resume, stop_after=None if resume else 1)
weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in summary["model"].parameters())).hexdigest()
rank = int(os.environ["RANK"])
name = f"rank{rank}{'-resumed' if resume else ''}.json"
(trace / name).write_text(json.dumps({"rank": summary["rank"], "world": summary["world_size"], "samples": seen,
                                      "weights": weights, "history": summary["history"]}))
