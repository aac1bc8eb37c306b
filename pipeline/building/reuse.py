"""Rows decoded before, found again by the SHA-256 of the file's bytes: incremental and resumed builds.

A build decodes each file once, ever. Before it decodes a file, a worker
reads its bytes (the bytes decide: a path, size or date says nothing of
content) and looks their SHA-256 up in a :class:`ReuseIndex` of rows
already decoded with the same pixel options (:data:`PIXEL_OPTIONS`):

* the committed set's shards (contiguous ones: a row is a fixed byte range
  of the file), after the set passed its SHA-256 check, so growing,
  shrinking or editing a folder decodes only what is new or changed;
* the rows an interrupted build had finished: the build's staging file and
  its :class:`RowJournal`, one line per finished row with the CRC-32 of its
  pixels, checked again when the row is read back, so a build killed at
  any point (``kill -9``, a lost node, a full disk) continues from there.

A file the committed set holds is not even read when its size, modification
time (ns) and inode are those the set recorded for its path (as git's index
does; ``preprocess --rehash`` reads everything): the manifest's
``sources`` keep, per shard file, one ``(size, mtime_ns, inode)`` per row
(:func:`encode_sources`), or -1s where the file was modified within
:data:`RACY_NS` of being read (a later write in the same clock tick would
look unchanged), so growing a large folder reads only the new files.

A reused row's pixels are the bytes the decode would produce (the decode
is deterministic for the same options), and everything after the decode
(dedup, groups, split, statistics, shards) runs as in a build from
scratch, so an incremental or resumed build writes the same shards, byte
for byte.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from ..shardset import shard_format

logger = logging.getLogger(__name__)

PIXEL_OPTIONS = ("size", "fit", "min_side")   # the options that decide a stored row (min_side: kept at all)
ROW_JOURNAL = "rows.journal"
STAGING = "staging.u8"                        # a build's staged rows, in its build folder
RESUME_PREFIX = ".simpsons-shards-resume-"    # an interrupted build's staging file and journal, kept for the next
NO_CRC = -1
RACY_NS = 2_000_000_000   # a file modified this close to its reading is not trusted by its stat later


def encode_sources(stats: list) -> str:
    """Rows' stat records (``[size, mtime_ns, inode]`` or None) as the manifest keeps them: base64 of
    little-endian int64 triples, -1s for None. 32 bytes a row in the manifest, where JSON lists would
    take 76 (a million rows: 32 MB, against the 256 MB bound on metadata a reader accepts)."""
    arr = np.array([st if st is not None else (-1, -1, -1) for st in stats], dtype="<i8").reshape(-1, 3)
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_sources(text, rows: int) -> Optional[np.ndarray]:
    """(rows, 3) int64 of :func:`encode_sources`'s text, or None when it is not that (a reader
    then reads every file, which is always correct)."""
    try:
        arr = np.frombuffer(base64.b64decode(text, validate=True), dtype="<i8")
    except (TypeError, ValueError):
        return None
    return arr.reshape(-1, 3) if arr.size == 3 * rows else None


def file_stat(st: os.stat_result, now_ns: int) -> Optional[list[int]]:
    """What the manifest records of a file read at ``now_ns``: ``[size, mtime_ns, inode]``, or None
    when it was modified too recently for a later equal stat to prove it unchanged."""
    if now_ns - st.st_mtime_ns < RACY_NS:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def pixel_options(options: dict) -> dict:
    return {k: options.get(k) for k in PIXEL_OPTIONS}


def row_crc(row: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(row)).cast("B"))


class RowJournal:
    """The rows a build has finished, appended as their runs come back from the workers.

    The first line is a JSON header (the pixel options and the row size);
    then ``row sha256 crc32 dhash`` per staged row. A line is written only after
    the worker's ``pwrite`` of its run returned, so a journaled row is in the
    staging file; a torn last line (a kill mid-write) is ignored when read.
    """

    def __init__(self, path: Path, options: dict, row_bytes: int) -> None:
        self.fh = open(path, "w", encoding="ascii")
        self.fh.write(json.dumps({"journal": 2, **pixel_options(options), "row_bytes": row_bytes}) + "\n")
        self.fh.flush()

    def record(self, start: int, digests: list[str], reasons: list[Optional[str]], crcs: list[int],
               phashes: np.ndarray) -> None:
        self.fh.write("".join(f"{start + j} {d} {c} {int(p)}\n"
                              for j, (d, r, c, p) in enumerate(zip(digests, reasons, crcs, phashes)) if not r and d))
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    @staticmethod
    def read(path: Path, options: dict, row_bytes: int) -> list[tuple[int, str, int, int]]:
        """(row, sha256, crc32, dhash) of every well-formed line, or [] when the header is another build's kind."""
        try:
            lines = Path(path).read_text(encoding="ascii", errors="replace").split("\n")
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return []
        if not isinstance(header, dict) or header.get("journal") != 2 or header.get("row_bytes") != row_bytes \
                or {k: header.get(k) for k in PIXEL_OPTIONS} != pixel_options(options):
            return []
        rows = []
        for line in lines[1:]:
            parts = line.split(" ")
            if len(parts) == 4 and parts[0].isdigit() and len(parts[1]) == 64 and parts[2].isdigit() \
                    and parts[3].isdigit() and int(parts[3]) < 2 ** 64:
                rows.append((int(parts[0]), parts[1], int(parts[2]), int(parts[3])))
        return rows


