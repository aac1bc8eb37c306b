"""Finding the images of a class-folder dataset, and the files to skip.

Rules (the real archive has every one of these):
  * each direct sub-folder holding files is a class; classes sort by name;
  * a sub-folder holding only folders is a nested copy of the archive
    (``simpsons_dataset/simpsons_dataset``) and does not become a class;
  * hidden files (``.DS_Store``, ``._pic.jpg``) and files without an image
    extension are skipped and counted, each with its reason;
  * files in folders below a class folder are skipped (never a silent
    second class);
  * a broken symbolic link, a link loop and a name that is not valid UTF-8
    are skipped with their reason (the skip list shows such a name with
    backslash escapes); a class folder with no candidate image is not a class.
Whether a file really decodes is found later, by the decoder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..common.errors import UserError, local_path
from ..common.procpool import ForkPool
from ..common.untrusted import not_a_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Where the two notebooks kept the real set, relative to the working folder.
KNOWN_LOCATIONS = ("characters_train", "data/simpsons/archive/characters_train")
EMBEDDED_DEFAULT = Path("data/lookalike")


class DatasetError(UserError):
    """A dataset that cannot be used at all (missing folder, no images)."""


@dataclass
class Discovery:
    """The files of a dataset, in a deterministic order.

    Attributes:
        root: the dataset folder.
        classes: class names, sorted; a label is an index into this list.
        files: (relative path, label) for every candidate image, sorted.
        skipped: (relative path, reason) for every file or folder passed over.
        stats: (size, mtime_ns) of each file in ``files``, read once.
    """

    root: Path
    classes: list[str]
    files: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stats: list[tuple[int, int]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 over every candidate's path, size and mtime (cheap: no reads)."""
        h = hashlib.sha256()
        stats = self.stats or [_stat(self.root / rel) for rel, _ in self.files]
        for (rel, label), (size, mtime) in zip(self.files, stats):
            h.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()


def _stat(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _hidden(name: str) -> bool:
    return name.startswith(".")


def printable(name: str) -> str:
    """A file name as text that prints anywhere: undecodable bytes as ``\\xff``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _kind(entry: os.DirEntry) -> tuple[str, Optional[tuple[int, int]]]:
    """("dir" | "file" | a skip reason, (size, mtime) for files), without raising."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename it)", None
    try:
        st = os.stat(entry.path)   # one stat, following links: what a reader of the path would get
    except OSError as exc:
        if entry.is_symlink():
            return ("symbolic link loop" if exc.errno == 40 else "broken symbolic link"), None
        return f"unreadable: {exc.strerror}", None
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    kind = not_a_file(st)   # a FIFO would block its reader, a device never end
    if kind:
        return f"{kind}, not an image file", None
    return "file", (st.st_size, st.st_mtime_ns)


def _scan_class(task: tuple[str, str]) -> tuple[list, list]:
    """One class folder's candidates ``(rel, (size, mtime))`` and skips ``(rel, reason)``, sorted by name;
    ``None`` candidates for a folder holding only folders (a nested copy of the archive)."""
    root, name = task
    children = [(c, *_kind(c)) for c in sorted(os.scandir(os.path.join(root, name)), key=lambda e: e.name)]
    if children and all(k == "dir" for _, k, _ in children):
        return None, [(name, "nested folder of folders (a copy of the archive?), not a class")]
    names, skipped = [], []
    for c, k, st in children:
        rel = f"{name}/{printable(c.name)}"
        if _hidden(c.name):
            skipped.append((rel, "hidden file"))
        elif k == "dir":
            skipped.append((rel, "folder inside a class folder"))
        elif k != "file":
            skipped.append((rel, k))
        elif os.path.splitext(c.name)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append((rel, "not an image (extension)"))
        else:
            names.append((rel, st))
    return names, skipped


def data_folder(root) -> Path:
    """``root`` as the local folder of a dataset, before any work is done on it.

    Raises:
        UserError: a URL; DatasetError: missing or not a folder.
    """
    root = local_path(root, "--data-dir")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; pass --data-dir with one sub-folder per class")
    return root


def discover(root: Path, workers: int = 1) -> Discovery:
    """List the classes and candidate images under ``root``.

    Args:
        root: the dataset folder.
        workers: processes that list and ``stat`` the class folders (the
            main process lists only ``root``): on a large set the per-file
            work would otherwise be most of a build's main-process CPU
            (benchmarks/history/preprocess.md "The main process off the per-image path").

    Raises:
        DatasetError: ``root`` is missing or not a folder, or holds no class
            folder with a candidate image.
    """
    root = data_folder(root)
    entries = []   # in name order: a class folder's name, or the skip of anything else
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        kind, _ = _kind(entry)
        if _hidden(entry.name):
            entries.append((printable(entry.name), "hidden file"))
        elif kind != "dir":
            entries.append((printable(entry.name), "file outside any class folder" if kind == "file" else kind))
        else:
            entries.append(entry.name)
    folders = [e for e in entries if isinstance(e, str)]
    with ForkPool(min(workers, len(folders))) as pool:
        scanned = dict(zip(folders, pool.imap(_scan_class, [(str(root), name) for name in folders])))
    classes: list[str] = []
    per_class: list[list[tuple[str, tuple[int, int]]]] = []
    skipped: list[tuple[str, str]] = []
    for name in entries:
        if not isinstance(name, str):
            skipped.append(name)
            continue
        names, skips = scanned[name]
        skipped += skips
        if names is None:
            continue
        if not names:
            skipped.append((name, "class folder with no candidate image, not a class"))
            logger.warning("%s: no candidate images, so not a class", root / name)
            continue
        classes.append(name)
        per_class.append(names)
    files = [(rel, label) for label, names in enumerate(per_class) for rel, _ in names]
    stats = [st for names in per_class for _, st in names]
    if not files:
        raise DatasetError(f"{root}: no images found; expected <class>/<image>.jpg sub-folders")
    return Discovery(root=root, classes=classes, files=files, skipped=skipped, stats=stats)


def class_folders(root: Path) -> list[str]:
    """The sub-folders of ``root`` that :func:`discover` would take as classes (no raise)."""
    try:
        return discover(root).classes
    except DatasetError:
        return []


def default_data_dir(cwd: Optional[Path] = None) -> tuple[Path, str]:
    """The dataset to use when none is given, and why it was chosen.

    Returns:
        (folder, how): a notebook location of the real set when it exists,
        else the embedded look-alike folder (``how`` says which).
    """
    cwd = Path(cwd or Path.cwd())
    for rel in KNOWN_LOCATIONS:
        if (cwd / rel).is_dir():
            return cwd / rel, f"the real set found at {rel}"
    return cwd / EMBEDDED_DEFAULT, f"the embedded look-alike set ({EMBEDDED_DEFAULT})"
