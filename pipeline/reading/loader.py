"""Batches from shards to the model: one loader over three readers.

:class:`BatchLoader` owns the epoch plan, the labels, the transform and the
resume state; a reader (:data:`READERS`, chosen by the cache mode) only
turns the epoch's indices into uint8 batches on the device. Hops a batch
makes from disk to the model:

* streaming (``cache='none'``, :class:`StreamReader`): (1) a DataLoader worker gathers the rows of
  several consecutive batches (one message) from its memory map of the
  shard (page cache -> a slot of a shared-memory ring, so handing it to
  the main process copies nothing); each batch is a view of that slot.
  On CPU the model reads that slot in place: one copy from disk to model.
  On CUDA (2) the pin-memory thread copies it to pinned memory and (3) one
  ``non_blocking`` DMA puts it on the GPU.
* resident in RAM (``cache='ram'``, :class:`RamReader`): (1) one multi-threaded gather from the
  in-RAM split into the batch's buffer (pinned memory on CUDA; one reused
  buffer with ``reuse_buffers``)
  and (2) the DMA; no worker processes.
* resident on the device (``cache='device'``, :class:`DeviceReader`): the split was copied to the
  GPU once; each batch is one gather there, zero host hops.

Pixels stay uint8 (a quarter of float32's bytes) until they are on the
device; :class:`~pipeline.reading.transform.DeviceTransform` then converts,
normalises with the preprocess-time mean/std, and augments the whole batch
at once.

Order: the epoch plan of :mod:`pipeline.reading.sampler` (a pure function of seed
and epoch, per rank). Batches come back in plan order whatever the worker
count.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..common.config import LoaderConfig
from ..common.errors import UserError
from .dataset import ShardMaps
from .prefetch import AHEAD, Prefetcher
from .sampler import WINDOW_SHARDS, EpochBatchSampler
from ..shardset.shard_format import SplitSet
from .transform import DeviceTransform

logger = logging.getLogger(__name__)


class _Stream:
    """The DataLoader's sampler: the stream of worker tasks (``per_message`` batches each) from ``start`` on.

    With ``single_first`` > 0, that many tasks open the stream with one batch each: a set in object
    storage then hands over its first batch once the first shard has arrived, not the several shards
    a message of many batches spans.
    """

    def __init__(self, sampler: EpochBatchSampler, per_message: int, single_first: int = 0) -> None:
        self.sampler, self.start, self.skip, self.per_message = sampler, 0, 0, per_message
        self.single_first = single_first

    def __iter__(self) -> Iterator[np.ndarray]:
        first = min(self.single_first, len(self.sampler) - self.skip) if self.per_message > 1 else 0
        if first <= 0:
            return self.sampler.stream(self.start, self.skip, self.per_message)
        return self._opening(first)

    def _opening(self, first: int) -> Iterator[np.ndarray]:
        """``first`` batches alone (all within the opening epoch), then messages from the batch after them."""
        yield from itertools.islice(self.sampler.stream(self.start, self.skip, 1), first)
        yield from self.sampler.stream(self.start, self.skip + first, self.per_message)


# A streaming worker's answer on CPU, (worker, slot, n): its message is ``shared[worker, slot, :n]``
# of the ring. A plain tuple, not a NamedTuple: it is pickled through the worker's queue once per
# message, and a class pickles by name and unpickles by lookup.
RingSlot = tuple[int, int, int]

# A DataLoader message costs the main process and the workers a fixed time (queues, pickling,
# wake-ups): more than gathering a whole 64 px batch. So a streaming worker task gathers several
# batches, about MESSAGE_BYTES, and hands them over in one message (benchmarks/history/bench.md
# "The streaming path: several batches a message"). The workers' ring of such messages is shared memory,
# which a container may keep small (/dev/shm is 64 MB by default under Docker): it stays within
# RING_BYTES and a quarter of what /dev/shm has free.
MESSAGE_BYTES = 32 << 20
RING_BYTES = 1 << 30


def _shm_free() -> int:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize
    except OSError:
        return RING_BYTES * 4   # no /dev/shm to ask: torch will say so if shared memory fails


def message_plan(batch_bytes: int, workers: int, prefetch_factor: int, asked: int = 0,
                 shm_free: Optional[int] = None, cap: Optional[int] = None) -> tuple[int, int, int]:
    """(batches per message, messages in flight per worker, ring slots per worker) for the streaming path.

    Args:
        batch_bytes: one full batch's pixels.
        workers: streaming worker processes.
        prefetch_factor: batches in flight per worker (as the DataLoader's option): here as many
            messages as hold them, at least 2, so one is always ready.
        asked: batches per message chosen by the caller (0: sized here).
        shm_free: free bytes of /dev/shm (default: asked of the system).
        cap: bytes the workers' ring may hold at most (a set read through a bounded cache: what the
            workers gather ahead of the consumer must leave the cache room for the shards after it).
    """
    def ring_of(k: int) -> tuple[int, int]:
        prefetch = max(2, -(-prefetch_factor // k))
        return prefetch, prefetch + 2   # + 2: a slot is rewritten only after the batch after it was handed on

    if asked:
        return (asked,) + ring_of(asked)
    budget = min(RING_BYTES, (_shm_free() if shm_free is None else shm_free) // 4, cap or RING_BYTES)
    k = max(1, min(32, MESSAGE_BYTES // max(batch_bytes, 1)))
    while k > 1 and workers * ring_of(k)[1] * k * batch_bytes > budget:
        k -= 1
    return (k,) + ring_of(k)


class ShardBatchDataset(Dataset):
    """Map-style dataset whose item is the images of one or more whole batches: ``ds[index_array]``.

    Labels do not cross from the workers: the loader slices them from the
    epoch's label tensor, already where the batch goes.

    Each worker maps the shards lazily on first use (maps and HDF5 handles
    must not cross a fork) and gathers a batch with one
    ``torch.index_select`` per run of samples from one shard: no per-sample
    Python (faster than ``np.take`` into the same buffer: benchmarks/history/bench.md
    "Against the targets of the issues").

    In a worker, items go into a ring of ``ring`` slots per worker, so an
    item (a message of batches) crosses the process boundary with no copy,
    no page fault and no zeroing of fresh memory:

    * on CPU the ring is one shared-memory tensor ``shared`` (workers, ring,
      rows of a message, H, W, 3) allocated before the workers fork; a worker returns only
      a :class:`RingSlot`, and the main process reads the slot in place (a
      fresh shared tensor per batch, as ``default_collate`` makes, held the
      path to a tenth of the rate: benchmarks/history/bench.md "Against the targets of
      the issues");
    * on CUDA each slot is a shared tensor made once by the worker (torch
      caches its mapping in the main process), which the DataLoader's
      pin-memory thread copies to pinned memory for an async DMA.

    A worker has at most ``prefetch`` messages in flight (the DataLoader's
    ``prefetch_factor``), so with ``ring = prefetch + 2`` a slot is
    rewritten only after its batches and the message after it have been
    handed to the consumer. A consumer that keeps batches longer (a list of
    batches) must ``clone()`` them.
    """

    def __init__(self, split: SplitSet, ring: int = 0, shared: Optional[torch.Tensor] = None) -> None:
        self.maps = ShardMaps(split.shards, as_tensor=True)
        self.offsets = split.offsets
        self.size = split.image_size
        self.ring = ring
        self.shared = shared
        self._pid: Optional[int] = None
        self._slots: list[torch.Tensor] = []
        self._next = 0
        self._spare: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _buffer(self, n: int) -> tuple[torch.Tensor, Optional[RingSlot]]:
        """Where this batch goes, and the ring slot that names it (None: the tensor itself is returned)."""
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
            torch.index_select(self.maps[int(sid[a])], 0, local, out=dst[a:b])

    def _scratch(self, n: int) -> torch.Tensor:
        """A per-process buffer for ``n`` images, reused from batch to batch."""
        if self._spare is None or len(self._spare) < n:
            self._spare = torch.empty((n, self.size, self.size, 3), dtype=torch.uint8)
        return self._spare[:n]

    def __getitem__(self, idx: np.ndarray) -> "torch.Tensor | RingSlot | UserError":
        try:
            return self._get(idx)
        except UserError as exc:   # a shard replaced or damaged, the store failing, the cache full: one line
            return exc             # in the main process, not a worker's traceback (raised where the batch is taken)

    def _get(self, idx: np.ndarray) -> "torch.Tensor | RingSlot":
        if self._pid != os.getpid():  # first call in this process: no ring slot inherited is ours
            self._slots, self._next, self._pid, self._spare = [], 0, os.getpid(), None
            info = get_worker_info()
            if info is not None and self.shared is not None:
                # Touch this worker's slots once, now: the first write to each 4 KB page of shared
                # memory faults, and left to the gathers those faults spread over the first epochs
                # (benchmarks/history/bench.md "The streaming path: several batches a message").
                self.shared[info.id].fill_(0)
        idx = np.asarray(idx, dtype=np.int64)
        out, token = self._buffer(len(idx))
        sid = np.searchsorted(self.offsets, idx, side="right") - 1
        # An epoch goes shard by shard, so a batch is one run of samples from
        # one shard, or two where it crosses a boundary (1 batch in 10 at 128
        # px): each run is gathered straight into its rows of ``out``.
        # Balanced sampling mixes shards within a batch: its rows are
        # gathered in shard order into a reused buffer, then put in place.
        # (A temporary per shard instead, fresh memory each batch, was a third
        # slower: benchmarks/history/bench.md "Against the targets of the issues".)
        cuts = np.flatnonzero(sid[1:] != sid[:-1]) + 1
        if len(cuts) < max(8, len(idx) // 16):
            self._gather_runs(idx, sid, cuts, out)
        else:
            order = np.argsort(sid, kind="stable")
            sid_sorted = sid[order]
            scratch = self._scratch(len(idx))
            self._gather_runs(idx[order], sid_sorted, np.flatnonzero(sid_sorted[1:] != sid_sorted[:-1]) + 1, scratch)
            out.index_copy_(0, torch.from_numpy(order), scratch)
        return token if token is not None else out


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One asynchronous copy from pinned memory on CUDA; the tensor itself on CPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


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
    a worker's ring slot is written again two messages later), which saves a copy or a fresh
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
        self._waited = 0.0  # seconds the current iteration has waited for batches
        self.labels = torch.from_numpy(split.labels)
        self.reader = READERS[mode](split, cfg, device, sampler)
        self.prefetch = None
        if split.remote and mode == "none":   # fetched ahead of the workers, in the epoch's order
            self.prefetch = Prefetcher(split, _ahead(split, cfg), lead=self.reader.lead,
                                       contiguous=not (sampler.shuffle and sampler.balance))

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
        self.reader.close()
        if self.prefetch is not None:
            self.prefetch.close()

    @property
    def resident(self) -> Optional[torch.Tensor]:
        """The whole split as one uint8 (N, H, W, 3) tensor where it is resident (RAM or device), else None."""
        return self.reader.images

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

    @property
    def wait_seconds(self) -> float:
        """Seconds the current (or last) :meth:`timed` iteration has waited for its batches: the data
        wait as :class:`DataWait` defines it, without the time the transform takes."""
        return self._waited

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._iterate(timed=False)

    def timed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate as ``iter(loader)`` does, counting :attr:`wait_seconds` (what ``train`` reports).

        Kept apart from plain iteration: two clock reads a batch are a visible
        part of a small resident batch's gather, which bench measures
        (benchmarks/history/bench.md "The 64 px resident gap found and closed").
        """
        return self._iterate(timed=True)

    def _iterate(self, timed: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Batches in memory the reader writes again later are copied out unless reuse was asked for
        keep = self.reader.recycles and not self.cfg.reuse_buffers
        transform, train = self.transform, self.sampler.shuffle
        batches, clock = self._batches(), time.perf_counter
        self._waited = 0.0
        while True:
            if timed:   # as DataWait times next()
                t = clock()
                batch = next(batches, None)
                self._waited += clock() - t
            else:
                batch = next(batches, None)
            if batch is None:
                return
            x, y = batch
            self._handed += 1
            if self.prefetch is not None:
                self.prefetch.advance(self._handed)
            if transform is not None:
                x = transform(x, augment=train)  # a new tensor: nothing shared
            elif keep:
                x = x.clone()
            yield x, y

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.cfg.batch_size
        idx = self.epoch_indices()
        # The epoch's labels, and both split into per-batch views in one call
        # each: Python per batch is a visible part of a small batch's gather
        # (benchmarks/history/bench.md "The 64 px resident gap found and closed").
        labels = _to_device(self.labels.index_select(0, idx), self.device).split(b)
        if self.prefetch is not None:   # a set in object storage: its shards fetched ahead, in this order
            self.prefetch.start_epoch(idx.numpy(), b, self.sampler.start_batch)
        return self.reader.batches(self.sampler.epoch, self.sampler.start_batch, idx, labels)


class StreamReader:
    """``cache='none'``: DataLoader workers gather each batch from their maps of the shards.

    One DataLoader iteration runs across consecutive epochs (the sampler
    streams epoch after epoch), so the workers do not drain and restart at
    every epoch boundary; a jump to another epoch, or a resume inside one,
    starts a fresh stream.
    """

    images = None

    def __init__(self, split: SplitSet, cfg: LoaderConfig, device: torch.device, sampler: EpochBatchSampler) -> None:
        self.device = device
        cuda = device.type == "cuda"
        workers = cfg.workers
        limit = split.shards[0].source.cache.limit if split.remote and split.shards else None
        per_message, prefetch, ring = message_plan(cfg.batch_size * split.image_size ** 2 * 3, workers,
                                                   cfg.prefetch_factor, cfg.message_batches,
                                                   cap=limit // 4 if limit else None)
        if workers == 0:
            per_message = 1
        self.shared: Optional[torch.Tensor] = None  # the workers' message ring on CPU
        if workers > 0 and not cuda:  # allocated before the fork, so every worker shares it
            self.shared = torch.empty((workers, ring, per_message * cfg.batch_size, split.image_size,
                                       split.image_size, 3), dtype=torch.uint8).share_memory_()
        self.recycles = self.shared is not None   # a ring slot is written again ``ring`` messages later
        self.per_message = per_message
        self.lead = workers * prefetch * per_message   # batches the workers may gather ahead of the consumer
        self.stream = _Stream(sampler, per_message, single_first=workers if split.remote else 0)
        self.it: Optional[Iterator] = None
        self.next_epoch: Optional[int] = None  # the epoch the live iterator is at, if any
        self.loader = DataLoader(
            ShardBatchDataset(split, ring=ring if workers > 0 else 0, shared=self.shared), sampler=self.stream,
            batch_size=None, num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
            worker_init_fn=_seed_worker if workers > 0 else None, collate_fn=_as_is,
            generator=torch.Generator().manual_seed(cfg.seed),
            multiprocessing_context="fork" if workers > 0 else None,
        )

    def batches(self, epoch: int, skip: int, idx: torch.Tensor, labels) -> Iterator:
        cuda = self.device.type == "cuda"
        if self.it is None or self.next_epoch != epoch or skip:  # first epoch, not the next one, or a resume
            self.stream.start, self.stream.skip = epoch, skip
            self.it = iter(self.loader)
        self.next_epoch = None  # until this epoch is read to its end
        message, pos = None, 0
        for y in labels:
            if message is None or pos == len(message):   # the next worker message: several batches
                message, pos = next(self.it), 0
                if isinstance(message, UserError):
                    raise message
                if isinstance(message, tuple):  # a RingSlot of the shared ring: read in place
                    w, k, n = message
                    message = self.shared[w, k, :n]
            x = message[pos: pos + len(y)]
            pos += len(y)
            yield (x.to(self.device, non_blocking=True) if cuda else x), y
        self.next_epoch = epoch + 1

    def close(self) -> None:
        it, self.it = self.it, None
        shutdown = getattr(it, "_shutdown_workers", None)   # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


class RamReader:
    """``cache='ram'``: the split in RAM; a batch is one multi-threaded gather into its buffer.

    With ``reuse_buffers``, CPU batches are gathered into one reused buffer:
    fresh memory page-faults on every 4 KB, and one buffer stays in cache
    (benchmarks/history/bench.md "The 64 px resident gap found and closed"). Without it
    each batch gets fresh memory, safe to keep. Pinned CUDA buffers come
    from torch's caching host allocator, which reuses them once their DMA
    is done.
    """

    recycles = False   # its reused buffer is only used when the consumer asked for reuse

    def __init__(self, split: SplitSet, cfg: LoaderConfig, device: torch.device, sampler=None) -> None:
        self.device, self.batch = device, cfg.batch_size
        self.images = torch.from_numpy(split.load_all())
        self.reused: Optional[torch.Tensor] = None
        if device.type != "cuda" and cfg.reuse_buffers:
            self.reused = torch.empty((cfg.batch_size,) + tuple(self.images.shape[1:]), dtype=torch.uint8)

    def batches(self, epoch: int, skip: int, idx: torch.Tensor, labels) -> Iterator:
        cuda = self.device.type == "cuda"
        shape = tuple(self.images.shape[1:])
        for i, y in zip(idx.split(self.batch), labels):
            if self.reused is not None:
                buf = self.reused if len(i) == self.batch else self.reused[: len(i)]
            else:
                buf = torch.empty((len(i),) + shape, dtype=torch.uint8, pin_memory=cuda)
            torch.index_select(self.images, 0, i, out=buf)
            yield (buf.to(self.device, non_blocking=True) if cuda else buf), y

    def close(self) -> None:
        pass


class DeviceReader:
    """``cache='device'``: the split copied to the GPU once; a batch is one gather there, no host hop."""

    recycles = False

    def __init__(self, split: SplitSet, cfg: LoaderConfig, device: torch.device, sampler=None) -> None:
        self.device, self.batch = device, cfg.batch_size
        self.images = torch.from_numpy(split.load_all()).to(device)

    def batches(self, epoch: int, skip: int, idx: torch.Tensor, labels) -> Iterator:
        on_device = _to_device(idx, self.device)
        for i, y in zip(on_device.split(self.batch), labels):
            yield self.images.index_select(0, i), y

    def close(self) -> None:
        pass


READERS = {"none": StreamReader, "ram": RamReader, "device": DeviceReader}


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


def _ahead(split: SplitSet, cfg: LoaderConfig) -> int:
    """Shards to fetch ahead of the reader: :data:`~pipeline.reading.prefetch.AHEAD`, fewer where the
    cache limit must also hold the shards each worker has open (two maps each, :class:`ShardMaps`)."""
    limit = split.shards[0].source.cache.limit if split.shards else None
    if not limit:
        return AHEAD
    biggest = max(s.source.entry["bytes"] for s in split.shards)
    return max(1, min(AHEAD, limit // biggest - 2 * max(cfg.workers, 1) - 1))


def resolve_cache(cache: str, split: SplitSet, device: torch.device) -> str:
    """``auto``: device if the split takes under 40% of free GPU memory, RAM if
    under 30% of available RAM, else streaming. A split in object storage
    streams: its first batch then waits for one shard, not the whole set."""
    if cache == "auto" and split.remote:
        return "none"
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
    mode = resolve_cache(cfg.cache, split, device)
    logger.info("loader: %d images, cache=%s, workers=%d", len(split), mode, cfg.workers)
    sampler = EpochBatchSampler(split.offsets, split.labels, cfg.batch_size, seed=cfg.seed, rank=rank,
                                world_size=world_size, shuffle=train, balance=cfg.balance if train else 0.0,
                                drop_last=train and cfg.drop_last, windows=WINDOW_SHARDS if split.remote else 0)
    return BatchLoader(split, cfg, device, mode, sampler, transform)
