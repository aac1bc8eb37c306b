"""Errors a user can fix, and the file operations every stage shares.

The command line tells two kinds of failure apart:

* :class:`UserError` and its subclasses are something the user can fix (a
  missing folder, a stale shard set, a foreign checkpoint, a full disk):
  ``cli.py`` prints the message as one line, ``error: ...``, and exits 1.
  Every message names the file and the fix.
* anything else is a bug (or CUDA OOM, an NCCL failure) and keeps its
  traceback.

The file helpers give every stage the same guarantees: a file the tool
writes appears whole or not at all (:func:`atomic_write`), a full disk reads
``no space left on device: PATH`` (:func:`disk_errors`), and one process at a
time writes into a folder (:class:`FolderLock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Optional


class UserError(Exception):
    """Something the user can fix; the message is one line naming the file and the fix."""


class ConfigError(UserError, ValueError):
    """An option out of its range (also a ValueError, for callers that expect one)."""


class WriteError(UserError, OSError):
    """A write the operating system refused (quota, file-size limit, I/O error, read-only
    disk, permissions); nothing half-written is left behind, the previous file is kept."""


class DiskFullError(WriteError):
    """A write that ran out of space; nothing half-written is left behind."""


class BusyError(UserError):
    """Another process holds the folder's lock."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
# What to do about each refusal, by errno (the message names the file and the reason first).
_FIX = {
    errno.EFBIG: "the file-size limit of this filesystem or process (`ulimit -f`) is below it; raise it or "
                 "write elsewhere",
    errno.EIO: "the disk reported an I/O error; check it and run again",
    errno.EROFS: "the filesystem is read-only; write to another folder",
    errno.EACCES: "no permission to write there; write to another folder",
    errno.EPERM: "no permission to write there; write to another folder",
}
_H5_ERRNO = re.compile(r"errno = (\d+)")


def _errno(exc: Exception) -> Optional[int]:
    """The errno of an OSError, also where h5py carries it only in its text (``errno = 28``)."""
    if getattr(exc, "errno", None) is not None:
        return exc.errno
    m = _H5_ERRNO.search(str(exc))
    return int(m.group(1)) if m else (errno.ENOSPC if "No space left on device" in str(exc) else None)


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn the OS refusing a write inside into one line naming ``path``, the reason and the fix:
    :class:`DiskFullError` for a full disk or quota, :class:`WriteError` for the rest."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:   # HDF5 reports a refused write on close as a RuntimeError
        if isinstance(exc, RuntimeError) and not _H5_ERRNO.search(str(exc)):
            raise
        code = _errno(exc)
        if code in _FULL:
            raise DiskFullError(f"no space left on device: {path}; free some space and run again") from None
        if code in _FIX:
            raise WriteError(f"cannot write {path}: {os.strerror(code)}; {_FIX[code]}") from None
        raise


def expect_folder(path: Path, what: str, fix: str) -> Path:
    """``path`` unless it exists and is not a folder (a file where a folder belongs).

    Args:
        what: the option or role, for the message (``--out``, ``the shard folder``).
        fix: what to pass instead.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder ({what}); {fix}")
    return path


def expect_file_target(path: Path, what: str) -> Path:
    """``path`` unless it is a folder (a folder where a file to write belongs); its parent is created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder ({what} names a file to write); pass a file name such as "
                        f"{path / 'report.json'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent}: is a file, not a folder; pass {what} inside a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename: whole or not at all.

    The temporary file (``path + '.tmp'``) is removed on any failure,
    Ctrl-C included, so a failed write leaves the previous file untouched
    and nothing else behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with disk_errors(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class FolderLock:
    """An exclusive OS lock (``flock``) on ``folder/.lock``, held while writing there.

    The kernel drops the lock when the process dies (even by ``kill -9``),
    so a crashed run never blocks the next one. The lock file itself stays
    (it is empty and hidden).

    Raises:
        BusyError: another process holds the lock.
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self.fd = -1

    def __enter__(self) -> "FolderLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise BusyError(f"{self.path.parent}: another {self.what} (pid {holder}) is writing here; "
                            f"wait for it to finish or pass another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing releases the flock
