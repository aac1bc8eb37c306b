"""Errors a user can fix, and what turns an OS failure into one.

The command line tells two kinds of failure apart:

* :class:`UserError` and its subclasses are something the user can fix (a
  missing folder, a stale shard set, a foreign checkpoint, a full disk):
  ``cli.py`` prints the message as one line, ``error: ...``, and exits 1.
  Every message names the file and the fix.
* anything else is a bug (or CUDA OOM, an NCCL failure) and keeps its
  traceback.

A full disk reads ``no space left on device: PATH`` (:func:`disk_errors`);
the file operations built on it live in :mod:`pipeline.common.files`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Iterator, Optional


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
