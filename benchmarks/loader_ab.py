"""Loading A/B in one process: another checkout's loader against this tree's, on the same split.

    git worktree add /tmp/base c8e005c
    python benchmarks/loader_ab.py --old /tmp/base --shards /tmp/r80-64 --rounds 10

The other checkout's ``pipeline`` package is copied to a temporary folder
as ``pipeline_old`` and imported beside this tree's, so both loaders run in
one process on the same machine state: epochs alternate call by call, the
order swapped each round, and the ratio new/old is taken within each round
(median of rounds). For the resident path (``cache=ram``, no workers) and
the DataLoader path (``cache=none``, 2 workers). Both flat layouts
(``pipeline/loader.py``) and stage packages (``pipeline/reading/loader.py``)
are found.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# module roles -> where each layout keeps them
LAYOUTS = {"reading/loader.py": {"loader": "reading.loader", "format": "shardset.shard_format",
                                 "config": "common.config"},
           "loader.py": {"loader": "loader", "format": "shard_format", "config": "config"}}


def modules(package: str, root: Path) -> dict:
    for marker, names in LAYOUTS.items():
        if (root / "pipeline" / marker).is_file():
            return {role: importlib.import_module(f"{package}.{name}") for role, name in names.items()}
    raise SystemExit(f"{root}: no pipeline/loader.py or pipeline/reading/loader.py")


def epochs(mods: dict, shards: Path, cache: str, workers: int):
    split = mods["format"].open_set(shards).split("train")
    cfg = mods["config"].LoaderConfig(batch_size=128, workers=workers, cache=cache, reuse_buffers=True)
    loader = mods["loader"].create_loader(split, cfg, device=torch.device("cpu"), train=True)
    count = [0]

    def one_epoch() -> int:
        loader.set_epoch(count[0])
        count[0] += 1
        return sum(len(x) for x, _ in loader)
    return one_epoch


def ab(old, new, rounds: int, seconds: float) -> list[float]:
    old(), new()   # warm-up: workers, page cache
    ratios = []
    for r in range(rounds):
        spent = {old: 0.0, new: 0.0}
        seen = {old: 0, new: 0}
        while min(spent.values()) < seconds:
            for fn in ((old, new) if r % 2 == 0 else (new, old)):
                t = time.perf_counter()
                seen[fn] += fn()
                spent[fn] += time.perf_counter() - t
        ratios.append((seen[new] / spent[new]) / (seen[old] / spent[old]))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True, help="the other checkout's root")
    ap.add_argument("--shards", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1.0, help="each contender's time per round")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(args.old / "pipeline", tmp / "pipeline_old")
    sys.path.insert(0, str(tmp))
    old_mods, new_mods = modules("pipeline_old", args.old), modules("pipeline", ROOT)
    for cache, workers in (("ram", 0), ("none", 2)):
        ratios = ab(epochs(old_mods, args.shards, cache, workers), epochs(new_mods, args.shards, cache, workers),
                    args.rounds, args.seconds)
        print(f"cache={cache} workers={workers}: new/old {statistics.median(ratios):.3f} (median of {len(ratios)}: "
              f"{', '.join(f'{x:.3f}' for x in ratios)})", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
