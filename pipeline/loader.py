"""Batches from shards to the model: the shard batch reader, the resident caches, the loader.

Hops a batch makes from disk to the model:

* streaming (``cache='none'``): (1) a DataLoader worker gathers the batch's
  rows from its memory map of the shard (page cache -> a slot of a
  shared-memory ring, so handing it to the main process copies nothing).
  On CPU the model reads that slot in place: one copy from disk to model.
  On CUDA (2) the pin-memory thread copies it to pinned memory and (3) one
  ``non_blocking`` DMA puts it on the GPU.
* resident in RAM (``cache='ram'``): (1) one multi-threaded gather from the
  in-RAM split into the batch's buffer (pinned memory on CUDA; one reused
  buffer with ``reuse_buffers``)
  and (2) the DMA; no worker processes.
* resident on the device (``cache='device'``): the split was copied to the
  GPU once; each batch is one gather there, zero host hops.

Pixels stay uint8 (a quarter of float32's bytes) until they are on the
device; :class:`~pipeline.transform.DeviceTransform` then converts,
normalises with the preprocess-time mean/std, and augments the whole batch
at once.

Order: the epoch plan of :mod:`pipeline.sampler` (a pure function of seed
and epoch, per rank). Batches come back in plan order whatever the worker
count. In streaming mode one DataLoader iteration runs across consecutive
epochs (the sampler streams epoch after epoch), so the workers do not
drain and restart at every epoch boundary; a jump to another epoch starts
a fresh stream.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
import warnings
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .config import LoaderConfig
from .sampler import EpochBatchSampler
from .shard_format import SplitSet
from .transform import DeviceTransform

logger = logging.getLogger(__name__)


class _Stream:
    """The DataLoader's sampler: the batch stream from ``start`` on."""

    def __init__(self, sampler: EpochBatchSampler) -> None:
        self.sampler, self.start, self.skip = sampler, 0, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.sampler.stream(self.start, self.skip)


