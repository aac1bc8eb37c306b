"""The bench's second stage: one epoch of loading, the project's paths against the notebooks' way.

Contenders, on the same split: the project's DataLoader path (streaming
workers) and resident path, the convenient per-sample ``ShardDataset``
with a plain torch DataLoader, the notebooks' loader (in-RAM uint8 array, a
Dataset making float32 CHW per sample, batch 32, shuffle), a loader that
decodes every JPEG every epoch (ImageFolder-style), and the memory limit
(random batch gathers from one in-RAM uint8 array, numpy and torch).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..common.config import BenchConfig, LoaderConfig
from ..reading.dataset import ShardDataset
from ..reading.loader import create_loader
from ..shardset.shard_format import open_set
from .timing import interleaved, rate


class NotebookDataset(Dataset):
    """The notebooks' per-sample float32 CHW conversion of an in-RAM uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i].transpose(2, 0, 1).astype(np.float32) / 255.0), int(self.labels[i])


class DecodeDataset(Dataset):
    """ImageFolder-style: decode every image every epoch, the notebooks' way."""

    def __init__(self, files: list[Path], size: int, decode: Callable[[Path, int], np.ndarray]) -> None:
        self.files, self.size, self.decode = files, size, decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        try:
            px = self.decode(self.files[i], self.size)
        except OSError:
            px = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        return torch.from_numpy(px.transpose(2, 0, 1).astype(np.float32) / 255.0), 0


def epochs_of(loader, device) -> Callable[[], int]:
    """One more epoch of ``loader`` per call (consecutive epochs, as in training): images seen."""
    epochs = itertools.count()

    def one_epoch() -> int:
        loader.set_epoch(next(epochs))
        seen = 0
        for x, _ in loader:
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen
    return one_epoch


def per_sample_epochs(split, cfg: BenchConfig, device) -> Callable[[], int]:
    """The convenient path: ``ShardDataset`` with a plain torch DataLoader (default collate, the
    project's batch size and workers), uint8 on the device as the fast paths deliver it."""
    loader = DataLoader(ShardDataset(split), batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda")

    def one_epoch() -> int:
        seen = 0
        for x, _ in loader:
            x.to(device, non_blocking=True)
            seen += len(x)
        return seen
    return one_epoch


def memory_limit(images: np.ndarray, batch_size: int) -> dict[str, Callable[[], int]]:
    """Random batch gathers from one in-RAM uint8 array: numpy (one thread), torch.index_select (all)."""
    n = len(images)
    out = np.empty((batch_size,) + images.shape[1:], dtype=np.uint8)
    t_images, t_out = torch.from_numpy(images), torch.from_numpy(out)
    rng = np.random.default_rng(0)
    batches = max(1, n // batch_size)

    def gather_numpy() -> int:
        for _ in range(batches):
            np.take(images, rng.integers(0, n, batch_size), axis=0, out=out)
        return batches * batch_size

    def gather_torch() -> int:
        for _ in range(batches):
            torch.index_select(t_images, 0, torch.from_numpy(rng.integers(0, n, batch_size)), out=t_out)
        return batches * batch_size
    return {"memory_limit_numpy": gather_numpy, "memory_limit_torch": gather_torch}


def _contenders(split, cfg: BenchConfig, device) -> dict[str, Callable[[], int]]:
    resident = create_loader(split, LoaderConfig(batch_size=cfg.batch_size, workers=0, reuse_buffers=True,
                                                 cache="device" if device.type == "cuda" else "ram"),
                             device=device, train=True)
    # The memory limit gathers from the very array the resident loader reads: a small split nearly
    # fits the L3 cache, and a second copy read by the limit gathers stayed warmer than the loader's
    # (benchmarks/history/bench.md "The 64 px resident gap found and closed").
    images = resident.resident.numpy() if resident.resident.device.type == "cpu" else split.load_all()
    # reuse_buffers: each batch is consumed before the next, as in train (no copy out of the ring)
    streaming = create_loader(split, LoaderConfig(batch_size=cfg.batch_size, workers=cfg.workers, cache="none",
                                                  reuse_buffers=True),
                              device=device, train=True)
    notebook = DataLoader(NotebookDataset(images, split.labels), batch_size=32, shuffle=True)
    return {"project_dataloader": epochs_of(streaming, device), "project_resident": epochs_of(resident, device),
            "per_sample_dataset": per_sample_epochs(split, cfg, device),
            "notebook_loader": lambda: sum(len(x) for x, _ in notebook),
            **memory_limit(images, cfg.batch_size)}


def decode_every_epoch(files: list[Path], cfg: BenchConfig, decode: Callable[[Path, int], np.ndarray]) -> float:
    """Images/s of one epoch that decodes every JPEG (after a warm-up epoch), timed once."""
    loader = DataLoader(DecodeDataset(files, cfg.size, decode), batch_size=32, shuffle=True,
                        num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
    sum(len(x) for x, _ in loader)  # warm-up
    return rate(lambda: sum(len(x) for x, _ in loader))


def bench_loading(files: list[Path], shards: Path, cfg: BenchConfig, device,
                  decode: Callable[[Path, int], np.ndarray]) -> dict:
    """Every contender's images/s (medians of interleaved rounds) and the ratios within rounds."""
    # glibc's malloc serves the notebooks' loader's float32 samples and
    # batches from reused heap or from fresh pages, depending on the largest
    # block the process has freed so far, so fresh processes ran the same code
    # at two speeds. Freeing one 16 MB block first raises malloc's mmap
    # threshold above the batch size: the state of a notebook's training
    # process once its model has freed activations, so the baseline is taken
    # at its best (benchmarks/history/bench.md "Against the targets of the issues").
    warm = np.ones(16 << 20, dtype=np.uint8)
    del warm
    split = open_set(shards).split("train")  # the set check every command runs first
    contenders = _contenders(split, cfg, device)
    for fn in contenders.values():
        fn()  # warm-up: worker start, page cache, allocator
    # The resident loader and the memory limit are one process's work, about a millisecond an epoch:
    # timed call by call alternately, so their ratio is not the VM's speed from one spell to the next.
    rounds = interleaved(contenders, cfg.repeats, cfg.min_seconds,
                         together=("project_resident", "memory_limit_numpy", "memory_limit_torch"))
    res = {name: statistics.median(r) for name, r in rounds.items()}
    rounds["memory_limit_gather"] = [max(a, b) for a, b in zip(rounds["memory_limit_numpy"],
                                                               rounds["memory_limit_torch"])]
    res["memory_limit_gather"] = statistics.median(rounds["memory_limit_gather"])
    res["decode_every_epoch"] = decode_every_epoch(files[: max(256, len(split) // 4) if cfg.quick else None], cfg,
                                                   decode)

    def within(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))
    return {
        "images_per_s": res,
        "rounds": rounds,
        "dataloader_vs_notebook": within("project_dataloader", "notebook_loader"),
        "per_sample_vs_dataloader": within("per_sample_dataset", "project_dataloader"),
        "dataloader_vs_decode": res["project_dataloader"] / res["decode_every_epoch"],
        "resident_vs_memory_limit": within("project_resident", "memory_limit_gather"),
    }
