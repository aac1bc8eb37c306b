"""``cli.py bench``: every stage against the notebooks' way, in one run.

Stages, all on the same images at the same size and worker count:

1. preprocess: the project's parallel reduced-size decode into shards vs the
   notebooks' loop (open, convert to RGB, resize, ``np.array``, one image
   after another, all kept in RAM) vs the stage's limit on this machine
   (the same reduced-size decode + resize on every worker, with no hashing,
   statistics or shards, nothing kept); each runs in a fresh process so its
   peak memory (ru_maxrss) is its own.
2. one epoch of loading: the project's DataLoader path and resident path
   (and the convenient per-sample ``ShardDataset`` with a plain torch
   DataLoader, so a user sees what each path costs) vs
   the notebooks' loader (in-RAM uint8 array, a Dataset making float32 CHW
   per sample, batch 32, shuffle) vs a loader that decodes every JPEG every
   epoch (ImageFolder-style, same workers) vs the memory limit (random
   batch gathers from one in-RAM uint8 array).
3. training step: compute alone (batch already on the device) vs end to end
   with the loader, with and without AMP; CUDA timings synchronised.

Both resizes use the same antialiased bilinear filter, so the preprocess
ratio measures the pipeline, not a cheaper filter. Loading figures are
medians over ``repeats`` interleaved rounds after a warm-up (see
:func:`pipeline.tools.timing.interleaved`); their ratios are medians of within-round ratios.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..common.config import BenchConfig, PreprocessConfig, to_dict
from ..building.discover import discover
from ..common.procpool import ForkPool

logger = logging.getLogger(__name__)


def _subset(root: Path, limit: int, dest: Path) -> tuple[Path, list[Path]]:
    """The folder to measure and its image files: ``root`` itself, or (with
    ``limit``) a class-folder tree in ``dest`` of symlinks to an evenly
    spread ``limit`` of its files."""
    rels = [rel for rel, _ in discover(root).files]
    if limit and limit < len(rels):
        rels = [rels[i] for i in np.linspace(0, len(rels) - 1, limit).astype(int)]
        for rel in rels:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to((root / rel).resolve())
        root = dest
    return root, [root / rel for rel in rels]


# --- stage 1: preprocess -------------------------------------------------------------------------

def _notebook_decode(path: Path, size: int) -> np.ndarray:
    """The notebooks' per-image decode: open, full-size decode, convert, resize, ``np.array``.

    Raises:
        OSError: not an image, or damaged.
    """
    from PIL import Image

    from ..imaging.decode import RESAMPLE

    return np.array(Image.open(path).convert("RGB").resize((size, size), RESAMPLE))


def _notebook_loop(files: list[Path], size: int) -> list:
    """The notebooks' way: one image after another, every array kept in RAM."""
    out = []
    for p in files:
        try:
            out.append(_notebook_decode(p, size))
        except OSError:
            pass
    return out


def _decode_only(task: tuple[list[str], int]) -> int:
    """Read, reduced-size decode and resize files, keeping nothing: how many decoded."""
    from ..imaging.decode import DecodeError, decode_file

    paths, size = task
    n = 0
    for p in paths:
        try:
            decode_file(p, size)
            n += 1
        except (DecodeError, OSError):
            pass
    return n


def _decode_limit(files: list[Path], size: int, workers: int) -> int:
    """The stage's ceiling on this machine: only the decode work, on every worker, nothing else."""
    tasks = [([str(p) for p in files[k: k + 32]], size) for k in range(0, len(files), 32)]
    with ForkPool(workers) as pool:   # the build's own pool: no helper thread takes a core from the decodes
        return sum(pool.imap_unordered(_decode_only, tasks))


