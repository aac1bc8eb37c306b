"""How long `train` takes to stop on SIGTERM (a scheduler's preemption), per model.

    python benchmarks/stop_latency.py --run resnet:/tmp/r80-64 --run cnn4conv:/tmp/r80-64 \\
        --run bart:/tmp/sample-128 [--after 30] [--trials 2]

Starts ``python cli.py train --amp`` for each MODEL:SHARDS, sends SIGTERM
``--after`` seconds later (mid-epoch), and measures the seconds from the
signal to the process's exit: the rest of the step in flight plus writing
``interrupted.pt``. Prints them with the exit code, the step the checkpoint
records and its size, to compare with a scheduler's grace period
(Kubernetes: 30 s by default).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="MODEL:SHARDS")
    ap.add_argument("--after", type=float, default=30.0)
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    for spec in args.run:
        model, shards = spec.split(":", 1)
        for trial in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run"
                p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", "--shards", shards, "--model",
                                      model, "--amp", "--out", str(out)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                time.sleep(args.after + 3 * trial)   # a different point of a step each trial
                t0 = time.perf_counter()
                p.send_signal(signal.SIGTERM)
                code = p.wait()
                dt = time.perf_counter() - t0
                ck = out / "interrupted.pt"
                step = torch.load(ck, weights_only=True)["position"]["step"] if ck.exists() else None
                size = ck.stat().st_size / 1e6 if ck.exists() else 0.0
                print(f"{model:9s} {shards}: stopped {dt:5.2f} s after SIGTERM, exit {code}, interrupted.pt at "
                      f"step {step} ({size:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
