"""The file operations every stage shares: whole-or-nothing writes and one writer a folder.

A file the tool writes appears whole or not at all (:func:`atomic_write`,
:func:`write_text`), and one process at a time writes into a folder
(:class:`FolderLock`); a refused write is a one-line user error
(:func:`pipeline.common.errors.disk_errors`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

from .errors import BusyError, disk_errors


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
