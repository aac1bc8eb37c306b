"""The shard format: the one module that writes, opens and verifies it.

A shard set is a folder::

    train-00000.h5 ... train-NNNNN.h5   val-00000.h5 ...   manifest.json

Each ``.h5`` holds one split's share of every class:

    images   uint8 (N, H, W, 3)  RGB, contiguous, uncompressed
    labels   int16 (N,)          index into the ``class_names`` attribute
    paths    S<n>  (N,)          source file, relative to the data folder
    hashes   S64   (N,)          SHA-256 of the source file's bytes
    dhash    uint64 (N,)         64-bit perceptual hash of the stored pixels (``neardup.dhash``)

and attributes ``format_version``, ``class_names``, ``image_size``, ``fit``,
``split``, ``seed``, ``shard_index``, ``num_shards``, ``class_counts`` (this
split's per-class counts) and ``mean`` / ``std`` (the training split's
per-channel statistics in [0, 1] units). Nothing in a shard is pickled:
strings are fixed-length bytes, lists are JSON text.

Why contiguous and uncompressed: a batch read is then one ``memcpy``-speed
slice, and the pixel block sits at a fixed file offset, so a reader can map
it with ``numpy.memmap`` and gather a shuffled batch in one call with no
HDF5 chunk lookups. Against chunked and compressed layouts (benchmarks/history/bench.md
"Shard layout"), a contiguous block read through a memory map is the
fastest by far for slices and for shuffled gathers, and h5py's own fancy
indexing is too slow for shuffled batches.

Compression saves a sixth to a third of the disk and costs most of the
read speed; hence the map. ``compression`` (gzip/lzf) is still available for archiving;
such shards are read whole through h5py instead of the map.

Writes are atomic: a shard is written under a temporary name and renamed;
the preprocess stage writes ``manifest.json`` last, so a set without a
manifest is incomplete by definition.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from ..common.errors import local_path
from ..common.files import disk_errors, temporary, write_text
from ..common.untrusted import COMPRESSION_RATIO, MAX_CLASSES, declared_bytes, printable, read_json
from ..imaging.neardup import dhash, group
from .header import SetChangedError, ShardError  # noqa: F401  (the format's errors, raised and re-exported here)
from .header import changed, check_header, check_same, identity, open_same

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the ``dhash`` dataset (near-duplicate groups, split rule 2)
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


# The only file names a shard set may hold; a manifest naming anything else
# (``../x``, ``/etc/...``) is not trusted.
# A published set's shards carry the first 16 hex digits of their SHA-256 (``train-00000.<sha>.h5``):
# two versions of a set, or two writers racing, never overwrite each other's objects (docs/remote.md).
SHARD_NAME = re.compile(r"^(train|val)-[0-9]{5}(\.[0-9a-f]{16})?\.h5$")
FIX = "run `python cli.py preprocess --force`"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray, paths: list[str],
                hashes: list[str], attrs: dict, compression: Optional[str] = None,
                phashes: Optional[np.ndarray] = None) -> str:
    """Write one shard atomically and return its SHA-256.

    Args:
        path: final file name; the data goes to ``path + '.tmp'`` first.
        images: (N, H, W, 3) uint8.
        labels: (N,) ints.
        paths, hashes: per-image source path and content hash.
        attrs: shard attributes (lists and dicts are stored as JSON text).
        compression: None (contiguous) or an HDF5 filter name.
        phashes: per-image perceptual hashes (default: computed from ``images``).
    """
    path = Path(path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    tmp = temporary(path)
    enc_paths = [p.encode("utf-8") for p in paths]
    width = max([len(p) for p in enc_paths] + [1])
    try:
        # track_times=False and a fixed libver keep the bytes a function of
        # the content alone: same seed, same shards.
        with disk_errors(path), h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
            kw = {}
            if compression:
                kw = dict(chunks=(1,) + images.shape[1:], compression=compression)
            f.create_dataset("images", data=images, track_times=False, **kw)
            f.create_dataset("labels", data=labels.astype(np.int16), track_times=False)
            f.create_dataset("paths", data=np.array(enc_paths, dtype=f"S{width}"), track_times=False)
            f.create_dataset("hashes", data=np.array([h.encode() for h in hashes], dtype="S64"),
                             track_times=False)
            f.create_dataset("dhash", data=np.asarray(dhash(images) if phashes is None else phashes,
                                                      dtype=np.uint64), track_times=False)
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MB blocks (hashlib releases the GIL on them)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _attr(f: h5py.File, key: str):
    v = f.attrs[key]
    if isinstance(v, (bytes, str)):
        s = v.decode() if isinstance(v, bytes) else v
        return json.loads(s) if s[:1] in "[{" else s
    return v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v


@dataclass
class Shard:
    """An open shard's metadata; pixels are read lazily.

    ``offset`` is the byte offset of the contiguous ``images`` block (None
    for chunked/compressed shards), which is what makes a memory map possible.
    ``ident`` is the file's :func:`~pipeline.shardset.header.identity` when it was
    opened: a later open of the pixels (a worker's map) must find that same file.
    """

    path: Path
    count: int
    image_size: int
    offset: Optional[int]
    ident: tuple = ()
    source: Optional[object] = None   # a shard in object storage: fetched through the node's cache on first use


    def images_map(self) -> np.ndarray:
        """The images as a read-only (N, H, W, 3) array backed by the file.

        Falls back to reading the dataset into memory when it is chunked.
        Open this inside each DataLoader worker: maps and h5py handles must
        not cross a fork.
        """
        if self.source is not None:
            return self.source.images()   # pipeline.shardset.sets.RemoteShard: fetched, checked, then mapped
        shape = (self.count, self.image_size, self.image_size, 3)
        if self.count == 0:
            return np.zeros(shape, dtype=np.uint8)
        if self.offset is not None:
            with os.fdopen(open_same(self.path, self.ident), "rb") as fh:   # the file opened, not a rebuild's
                return np.memmap(fh, dtype=np.uint8, mode="r", offset=self.offset, shape=shape)
        try:
            with h5py.File(self.path, "r") as f:
                check_same(f, self.path, self.ident)
                return f["images"][...]
        except OSError as exc:   # a damaged chunk: its filter (deflate, Fletcher-32) fails
            raise ShardError(f"{self.path}: pixels unreadable ({str(exc)[:120]}); run `python cli.py verify`") \
                from None


def open_shard(path: Path) -> tuple[Shard, dict, np.ndarray]:
    """Open a shard: (handle, attributes, labels).

    Raises:
        ShardError: unreadable, a different format version, or bad shapes.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise ShardError(f"{path}: shard format version {version}, this code reads "
                                 f"{FORMAT_VERSION}; run `python cli.py preprocess --force`")
            check_header(f, path)   # nothing outside the file, no plugin, bounded chunks
            st = os.fstat(f.id.get_vfd_handle())
            attrs = {k: _attr(f, k) for k in f.attrs}
            ds, lab = f["images"], f["labels"]
            size = int(attrs["image_size"])
            if ds.dtype != np.uint8 or ds.shape[1:] != (size, size, 3) or lab.shape != ds.shape[:1]:
                raise ShardError(f"{path}: images {ds.dtype} {ds.shape} / {lab.shape} labels do not "
                                 f"match image_size {size}")
            # the header's shapes are the file's claim: checked against its size before any read
            declared_bytes(path, ds.size + lab.size * lab.dtype.itemsize, st.st_size,
                           1.0 if ds.chunks is None else COMPRESSION_RATIO, error=ShardError)
            labels = lab[...].astype(np.int64)
            offset = ds.id.get_offset() if ds.chunks is None else None
            return Shard(path, int(ds.shape[0]), size, offset, identity(st)), attrs, labels
    except ShardError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read shard ({exc}); run `python cli.py verify`") from exc


def _manifest_problem(manifest: dict) -> str:
    """What is wrong with a manifest's entries ("" when nothing): the first check that fails, in words."""
    names, size = manifest["class_names"], manifest["options"]["size"]
    if not (isinstance(names, list) and 1 <= len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)):
        return f"class_names is not a list of 1 to {MAX_CLASSES:,} names"
    if not isinstance(size, int) or isinstance(size, bool):
        return f"options.size {printable(repr(size))[:40]} is not a whole number"
    if not _stats_ok(manifest["mean"], manifest["std"]):
        return "mean/std are not 3 finite values each, mean in [0, 1], std in (0, 1]"
    if not isinstance(manifest["shards"], list):
        return "shards is not a list"
    labels = manifest.get("labels", {})
    if not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        return "labels is not a map of shard file to encoded labels"
    for k, e in enumerate(manifest["shards"]):
        if not SHARD_NAME.match(str(e["file"])):
            return (f"shard {k} names '{printable(str(e['file']))[:80]}', not train-NNNNN.h5 or val-NNNNN.h5 in "
                    f"its own folder")
        if not (e["split"] in SPLITS and type(e["count"]) is int and type(e["bytes"]) is int
                and isinstance(e["sha256"], str) and len(e["sha256"]) == 64):
            return f"shard {k} ({e['file']}) has a malformed split, count, bytes or sha256"
    return ""


