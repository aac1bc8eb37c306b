"""The preprocess stage's worker side: decode tasks, shard-write tasks and their pool.

A decode task (:func:`decode_task`) takes a run of consecutive samples
(:func:`decode_run`): it reads, hashes (SHA-256), scores for the split, decodes (or
reads back a row decoded before, :mod:`pipeline.building.reuse`) and
``pwrite``s the run's pixels into the build's staging file at their rows,
and sends back one small :class:`RunResult`, never pixels. A shard task
(:func:`shard_task`) gathers one shard's rows from the staging file and
writes it. Both run in :class:`TaskPool`'s forked workers, whose state
(config, staging descriptor, reuse index) lives in ``_worker``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

from ..common.config import PreprocessConfig
from ..common.procpool import ForkPool
from ..imaging.decode import DecodeError, decode_bytes, decode_image
from ..imaging.neardup import dhash
from ..shardset import shard_format
from .reuse import ReuseIndex, file_stat, row_crc
from .split import group_score

_worker: dict = {}  # per-process state of the pool: config, staging fd, root


def _init_worker(cfg: PreprocessConfig, staging: str, root: str, reuse: Optional[ReuseIndex] = None) -> None:
    _worker.update(cfg=cfg, fd=os.open(staging, os.O_RDWR), root=root, reuse=reuse)


def _buffer(n: int, size: int) -> np.ndarray:
    """This process's reused (n, size, size, 3) buffer, grown when too small.

    One per process serves both phases (decode runs, shard gathers). Reusing it matters: filling fresh memory costs a page fault
    per 4 KB, which made a shard's gather twenty times slower (benchmarks/history/preprocess.md
    "Preprocess: the figures behind its choices").
    """
    buf = _worker.get("buf")
    if buf is None or buf.shape[0] < n or buf.shape[1] != size:
        buf = _worker["buf"] = np.empty((n, size, size, 3), dtype=np.uint8)
    return buf[:n]


def _gather(fd: int, rows: np.ndarray, size: int) -> np.ndarray:
    """Read staged rows into this process's reused buffer."""
    out = _buffer(len(rows), size)
    nbytes = out[0].nbytes if len(rows) else 0
    for j, r in enumerate(rows):
        if os.preadv(fd, [memoryview(out[j]).cast("B")], int(r) * nbytes) != nbytes:
            raise OSError(f"short read from the staging file at row {r}")
    return out


def _read(source) -> tuple[bytes, Optional[np.ndarray], Optional[list]]:
    """(bytes to hash, pixels already decoded or None, the file's stat record or None) of one sample's source.

    A ``str`` is a file (relative to the pool's root), ``bytes`` an encoded
    image, an array decoded pixels (hashed with their shape).
    """
    if isinstance(source, str):
        with open(os.path.join(_worker["root"], source), "rb") as fh:
            return fh.read(), None, file_stat(os.fstat(fh.fileno()), time.time_ns())
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None, None
    arr = np.asarray(source)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DecodeError(f"not an HxWx3 uint8 array ({arr.dtype} {arr.shape})")
    arr = np.ascontiguousarray(arr)
    return repr(arr.shape).encode() + arr.tobytes(), arr, None


def _unchanged(source, reuse: Optional[ReuseIndex], out: np.ndarray) -> Optional[tuple[str, int, list]]:
    """(SHA-256, perceptual hash, stat record) of a file the committed set holds unchanged (its size,
    mtime and inode as recorded: :meth:`ReuseIndex.known`), its row read into ``out`` without reading
    the file; None when it must be read."""
    if not isinstance(source, str) or reuse is None or not reuse.by_path:
        return None
    try:
        st = os.stat(os.path.join(_worker["root"], source))
    except OSError:
        return None   # reading it says why
    digest = reuse.known(source, st)
    stored = reuse.fetch(digest, out) if digest else None
    return None if stored is None else (digest, stored, [st.st_size, st.st_mtime_ns, st.st_ino])