class ReuseIndex:
    """Where a file's decoded row already lies: SHA-256 -> (file, byte offset, CRC-32 or NO_CRC).

    Built in the main process; the decode workers inherit it (fork) and
    call :meth:`fetch`, which opens the files lazily in each process.
    """

    def __init__(self, row_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.files: list[str] = []
        self.rows: dict[str, tuple[int, int, int, int]] = {}   # sha -> (file, offset, crc, dhash)
        self.set_digests: set[str] = set()   # the committed set's files (what a build may have removed)
        self.by_path: dict[str, tuple[list[int], str]] = {}   # path -> ([size, mtime_ns, inode], sha256)
        self._fds: dict[int, int] = {}
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.rows)

    def add_set(self, root: Path, manifest: dict, options: dict, by_stat: bool = True) -> int:
        """The committed set's rows, when its pixel options are these and its shards contiguous.

        Call only after the set passed :func:`shard_format.check_set` (its SHA-256s).

        Args:
            by_stat: also index each row's path and recorded stat (:meth:`known`).
        """
        if pixel_options(manifest.get("options", {})) != pixel_options(options):
            return 0
        added, sources = 0, manifest.get("sources")
        for e in manifest["shards"]:
            path = Path(root) / e["file"]
            shard, _, _ = shard_format.open_shard(path)
            if shard.offset is None:   # compressed: no fixed byte range per row
                continue
            with h5py.File(path, "r") as f:
                digests = [h.decode() for h in f["hashes"][...]]
                phashes = f["dhash"][...].astype(np.uint64).tolist()
                stats = decode_sources(sources.get(e["file"]), len(digests)) \
                    if by_stat and isinstance(sources, dict) else None
                paths = f["paths"][...] if stats is not None else []   # read only where stats were recorded
            fid = self._file(path)
            self.set_digests.update(digests)
            for r, (d, ph) in enumerate(zip(digests, phashes)):
                if d not in self.rows:
                    self.rows[d] = (fid, shard.offset + r * self.row_bytes, NO_CRC, ph)
                    added += 1
            if stats is not None:
                for rel, st, d in zip(paths, stats.tolist(), digests):
                    if st[0] >= 0:
                        self.by_path[rel.decode("utf-8", "replace")] = (st, d)
        return added

    def known(self, source: str, st: os.stat_result) -> Optional[str]:
        """The SHA-256 the committed set recorded for the file at ``source`` when its size, mtime and
        inode are unchanged (so it need not be read), else None."""
        rec = self.by_path.get(source)
        if rec is None or rec[0] != [st.st_size, st.st_mtime_ns, st.st_ino] or rec[1] not in self.rows:
            return None
        return rec[1]

    def add_resume(self, staging: Path, journal: Path, options: dict) -> int:
        """The rows an interrupted build journaled (each checked by its CRC-32 when read back)."""
        try:
            size = staging.stat().st_size
        except OSError:
            return 0
        fid, added = None, 0
        for row, digest, crc, ph in RowJournal.read(journal, options, self.row_bytes):
            if (row + 1) * self.row_bytes <= size and digest not in self.rows:
                fid = self._file(staging) if fid is None else fid
                self.rows[digest] = (fid, row * self.row_bytes, crc, ph)
                added += 1
        return added

    def close(self) -> None:
        """Close the files this process opened (the pool's workers close theirs by exiting)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def _file(self, path: Path) -> int:
        self.files.append(str(path))
        return len(self.files) - 1

    def fetch(self, digest: str, out: np.ndarray) -> Optional[int]:
        """Read the row of the file whose bytes hash to ``digest`` into ``out`` and return its
        perceptual hash; None when there is no such row, or it cannot be read whole, or its CRC-32
        does not match (then the file is decoded)."""
        where = self.rows.get(digest)
        if where is None:
            return None
        if self._pid != os.getpid():   # descriptors do not cross a fork
            self._fds, self._pid = {}, os.getpid()
        fid, offset, crc, phash = where
        try:
            fd = self._fds.get(fid)
            if fd is None:
                fd = self._fds[fid] = os.open(self.files[fid], os.O_RDONLY)
            if os.preadv(fd, [memoryview(out).cast("B")], offset) != self.row_bytes:
                return None
        except OSError:
            return None
        return phash if crc == NO_CRC or row_crc(out) == crc else None


def committed_sides(root: Path, manifest: dict) -> dict[str, bool]:
    """SHA-256 -> whether it is val, for every row of the committed set: the split's ``prior``
    (:func:`pipeline.building.split.content_split`, rule 3). A shard that cannot be read is left out, with
    a warning: its images are then placed as new ones."""
    sides: dict[str, bool] = {}
    for e in manifest.get("shards", []):
        name = str(e.get("file", ""))
        if not shard_format.SHARD_NAME.match(name) or e.get("split") not in shard_format.SPLITS:
            continue
        try:
            with h5py.File(Path(root) / name, "r") as f:
                digests = f["hashes"][...]
        except (OSError, KeyError) as exc:
            logger.warning("%s: cannot read its images' sides (%s); they are placed as new images", Path(root) / name,
                           exc)
            continue
        is_val = e["split"] == "val"
        sides.update((d.decode("ascii", "replace"), is_val) for d in digests)
    return sides


def journaled(journal: Path) -> bool:
    """Whether a build's row journal names at least one row (its header and one line; read no further)."""
    try:
        with open(journal, "rb") as fh:
            return fh.read(1 << 16).count(b"\n") >= 2
    except OSError:
        return False


