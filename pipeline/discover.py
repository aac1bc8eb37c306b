"""Finding the images of a class-folder dataset, and the files to skip.

Rules (the real archive has every one of these):
  * each direct sub-folder holding files is a class; classes sort by name;
  * a sub-folder holding only folders is a nested copy of the archive
    (``simpsons_dataset/simpsons_dataset``) and does not become a class;
  * hidden files (``.DS_Store``, ``._pic.jpg``) and files without an image
    extension are skipped and counted, each with its reason;
  * files in folders below a class folder are skipped (never a silent
    second class).
Whether a file really decodes is found later, by the decoder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Where the two notebooks kept the real set, relative to the working folder.
KNOWN_LOCATIONS = ("characters_train", "data/simpsons/archive/characters_train")
EMBEDDED_DEFAULT = Path("data/lookalike")


class DatasetError(Exception):
    """A dataset that cannot be used at all (missing folder, no images)."""


@dataclass
class Discovery:
    """The files of a dataset, in a deterministic order.

    Attributes:
        root: the dataset folder.
        classes: class names, sorted; a label is an index into this list.
        files: (relative path, label) for every candidate image, sorted.
        skipped: (relative path, reason) for every file or folder passed over.
    """

    root: Path
    classes: list[str]
    files: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 over every candidate's path, size and mtime (cheap: no reads)."""
        h = hashlib.sha256()
        for rel, label in self.files:
            st = os.stat(self.root / rel)
            h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def discover(root: Path) -> Discovery:
    """List the classes and candidate images under ``root``.

    Raises:
        DatasetError: ``root`` is missing or not a folder, or holds no class
            folder with a candidate image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; pass --data-dir with one sub-folder per class")
    classes: list[str] = []
    per_class: list[list[str]] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _hidden(entry.name):
            skipped.append((entry.name, "hidden file"))
            continue
        if not entry.is_dir():
            skipped.append((entry.name, "file outside any class folder"))
            continue
        children = sorted(os.scandir(entry.path), key=lambda e: e.name)
        if children and all(c.is_dir() for c in children):
            skipped.append((entry.name, "nested folder of folders (a copy of the archive?), not a class"))
            continue
        names: list[str] = []
        for c in children:
            rel = f"{entry.name}/{c.name}"
            if _hidden(c.name):
                skipped.append((rel, "hidden file"))
            elif c.is_dir():
                skipped.append((rel, "folder inside a class folder"))
            elif Path(c.name).suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((rel, "not an image (extension)"))
            else:
                names.append(rel)
        classes.append(entry.name)
        per_class.append(names)
    files = [(rel, label) for label, names in enumerate(per_class) for rel in names]
    if not files:
        raise DatasetError(f"{root}: no images found; expected <class>/<image>.jpg sub-folders")
    for name, names in zip(classes, per_class):
        if not names:
            logger.warning("class %s has no candidate images", name)
    return Discovery(root=root, classes=classes, files=files, skipped=skipped)


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
