"""The preprocess stage: every image decoded once into HDF5 shards.

Flow (memory stays bounded by one shard buffer, whatever the dataset size):

1. ``discover`` lists classes and candidate files (junk skipped, counted).
2. A process pool over all cores (:mod:`pipeline.building.tasks`) reads,
   hashes (SHA-256) and decodes runs of consecutive files to uint8 squares and
   ``pwrite``s each run straight into a flat staging file at its rows, so
   no pixels are pickled
   between processes; a worker returns only the hashes (SHA-256 of the
   bytes, dHash of the stored pixels) and skip reasons.
3. Byte-identical files are kept once (first path wins); near-duplicates
   (dHashes within ``near_dup`` bits) form groups, and each group goes to
   one side, placed by its own content (:mod:`pipeline.building.split`), so no shot
   straddles train and val and a growing folder moves nothing into val.
   The class-interleaved shard plan is a pure function of (split, labels,
   seed). The training split's mean/std is summed from the per-row sums
   the workers took (:func:`mean_std`).
4. Shards are gathered from the staging file with ``pread`` and written
   into the build folder, then committed (:mod:`pipeline.building.commit`:
   the previous set stays whole until the commit; preprocess deletes or
   replaces only files it wrote; one build at a time per folder).

A second run with the same inputs and options finds the manifest's
fingerprint and options equal and the set intact (sizes and checksums,
:func:`shard_format.check_set`), and does nothing; a set that fails the
check is rebuilt, and the reason is returned. Any other run decodes only
what no row holds yet (:mod:`pipeline.building.reuse`: the committed set's rows and
an interrupted build's, found by the SHA-256 of the file's bytes, or
without reading the file when its size, mtime and inode are those the set
recorded) and writes what a build from scratch would, byte for byte, but
where the split kept a group on the side it had (``split.kept``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..shardset import shard_format
from ..common.config import PreprocessConfig, to_dict
from .discover import DatasetError, Discovery, discover
from ..common.errors import UserError, expect_folder
from ..common.files import disk_errors
from ..common.env import cpu_count, environment
from ..imaging.neardup import group
from .reuse import (ROW_JOURNAL, STAGING, ReuseIndex, RowJournal, committed_sides, drop_resume, encode_sources,
                    journaled, keep_for_resume, pixel_options, resume_pairs)
from .commit import SetUpdate, older_manifest
from .split import COMPATIBLE_RULES, SPLIT_RULE, content_split, shard_plan
from .tasks import STAT_STRIDE, ShardTask, TaskPool, decode_run, decode_task, shard_task

logger = logging.getLogger(__name__)


@dataclass
class Items:
    """What a shard set is built from: one source per sample, in a fixed order.

    Attributes:
        names: what the shards and the skip/duplicate lists record per sample.
        labels: class index per sample.
        classes: class names.
        sources: a path relative to ``root`` (str), encoded bytes, or an RGB array.
        skipped: (name, reason) of what was passed over before decoding.
        root: the folder paths are relative to ("" for absolute paths).
    """

    names: list[str]
    labels: list[int]
    classes: list[str]
    sources: list
    skipped: list[tuple[str, str]] = field(default_factory=list)
    root: str = ""
    _fingerprint: str = ""

    @classmethod
    def from_discovery(cls, disc: Discovery) -> "Items":
        rels = [rel for rel, _ in disc.files]
        return cls(rels, [label for _, label in disc.files], list(disc.classes), rels, list(disc.skipped),
                   str(disc.root))

    @classmethod
    def from_samples(cls, samples: Iterable, classes: list[str]) -> "Items":
        index = {c: i for i, c in enumerate(classes)}
        names, labels, sources = [], [], []
        h = hashlib.sha256("\n".join(classes).encode())
        for k, sample in enumerate(samples):
            image, label, *name = sample
            label = index.get(label, label) if isinstance(label, str) else int(label)
            if not isinstance(label, int) or not 0 <= label < len(classes):
                raise DatasetError(f"sample {k}: label {sample[1]!r} is not one of the {len(classes)} classes")
            if isinstance(image, (str, os.PathLike)):
                source = os.path.abspath(image)
                st = os.stat(source) if os.path.exists(source) else None
                h.update(f"{source}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}".encode())
            else:
                source = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else np.asarray(image)
                data = source if isinstance(source, bytes) else repr(source.shape).encode() + source.tobytes()
                h.update(hashlib.sha256(data).digest())
            names.append(str(name[0]) if name else (str(image) if isinstance(image, (str, os.PathLike))
                                                    else f"sample-{k:06d}"))
            labels.append(label)
            sources.append(source)
            h.update(f"\0{names[-1]}\0{label}\n".encode())
        if not sources:
            raise DatasetError("no samples given; write_set needs at least one (image, label)")
        return cls(names, labels, list(classes), sources, _fingerprint=h.hexdigest())

    def fingerprint(self) -> str:
        """What the up-to-date test compares: content hashes (or path, size, mtime), names, labels, classes."""
        return self._fingerprint


@dataclass
class Decoded:
    """Every sample's outcome of the decode phase, in the samples' order."""

    hashes: list           # SHA-256 of each file's bytes ("" when unreadable)
    reasons: list          # skip reason, or None
    phashes: np.ndarray    # (N,) uint64 perceptual hashes
    stats: np.ndarray      # (N, 6) uint64 pixel sums
    phash_s: float = 0.0   # seconds of perceptual hashing, summed over the workers
    reused: int = 0        # rows read back instead of decoded
    seen: list = field(default_factory=list)   # per sample, its file's stat record or None
    unread: int = 0        # files known unchanged by their stat, never read
    scores: Optional[np.ndarray] = None        # (N,) the split's score of each SHA-256


def _decode_all(items: Items, pool: TaskPool, progress: bool, size: int, journal: RowJournal,
                workers: int) -> Decoded:
    """Every sample through the pool, one :class:`~pipeline.building.tasks.RunResult` a run.

    Each run's rows are journaled once the worker has staged them, so an
    interrupted build can continue from them (:mod:`pipeline.building.reuse`).
    """
    n = len(items.names)
    done = Decoded([""] * n, [None] * n, np.zeros(n, dtype=np.uint64), np.zeros((n, 6), dtype=np.uint64),
                   seen=[None] * n, scores=np.zeros(n))
    run = decode_run(size, n, workers)
    tasks = [(k, items.sources[k: k + run]) for k in range(0, n, run)]
    with tqdm(total=n, desc="decode+resize", unit="img", disable=not progress, smoothing=0.05) as bar:
        for r in pool.imap_unordered(decode_task, tasks):
            for j, (digest, reason) in enumerate(r.files):
                done.hashes[r.start + j], done.reasons[r.start + j] = digest, reason
            done.phashes[r.start: r.start + len(r.phashes)] = r.phashes
            done.stats[r.start: r.start + len(r.stats)] = r.stats
            done.phash_s += r.phash_s
            done.reused += r.reused
            done.unread += r.unread
            done.seen[r.start: r.start + len(r.seen)] = r.seen
            done.scores[r.start: r.start + len(r.scores)] = r.scores
            journal.record(r.start, [d for d, _ in r.files], [why for _, why in r.files], r.crcs, r.phashes)
            bar.update(len(r.files))
    return done


def mean_std(stats: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1] of ``rows``, from their pixel sums (:func:`_row_stats`)."""
    per_row = len(range(0, size, STAT_STRIDE)) ** 2
    picked = stats[rows]
    s = [int(x) for x in picked[:, :3].sum(axis=0, dtype=np.uint64)]   # exact: far below 2**64
    q = [int(x) for x in picked[:, 3:].sum(axis=0, dtype=np.uint64)]
    n = max(per_row * len(rows), 1)
    mean = np.array(s, dtype=np.float64) / (255.0 * n)
    std = np.sqrt(np.maximum(np.array(q, dtype=np.float64) / (255.0 ** 2 * n) - mean ** 2, 1e-12))
    return mean, std