def resume_pairs(out: Path) -> list[tuple[Path, Path]]:
    """The (staging, journal) pairs interrupted builds left in ``out``, oldest first."""
    pairs = []
    for journal in sorted(Path(out).glob(RESUME_PREFIX + "*.journal")):
        staging = journal.with_suffix(".u8")
        if staging.is_file():
            pairs.append((staging, journal))
    return pairs


def keep_for_resume(build: Path, out: Path) -> Optional[Path]:
    """Move an interrupted build's staging file and journal out of its build folder, for the next run.

    Returns the kept staging file, or None when the build had journaled nothing.
    """
    staging, journal = build / STAGING, build / ROW_JOURNAL
    try:
        if not staging.is_file() or not journaled(journal):
            return None
        k = len(list(Path(out).glob(RESUME_PREFIX + "*.journal")))
        while (Path(out) / f"{RESUME_PREFIX}{k}.journal").exists():
            k += 1
        kept = Path(out) / f"{RESUME_PREFIX}{k}.u8"
        os.replace(staging, kept)
        os.replace(journal, kept.with_suffix(".journal"))
        return kept
    except OSError:
        return None


def drop_resume(out: Path) -> None:
    """Remove every kept staging file and journal (after a commit, or when the options changed)."""
    for p in Path(out).glob(RESUME_PREFIX + "*"):
        p.unlink(missing_ok=True)