class ShardBatchDataset(Dataset):
    """Map-style dataset whose item is a whole batch's images: ``ds[index_array]``.

    Labels do not cross from the workers: the loader slices them from the
    epoch's label tensor, already where the batch goes.

    Each worker maps the shards lazily on first use (maps and HDF5 handles
    must not cross a fork) and gathers a batch with one
    ``torch.index_select`` per run of samples from one shard: no per-sample
    Python. (A row copy per image: 0.27 ms per batch of 128 at 128 px on
    one core here, against 0.47 ms for ``np.take`` into the same buffer.)

    In a worker, batches go into a ring of ``ring`` slots per worker, so a
    batch crosses the process boundary with no copy, no page fault and no
    zeroing of fresh memory:

    * on CPU the ring is one shared-memory tensor ``shared`` (workers, ring,
      B, H, W, 3) allocated before the workers fork; a worker returns only
      (worker, slot, n), and the main process reads the slot
      in place (a fresh shared tensor per batch, as ``default_collate``
      makes, held the path at 35k img/s at 128 px on 2 cores);
    * on CUDA each slot is a shared tensor made once by the worker (torch
      caches its mapping in the main process), which the DataLoader's
      pin-memory thread copies to pinned memory for an async DMA.

    A worker has at most ``prefetch_factor`` batches in flight, so with
    ``ring = prefetch_factor + 2`` a slot is rewritten only after its batch
    and the one after it have been handed to the consumer. A consumer that
    keeps batches longer (a list of batches) must ``clone()`` them.
    """

    def __init__(self, split: SplitSet, ring: int = 0, shared: Optional[torch.Tensor] = None) -> None:
        self.shards = split.shards
        self.offsets = split.offsets
        self.size = split.image_size
        self.ring = ring
        self.shared = shared
        self._maps: list = []
        self._loaded: list[int] = []
        self._pid: Optional[int] = None
        self._slots: list[torch.Tensor] = []
        self._next = 0
        self._spare: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, s: int) -> torch.Tensor:
        """Shard ``s``'s images as a tensor: over a memory map (contiguous
        shards, opened once per process), or for compressed shards over the
        decompressed array, of which only the two most recently used are kept."""
        if self._maps[s] is None:
            images = self.shards[s].images_map()
            with warnings.catch_warnings():
                # The map is read-only and torch warns that its tensors are
                # writable; this one is only ever the source of a gather.
                warnings.simplefilter("ignore", UserWarning)
                self._maps[s] = torch.from_numpy(images)
            if self.shards[s].offset is None:  # held in RAM: bound how many
                self._loaded.append(s)
                while len(self._loaded) > 2:
                    self._maps[self._loaded.pop(0)] = None
        return self._maps[s]

    def _buffer(self, n: int) -> tuple[torch.Tensor, Optional[tuple]]:
        """Where this batch goes, and the (worker, slot, n) token that names it."""
        shape = (n, self.size, self.size, 3)
        info = get_worker_info()
        if info is None or not self.ring:
            return torch.empty(shape, dtype=torch.uint8), None
        k = self._next % self.ring
        self._next += 1
        if self.shared is not None:
            return self.shared[info.id, k, :n], (info.id, k, n)
        if k >= len(self._slots) or self._slots[k].shape[0] < n:
            slot = torch.empty(shape, dtype=torch.uint8).share_memory_()
            if k < len(self._slots):
                self._slots[k] = slot
            else:
                self._slots.append(slot)
        return self._slots[k][:n], None

    def _gather_runs(self, idx: np.ndarray, sid: np.ndarray, cuts: np.ndarray, dst: torch.Tensor) -> None:
        """Gather ``idx`` (in runs of one shard, split at ``cuts``) into ``dst``."""
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(idx)]):
            local = torch.from_numpy(idx[a:b] - self.offsets[sid[a]])
            torch.index_select(self._shard(sid[a]), 0, local, out=dst[a:b])

    def _scratch(self, n: int) -> torch.Tensor:
        """A per-process buffer for ``n`` images, reused from batch to batch."""
        if self._spare is None or len(self._spare) < n:
            self._spare = torch.empty((n, self.size, self.size, 3), dtype=torch.uint8)
        return self._spare[:n]

    def __getitem__(self, idx: np.ndarray) -> "torch.Tensor | tuple[int, int, int]":
        if self._pid != os.getpid():  # first call in this process: nothing inherited is valid
            self._maps, self._loaded = [None] * len(self.shards), []
            self._slots, self._next, self._pid, self._spare = [], 0, os.getpid(), None
        idx = np.asarray(idx, dtype=np.int64)
        out, token = self._buffer(len(idx))
        sid = np.searchsorted(self.offsets, idx, side="right") - 1
        # An epoch goes shard by shard, so a batch is one run of samples from
        # one shard, or two where it crosses a boundary (1 batch in 10 at 128
        # px): each run is gathered straight into its rows of ``out``.
        # Balanced sampling mixes shards within a batch: its rows are
        # gathered in shard order into a reused buffer, then put in place.
        # (A temporary per shard instead, fresh memory each batch, held the
        # DataLoader path at 226k img/s vs 337k at 128 px here.)
        cuts = np.flatnonzero(sid[1:] != sid[:-1]) + 1
        if len(cuts) < 8:
            self._gather_runs(idx, sid, cuts, out)
        else:
            order = np.argsort(sid, kind="stable")
            sid_sorted = sid[order]
            scratch = self._scratch(len(idx))
            self._gather_runs(idx[order], sid_sorted, np.flatnonzero(sid_sorted[1:] != sid_sorted[:-1]) + 1, scratch)
            out.index_copy_(0, torch.from_numpy(order), scratch)
        return token if token is not None else out


def _as_is(batch):
    """collate_fn that leaves a worker's batch (a tensor, or its ring slot's (worker, slot, n)) untouched."""
    return batch


