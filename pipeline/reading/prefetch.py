"""Fetching a remote split's shards ahead of the loader, in the order the epoch reads them.

A set in object storage (:mod:`pipeline.shardset.sets`) is fetched shard by
shard into the node's cache as readers first need each one. Left to the
readers, every shard's fetch would stall the batches behind it; the
:class:`Prefetcher` runs a few shards ahead of the batches handed out, on
``connections`` threads of the main process, so the first batch waits for
the first shard only and later ones, on a store that keeps up, for none.

How far ahead is bounded by the cache (a fetch that finds no room is tried
again as the loader moves on), and a failure is left to the reader that
needs the shard, which raises it in the training loop with the loader's
other errors. It also ranks the cache's eviction order by the epoch's plan:
a plain least-recently-used order would evict the very shards the epoch is
about to read (they were used longest ago) to make room for the ones after
them, and fetch the whole set every epoch.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from ..shardset.shard_format import SplitSet

logger = logging.getLogger(__name__)

AHEAD = 4          # shards fetched ahead of the one being read
CONNECTIONS = 4    # fetches at once (each one connection to the store)
# The eviction ranks (ShardCache.rank, as file times in ns): shards still to be read this epoch rank
# near FUTURE_NS past now, soonest highest; shards read rank near READ_NS (1970), by epoch and position,
# so the shards the last epoch read last, which the next one reads first (sampler._windowed), stay.
FUTURE_NS = 10**15
READ_NS = 10**9


def shard_sequence(indices: np.ndarray, offsets: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(the shards an epoch's ``indices`` read, in order of first use; the batch of each first use)."""
    if len(indices) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sid = np.searchsorted(offsets, indices, side="right") - 1
    _, first = np.unique(sid, return_index=True)
    first = np.sort(first)
    return sid[first], first // batch_size


class Prefetcher:
    """Fetch the shards of ``split`` ahead of the loader.

    Args:
        split: a remote split (its shards carry a ``source`` with ``fetch(wait)``).
        ahead: shards fetched beyond the one the loader is in.
        connections: fetches at once.
        lead: batches the loader's workers may have gathered ahead of the batches handed out.
        contiguous: the order reads each shard's samples together (not class-balanced draws), so a
            shard the loader has left is done for the epoch.
    """

    def __init__(self, split: SplitSet, ahead: int = AHEAD, connections: int = CONNECTIONS, lead: int = 0,
                 contiguous: bool = True) -> None:
        self.split, self.ahead, self.lead, self.contiguous = split, max(1, ahead), lead, contiguous
        self.pool = ThreadPoolExecutor(max_workers=max(1, connections), thread_name_prefix="prefetch")
        self.cond = threading.Condition()
        self.seq = np.zeros(0, dtype=np.int64)
        self.first = np.zeros(0, dtype=np.int64)
        self.handed = 0
        self.generation = 0
        self.pending: set[int] = set()
        self.ranked = 0               # shards of the sequence ranked as read
        self.high = time.time_ns() + FUTURE_NS
        self._next_first = self._next_done = 0
        self.done: set[int] = set()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="prefetch-plan", daemon=True)
        self.thread.start()

    def start_epoch(self, indices: np.ndarray, batch_size: int, start_batch: int = 0) -> None:
        """The epoch to read ahead of: this rank's ``indices`` from its batch ``start_batch`` on."""
        seq, first = shard_sequence(np.asarray(indices), self.split.offsets, batch_size)
        with self.cond:
            self.seq, self.first, self.handed = seq, first + start_batch, start_batch
            self.generation += 1
            self.done = set()
            self.ranked = 0
            self.high = time.time_ns() + FUTURE_NS
            self._boundaries()
            for j, s in enumerate(seq):   # every shard still to be read outranks every shard read
                src = self.split.shards[int(s)].source
                if src.cache.path(src.entry["sha256"]).exists():   # here (a reader checks it before use)
                    self._rank(int(s), self.high - j)
                    self.done.add(int(s))
            self.cond.notify_all()

    def _rank(self, s: int, value: int) -> None:
        src = self.split.shards[s].source
        try:
            src.cache.rank(src.entry["sha256"], value)
        except OSError as exc:   # a cache folder gone read-only: eviction falls back to fetch order
            logger.info("cannot rank shard %d in the cache (%s)", s, exc)

    def advance(self, batches: int) -> None:
        """The loader has handed out ``batches`` batches of the epoch (counted from its start).

        The shards read to their end are ranked as read here, at once: left to
        the fetch thread, a reader's own fetch could find them still ranked
        "to be read" and evict a shard the epoch does need.
        """
        # Called once a batch: the fetch thread is woken only when a shard boundary is crossed (by the
        # consumer, or by the workers ahead of it), so at hundreds of batches a second it costs no GIL.
        if self._next_first <= batches + self.lead or (self.contiguous and self._next_done <= batches):
            with self.cond:
                self.handed = batches
                if self.contiguous:   # each shard's samples together: the shards before the current one are done
                    reading = int(np.searchsorted(self.first, batches, side="right"))
                    while self.ranked < reading - 1:   # ranked below the rest, the earliest read lowest
                        self._rank(int(self.seq[self.ranked]), READ_NS + self.generation * 10**7 + self.ranked)
                        self.ranked += 1
                self._boundaries()
                self.cond.notify_all()
        else:
            self.handed = batches

    def _boundaries(self) -> None:
        """The next batch counts at which :meth:`advance` has work: a new shard begun ahead, one left behind."""
        k = int(np.searchsorted(self.first, self.handed + self.lead, side="right"))
        self._next_first = int(self.first[k]) if k < len(self.first) else 1 << 62
        j = self.ranked + 2   # the shard after the current one begins: the current one's predecessor is done
        self._next_done = int(self.first[j - 1]) if j - 1 < len(self.first) else 1 << 62

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self.cond:
                if self.closed:
                    return
                # from the consumer's shard to ``ahead`` past the one the workers may have reached (``lead``
                # batches on), first things first: the pool takes them in this order
                consumer = int(np.searchsorted(self.first, self.handed, side="right"))
                workers = int(np.searchsorted(self.first, self.handed + self.lead, side="right"))
                wanted = [int(s) for s in self.seq[max(0, consumer - 1): workers + self.ahead]]
                todo = [s for s in wanted if s not in self.done and s not in self.pending]
                for s in todo:
                    self.pending.add(s)
                    self.pool.submit(self._fetch, s, self.generation)
                self.cond.wait(timeout=0.5)

    def _fetch(self, s: int, generation: int) -> None:
        got: Optional[object] = None
        try:
            # never evicting a shard this epoch has still to read (ranked at or above high - len(seq))
            hits = np.flatnonzero(self.seq == s)
            rank = self.high - int(hits[0]) if len(hits) else None   # ranked "to be read" as it lands
            got = self.split.shards[s].source.fetch(wait=False, evict_below=self.high - len(self.seq), rank=rank)
        except Exception as exc:   # noqa: BLE001 - the reader that needs the shard raises it where it is seen
            logger.info("prefetch of shard %d failed (%s); its reader fetches it", s, exc)
            got = True   # not tried again by the prefetcher
        finally:
            with self.cond:
                self.pending.discard(s)
                if got is not None and generation == self.generation:
                    self.done.add(s)
                    hits = np.flatnonzero(self.seq == s)
                    if isinstance(got, Path) and len(hits):   # to be read, or read meanwhile (advance ranked it)
                        j = int(hits[0])
                        self._rank(s, self.high - j if j >= self.ranked else READ_NS + self.generation * 10**7 + j)
                self.cond.notify_all()