def read_manifest(root: Path) -> dict:
    """The manifest of a complete shard set, its structure checked.

    Raises:
        ShardError: no manifest (never built, or an interrupted build), not
            JSON, another format version, or entries this code cannot trust.
    """
    root = local_path(root, "a shard set")
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise ShardError(f"{root}: is a file, not a shard folder; pass the folder `python cli.py preprocess "
                         f"--out` wrote (it holds manifest.json)")
    if not path.exists():
        raise ShardError(f"{root}: no {MANIFEST}, so no complete shard set; "
                         f"run `python cli.py preprocess --out {root}`")
    return check_manifest(read_json(path, "a manifest", error=lambda why: ShardError(f"{why}; {FIX}")), path)


def check_manifest(manifest, where) -> dict:
    """A parsed manifest (from a file or a URL, named by ``where``) whose version and entries this code trusts.

    Raises:
        ShardError: another format version, or entries this code cannot trust.
    """
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ShardError(f"{where}: format version {version}, this code reads {FORMAT_VERSION}; {FIX}")
    try:
        problem = _manifest_problem(manifest)
    except (KeyError, TypeError) as exc:
        raise ShardError(f"{where}: manifest lacks {printable(str(exc))}; {FIX}") from None
    if problem:
        raise ShardError(f"{where}: {problem}; {FIX}")
    return manifest


