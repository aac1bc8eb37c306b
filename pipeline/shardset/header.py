"""What a shard's HDF5 header may declare, checked before any read, and which file a reader holds.

A shard may come from someone else (a shared folder, a download). HDF5
lets a file say more than "here are my bytes": a dataset can live in
another file (external storage, a virtual dataset, an external or soft
link), pass through a filter plugin, or declare chunks far larger than
the file. :func:`check_header` accepts only what :func:`write_shard
<pipeline.shardset.shard_format.write_shard>` writes: hard-linked
datasets stored in the shard itself, deflate/shuffle/LZF/Fletcher-32
filters, bounded chunks and the expected dtypes and shapes. Anything else
is one :class:`ShardError` naming the file,
before a byte of pixels is read, so a shard can never make this tool read
``/etc/shadow``, load a plugin, or allocate more than its own size allows.

A set can also be rebuilt (``preprocess --force``, another ``--size``)
while a run reads it. A commit replaces shard files by rename, so the
files a run opened keep their bytes; a file it opens later may be the new
build's. :func:`identity` records each shard's (device, inode, size,
mtime) when the set is opened, and :func:`open_same` opens a shard again
(a DataLoader worker's first map, a compressed shard decompressed anew)
only when it is still that file: otherwise :class:`SetChangedError`, one
line, and the run stops rather than mix rows of two builds.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..common.errors import UserError

# The filters write_shard may use (HDF5 filter ids): deflate (gzip), shuffle, Fletcher-32, LZF.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
MAX_CHUNK_BYTES = 64 << 20   # write_shard's chunks are one image (at most a few MB at 1024 px)

# name -> (numpy kinds allowed, item sizes allowed or None, rank)
DATASETS = {
    "images": ("u", (1,), 4),
    "labels": ("iu", None, 1),
    "paths": ("S", None, 1),
    "hashes": ("S", (64,), 1),
    "dhash": ("u", (8,), 1),
}
REQUIRED = ("images", "labels")


class ShardError(UserError):
    """A shard set that is missing, incomplete, stale or corrupt."""


class SetChangedError(ShardError):
    """A shard file replaced since the set was opened: another build committed meanwhile."""


def _refuse(path: Path, why: str) -> ShardError:
    return ShardError(f"{path}: {why}; not a shard this tool wrote (rebuild it with `python cli.py preprocess "
                 f"--force`, or ask whoever made it)")


def check_header(f: h5py.File, path: Path) -> None:
    """Refuse a shard whose header points outside the file, names a filter plugin, declares
    oversized chunks, or holds datasets of the wrong kind or length.

    Args:
        f: the open shard.
        path: its path, for the message.

    Raises:
        ShardError: naming the file and what it declares.
    """
    count = None
    for name, (kinds, sizes, rank) in DATASETS.items():
        link = f.get(name, getlink=True)
        if link is None:
            if name in REQUIRED:
                raise _refuse(path, f"no {name!r} dataset")
            continue
        if not isinstance(link, h5py.HardLink):
            raise _refuse(path, f"{name!r} is a link ({type(link).__name__}) to somewhere else")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise _refuse(path, f"{name!r} is not a dataset")
        if ds.is_virtual or ds.external:
            raise _refuse(path, f"{name!r} is stored in other files")
        dt = ds.dtype
        if dt.kind not in kinds or (sizes and dt.itemsize not in sizes) or len(ds.shape) != rank:
            raise _refuse(path, f"{name!r} is {dt} {ds.shape}")
        count = ds.shape[0] if count is None else count
        if ds.shape[0] != count:
            raise _refuse(path, f"{name!r} holds {ds.shape[0]} rows, 'images' {count}")
        plist = ds.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            fid = plist.get_filter(i)[0]
            if fid not in ALLOWED_FILTERS:
                raise _refuse(path, f"{name!r} passes through HDF5 filter {fid}, not one this tool writes")
        if ds.chunks is not None and int(np.prod(ds.chunks)) * dt.itemsize > MAX_CHUNK_BYTES:
            raise _refuse(path, f"{name!r} declares chunks of {ds.chunks}")


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file from its replacement: (device, inode, size, mtime in ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def changed(path: Path) -> SetChangedError:
    return SetChangedError(f"{path}: replaced since this run opened the set (another preprocess rebuilt "
                           f"{Path(path).parent}); stopped rather than mix rows of two builds: run the command "
                           f"again (a training run: `--resume` its last.pt)")


def open_same(path: Path, ident: tuple) -> int:
    """A read-only descriptor of ``path`` when it is still the file whose :func:`identity` is ``ident``.

    Raises:
        SetChangedError: the file was replaced or removed.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise changed(path) from None
    if ident and identity(os.fstat(fd)) != tuple(ident):
        os.close(fd)
        raise changed(path)
    return fd


def check_same(f: h5py.File, path: Path, ident: tuple) -> None:
    """Raise :class:`SetChangedError` unless the open HDF5 file ``f`` is the file ``ident`` names."""
    if ident and identity(os.fstat(f.id.get_vfd_handle())) != tuple(ident):
        raise changed(path)