def decode_run(size: int, images: int = 0, workers: int = 1) -> int:
    """Images per decode task: up to 128 (at most about 8 MB of pixels), at least 32, and small enough
    that each worker gets 8 tasks, so the last task leaves the others idle only briefly.

    A task's hash call has a fixed cost in the workers, a visible part of
    the hash's share of a 64 px build (benchmarks/history/split.md
    "Near-duplicates"), and each task is one message the main process reads and journals: larger
    runs amortise both (benchmarks/history/preprocess.md "The main process off the per-image path").
    """
    most = max(32, min(128, 8_000_000 // (size * size * 3)))
    return max(32, min(most, images // (8 * max(workers, 1)))) if images else most


class RunResult(NamedTuple):
    """One decode task's message back to the main process: a run of consecutive samples, never their pixels."""

    start: int             # the run's first sample
    files: list            # (SHA-256, skip reason or None) per sample
    phashes: np.ndarray    # perceptual hash of each stored row
    phash_s: float         # seconds spent on those hashes
    crcs: list             # CRC-32 of each row, for the journal
    reused: int            # rows read back instead of decoded
    stats: np.ndarray      # (n, 6) pixel sums of each row (:func:`_row_stats`)
    seen: list             # per sample, its file's [size, mtime_ns, inode] (:func:`reuse.file_stat`) or None
    unread: int            # files known unchanged by their stat, never read
    scores: np.ndarray     # per sample, the split's score of its SHA-256 (:func:`split.group_score`)


class ShardTask(NamedTuple):
    """What a worker needs to gather and write one shard."""

    path: Path
    rows: np.ndarray       # staging rows, in the shard's order
    labels: np.ndarray
    paths: list
    hashes: list
    phashes: np.ndarray
    attrs: dict


def decode_task(task: tuple[int, list]) -> RunResult:
    """Read, hash, decode (or find decoded before) and stage a run of consecutive samples.

    The run's pixels go to the staging file in one ``pwrite`` (rows start..
    start+k are adjacent there), and one message per run crosses back to
    the main process, so IPC stays small against the decodes (benchmarks/history/preprocess.md
    "Preprocess"). A failed sample's row is left zero; it is never read.

    A file whose bytes hash to a row decoded before (:mod:`pipeline.building.reuse`:
    the committed set's, or an interrupted build's) is not decoded again:
    its row is read back.

    Returns:
        :class:`RunResult`.
    """
    start, sources = task
    cfg, reuse = _worker["cfg"], _worker.get("reuse")
    buf = _buffer(len(sources), cfg.size)
    out, known, seen, unread = [], {}, [], 0   # known: position in the run -> perceptual hash of a row read back
    for j, source in enumerate(sources):
        digest, reason, st = "", None, None
        try:
            same = _unchanged(source, reuse, buf[j])
            if same is not None:
                digest, known[j], st = same
                unread += 1
                out.append((digest, None))
                seen.append(st)
                continue
            data, pixels, st = _read(source)
            digest = hashlib.sha256(data).hexdigest()
            stored = reuse.fetch(digest, buf[j]) if reuse is not None else None
            if stored is not None:
                known[j] = stored
            else:
                buf[j] = (decode_bytes(data, cfg.size, cfg.fit, cfg.min_side) if pixels is None
                          else decode_image(Image.fromarray(pixels, "RGB"), cfg.size, cfg.fit, cfg.min_side))
        except OSError as exc:
            reason = f"unreadable: {exc.strerror}"
        except DecodeError as exc:  # every decoder failure, bugs on hostile files included
            reason = str(exc)
        except Exception as exc:  # belt and braces: still one bad file, not a failed run
            reason = f"cannot decode: {type(exc).__name__}: {exc}"
        if reason:
            buf[j] = 0
        out.append((digest, reason))
        seen.append(st)
    t = time.perf_counter()
    phash = np.zeros(len(sources), dtype=np.uint64)
    fresh = [j for j in range(len(sources)) if j not in known]
    if fresh:
        phash[fresh] = dhash(buf if len(fresh) == len(sources) else buf[fresh])
    if known:
        phash[list(known)] = list(known.values())
    phash_s = time.perf_counter() - t
    crcs = [row_crc(buf[j]) if not reason else 0 for j, (_, reason) in enumerate(out)]
    stats = _row_stats(buf)
    if os.pwrite(_worker["fd"], buf, start * buf[0].nbytes) != buf.nbytes:  # buffer protocol: no copy
        raise OSError(errno.ENOSPC, "short write to the staging file")  # a regular file: the disk is full
    scores = np.array([group_score(d, cfg.seed) if d and not why else 0.0 for d, why in out])
    return RunResult(start, out, phash, phash_s, crcs, len(known), stats, seen, unread, scores)


# Statistics come from every 4th pixel in each direction (1/16 of them) of
# every training image: exact integer sums, so they do not depend on the
# worker count. They differ from the all-pixel mean/std far less than any
# augmentation shifts them (tests/building/test_preprocess.py holds them within 1%).
# The decode workers sum each run's rows while its pixels are in cache
# (:func:`_row_stats`), so the training split's mean/std is a sum of those
# rows' sums, not a second pass over the staged pixels (benchmarks/history/preprocess.md
# "Preprocess: the figures behind its choices").
STAT_STRIDE = 4


def _row_stats(buf: np.ndarray) -> np.ndarray:
    """(N, 6) uint64: per row, the per-channel sums and sums of squares of every STAT_STRIDE-th pixel."""
    px = buf[:, ::STAT_STRIDE, ::STAT_STRIDE].reshape(len(buf), -1, 3)
    out = np.empty((len(buf), 6), dtype=np.uint64)
    out[:, :3] = px.sum(axis=1, dtype=np.uint64)
    out[:, 3:] = np.square(px, dtype=np.uint16).sum(axis=1, dtype=np.uint64)  # 255**2 fits in 16 bits
    return out


def shard_task(task: ShardTask) -> tuple[str, int]:
    """Gather one shard's rows from the staging file and write it: (sha256, bytes)."""
    cfg = _worker["cfg"]
    digest = shard_format.write_shard(task.path, _gather(_worker["fd"], task.rows, cfg.size), task.labels,
                                      task.paths, task.hashes, task.attrs, cfg.compression, phashes=task.phashes)
    return digest, task.path.stat().st_size


class TaskPool(ForkPool):
    """The decode and write tasks' pool (:mod:`pipeline.common.procpool`: no helper threads in the main
    process), or the same calls in-process for one worker, whose state :meth:`close` releases."""

    def __init__(self, workers: int, init: tuple) -> None:
        super().__init__(workers, _init_worker, init)

    def close(self) -> None:
        in_process = not self.procs
        super().close()
        if in_process and "fd" in _worker:
            _worker.pop("buf", None)
            os.close(_worker.pop("fd"))
            reuse = _worker.pop("reuse", None)
            if reuse is not None:
                reuse.close()
