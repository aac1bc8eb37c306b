"""A node's local cache of shards fetched from object storage.

Layout of a cache folder (``--cache-dir``; default ``$XDG_CACHE_HOME/simpsons-shards``,
else ``~/.cache/simpsons-shards``)::

    objects/<sha256>.h5     a fetched shard, named by its content: two sets (or two
                            versions of one) holding the same shard share it
    objects/<sha256>.ok     written after the fetched bytes matched the manifest's SHA-256;
                            holds the file's size, inode and mtime, so a later open trusts
                            it without hashing 64 MB again (as git's index trusts a stat)
    objects/<sha256>.fetch  lock held by the one process fetching that shard
    objects/<sha256>.reserve  the room a fetch in progress holds under the limit (sparse)
    objects/<sha256>.use    lock held (shared) by every process that has the shard open;
                            its mtime is the shard's place in the eviction order
    fetches.log             one line per fetch (what a benchmark counts as refetched)

Each shard is fetched once per node, by one process: the ranks and loader
workers of a node share the folder, and whoever comes second waits on the
``.fetch`` lock and then finds the shard there. Nothing is used before its
SHA-256 matches: a mismatch is fetched again once, then refused.

Under ``limit`` bytes, shards are evicted in the order :meth:`ShardCache.rank`
keeps (least recently fetched first, or, under a loader, those its epoch has
read before those it has still to read), never one that a process holds open, and only files this cache fetched (those
with an ``.ok`` marker): a file a user put in the folder is never deleted.
When everything left is open, the cache is full: one line naming the
limit and the set's size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from ..common.errors import DiskFullError, UserError
from .store import Store, StoreError

logger = logging.getLogger(__name__)

# How long a reader that needs a shard waits for room while the cache is full of shards other processes
# hold open (they close theirs as they move on to the next shard).
FULL_WAIT_S = 30.0


class CacheFullError(UserError):
    """The cache limit leaves no room for the next shard."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "simpsons-shards"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n:,} bytes"


# The lock files this process has open. A flock belongs to the open file, which a fork shares: a
# DataLoader worker forked while the main process fetched would hold that fetch's lock for its whole life
# and wait on it forever. So a child closes its copies at once (the parent's lock is untouched).
# A fork waits for _FORKING, which an open or a close of a lock file holds, so no fork falls between
# the open and its entry in _HELD (a child would keep such a lock for life: seen as a hang).
_HELD: set[int] = set()
_FORKING = threading.Lock()


def _drop_inherited() -> None:
    _FORKING.release()
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(before=_FORKING.acquire, after_in_parent=_FORKING.release, after_in_child=_drop_inherited)


def _open_lock(path: Path) -> int:
    with _FORKING:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left on device: {path.parent} (the shard cache); free some space "
                                    f"or pass another --cache-dir") from None
            raise
        _HELD.add(fd)
    return fd


def _close_lock(fd: int) -> None:
    with _FORKING:
        if fd in _HELD:   # not one a fork already closed
            _HELD.discard(fd)
            os.close(fd)


def _reserve(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)
    return path


class Lease:
    """A shared lock on one cached shard, held while a process has it open: eviction passes it by."""

    def __init__(self, path: Path) -> None:
        self.pid = os.getpid()
        self.fd = _open_lock(path)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self.fd >= 0 and self.pid == os.getpid():
            _close_lock(self.fd)   # releases the lock
        self.fd = -1

    def __del__(self) -> None:
        self.close()


