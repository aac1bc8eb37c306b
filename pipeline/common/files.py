"""The file operations every stage shares: whole-or-nothing writes and one writer a folder.

A file the tool writes appears whole or not at all (:func:`atomic_write`,
:func:`write_text`), and one process at a time writes into a folder
(:class:`FolderLock`), and the OS refusing a write is one line naming
the file, the reason and the fix (:func:`disk_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import BusyError, DiskFullError, UserError, WriteError


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


def temporary(path: Path) -> Path:
    """``path + '.tmp'``, the name a write goes to before its rename, cleared of a symbolic link
    someone placed there: writing through it would overwrite the file it points at."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()   # the link only, never what it points at
    return tmp


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename: whole or not at all.

    The temporary file (``path + '.tmp'``) is removed on any failure,
    Ctrl-C included, so a failed write leaves the previous file untouched
    and nothing else behind.
    """
    path = Path(path)
    tmp = temporary(path)
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
        try:   # O_NOFOLLOW: a link placed at .lock would have its target truncated
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise UserError(f"{self.path}: is a symbolic link, not this tool's lock file; remove the link "
                            f"(nothing it points at is touched)") from None
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