def _run_measured(conn, kind: str, root: str, out: str, size: int, workers: int) -> None:
    """Child process body: time one preprocess variant and report its peak memory."""
    from PIL import Image  # noqa: F401  (imports happen before the clock starts, for all)

    from ..building.preprocess import preprocess

    t = time.perf_counter()
    cpu = time.process_time()   # this process's CPU seconds: the main process's share of the work
    phases = None   # the project's build reports its phases' timings
    if kind in ("notebook", "decode_limit"):
        disc = discover(Path(root), workers if kind == "decode_limit" else 1)
        files = [Path(root) / rel for rel, _ in disc.files]
        n = len(_notebook_loop(files, size)) if kind == "notebook" else _decode_limit(files, size, workers)
    else:
        m = preprocess(Path(root), Path(out), PreprocessConfig(size=size), workers=workers, force=True)
        n = m["counts"]["train"] + m["counts"]["val"]
        phases = m["timings"]
    dt = time.perf_counter() - t
    main_cpu = time.process_time() - cpu
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    conn.send((n, dt, self_kb, child_kb, main_cpu, phases))


def _measure_process(kind: str, root: Path, out: Path, size: int, workers: int) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: its peak memory is this variant's alone
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_measured, args=(send, kind, str(root), str(out), size, workers))
    proc.start()
    n, dt, self_kb, child_kb, main_cpu, phases = recv.recv()
    proc.join()
    peak_mb = (self_kb + (workers * child_kb if kind != "notebook" else 0)) / 1024
    res = {"images": n, "seconds": dt, "images_per_s": n / dt, "peak_mb": peak_mb,
           "main_cpu_us_per_image": 1e6 * main_cpu / max(n, 1)}
    if phases is not None:
        res["phases"] = _phases(phases, dt)
    return res


def _phases(timings: dict, seconds: float) -> dict:
    """Which part of a build costs what, in seconds: the decode phase (read, SHA-256, decode, dHash,
    statistics, staging), what runs before it (discovery, the set's checks) and what can only
    follow the last decode (grouping needs every hash, the shards need the split; then the commit)."""
    decode = timings["decode_s"]
    before = timings["discover_s"]
    return {"decode_s": decode, "before_s": before, "after_s": max(seconds - decode - before, 0.0),
            "shards_s": timings["shards_s"], "group_split_s": timings["group_s"] + timings["split_s"]}


def bench_preprocess(root: Path, files: list[Path], shards: Path, cfg: BenchConfig) -> dict:
    for path in files:  # warm the page cache for every contender
        path.read_bytes()
    ours = _measure_process("project", root, shards, cfg.size, cfg.workers)
    base = _measure_process("notebook", root, shards, cfg.size, cfg.workers)
    limit = _measure_process("decode_limit", root, shards, cfg.size, cfg.workers)
    # What more cores would give: the decode limit grows with the workers, the main process's
    # work per image does not (it runs on one core), so it caps the stage at 1 / (its CPU per image).
    per_core = limit["images_per_s"] / cfg.workers
    main_cap = 1e6 / max(ours["main_cpu_us_per_image"], 1e-9)
    ceilings = {str(c): {"decode_limit": per_core * c, "main_process_cap": main_cap,
                         "bound_by": "decode" if per_core * c < main_cap else "main process"} for c in (16, 64)}
    # The best this build could do here: its decode phase as fast as the decode limit, plus the
    # phases around it as this run measured them (they cannot overlap the decodes: the split needs
    # every image's hash, and discovery comes first). Against the limit, that is the reachable ratio.
    ph = ours["phases"]
    limit_s = ours["images"] / limit["images_per_s"]
    best = limit_s / (limit_s + ph["before_s"] + ph["after_s"])
    return {"project": ours, "notebook_loop": base, "decode_limit": limit,
            "ratio": ours["images_per_s"] / base["images_per_s"],
            "limit_ratio": limit["images_per_s"] / base["images_per_s"],
            "project_vs_limit": ours["images_per_s"] / limit["images_per_s"],
            "main_cpu_us_per_image": ours["main_cpu_us_per_image"], "ceilings": ceilings,
            "decode_phase_vs_limit": ph["decode_s"] / limit_s, "best_vs_limit": best}