def _stats_ok(mean, std) -> bool:
    """Three finite means in [0, 1] and three positive stds: what normalisation divides by."""
    ok = isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std)
    return ok and all(0.0 <= v <= 1.0 for v in mean) and all(0.0 < v <= 1.0 for v in std)


def encode_labels(labels: np.ndarray) -> str:
    """A shard's labels as the manifest keeps them (``labels[file]``): base64 of little-endian int16.

    Kept beside the shards so a reader of a set in object storage knows every
    label, hence its epoch order, before it has fetched a single shard.
    """
    return base64.b64encode(np.asarray(labels, dtype="<i2").tobytes()).decode("ascii")


def decode_labels(manifest: dict, entry: dict, where) -> np.ndarray:
    """The labels the manifest records for ``entry``'s shard, checked against its count and class list.

    Raises:
        ShardError: none recorded (a set built before they were), or not what the entry declares.
    """
    text = manifest.get("labels", {}).get(entry["file"])
    if text is None:
        raise ShardError(f"{where}: the manifest records no labels for {entry['file']} (built by an older "
                         f"version); {FIX}")
    try:
        labels = np.frombuffer(base64.b64decode(text, validate=True), dtype="<i2").astype(np.int64)
    except ValueError:
        labels = None
    n = len(manifest["class_names"])
    if labels is None or len(labels) != entry["count"] or (len(labels) and (labels.min() < 0 or labels.max() >= n)):
        raise ShardError(f"{where}: the labels recorded for {entry['file']} are not {entry['count']} labels in "
                         f"0..{n - 1}; {FIX}")
    return labels


