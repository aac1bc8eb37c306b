"""Files from someone else are data: the checks that run before anything acts on them.

A shard set, a checkpoint or an exported model may come from another
person (shared storage, a download). What they can carry is bounded here,
in one place, and every reader calls it first:

* only regular files are opened: a FIFO, a device (``/dev/zero``) or a
  socket given as an image, checkpoint, model or manifest is refused from
  its ``stat``, never opened (opening a FIFO blocks, reading a device never
  ends) (:func:`regular_file`);
* JSON metadata is read only up to a size and a nesting depth
  (:func:`read_json`), so a manifest of hundreds of MB or ten thousand
  nested lists is one line, not the machine's memory or a RecursionError;
* text taken from such files (class names, paths) is printed with its
  control characters escaped (:func:`printable`), so a class named with
  terminal escape sequences cannot move the cursor, retitle the window or
  hide a line;
* declared sizes are checked against the file's own size
  (:func:`declared_bytes`), so a header claiming a terabyte of pixels in a
  small file is refused before any allocation.

Checkpoints load with ``torch.load(weights_only=True)`` (no code runs) and
shards hold no pickles; those rules live with their readers. What a check
refuses is a :class:`~pipeline.common.errors.UserError` naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable, Optional

from .errors import UserError

MANIFEST_BYTES = 256 << 20   # a manifest of a million images with every path listed stays far below
JSON_DEPTH = 64              # the deepest structure this tool writes is 5 levels
# A compressed shard's pixels against its file: deflate cannot pass 1032:1 (its longest match, 258
# bytes, costs at least two bits), and LZF's limit is lower.
COMPRESSION_RATIO = 1100
MAX_CLASSES = 100_000        # class names a set or model may declare: far above any dataset of this kind


def not_a_file(st: os.stat_result) -> Optional[str]:
    """What a ``stat`` result is when it is not a regular file (``a FIFO``, ``a device`` ...), else None."""
    if stat.S_ISREG(st.st_mode):
        return None
    return ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")


def regular_file(path: Path, what: str, error: Callable[[str], Exception] = UserError) -> os.stat_result:
    """``stat`` of ``path`` when it is a regular file (a symbolic link to one counts), else ``error``.

    Args:
        what: what the file should be, for the message (``a checkpoint``, ``an image``).
        error: the exception class the caller's readers raise (a UserError).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file; pass {what}") from None
    except OSError as exc:
        raise error(f"{path}: unreadable ({exc.strerror}); pass {what}") from None
    kind = not_a_file(st)
    if kind:
        raise error(f"{path}: is {kind}, not a file; pass {what}")
    return st


def _depth(value, limit: int) -> int:
    """Nesting depth of parsed JSON, without recursion (stops counting past ``limit``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def read_json(path: Path, what: str, max_bytes: int = MANIFEST_BYTES, max_depth: int = JSON_DEPTH,
              error: Callable[[str], Exception] = UserError):
    """Parse a JSON file of at most ``max_bytes`` and ``max_depth`` levels, else ``error`` (one line)."""
    st = regular_file(path, what, error)
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} this tool reads as {what}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        noun = what.split(" ", 1)[1] if what.startswith(("a ", "an ")) else what   # "unreadable manifest"
        raise error(f"{path}: unreadable {noun} ({str(exc)[:120]})") from None
    return parse_json(data, str(path), what, max_bytes, max_depth, error)


def parse_json(data: bytes, where: str, what: str, max_bytes: int = MANIFEST_BYTES, max_depth: int = JSON_DEPTH,
               error: Callable[[str], Exception] = UserError):
    """Parse JSON bytes read from ``where`` (a file or a URL) under the bounds of :func:`read_json`."""
    if len(data) > max_bytes:
        raise error(f"{where}: {len(data):,} bytes, more than the {max_bytes:,} this tool reads as {what}")
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(f"{where}: nested deeper than {max_depth} levels; not {what} this tool wrote") from None
    except ValueError as exc:
        noun = what.split(" ", 1)[1] if what.startswith(("a ", "an ")) else what   # "unreadable manifest"
        raise error(f"{where}: unreadable {noun} ({str(exc)[:120]})") from None
    if _depth(value, max_depth) > max_depth:
        raise error(f"{where}: nested deeper than {max_depth} levels; not {what} this tool wrote")
    return value


def printable(text) -> str:
    """``text`` with control characters (C0, DEL, C1: escape sequences among them) written as ``\\xNN``."""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in str(text))


def declared_bytes(path: Path, declared: int, file_bytes: int, ratio: float = 1.0,
                   error: Callable[[str], Exception] = UserError) -> None:
    """``error`` unless ``declared`` bytes of content can come from a file of ``file_bytes`` (up to
    ``ratio`` times, for compressed content)."""
    if declared < 0 or declared > ratio * max(file_bytes, 1):
        raise error(f"{path}: declares {declared:,} bytes of pixels in a file of {file_bytes:,}; "
                    f"not a shard this tool wrote")
