"""A shard set folder's ownership and commit protocol: which files a build may replace, and how.

Ownership: a build deletes or replaces only files this tool wrote, those
the folder's manifest (or, after a crash inside a commit, its journal)
lists or that carry the shard format's stamp (a set whose manifest was
damaged); a folder holding other files named like shards, or a
``manifest.json`` of someone else's, is refused. One
build at a time writes into a folder (an OS lock, :class:`FolderLock`).

Commit: a build writes its shards into ``out/.simpsons-shards-build/``;
only when all are written does :meth:`SetUpdate.commit` move them into
``out``, drop the old ones and write ``manifest.json`` last. Until then the
previous set is untouched, manifest included, so a crash, Ctrl-C or a full
disk never costs it; what a killed build left (its build folder, temporary
files) is removed by the next one.

The format itself (what a shard and the manifest hold) is
:mod:`pipeline.shardset.shard_format`'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import h5py

from ..shardset import shard_format
from ..common.errors import UserError
from ..common.files import FolderLock, disk_errors

logger = logging.getLogger(__name__)

BUILD = ".simpsons-shards-build"   # where a build writes before its commit
COMMIT_JOURNAL = ".simpsons-shards-journal.json"  # the files a commit in progress owns


def older_manifest(out: Path) -> Optional[dict]:
    """The manifest in ``out`` when an older version of this tool wrote it (its shards are ours to replace)."""
    try:
        old = json.loads((out / shard_format.MANIFEST).read_text(encoding="utf-8"))
        if isinstance(old, dict) and isinstance(old.get("format_version"), int) \
                and old["format_version"] < shard_format.FORMAT_VERSION and isinstance(old.get("shards"), list):
            return old
    except (OSError, ValueError):
        pass
    return None


def _listed_by_older_version(out: Path) -> set[str]:
    old = older_manifest(out) or {"shards": []}
    return {str(e.get("file")) for e in old["shards"]
            if isinstance(e, dict) and shard_format.SHARD_NAME.match(str(e.get("file")))}


def _stamped(path: Path) -> bool:
    """Whether a file named like a shard is one this tool wrote: an HDF5 file with the shard
    datasets and the format stamp (its manifest may be lost or damaged)."""
    try:
        with h5py.File(path, "r") as f:
            return "format_version" in f.attrs and all(k in f for k in ("images", "labels", "hashes"))
    except (OSError, ValueError):
        return False


def owned_files(out: Path) -> tuple[Optional[dict], set[str]]:
    """(the current manifest or None, names of the shard files this tool wrote in ``out``).

    A shard file is ours when the manifest or a commit's journal lists it,
    or when it carries the format stamp (a set whose manifest was damaged:
    ``preprocess`` rebuilds it, as the damaged-manifest error advises).

    Raises:
        UserError: ``out`` holds files named like shards that this tool did
            not write, or a ``manifest.json`` that is not this tool's (a
            user's files: never touched).
    """
    try:
        manifest = shard_format.read_manifest(out)
    except shard_format.ShardError:
        manifest = None
    owned = {e["file"] for e in manifest["shards"]} if manifest else _listed_by_older_version(out)
    try:
        owned |= {n for n in json.loads((out / COMMIT_JOURNAL).read_text(encoding="utf-8"))["files"]
                  if shard_format.SHARD_NAME.match(n)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    unlisted = [p for p in out.glob("*.h5") if p.name.startswith(("train-", "val-")) and p.name not in owned]
    owned |= {p.name for p in unlisted if shard_format.SHARD_NAME.match(p.name) and _stamped(p)}
    foreign = sorted(p.name for p in unlisted if p.name not in owned)
    if foreign:
        raise UserError(f"{out}: holds {len(foreign)} file(s) named like shards that this tool did not write "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them away "
                        f"or pass an empty --out")
    if manifest is None and (out / shard_format.MANIFEST).exists() and older_manifest(out) is None and not owned:
        # not a set of ours (no shard of ours beside it): a commit would overwrite the user's file
        raise UserError(f"{out / shard_format.MANIFEST}: not a manifest this tool wrote, and no shards of its own "
                        f"beside it; "
                        f"move it away or pass an empty --out")
    return manifest, owned


def clean_leftovers(out: Path) -> None:
    """Remove what a killed build of this tool left: its build folder and temporary files."""
    build = out / BUILD
    if build.is_dir():
        logger.info("removing %s left by an interrupted run", build)
        shutil.rmtree(build, ignore_errors=True)
    for tmp in [out / (shard_format.MANIFEST + ".tmp"), *out.glob(".staging-*.u8"), *out.glob("train-*.h5.tmp"),
                *out.glob("val-*.h5.tmp")]:
        tmp.unlink(missing_ok=True)


class SetUpdate:
    """One build of the shard set in ``out``, from lock to commit.

    Entering takes the folder's lock, removes a killed build's leftovers and
    reads what the folder holds (:attr:`manifest`, None when there is no
    current set; the shard files this tool owns there). :attr:`build` is the
    folder the new shards go to; :meth:`commit` puts them in place. Leaving
    removes the build folder (committed or not) and lets the lock go.
    ``salvage(build, out)``, when given, is called first with the build
    folder of a killed or failed build, to keep what it can still give.

    Raises:
        BusyError: another build holds the lock.
        UserError: foreign shard-like files in ``out``.
    """

    def __init__(self, out: Path, what: str = "preprocess",
                 salvage: Optional[Callable[[Path, Path], object]] = None) -> None:
        self.out = Path(out)
        self.build = self.out / BUILD
        self.lock = FolderLock(self.out, what)
        self.salvage = salvage
        self.manifest: Optional[dict] = None
        self.owned: set[str] = set()

    def __enter__(self) -> "SetUpdate":
        self.lock.__enter__()
        try:
            if self.salvage is not None and self.build.is_dir():   # a killed build's: keep what it can give
                self.salvage(self.build, self.out)
            clean_leftovers(self.out)
            self.manifest, self.owned = owned_files(self.out)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    @property
    def replaces_a_set(self) -> bool:
        """Whether a set (of this version or an older one) is there to be replaced."""
        return self.manifest is not None or older_manifest(self.out) is not None

    def start(self) -> Path:
        """Make the (empty) build folder and return it."""
        self.build.mkdir()
        return self.build

    def commit(self, manifest: dict) -> None:
        """Move the built shards into ``out``, drop the old ones, write the manifest last.

        The journal names every file involved before anything moves, so a
        crash in these few renames leaves files the next build knows as its own.
        """
        out, new = self.out, [e["file"] for e in manifest["shards"]]
        with disk_errors(out / COMMIT_JOURNAL):
            (out / COMMIT_JOURNAL).write_text(json.dumps({"files": sorted(set(new) | self.owned)}), encoding="utf-8")
        (out / shard_format.MANIFEST).unlink(missing_ok=True)
        for name in new:
            os.replace(self.build / name, out / name)
        for name in sorted(self.owned - set(new)):
            (out / name).unlink(missing_ok=True)
        shard_format.write_manifest(out, manifest)
        (out / COMMIT_JOURNAL).unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is not None and self.salvage is not None and self.build.is_dir():
                self.salvage(self.build, self.out)   # a failed or interrupted build: keep its work
            shutil.rmtree(self.build, ignore_errors=True)
        finally:
            self.lock.__exit__(*exc)
