"""Errors a user can fix, and what turns an OS failure into one.

The command line tells two kinds of failure apart:

* :class:`UserError` and its subclasses are something the user can fix (a
  missing folder, a stale shard set, a foreign checkpoint, a full disk):
  ``cli.py`` prints the message as one line, ``error: ...``, and exits 1.
  Every message names the file and the fix.
* anything else is a bug (or CUDA OOM, an NCCL failure) and keeps its
  traceback.

The file operations, and the one line an OS refusal of a write becomes
(``no space left on device: PATH``), live in :mod:`pipeline.common.files`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")   # s3://, gs://, https://, file:// (Path makes :// into :/)


def local_path(path, what: str) -> Path:
    """``path`` as a local path, unless it is a URL: sets, runs and images live in local folders here,
    and a URL taken as a path would make a folder named ``s3:`` and write the set into it.

    Raises:
        UserError: one line naming the URL and the fix.
    """
    text = os.fspath(path)
    if _URL.match(text):
        url = re.sub(r"^([^:]+):/(?!/)", r"\1://", text)
        raise UserError(f"{url}: a URL where {what} needs a local folder (shard sets may live in object "
                        f"storage, images and runs may not); copy it to a local folder and pass that")
    return Path(text)


def expect_folder(path: Path, what: str, fix: str) -> Path:
    """``path`` unless it is a URL, or exists and is not a folder (a file where a folder belongs).

    Args:
        what: the option or role, for the message (``--out``, ``the shard folder``).
        fix: what to pass instead.
    """
    path = local_path(path, what)
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