# --- stage 2: one epoch of loading ---------------------------------------------------------------

# --- stage 3: training step ----------------------------------------------------------------------

def _time_steps(step, loader, steps: int, sync) -> dict:
    """Compute alone (one batch, already on the device) and end to end with the loader: images/s and
    the data-wait share, as train measures it (loader.DataWait: host seconds blocked in next(), with
    no device sync inside, so no GPU work)."""
    from ..reading.loader import DataWait

    loader.set_epoch(0)
    xb, yb = next(iter(loader))
    step(xb, yb)  # warm-up (kernel selection, allocator)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(xb, yb)
    sync()
    compute = steps * len(xb) / (time.perf_counter() - t)
    waited, seen = 0.0, 0
    loader.set_epoch(1)
    batches = DataWait(loader)
    t = time.perf_counter()
    for _ in range(steps):
        try:
            xb, yb = next(batches)
        except StopIteration:
            waited += batches.seconds
            loader.set_epoch(2)
            batches = DataWait(loader)
            xb, yb = next(batches)
        step(xb, yb)
        seen += len(xb)
    sync()
    total = time.perf_counter() - t
    return {"compute_images_per_s": compute, "end_to_end_images_per_s": seen / total,
            "data_wait_share": (waited + batches.seconds) / total}


def bench_training(shards: Path, cfg: BenchConfig, device) -> dict:
    """The model's training step in fp32 and with AMP: compute alone and end to end with the loader."""
    import torch

    from model import create_model
    from ..common.config import LoaderConfig, OptimConfig
    from ..reading.loader import create_loader
    from ..reading.transform import DeviceTransform
    from ..shardset.shard_format import open_set
    from ..training.optim import make_optimizer
    from ..training.runtime import Precision, configure_cuda

    if device.type == "cuda":
        configure_cuda(exact=False)  # as train does by default
    split = open_set(shards).split("train")
    tf = DeviceTransform(split.mean, split.std, device, channels_last=True)
    # One loader for both variants: with cache=auto it holds the split in RAM.
    loader = create_loader(split, LoaderConfig(batch_size=cfg.batch_size, workers=cfg.workers, cache="auto",
                                               reuse_buffers=True),
                           device=device, train=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for amp in (False, True):
        prec = Precision(device, amp)
        if amp and prec.dtype is None:
            out["amp"] = {"skipped": "no fast bf16 on this CPU"}
            continue
        torch.manual_seed(0)
        model = create_model(cfg.model, num_classes=len(split.class_names), image_size=cfg.size)
        model = model.to(device, memory_format=torch.channels_last).train()
        opt = make_optimizer(OptimConfig(lr=1e-3, weight_decay=0.01), model.parameters(), device)
        step = lambda xb, yb: prec.step(model, opt, tf(xb, augment=True), yb)  # noqa: E731,B023
        out["amp" if amp else "fp32"] = {"dtype": str(prec.dtype or "float32").replace("torch.", ""),
                                         **_time_steps(step, loader, cfg.steps, sync), "cache": loader.mode}
    return out


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = logger.info) -> dict:
    """All three stages; returns every figure with the options and the environment."""
    import torch

    from ..common.env import environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root, files = _subset(Path(cfg.data_dir), cfg.limit, Path(tmp) / "subset")
        shards = Path(tmp) / "shards"
        progress("stage 1/3: preprocess vs the notebooks' loop")
        pre = bench_preprocess(root, files, shards, cfg)
        progress("stage 2/3: one epoch of loading")
        # imported here, not at the top: the preprocess contenders run in fresh processes that import
        # this module, and torch would count in their start-up time and peak memory
        from .bench_loading import bench_loading

        load = bench_loading(files, shards, cfg, device, _notebook_decode)
        progress(f"stage 3/3: {cfg.model} training step")
        trn = bench_training(shards, cfg, device)
    return {"config": to_dict(cfg), "environment": environment(), "device": str(device),
            "preprocess": pre, "loading": load, "training": trn}