class ShardCache:
    """The shards of one cache folder.

    Args:
        folder: the cache folder (created).
        limit: bytes the fetched shards may take (None: as much as the disk holds).
        set_bytes: the size of the set being read, for the message of a full cache.

    Picklable (a path and numbers): DataLoader workers and ranks open the same folder.
    """

    def __init__(self, folder: Path, limit: Optional[int] = None, set_bytes: int = 0) -> None:
        self.folder = Path(folder)
        self.objects = self.folder / "objects"
        self.limit, self.set_bytes = limit, set_bytes
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.folder}: cannot make the shard cache there ({exc.strerror}); pass "
                            f"--cache-dir with a writable folder") from None

    def path(self, sha: str) -> Path:
        return self.objects / f"{sha}.h5"

    def use(self, sha: str) -> Lease:
        """Hold ``sha`` open (no eviction) until the lease is closed; take it before :meth:`ensure`."""
        return Lease(self.objects / f"{sha}.use")

    def cached(self, sha: str, size: int) -> bool:
        """Whether ``sha`` is here, fetched and checked by this cache, and unchanged since."""
        return self.marker(sha, size) is not None

    def marker(self, sha: str, size: int) -> Optional[dict]:
        """The ``.ok`` record of ``sha`` when it is here, fetched and checked, and unchanged since; else None."""
        try:
            mark = json.loads((self.objects / f"{sha}.ok").read_text())
            st = os.stat(self.path(sha))
            same = [st.st_size, st.st_ino, st.st_mtime_ns] == [size, mark["ino"], mark["mtime_ns"]]
            return mark if same and mark["bytes"] == size else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def note(self, sha: str, size: int, **facts) -> None:
        """Add ``facts`` about the bytes of ``sha`` to its ``.ok`` record (e.g. what a reader checked of them,
        so that other processes need not open the file to check it again)."""
        mark = self.marker(sha, size)
        if mark is not None:
            tmp = self.objects / f"{sha}.ok.{os.getpid()}"
            tmp.write_text(json.dumps({**mark, **facts}))
            os.replace(tmp, self.objects / f"{sha}.ok")

    def ensure(self, store: Store, name: str, sha: str, size: int, wait: bool = True,
               evict_below: Optional[int] = None, rank: Optional[int] = None) -> Optional[Path]:
        """The local path of the set's object ``name`` (SHA-256 ``sha``, ``size`` bytes), fetched if need be.

        Args:
            wait: a reader that needs the shard now waits for room (up to
                :data:`FULL_WAIT_S`) and else raises; False (prefetching)
                returns None at once when there is no room.
            evict_below: evict only shards ranked below this (:meth:`rank`):
                a prefetch never pushes out a shard its epoch has still to read.
            rank: the fetched shard's place in the eviction order, set as it
                lands (default: the time of the fetch).

        Raises:
            StoreError: the store failed, or the object's bytes differ from the manifest twice.
            CacheFullError, DiskFullError: no room for it.
        """
        path = self.path(sha)
        if self.cached(sha, size):
            return path
        with self._locked(self.objects / f"{sha}.fetch", fcntl.LOCK_EX):
            if self.cached(sha, size):   # another process of this node fetched it meanwhile
                return path
            if not self._make_room(size, sha, wait, evict_below):
                return None
            try:
                return self._fetch(store, name, sha, size, rank)
            finally:
                (self.objects / f"{sha}.reserve").unlink(missing_ok=True)

    def _fetch(self, store: Store, name: str, sha: str, size: int, rank: Optional[int]) -> Path:
        """Download, check, then put in place (the caller holds the shard's fetch lock and its reservation)."""
        path = self.path(sha)
        part = self.objects / f"{sha}.h5.part"
        for attempt in range(2):
            try:
                got, digest = store.download(name, part)
            except DiskFullError:
                part.unlink(missing_ok=True)
                raise DiskFullError(f"no space left on device: {self.folder} (the shard cache); free some "
                                    f"space, or pass a smaller --cache-limit or another --cache-dir") from None
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            if got == size and digest == sha:
                break
            part.unlink(missing_ok=True)
            logger.warning("%s: %d bytes with another SHA-256 than the manifest's (%d bytes); fetching again",
                           store.where(name), got, size)
        else:
            raise StoreError(f"{store.where(name)}: its bytes differ from the manifest's SHA-256 on two "
                             f"fetches (truncated or altered in the store); nothing was cached; republish "
                             f"the set with `python cli.py preprocess --out {store.url}`")
        os.replace(part, path)
        st = os.stat(path)
        mark = json.dumps({"bytes": size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "url": store.where(name)})
        self.rank(sha, time.time_ns() if rank is None else rank)   # ranked before it can be chosen for eviction
        with self._locked(self.folder / ".evict", fcntl.LOCK_EX):   # counted once: as a shard, not a reservation
            (self.objects / f"{sha}.ok").write_text(mark)
            (self.objects / f"{sha}.reserve").unlink(missing_ok=True)
        with open(self.folder / "fetches.log", "a") as log:
            log.write(f"{sha} {size} {store.where(name)}\n")
        return path

    # -- eviction ------------------------------------------------------------------------------------------

    def rank(self, sha: str, value_ns: int) -> None:
        """Set ``sha``'s place in the eviction order (the mtime of its ``.use`` file): lowest goes first.

        Without a plan a shard ranks by the time it was fetched (least
        recently fetched goes first); a loader that knows its epoch's order
        (:class:`pipeline.reading.prefetch.Prefetcher`) ranks the shards still
        to be read above those it has read, and these by when it read them.
        """
        fd = _open_lock(self.objects / f"{sha}.use")
        try:
            os.utime(fd, ns=(value_ns, value_ns))
        finally:
            _close_lock(fd)

    def usage(self) -> int:
        """Bytes the shards this cache fetched take, and those its fetches in progress have reserved; a
        file it did not fetch is neither counted nor ever deleted.

        A fetch reserves its whole size before it starts (``<sha>.reserve``, a
        sparse file of that size): counting the partial download instead
        let concurrent fetches each see room that only one of them had.
        """
        total = 0
        for p in self.objects.iterdir():
            if p.name.endswith(".reserve"):
                if self._free(p.with_suffix(".fetch")):   # its fetch died: a stale reservation
                    p.unlink(missing_ok=True)
                    continue
            elif not (p.name.endswith(".h5") and p.with_suffix(".ok").exists()):
                continue
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def _make_room(self, size: int, sha: str, wait: bool, evict_below: Optional[int] = None) -> bool:
        """Evict until ``size`` more bytes fit under the limit; False (``wait`` False) when they cannot yet."""
        if self.limit is None:
            return True
        deadline = time.monotonic() + FULL_WAIT_S
        while True:
            with self._locked(self.folder / ".evict", fcntl.LOCK_EX):
                used = self.usage()
                fits = used + size <= self.limit
                for rank, victim in ([] if fits else self._by_rank()):
                    if victim == sha:
                        continue
                    if evict_below is not None and rank >= evict_below:
                        break
                    used -= self._evict(victim)
                    if used + size <= self.limit:
                        fits = True
                        break
                if fits:   # reserved under the same lock as the decision
                    os.truncate(_reserve(self.objects / f"{sha}.reserve"), size)
                    return True
            if size > self.limit:
                wait = False
            if not wait:
                if size > self.limit or not self._open_any():
                    raise self._full(used, size)
                return False
            if time.monotonic() > deadline:
                raise self._full(used, size)
            time.sleep(0.2)

    def _open_any(self) -> bool:
        return any(not self._free(p) for p in self.objects.glob("*.use"))

    def _full(self, used: int, size: int) -> CacheFullError:
        held = sum(1 for p in self.objects.glob("*.use") if not self._free(p))
        need = f"; the set is {_mb(self.set_bytes)}" if self.set_bytes else ""
        return CacheFullError(f"{self.folder}: the shard cache is full (--cache-limit {_mb(self.limit)}, "
                              f"{_mb(used)} held, {held} shard(s) open, the next one {_mb(size)}{need}); raise "
                              f"--cache-limit (at least a few shards a loader worker) or use fewer --workers")

    @staticmethod
    def _free(lock: Path) -> bool:
        try:
            fd = _open_lock(lock)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            _close_lock(fd)

    def _by_rank(self) -> list[tuple[int, str]]:
        """(rank, SHA-256) of the shards this cache fetched, lowest rank (first to go) first."""
        found = []
        for mark in self.objects.glob("*.ok"):
            sha = mark.name[:-3]
            use = self.objects / f"{sha}.use"
            try:
                found.append((os.stat(use).st_mtime_ns if use.exists() else os.stat(mark).st_mtime_ns, sha))
            except OSError:
                continue
        return sorted(found)

    def _evict(self, sha: str) -> int:
        """Delete one fetched shard unless a process holds it open; the bytes freed."""
        use = self.objects / f"{sha}.use"
        try:
            fd = _open_lock(use)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0   # open somewhere: never evicted under a reader
            path = self.path(sha)
            try:
                size = path.stat().st_size
            except OSError:
                size = 0
            (self.objects / f"{sha}.ok").unlink(missing_ok=True)   # the marker first: never trusted half-deleted
            path.unlink(missing_ok=True)
            logger.info("cache: evicted %s (%d bytes)", sha[:12], size)
            return size
        finally:
            _close_lock(fd)

    @contextlib.contextmanager
    def _locked(self, path: Path, how: int) -> Iterator[None]:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            _close_lock(fd)


def fetch_log(folder: Path) -> list[tuple[str, int]]:
    """(SHA-256, bytes) of every fetch the cache in ``folder`` made, in order (for tests and benchmarks)."""
    try:
        lines = (Path(folder) / "fetches.log").read_text().splitlines()
    except OSError:
        return []
    return [(ln.split()[0], int(ln.split()[1])) for ln in lines if ln.strip()]