def write_manifest(root: Path, manifest: dict) -> None:
    """Write the manifest atomically (it is what marks a set complete)."""
    write_text(Path(root) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_set(root: Path, manifest: Optional[dict] = None, checksums: bool = True) -> dict:
    """The check every command runs before it uses a shard set.

    The manifest parses and has this format version, every shard it lists
    is present with its recorded size, and (``checksums``) every shard's
    SHA-256 matches. The hashes run on a thread per core (hashlib releases
    the GIL), so the check is a small part of the first epoch it guards
    (benchmarks/history/bench.md "The shard-set check before use"). Labels are checked
    when a split is opened (:func:`open_split`).

    Returns:
        The manifest.

    Raises:
        ShardError: naming the first bad shard and the fix.
    """
    root = Path(root)
    manifest = manifest or read_manifest(root)
    for e in manifest["shards"]:
        path = root / e["file"]
        try:
            nbytes = path.stat().st_size
        except OSError:
            raise ShardError(f"{path}: listed in the manifest but missing; {FIX}") from None
        if nbytes != e["bytes"]:
            raise ShardError(f"{path}: {nbytes} bytes, the manifest says {e['bytes']} (truncated or "
                             f"replaced); {FIX}")
    if checksums and manifest["shards"]:
        from ..common.env import cpu_count

        paths = [root / e["file"] for e in manifest["shards"]]
        with ThreadPoolExecutor(max_workers=min(len(paths), cpu_count())) as ex:
            digests = list(ex.map(file_sha256, paths))
        for e, path, digest in zip(manifest["shards"], paths, digests):
            if digest != e["sha256"]:
                raise ShardError(f"{path}: SHA-256 differs from the manifest (corrupt or modified); {FIX}")
    return manifest


@dataclass
class SplitSet:
    """One split of a shard set: its shards, labels and shared metadata."""

    shards: list[Shard]
    labels: np.ndarray            # (N,) over the split, shard after shard
    offsets: np.ndarray           # (S + 1,) first index of each shard
    class_names: list[str]
    image_size: int
    mean: np.ndarray              # (3,) training mean in [0, 1]
    std: np.ndarray               # (3,)
    remote: bool = False          # shards fetched from object storage on first use (pipeline.shardset.sets)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load_all(self) -> np.ndarray:
        """Every image of the split as one in-RAM (N, H, W, 3) array."""
        out = np.empty((len(self), self.image_size, self.image_size, 3), dtype=np.uint8)
        for s, shard in enumerate(self.shards):
            out[self.offsets[s]: self.offsets[s + 1]] = shard.images_map()
        return out


def open_split(root: Path, split: str, manifest: Optional[dict] = None) -> SplitSet:
    """Open every shard of ``split`` listed in the manifest, in order.

    Each shard's count and labels are checked against the manifest and the
    class list here, once, so no out-of-range label reaches a loss.
    Call :func:`check_set` (or :func:`open_set`, which does) first.
    """
    if split not in SPLITS:
        raise ShardError(f"{root}: no split {split!r}; choose one of {SPLITS}")
    manifest = manifest or read_manifest(root)
    entries = [e for e in manifest["shards"] if e["split"] == split]
    num_classes = len(manifest["class_names"])
    shards, labels = [], []
    for e in entries:
        shard, attrs, lab = open_shard(Path(root) / e["file"])
        if shard.ident and shard.ident[2] != e["bytes"]:   # replaced since the manifest was read
            raise changed(shard.path)
        if attrs.get("class_names") != manifest["class_names"] or attrs.get("split") != split:
            raise ShardError(f"{shard.path}: its split or class names differ from the manifest's; {FIX}")
        if shard.count != e["count"]:
            raise ShardError(f"{shard.path}: {shard.count} images, manifest says {e['count']}; {FIX}")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise ShardError(f"{shard.path}: labels outside 0..{num_classes - 1} (the manifest has "
                             f"{num_classes} classes); {FIX}")
        if shard.image_size != manifest["options"]["size"]:
            raise ShardError(f"{shard.path}: {shard.image_size} px, manifest says "
                             f"{manifest['options']['size']}; {FIX}")
        shards.append(shard)
        labels.append(lab)
    offsets = np.concatenate([[0], np.cumsum([s.count for s in shards])]).astype(np.int64)
    return SplitSet(
        shards=shards,
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        offsets=offsets,
        class_names=list(manifest["class_names"]),
        image_size=int(manifest["options"]["size"]),
        mean=np.asarray(manifest["mean"], dtype=np.float32),
        std=np.asarray(manifest["std"], dtype=np.float32),
    )


@dataclass
class ShardSet:
    """A checked shard set: what it holds, and its splits on demand.

    Attributes:
        root: the shard folder.
        manifest: its parsed manifest.
        class_names: label -> class name.
        image_size: square side in pixels.
        mean, std: the training split's per-channel statistics in [0, 1].
        counts: images per split, e.g. ``{"train": 14249, "val": 2515}``.
    """

    root: Path
    manifest: dict
    ident: tuple = ()   # the manifest file's identity when it was read (header.identity)
    class_names: list[str] = field(init=False)
    image_size: int = field(init=False)
    mean: np.ndarray = field(init=False)
    std: np.ndarray = field(init=False)
    counts: dict = field(init=False)

    def __post_init__(self) -> None:
        m = self.manifest
        self.class_names = list(m["class_names"])
        self.image_size = int(m["options"]["size"])
        self.mean = np.asarray(m["mean"], dtype=np.float32)
        self.std = np.asarray(m["std"], dtype=np.float32)
        self.counts = {s: sum(e["count"] for e in m["shards"] if e["split"] == s) for s in SPLITS}

    def split(self, name: str) -> SplitSet:
        """Open one split (``train`` or ``val``).

        Raises:
            SetChangedError: the set was rebuilt since it was opened (a commit replaces the
                manifest after the shards), so what was opened may mix two builds.
        """
        split = open_split(self.root, name, self.manifest)
        if self.ident and _manifest_ident(self.root) != self.ident:
            raise changed(self.root / MANIFEST)
        return split


def _manifest_ident(root: Path) -> tuple:
    try:
        return identity(os.stat(Path(root) / MANIFEST))
    except OSError:
        return ()


def open_set(root: Path, checksums: bool = True) -> ShardSet:
    """Check a shard set (:func:`check_set`) and open it.

    Raises:
        ShardError: missing, incomplete, stale or corrupt, naming the shard and the fix.
    """
    root = local_path(root, "a shard set")
    ident = _manifest_ident(root)   # before the read: a commit after it shows as a new identity
    return ShardSet(root, check_set(root, checksums=checksums), ident)


def verify(root: Path) -> list[str]:
    """Re-check a shard set against its manifest, reporting every problem.

    Checks every shard's size, SHA-256, count, label range, shapes, format
    version and attributes, that no listed shard is missing, that each
    stored perceptual hash is that of its stored pixels, and that no
    near-duplicate group (the manifest's ``near_dup`` radius) has members
    in both splits.

    Returns:
        Problems found, one line each naming the shard (empty: all good).

    Raises:
        ShardError: no readable manifest at all.
    """
    manifest = read_manifest(root)
    problems = []
    side, names, phashes = [], [], []
    for e in manifest["shards"]:
        one = {**manifest, "shards": [e]}
        path = Path(root) / e["file"]
        try:
            check_set(root, one)
            open_split(root, e["split"], one)
            shard, attrs, _ = open_shard(path)
            with h5py.File(path, "r") as f:
                stored = f["dhash"][...].astype(np.uint64)
                paths = [p.decode("utf-8", "replace") for p in f["paths"][...]]
        except ShardError as exc:
            problems.append(str(exc))
            continue
        except (OSError, KeyError) as exc:
            problems.append(f"{path}: cannot read its perceptual hashes ({exc}); {FIX}")
            continue
        if attrs.get("split") != e["split"] or attrs.get("class_names") != manifest["class_names"]:
            problems.append(f"{path}: split or class names differ from the manifest")
        images = shard.images_map()
        computed = np.concatenate([dhash(images[k: k + 1024]) for k in range(0, len(images), 1024)]) \
            if len(images) else stored
        if len(computed) != len(stored) or not np.array_equal(computed, stored):
            problems.append(f"{path}: stored perceptual hashes differ from its pixels; {FIX}")
        side += [e["split"]] * len(stored)
        names += paths
        phashes.append(stored)
    if phashes and not problems:
        groups = group(np.concatenate(phashes), int(manifest["options"].get("near_dup", 0)))
        side = np.array(side)
        for g in np.unique(groups.labels[side == "val"]):
            members = np.flatnonzero(groups.labels == g)
            if (side[members] == "train").any():
                tr = members[side[members] == "train"][0]
                va = members[side[members] == "val"][0]
                problems.append(f"{root}: near-duplicates straddle the split ({names[tr]} in train, {names[va]} "
                                f"in val); {FIX}")
    return problems