def _seed_worker(worker_id: int) -> None:
    """Seed numpy/random in a worker from torch's per-worker seed (itself from the loader's Generator)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class BatchLoader:
    """Batches of one split, on the target device: the fast path.

    Built by :func:`create_loader`; iterate it once per epoch after
    :meth:`set_epoch`. Yields ``(images, labels int64)`` already on
    ``device``: images uint8 (B, H, W, 3), or with a ``transform`` its
    output (:class:`DeviceTransform`: normalised float NCHW, augmented on
    the device when training).

    Batches are safe to keep. ``cfg.reuse_buffers`` opts in to reusing CPU
    batch memory (in RAM mode the next batch overwrites this one; streaming,
    ``prefetch_factor + 2`` batches later), which saves a copy or a fresh
    allocation per batch: for a loop that is done with each batch before
    asking for the next, as ``train`` is.

    :meth:`state_dict` / :meth:`load_state_dict` resume mid-epoch exactly:
    the first batch after a resume is the one that would have come next.
    """

    def __init__(self, split: SplitSet, cfg: LoaderConfig, device: torch.device, mode: str,
                 sampler: EpochBatchSampler, transform: Optional[DeviceTransform] = None) -> None:
        self.split, self.cfg, self.device, self.mode, self.sampler = split, cfg, device, mode, sampler
        self.transform = transform
        self._handed = 0  # batches of the current epoch handed out so far
        self._fetch: Optional[DataWait] = None  # the current iteration's batch fetches, timed
        self.labels = torch.from_numpy(split.labels)
        self._loader: Optional[DataLoader] = None
        self._images: Optional[torch.Tensor] = None
        self._shared: Optional[torch.Tensor] = None  # the streaming workers' shared batch ring (CPU)
        self._reused: Optional[torch.Tensor] = None  # RAM mode's one batch buffer under reuse_buffers
        if mode in ("ram", "device"):
            images = torch.from_numpy(split.load_all())
            self._images = images.to(device) if mode == "device" else images
            # With reuse_buffers, CPU batches are gathered into one reused
            # buffer: a fresh 6 MB buffer per batch page-faults on every 4 KB
            # and gathered at 370k img/s instead of 450k (128 px, batch 128),
            # and at 64 px one buffer instead of a ring of three gathered 5-9%
            # faster (it stays in cache). Without it each batch gets fresh
            # memory, safe to keep. Pinned CUDA buffers come from torch's
            # caching host allocator, which reuses them once their DMA is done.
            if mode == "ram" and device.type != "cuda" and cfg.reuse_buffers:
                self._reused = torch.empty((cfg.batch_size,) + tuple(images.shape[1:]), dtype=torch.uint8)
        else:
            cuda = device.type == "cuda"
            workers = cfg.workers
            ring = cfg.prefetch_factor + 2
            if workers > 0 and not cuda:  # allocated before the fork, so every worker shares it
                self._shared = torch.empty((workers, ring, cfg.batch_size, split.image_size, split.image_size, 3),
                                           dtype=torch.uint8).share_memory_()
            self._stream = _Stream(sampler)
            self._it: Optional[Iterator] = None
            self._next_epoch: Optional[int] = None  # the epoch the live iterator is at, if any
            self._loader = DataLoader(
                ShardBatchDataset(split, ring=ring if workers > 0 else 0, shared=self._shared), sampler=self._stream,
                batch_size=None, num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
                worker_init_fn=_seed_worker if workers > 0 else None, collate_fn=_as_is,
                generator=torch.Generator().manual_seed(cfg.seed),
                multiprocessing_context="fork" if workers > 0 else None,
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration reads ``epoch``, from batch ``start_batch`` on."""
        self.sampler.set_epoch(epoch, start_batch)
        self._handed = start_batch

    def state_dict(self) -> dict:
        """Where the loader stands: ``{"epoch", "batch"}`` (batches of that epoch handed out), and
        the transform's augmentation RNG. Plain data: it goes into a ``weights_only`` checkpoint."""
        state = {"epoch": self.sampler.epoch, "batch": self._handed}
        if self.transform is not None:
            state["augment_rng"] = self.transform.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`: the next iteration yields the rest of that epoch."""
        self.set_epoch(int(state["epoch"]), int(state["batch"]))
        if self.transform is not None and "augment_rng" in state:
            self.transform.generator.set_state(state["augment_rng"])

    def __len__(self) -> int:
        return len(self.sampler)

    def close(self) -> None:
        """Stop the worker processes now (they would stop when the loader is collected).

        The workers inherit every file the process had open when they
        forked, the run folder's lock among them: a run closes its loaders
        before it lets the lock go, so the next run can take it at once.
        """
        self._fetch = None
        if self._loader is not None and self._it is not None:
            it, self._it = self._it, None
            shutdown = getattr(it, "_shutdown_workers", None)   # torch's multi-process iterator
            if shutdown is not None:
                shutdown()

    @property
    def resident(self) -> Optional[torch.Tensor]:
        """The whole split as one uint8 (N, H, W, 3) tensor where it is resident (RAM or device), else None."""
        return self._images

    def epoch_indices(self) -> torch.Tensor:
        """This rank's samples for the current epoch, from its start batch on, as one int64 tensor.

        Built once per epoch: every batch of the epoch is a slice of it (and
        of the epoch's labels), so on CUDA the indices and labels cross to
        the device once per epoch, asynchronously from pinned memory, and no
        step waits on an upload.
        """
        b = self.cfg.batch_size
        idx = self.sampler.indices()[self.sampler.start_batch * b: len(self.sampler) * b]
        return torch.from_numpy(np.ascontiguousarray(idx))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """One asynchronous copy from pinned memory on CUDA; the tensor itself on CPU."""
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    @property
    def wait_seconds(self) -> float:
        """Seconds the current (or last) iteration has waited for its batches: the data wait
        (:class:`DataWait`), without the time the transform takes."""
        return self._fetch.seconds if self._fetch is not None else 0.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Streaming CPU batches are slots of the workers' shared ring: copied out unless reuse was asked for
        keep = self._shared is not None and not self.cfg.reuse_buffers
        transform, train = self.transform, self.sampler.shuffle
        self._fetch = DataWait(self._batches())
        for x, y in self._fetch:
            self._handed += 1
            if transform is not None:
                x = transform(x, augment=train)  # a new tensor: nothing shared
            elif keep:
                x = x.clone()
            yield x, y

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        b = self.cfg.batch_size
        idx = self.epoch_indices()
        # The epoch's labels, and both split into per-batch views in one call
        # each: a 64 px batch gathers in ~40 us here, so a few us of Python
        # per batch is a tenth of the loader's rate.
        labels = self._to_device(self.labels.index_select(0, idx)).split(b)
        if self._loader is not None:
            epoch, skip = self.sampler.epoch, self.sampler.start_batch
            if self._it is None or self._next_epoch != epoch or skip:  # first epoch, not the next one, or a resume
                self._stream.start, self._stream.skip = epoch, skip
                self._it = iter(self._loader)
            self._next_epoch = None  # until this epoch is read to its end
            for y in labels:
                x = next(self._it)
                if isinstance(x, tuple):  # a slot of the shared ring: read in place
                    w, k, n = x
                    x = self._shared[w, k, :n]
                yield (x.to(self.device, non_blocking=True) if cuda else x), y
            self._next_epoch = epoch + 1
            return
        if self.mode == "device":
            for i, y in zip(self._to_device(idx).split(b), labels):
                yield self._images.index_select(0, i), y
            return
        reused = self._reused
        for i, y in zip(idx.split(b), labels):
            if reused is not None:
                buf = reused if len(i) == b else reused[: len(i)]
            else:
                buf = torch.empty((len(i),) + tuple(self._images.shape[1:]), dtype=torch.uint8, pin_memory=cuda)
            torch.index_select(self._images, 0, i, out=buf)
            yield (buf.to(self.device, non_blocking=True) if cuda else buf), y


class DataWait:
    """Iterate a loader (or any iterable of batches) and count the host seconds spent blocked in ``next()``.

    The one definition of "data wait" for ``train`` and ``bench``: the time
    the training loop waits for its next batch to be handed over. No path
    of :class:`BatchLoader` synchronises with the device inside ``next()``
    (indices and labels go up once per epoch, pixels by ``non_blocking``
    copies from pinned memory), so on CUDA this excludes GPU work: a GPU
    that is the bottleneck shows as ~0% wait, a starved one as the time the
    host had nothing to queue.
    """

    def __init__(self, loader) -> None:
        self.it = iter(loader)
        self.seconds = 0.0

    def __iter__(self) -> "DataWait":
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t


def resolve_cache(cache: str, split: SplitSet, device: torch.device) -> str:
    """``auto``: device if the split takes under 40% of free GPU memory, RAM if
    under 30% of available RAM, else streaming."""
    if cache != "auto":
        if cache == "device" and device.type != "cuda":
            return "ram"  # on CPU the device is RAM
        return cache
    nbytes = len(split) * split.image_size ** 2 * 3
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < 0.4 * free:
            return "device"
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 0
    return "ram" if nbytes < 0.3 * avail else "none"


def create_loader(split: SplitSet, cfg: Optional[LoaderConfig] = None, *, device="cpu", train: bool = True,
                  rank: Optional[int] = None, world_size: Optional[int] = None,
                  transform: Optional[DeviceTransform] = None, **options) -> BatchLoader:
    """The fast batch loader for one split.

    Args:
        split: an opened split (``open_set(root).split("train")``).
        cfg: batch size, workers, cache mode, balance, seed, ...; or give
            those as keyword ``options`` (``batch_size=64, cache="ram"``),
            which override ``cfg``. Defaults: batch 128, workers = cores /
            processes on this node, ``cache="auto"``, seed 42.
        device: where batches are delivered (``"cuda"``, ``"cpu"`` or a torch.device).
        train: shuffled by (seed, epoch) (and balanced if asked); else in order.
        rank, world_size: this process's part of every epoch; by default
            taken from ``torch.distributed`` when a process group is up.
        transform: e.g. ``DeviceTransform(mean, std, device)``: batches come
            out normalised (and, for training, augmented) on the device.

    Raises:
        ConfigError: an option out of its range.
    """
    cfg = dataclasses.replace(cfg or LoaderConfig(), **options) if options else (cfg or LoaderConfig())
    device = torch.device(device)
    if rank is None or world_size is None:
        dist = torch.distributed
        up = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if up and rank is None else (rank or 0)
        world_size = dist.get_world_size() if up and world_size is None else (world_size or 1)
    sampler = EpochBatchSampler(split.offsets, split.labels, cfg.batch_size, seed=cfg.seed, rank=rank,
                                world_size=world_size, shuffle=train, balance=cfg.balance if train else 0.0,
                                drop_last=train and cfg.drop_last)
    mode = resolve_cache(cfg.cache, split, device)
    logger.info("loader: %d images, cache=%s, workers=%d", len(split), mode, cfg.workers)
    return BatchLoader(split, cfg, device, mode, sampler, transform)