def split_report(items: Items, keep: np.ndarray, groups, split, class_counts: dict,
                 cfg: PreprocessConfig) -> dict:
    """What the manifest says of the split: near-duplicate groups, cross-class groups, fall-backs, shares."""
    sizes = groups.sizes()
    labels = np.asarray(items.labels)[keep]
    multi = np.flatnonzero(sizes > 1)
    members = {int(g): [] for g in multi}
    for pos, g in enumerate(groups.labels):
        if sizes[g] > 1:
            members[int(g)].append(pos)
    cross = []
    for g in multi:
        classes = sorted({items.classes[labels[p]] for p in members[int(g)]})
        if len(classes) > 1:
            cross.append({"classes": classes, "paths": [items.names[keep[p]] for p in members[int(g)]]})

    def placed(groups_placed):
        return [{"paths": [items.names[keep[p]] for p in pos], "split": where, "why": why}
                for pos, where, why in groups_placed]

    deviation = []
    for c, name in enumerate(items.classes):
        n = class_counts["train"][c] + class_counts["val"][c]
        if n:
            share = class_counts["val"][c] / n
            deviation.append({"class": name, "images": n, "val_share": round(share, 4),
                              "deviation": round(share - cfg.val_frac, 4)})
    deviation.sort(key=lambda d: (-abs(d["deviation"]), d["class"]))
    total = sum(class_counts["train"]) + sum(class_counts["val"])
    return {
        "rule": SPLIT_RULE,
        "near_dup": cfg.near_dup,
        "groups": int(len(multi)),
        "images_in_groups": int(sizes[multi].sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "cross_class_groups": cross,
        "fallbacks": placed(split.fallbacks),
        "kept": placed(split.kept),
        "val_share": round(sum(class_counts["val"]) / max(total, 1), 4),
        "class_val_share_deviation": deviation[:5],
    }


def _dedup(items: Items, done: Decoded) -> tuple[np.ndarray, list, list]:
    """(samples kept: decoded and the first of their bytes, skipped files, byte-identical duplicates)."""
    skipped = [{"path": rel, "reason": why} for rel, why in items.skipped]
    skipped += [{"path": items.names[i], "reason": r} for i, r in enumerate(done.reasons) if r]
    first: dict[str, int] = {}
    duplicates, keep = [], []
    for i, rel in enumerate(items.names):
        if done.reasons[i]:
            continue
        if done.hashes[i] in first:
            duplicates.append({"path": rel, "same_as": items.names[first[done.hashes[i]]]})
            continue
        first[done.hashes[i]] = i
        keep.append(i)
    if not keep:
        raise DatasetError(f"{items.root or 'samples'}: none of the {len(items.names)} files decoded; "
                           f"see the skip reasons")
    return np.array(keep, dtype=np.int64), skipped, duplicates


def _shard_tasks(items: Items, cfg: PreprocessConfig, out: Path, done: Decoded, splits: dict, class_counts: dict,
                 mean_and_std: tuple):
    """(one :class:`ShardTask` per shard, each shard's manifest entry so far), train shards first."""
    labels = np.array(items.labels, dtype=np.int64)
    per_shard = max(1, int(cfg.shard_mb * 1_000_000) // (cfg.size * cfg.size * 3))
    tasks, meta = [], []
    for split_name, idx in splits.items():
        plan = shard_plan(idx, labels, per_shard, cfg.seed)
        for k, rows in enumerate(plan):
            name = shard_format.shard_name(split_name, k)
            tasks.append(ShardTask(out / name, rows, labels[rows], [items.names[r] for r in rows],
                                   [done.hashes[r] for r in rows], done.phashes[rows],
                                   {"class_names": items.classes, "image_size": cfg.size, "fit": cfg.fit,
                                    "split": split_name, "seed": cfg.seed, "shard_index": k, "num_shards": len(plan),
                                    "class_counts": class_counts[split_name], "mean": mean_and_std[0],
                                    "std": mean_and_std[1]}))
            meta.append({"file": name, "split": split_name, "count": len(rows),
                         "class_counts": np.bincount(labels[rows], minlength=len(items.classes)).tolist()})
    return tasks, meta


def _split_and_write(items: Items, cfg: PreprocessConfig, out: Path, pool: TaskPool, done: Decoded, progress: bool,
                     timings: dict, prior: Optional[dict] = None) -> dict:
    """Dedup, group, split, take the statistics and write every shard into ``out``: the manifest."""
    labels_all = np.array(items.labels, dtype=np.int64)
    keep, skipped, duplicates = _dedup(items, done)
    t0 = time.perf_counter()
    groups = group(done.phashes[keep], cfg.near_dup)
    timings["group_s"] = time.perf_counter() - t0
    split = content_split([done.hashes[i] for i in keep], labels_all[keep], groups.labels, len(items.classes),
                          cfg.val_frac, cfg.seed, None if prior is None else [prior.get(done.hashes[i]) for i in keep],
                          scores=done.scores[keep])
    splits = {"train": keep[split.train], "val": keep[split.val]}
    t = time.perf_counter()
    timings["split_s"] = t - t0 - timings["group_s"]
    mean, std = mean_std(done.stats, np.sort(splits["train"]), cfg.size)
    timings["stats_s"] = time.perf_counter() - t
    class_counts = {s: np.bincount(labels_all[idx], minlength=len(items.classes)).tolist() for s, idx in splits.items()}
    tasks, meta = _shard_tasks(items, cfg, out, done, splits, class_counts, (mean, std))
    # what the next build checks instead of reading a file (reuse.ReuseIndex.known); a row whose name
    # is not its file's path (write_set's own names) is never looked up by path, so none is recorded
    by_path = [isinstance(src, str) and src == name for src, name in zip(items.sources, items.names)]
    sources = {t.path.name: encode_sources([done.seen[r] if by_path[r] else None for r in t.rows]) for t in tasks}
    # Shards are written in parallel, one per worker: gather, h5py write and
    # SHA-256 each take about a third of a shard's time.
    written = tqdm(pool.imap(shard_task, tasks), total=len(tasks), desc="write shards", unit="shard",
                   disable=not progress)
    t = time.perf_counter()
    entries = [{**m, "sha256": digest, "bytes": nbytes} for m, (digest, nbytes) in zip(meta, written)]
    timings["shards_s"] = time.perf_counter() - t
    singles = split.single_group_classes
    if singles:
        logger.warning("classes of one image or one near-duplicate group (train only): %s",
                       [items.classes[c] for c in singles])
    return {
        "format_version": shard_format.FORMAT_VERSION, "split_rule": SPLIT_RULE, "class_names": items.classes,
        "counts": {s: int(len(idx)) for s, idx in splits.items()}, "class_counts": class_counts,
        "single_image_classes": [items.classes[c] for c in singles], "files_found": len(items.names),
        "skipped": skipped, "duplicates": duplicates,
        "split": split_report(items, keep, groups, split, class_counts, cfg),
        "placed_before": split.placed_before,   # images whose side the committed set decided (rule 3)
        "mean": mean.tolist(), "std": std.tolist(), "shards": entries, "sources": sources,
        "labels": {t.path.name: shard_format.encode_labels(t.labels) for t in tasks},
    }


def _build(items: Items, cfg: PreprocessConfig, build: Path, workers: Optional[int], progress: bool,
           t0: float, reuse: Optional[ReuseIndex] = None, prior: Optional[dict] = None) -> tuple[dict, dict]:
    """Decode (or reuse), split and write every shard into ``build``: (the manifest to commit, the work done).

    ``prior`` (SHA-256 -> was val) holds the committed set's sides, which the split keeps (rule 3).

    The staging file and the row journal stay in ``build`` when this fails:
    the caller keeps them for the next run (:func:`pipeline.building.reuse.keep_for_resume`).
    """
    workers = max(1, workers or cpu_count())
    staging = build / STAGING
    row_bytes = cfg.size * cfg.size * 3
    timings = {"discover_s": time.perf_counter() - t0}
    with disk_errors(staging), open(staging, "wb") as fh:
        fh.truncate(len(items.names) * row_bytes)  # sparse until written; never in RAM
    pool = None
    with disk_errors(build / ROW_JOURNAL):
        journal = RowJournal(build / ROW_JOURNAL, to_dict(cfg), row_bytes)
    try:
        pool = TaskPool(workers, (cfg, str(staging), str(items.root), reuse if reuse else None))
        t1 = time.perf_counter()
        with disk_errors(staging):
            done = _decode_all(items, pool, progress, cfg.size, journal, workers)
        timings["phash_cpu_s"] = done.phash_s
        timings["decode_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        manifest = _split_and_write(items, cfg, build, pool, done, progress, timings, prior)
    finally:
        journal.close()
        if pool is not None:
            pool.close()
    timings["write_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    timings["images_per_s"] = len(items.names) / timings["total_s"]
    manifest.update(timings=timings, workers=workers, environment=environment(with_torch=False))
    ok = sum(1 for r in done.reasons if not r)
    work = {"decoded": ok - done.reused, "reused": done.reused,
            "removed": len(reuse.set_digests - set(done.hashes)) if reuse is not None else 0, "unread": done.unread}
    return manifest, work


def _stale_reason(out: Path, manifest: Optional[dict], fingerprint: str, options: dict) -> Optional[str]:
    """Why the set in ``out`` must be (re)built, or None when it is up to date and intact."""
    if manifest is None:
        older = older_manifest(out)
        if older is None:
            return "no complete set"
        manifest = {"split_rule": older.get("split_rule", 1)}
    if manifest.get("split_rule") not in COMPATIBLE_RULES:
        return (f"the split rule changed (rule {manifest.get('split_rule', 1)} -> {SPLIT_RULE}: near-duplicates "
                f"kept on one side, each image placed by its own content)")
    if manifest.get("fingerprint") != fingerprint:
        return "the images changed"
    if manifest.get("options") != options:
        return "the options changed"
    try:
        shard_format.check_set(out, manifest)
    except shard_format.ShardError as exc:
        return str(exc).split(";")[0]
    return None


def _check_out(out: Path) -> None:
    expect_folder(out, "--out, the shard folder", "pass --out with a folder (new, or one preprocess wrote)")


def _update_set(items: Items, out: Path, cfg: PreprocessConfig, fingerprint: str, source: str,
                workers: Optional[int], force: bool, progress: bool, t0: float, rehash: bool = False) -> dict:
    """Bring the set in ``out`` up to date: the up-to-date test, then :func:`_build` inside a
    :class:`~pipeline.building.commit.SetUpdate` (lock, leftovers, ownership, commit)."""
    options = to_dict(cfg)
    _check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: cannot write shards there ({exc.strerror}); pass --out with a writable "
                        f"folder") from None
    # lock; what a killed build staged kept for reuse, its other leftovers removed; ownership checked
    with SetUpdate(out, salvage=keep_for_resume) as update:
        reason = "--force" if force else "--rehash" if rehash else _stale_reason(out, update.manifest, fingerprint,
                                                                                    options)
        if reason is None:
            drop_resume(out)
            return {**update.manifest, "up_to_date": True}
        rebuilding = update.replaces_a_set
        if rebuilding:
            logger.warning("%s: rebuilding the shard set (%s)", out, reason)
        reuse = None if force else _reuse_index(out, update.manifest, options, cfg, by_stat=not rehash)
        prior = _prior_sides(out, update.manifest, cfg)
        try:
            manifest, work = _build(items, cfg, update.start(), workers, progress, t0, reuse, prior)
        except BaseException:   # Ctrl-C, a full disk, a bug: the set is untouched, the decoded rows kept
            if journaled(update.build / ROW_JOURNAL):
                logger.warning("%s: the images decoded so far are kept; preprocess into it again continues "
                               "from them", out)
            raise
        manifest.update(fingerprint=fingerprint, options=options, source=source)
        update.commit(manifest)
        drop_resume(out)
    logger.info("preprocess: %d samples -> %s in %.1f s (%d decoded, %d reused, %d removed, %d known unchanged "
                "unread)", len(items.names), out, manifest["timings"]["total_s"], work["decoded"], work["reused"],
                work["removed"], work["unread"])
    return {**manifest, "up_to_date": False, "rebuilt_because": reason if rebuilding else None, "work": work}


def _prior_sides(out: Path, manifest: Optional[dict], cfg: PreprocessConfig) -> Optional[dict]:
    """The committed set's sides, which this build keeps (split rule 3), when it was split with this
    seed and val share; None (a split from scratch) when there is no set or the user asked for another split."""
    if manifest is None or manifest.get("split_rule") not in COMPATIBLE_RULES:
        return None   # no set, or one split under rule 1: its rebuild says why the split is drawn anew
    options = manifest.get("options", {})
    if options.get("seed") != cfg.seed or options.get("val_frac") != cfg.val_frac:
        logger.warning("%s: the split is drawn anew (--seed or --val-frac differ from the set's): images may move "
                       "between train and val", out)
        return None
    return committed_sides(out, manifest)


def _reuse_index(out: Path, manifest: Optional[dict], options: dict, cfg: PreprocessConfig,
                 by_stat: bool = True) -> ReuseIndex:
    """Rows this build need not decode: the committed set's (once its SHA-256s check) and those of
    interrupted builds, all with the same pixel options; with ``by_stat``, the files the set holds
    unchanged by their size, mtime and inode need not even be read."""
    reuse = ReuseIndex(cfg.size * cfg.size * 3)
    if manifest is not None and pixel_options(manifest["options"]) == pixel_options(options):
        try:
            shard_format.check_set(out, manifest)
            reuse.add_set(out, manifest, options, by_stat=by_stat)
        except shard_format.ShardError as exc:
            logger.warning("%s: not reusing the current shards (%s)", out, str(exc).split(";")[0])
    for staging, journal in resume_pairs(out):
        n = reuse.add_resume(staging, journal, options)
        if n:
            logger.warning("%s: continuing from the %d rows an interrupted build had decoded", out, n)
    return reuse


def preprocess(data_dir: Path, out: Path, cfg: PreprocessConfig, workers: Optional[int] = None,
               force: bool = False, progress: bool = False, rehash: bool = False) -> dict:
    """Decode ``data_dir`` into a shard set in ``out``.

    Args:
        data_dir: one sub-folder per class.
        out: shard folder (created).
        cfg: size, fit, split and shard options.
        workers: decode processes (default: every CPU).
        force: rebuild even when the set is up to date.
        rehash: read and hash every file, trusting no recorded size, mtime
            and inode (a build otherwise reads only the files the set does
            not hold unchanged).
        progress: tqdm bars on stderr.

    Returns:
        The manifest, with ``up_to_date: True`` when nothing was done,
        ``rebuilt_because`` saying why a set that was there was rebuilt, and
        ``work``: ``{"decoded", "reused", "removed"}`` image counts.

    Raises:
        DatasetError: missing folder or no images.
        UserError: ``out`` is not writable, holds foreign shard-like files,
            or another preprocess is writing there.
        DiskFullError: no space left on device (the previous set is kept).
    """
    t0 = time.perf_counter()
    _check_out(out)  # before discovery, which can take a while on a large folder
    disc = discover(Path(data_dir), max(1, workers or cpu_count()))
    return _update_set(Items.from_discovery(disc), Path(out), cfg, disc.fingerprint(), str(Path(data_dir).resolve()),
                  workers, force, progress, t0, rehash)


def write_set(samples: Iterable, class_names: Sequence[str], out: Path, cfg: PreprocessConfig = PreprocessConfig(),
              *, workers: Optional[int] = None, force: bool = False, progress: bool = False,
              rehash: bool = False) -> dict:
    """Build a shard set from any iterable of samples, exactly as ``preprocess`` does from folders.

    The same decode (size, fit, minimum side, bomb guard), SHA-256 dedup,
    near-duplicate groups, split by content, shard format, manifest, ownership and atomic commit:
    ``preprocess`` is this function fed from a class-folder tree.

    Writing into a set again grows (or shrinks) it: samples whose bytes
    (the file's, the encoded image's, or an array's shape and pixels) the
    set already holds are read back, not decoded, and the result is the set
    a build of all the samples from scratch would write.

    Args:
        samples: ``(image, label)`` or ``(image, label, name)`` tuples. An
            image is a file path, the bytes of an encoded file, or an
            (H, W, 3) uint8 RGB array; a label is a class index or name; a
            name is what the shards and skip lists record (default: the
            path, or ``sample-000042``).
        class_names: label -> class name.
        out: the shard folder (created).
        cfg: size, fit, split and shard options.
        workers: decode processes (default: every CPU).
        force: rebuild even when an identical set is there.
        rehash: as :func:`preprocess`.
        progress: tqdm bars on stderr.

    Returns:
        The manifest, with ``up_to_date`` as :func:`preprocess` gives it.

    Raises:
        DatasetError: no samples, or a label outside the classes.
        UserError, DiskFullError: as :func:`preprocess`.
    """
    t0 = time.perf_counter()
    items = Items.from_samples(samples, list(class_names))
    return _update_set(items, Path(out), cfg, items.fingerprint(), "python samples", workers, force, progress, t0,
                       rehash)
