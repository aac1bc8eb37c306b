#!/usr/bin/env python
"""simpsons-shards command line: the only module that speaks click and prints.

    python cli.py info
    python cli.py synth --out data/lookalike --scale 1.0
    python cli.py preprocess --size 128
    python cli.py verify
    python cli.py train --amp
    python cli.py evaluate runs/default/best.pt
    python cli.py predict runs/default/best.pt some/image.jpg
    python cli.py bench
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from pipeline.common import config as pconfig
from pipeline.common.errors import UserError
from pipeline.common.untrusted import printable

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


# The names model.MODELS registers, spelled out so that `--help` and the
# data commands do not import torch (tests/networks/test_model.py checks they agree).
MODELS = click.Choice(["bart", "cnn4conv", "resnet"])
DEVICES = click.Choice(list(pconfig.DEVICES))


def echo(text="", err: bool = False) -> None:
    """``click.echo`` of lines that may carry text from someone else's files (class names, paths):
    control characters escaped, newlines kept (docs/guarantees.md "Security")."""
    click.echo("\n".join(printable(line) for line in str(text).split("\n")), err=err)


class _Printable(logging.Formatter):
    """Log lines with control characters escaped, as :func:`echo` prints."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))


class Bounded(click.ParamType):
    """A number in the named option's range (``pipeline.common.config.RANGES``, where the configs check it
    too): inf and nan are refused where they enter, as a usage error."""

    def __init__(self, option: str) -> None:
        self.range = pconfig.RANGES[option]
        self.name = "integer" if self.range.integer else "number"

    def convert(self, value, param, ctx):
        try:
            v = int(value) if self.range.integer and not isinstance(value, float) else float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a{'n integer' if self.range.integer else ' number'}", param, ctx)
        if not self.range.holds(v):
            self.fail(f"{value} is not a {'whole' if self.range.integer else 'finite'} number in "
                      f"{self.range.text()}", param, ctx)
        return v


class Widths(click.ParamType):
    """Four channel counts, comma-separated (``32,48,96,192``), each in the ``width`` range."""

    name = "widths"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return pconfig.check_widths(tuple(int(p) for p in str(value).split(",")))
        except ValueError:   # not numbers, or a ConfigError from the one rule
            self.fail(f"{value!r} is not 4 comma-separated whole numbers in {pconfig.RANGES['width'].text()} "
                      f"(the stem and three stages, e.g. 32,64,128,256)", param, ctx)


SIZE = Bounded("size")   # and a multiple of 16: config.check_image_size, one rule for every stage


class Location(click.ParamType):
    """A shard set's place: a local folder (a Path; ``file://`` URLs too), or an ``s3://``, ``gs://`` or
    ``http(s)://`` URL (kept as text: a Path would fold its ``//``)."""

    name = "folder-or-url"

    def convert(self, value, param, ctx):
        from pipeline.storage.store import is_url, local_folder

        if isinstance(value, Path) or not is_url(str(value)):
            return Path(value)
        return local_folder(str(value)) or str(value)


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        try:
            return value if isinstance(value, int) else pconfig.parse_bytes(value)
        except pconfig.ConfigError as exc:
            self.fail(str(exc), param, ctx)


def cache_options(command):
    """``--cache-dir`` and ``--cache-limit``: where a set in object storage is cached on this node."""
    command = click.option("--cache-limit", type=ByteSize(), default="0",
                           help="Bytes the cached shards may take, e.g. 20GB; least recently used go first "
                                "(0: no limit but the disk's).")(command)
    return click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                        help="This node's cache of shards fetched from object storage "
                             "[default: ~/.cache/simpsons-shards].")(command)


def storage_config(cache_dir, cache_limit) -> "pconfig.StorageConfig":
    return pconfig.StorageConfig(cache_dir=str(cache_dir or ""), cache_limit=int(cache_limit))


class Group(click.Group):
    """Exit codes: 0 done; 1 a user error, printed as one line (``error: ...``)
    naming the file and the fix; 2 a usage error (click), or ``predict`` with
    unreadable images; 130 Ctrl-C, 143 SIGTERM. Anything else is a bug and keeps its
    traceback (CUDA OOM and NCCL errors included)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # what was written is whole (train has said where to resume)
            signum = getattr(exc, "signum", 2)      # Ctrl-C, or SIGTERM (a scheduler's preemption) in train
            echo("interrupted" if signum == 2 else f"stopped by {exc}", err=True)
            ctx.exit(128 + signum)


@click.group(cls=Group, context_settings=CONTEXT)
@click.option("-v", "--verbose", help="Log at INFO level (DEBUG with -vv).", count=True)
def main(verbose: int) -> None:
    """Decode images once into HDF5 shards, then train at memory speed."""
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Printable("%(levelname)s %(name)s: %(message)s"))


@main.command()
def info() -> None:
    """Versions, PIL backend (Pillow-SIMD?), libjpeg-turbo, CPUs and CUDA devices."""
    from pipeline.common.env import environment

    env = environment()
    echo(f"python        {env['python']}")
    echo(f"torch         {env['torch']}")
    echo(f"h5py          {env['h5py']} (HDF5 {env['hdf5']})")
    echo(f"numpy         {env['numpy']}")
    echo(f"PIL           {env['pil_version']} ({'Pillow-SIMD' if env['pillow_simd'] else 'Pillow'})")
    echo(f"libjpeg-turbo {'yes' if env['libjpeg_turbo'] else 'no'} (libjpeg {env['jpeg_version']})")
    echo(f"CPU           {env['cpu_model']} x {env['cpu_count']}")
    echo(f"CUDA devices  {', '.join(env['cuda_devices']) or 'none'}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/lookalike"), help="Destination folder.")
@click.option("--scale", type=Bounded("scale"), default=1.0,
              help="Times the real per-class counts (1.0 = 16,764 images).")
@click.option("--seed", type=int, default=0, help="Same seed, same bytes.")
@click.option("--workers", type=Bounded("processes"), default=None, help="Processes [default: CPU count].")
def synth(out: Path, scale: float, seed: int, workers: int | None) -> None:
    """Generate the embedded look-alike Simpsons set (42 classes, real counts and quirks)."""
    from pipeline.common.config import SynthConfig
    from pipeline.common.errors import expect_folder
    from pipeline.tools.synth import generate

    expect_folder(out, "--out", "pass --out with a new or empty folder")
    try:
        summary = generate(out, SynthConfig(scale=scale, seed=seed), workers=workers, progress=True)
    except (ValueError, OSError) as exc:
        raise UserError(f"{out}: {exc}") from None
    echo(f"wrote {summary['images']} images ({summary['bytes'] / 1e6:.1f} MB) in "
               f"{summary['classes']} classes to {out}; quirks: {summary['quirks']}")


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The given folder, a notebook location of the real set, or the look-alike (made if absent)."""
    from pipeline.common.config import SynthConfig
    from pipeline.building.discover import default_data_dir
    from pipeline.tools.synth import generate

    if data_dir is not None:
        return data_dir
    path, how = default_data_dir()
    echo(f"no --data-dir: using {how}", err=True)
    if not path.is_dir():
        echo(f"generating the look-alike set in {path} (once)", err=True)
        generate(path, SynthConfig(), progress=True)
    return path


@main.command()
@click.option("--size", type=SIZE, default=128,
              help="Square output side in pixels, a multiple of 16 (64 or 128 in the notebooks).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="One sub-folder per class [default: characters_train/ if present, else the look-alike set].")
@click.option("--out", type=Location(), default=Path("shards"),
              help="Shard folder, or a URL to publish the set to (s3://bucket/set, gs://...).")
@click.option("--val-frac", type=Bounded("val_frac"), default=0.15,
              help="Validation share (of the near-duplicate groups; every class with 2+ groups gets one).")
@click.option("--seed", type=int, default=42, help="Seeds the split and the shard order.")
@click.option("--near-dup", type=Bounded("near_dup"), default=6,
              help="Images whose perceptual hashes differ in at most this many of 64 bits are one group, "
                   "kept on one side of the split (0: byte-identical files only).")
@click.option("--fit", type=click.Choice(list(pconfig.FIT_POLICIES)), default="squash",
              help="Aspect policy: squash (the notebooks'), pad or crop.")
@click.option("--shard-mb", type=Bounded("shard_mb"), default=64.0, help="Target shard size in MB.")
@click.option("--compression", type=click.Choice(list(pconfig.COMPRESSIONS)), default="none",
              help="HDF5 compression (none is fastest to read).")
@click.option("--workers", type=Bounded("processes"), default=None, help="Decode processes [default: CPU count].")
@click.option("--force", is_flag=True, help="Rebuild even if the shards are up to date.")
@click.option("--rehash", is_flag=True,
              help="Read and hash every file (a build otherwise skips reading the files the set holds with "
                   "the same size, modification time and inode).")
@cache_options
def preprocess(size, data_dir, out, val_frac, seed, near_dup, fit, shard_mb, compression, workers, force,
               rehash, cache_dir, cache_limit) -> None:
    """Decode every image once, resize in parallel, split by content, write class-balanced HDF5 shards.

    With --out s3://bucket/set the set is built in this node's cache and published: shards uploaded,
    manifest last (a reader never sees half a set)."""
    from pipeline.common.config import PreprocessConfig
    from pipeline.building.preprocess import preprocess as run

    cfg = PreprocessConfig(size=size, fit=fit, val_frac=val_frac, seed=seed, shard_mb=shard_mb,
                           compression=None if compression == "none" else compression, near_dup=near_dup)
    if isinstance(out, str):   # a URL: build here, then publish
        from pipeline.building.publish import publish

        m = publish(resolve_data_dir(data_dir), out, cfg, storage_config(cache_dir, cache_limit), workers=workers,
                    force=force, progress=True, rehash=rehash)
        if not m["published"]:
            echo(f"{out}: up to date ({m['counts']['train']} train, {m['counts']['val']} val); --force rebuilds")
            return
        echo(f"{out}: published {len(m['shards'])} shards ({m['uploaded']} uploaded, the rest already there), "
             f"manifest last")
    else:
        m = run(resolve_data_dir(data_dir), out, cfg, workers=workers, force=force, progress=True, rehash=rehash)
    if m["up_to_date"] and not m.get("published"):
        echo(f"{out}: up to date ({m['counts']['train']} train, {m['counts']['val']} val); "
                   f"--force rebuilds")
        return
    if m.get("rebuilt_because"):
        echo(f"{out}: rebuilt the shard set ({m['rebuilt_because']})")
    w = m.get("work")
    if w:
        unread = f" ({w['unread']} of them known unchanged by size, time and inode, not read)" if w["unread"] else ""
        echo(f"{w['decoded']} decoded, {w['reused']} reused{unread}, {w['removed']} removed")
    t = m["timings"]
    echo(f"{out}: {m['counts']['train']} train / {m['counts']['val']} val images at {size}x{size} "
               f"in {sum(1 for _ in m['shards'])} shards")
    echo(f"skipped {len(m['skipped'])} files, dropped {len(m['duplicates'])} duplicates "
               f"(reasons in {out}/manifest.json)")
    for s in m["skipped"][:10]:
        echo(f"  skipped {s['path']}: {s['reason']}")
    if len(m["skipped"]) > 10:
        echo(f"  ... and {len(m['skipped']) - 10} more")
    if m["single_image_classes"]:
        echo(f"classes of one image or one group (train only): {', '.join(m['single_image_classes'])}")
    _split_summary(m["split"], out, m.get("placed_before", 0))
    echo(f"{m['files_found']} files in {t['total_s']:.1f} s ({t['images_per_s']:.0f} images/s, "
               f"{m['workers']} workers)")


def _split_summary(sp: dict, out: Path, placed_before: int = 0) -> None:
    """What preprocess says of its split: groups, cross-class groups, fall-backs, the most uneven classes."""
    echo(f"near-duplicates (within {sp['near_dup']} bits): {sp['images_in_groups']} images in {sp['groups']} "
               f"groups (largest {sp['largest_group']}), each group on one side; val share {sp['val_share']:.1%}")
    cross = sp["cross_class_groups"]
    if cross:
        echo(f"{len(cross)} group(s) span classes (same frame under two labels?), listed in "
                   f"{out}/manifest.json under split.cross_class_groups:")
        for g in sorted(cross, key=lambda g: len(g["paths"]))[:5]:
            more = f" (+{len(g['paths']) - 4} more)" if len(g["paths"]) > 4 else ""
            echo(f"  {' ~ '.join(g['paths'][:4])}{more}")
    if sp["fallbacks"]:
        echo(f"{len(sp['fallbacks'])} small-class group(s) placed by the fall-back, not their score "
                   f"(split.fallbacks in {out}/manifest.json):")
    for f in sp["fallbacks"][:5]:
        echo(f"  {f['paths'][0]}{' (+%d)' % (len(f['paths']) - 1) if len(f['paths']) > 1 else ''} -> "
                   f"{f['split']}: {f['why']}")
    if len(sp["fallbacks"]) > 5:
        echo(f"  ... and {len(sp['fallbacks']) - 5} more")
    if placed_before:
        kept = sp.get("kept", [])
        echo(f"{placed_before} images kept the side they had in the set; {len(kept)} group(s) placed "
                   f"otherwise than a build from scratch would (split.kept in {out}/manifest.json)")
        for k in kept[:5]:
            echo(f"  {k['paths'][0]}{' (+%d)' % (len(k['paths']) - 1) if len(k['paths']) > 1 else ''} -> "
                       f"{k['split']}: {k['why']}")
    worst = ", ".join(f"{d['class']} {d['val_share']:.0%} of {d['images']}" for d in sp["class_val_share_deviation"])
    echo(f"val share furthest from --val-frac: {worst}")


@main.command()
@click.option("--out", type=Location(), default=Path("shards"), help="Shard folder or URL.")
@cache_options
def verify(out, cache_dir, cache_limit) -> None:
    """Re-check shard hashes, counts, labels and shapes; non-zero exit names the bad shard."""
    from pipeline.shardset.sets import verify as check

    problems, m = check(out, storage_config(cache_dir, cache_limit))
    if problems:
        for p in problems:
            echo(f"BAD {p}", err=True)
        sys.exit(1)
    echo(f"{out}: {len(m['shards'])} shards OK ({m['counts']['train']} train, {m['counts']['val']} val)")


# What --resume takes from the checkpoint (parameter -> pipeline.training.checkpoint.RECIPE_KEYS name); a value
# given with it must equal the checkpoint's.
RECIPE_OPTIONS = {"model_name": "model", "recipe": "recipe", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
                  "augment": "augment", "balance": "balance", "tta": "tta", "ema": "ema", "min_res": "min_res",
                  "widths": "widths"}


@main.command()
@click.option("--shards", type=Location(), default=Path("shards"),
              help="Shard folder [with --resume: the checkpoint's].")
@click.option("--model", "model_name", type=MODELS, default="resnet",
              help="Architecture: resnet (compact, fastest to accuracy here), or the notebooks' bart and cnn4conv.")
@click.option("--recipe", type=click.Choice(list(pconfig.RECIPES)), default="default",
              help="default: best measured; notebook: the model's notebook hyper-parameters exactly.")
@click.option("--epochs", type=Bounded("epochs"), default=None,
              help="Override the recipe's epochs (with --resume: extend the run to this many).")
@click.option("--batch-size", type=Bounded("batch_size"), default=None, help="Override the recipe's batch size.")
@click.option("--lr", type=Bounded("lr"), default=None, help="Override the recipe's learning rate.")
@click.option("--seed", type=int, default=None, help="Seeds init, order, workers, augmentation [default: recipe's].")
@click.option("--amp/--no-amp", default=None,
              help="Mixed precision: bf16 (or fp16 + GradScaler) on CUDA, bf16 on CPUs that have it [default: off; "
                   "with --resume the checkpoint's].")
@click.option("--device", type=DEVICES, default="auto", help="Where to train.")
@click.option("--workers", type=Bounded("workers"), default=None,
              help="DataLoader workers per process [default: CPU count / processes on this node].")
@click.option("--cache", type=click.Choice(list(pconfig.CACHE_MODES)), default="auto",
              help="Keep the split resident on the device or in RAM, or stream from shards.")
@click.option("--augment/--no-augment", default=None, help="Flip + small crop on the device [default: recipe's].")
@click.option("--balance", type=Bounded("balance"), is_flag=False, flag_value=1.0, default=None,
              help="Class-balanced sampling for the long tail: --balance (every class equally likely) or "
                   "--balance 0.5 (weights n_c^0.5) [default: recipe's].")
@click.option("--ema", type=Bounded("ema"), default=None,
              help="Validate and predict with a moving average of the weights, decay per step at most this "
                   "(0: off); early on the decay is (1+n)/(10+n) at step n, about the last tenth of the steps "
                   "so far [default: recipe's].")
@click.option("--min-res", type=Bounded("min_res"), default=None,
              help="Progressive resizing: the first epochs train at this side (px, a multiple of 8), "
                   "downsampled on the device, ramping up to the shards' side (0: off; resnet only; validation "
                   "stays at the shards' side) [default: recipe's].")
@click.option("--widths", type=Widths(), default=None,
              help="resnet's channels, stem and three stages, e.g. 32,64,128,256 (the network's own, 1.9 M "
                   "parameters) [default: recipe's: 32,48,96,192].")
@click.option("--minutes", type=Bounded("minutes"), default=0.0,
              help="Wall-time budget: stop before an epoch that would end past it (0: none).")
@click.option("--tta/--no-tta", default=None,
              help="Validate (and later predict) with each image and its mirror averaged [default: recipe's].")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the model (training epochs then drop their last partial batch).")
@click.option("--exact", is_flag=True,
              help="CUDA: no cuDNN autotune and no TF32, for bit-exact reruns (slower; CPU runs are exact anyway).")
@click.option("--sync-bn", is_flag=True, help="Under torchrun on CUDA: BatchNorm statistics over all GPUs.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/MODEL-RECIPE; with --resume the checkpoint's folder].")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue a run exactly from its last.pt or interrupted.pt (model and recipe come from it).")
@cache_options
@click.pass_context
def train(ctx, shards, model_name, recipe, epochs, batch_size, lr, seed, amp, device, workers, cache, augment,
          balance, ema, min_res, widths, minutes, tta, compile_, exact, sync_bn, out, resume, cache_dir,
          cache_limit) -> None:
    """Train a reference model on the shards (metrics, checkpoints, curves in the run folder).

    Under `torchrun --nproc_per_node=N cli.py train ...` it trains with
    DistributedDataParallel; --batch-size is per process.
    """
    from pipeline.training.checkpoint import load_checkpoint
    from pipeline.common.config import make_plan
    from pipeline.common.env import default_workers
    from pipeline.training.checkpoint import check_given, resume_shards
    from pipeline.training.train import resume_plan
    from pipeline.training.train import train as run

    workers = default_workers() if workers is None else workers
    ckpt = None
    given = lambda name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    if resume is not None:
        ckpt = load_checkpoint(resume, for_resume=True)
        check_given(ckpt, resume, {key: ctx.params[p] for p, key in RECIPE_OPTIONS.items() if given(p)})
        shards = resume_shards(ckpt, resume, shards if given("shards") else None)
        plan = resume_plan(ckpt, epochs=epochs, device=device, amp=amp, compile=compile_, exact=exact,
                           sync_bn=sync_bn, out=str(out or resume.parent), workers=workers, cache=cache,
                           minutes=minutes)
    else:
        plan = make_plan(model_name, recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augment=augment,
                         balance=balance, workers=workers, cache=cache, device=device, amp=bool(amp),
                         compile=compile_, exact=exact, sync_bn=sync_bn, out=out, tta=tta, minutes=minutes, ema=ema,
                         min_res=min_res, widths=widths)
    summary = run(shards, plan, resume=resume, progress=True, say=echo, checkpoint=ckpt,
                  storage=storage_config(cache_dir, cache_limit))
    best = summary["best"]
    if summary["rank"] != 0:
        return
    if best:
        echo(f"best epoch {best['epoch']}: val acc {best['val_acc']:.3f}, macro-F1 {best['val_f1']:.3f} "
                   f"({summary['device']}, {summary['amp']}); checkpoints, metrics.csv, curves.png in {summary['out']}")
    elif not summary["has_val"]:
        echo(f"no validation split in {shards} (preprocessed with --val-frac 0): no val metrics and no "
                   f"best.pt; the model is {summary['out']}/last.pt")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--shards", type=Location(), default=Path("shards"), help="Shard folder or URL.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", help="Which shard split.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Evaluate raw images instead: class folders, or a flat folder of <class>_<n>.jpg.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where confusion_matrix.png goes [default: the checkpoint's folder].")
@click.option("--device", type=DEVICES, default="auto")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON.")
@cache_options
def evaluate(checkpoint, shards, split, data_dir, out, device, json_path, cache_dir, cache_limit) -> None:
    """Accuracy, macro-F1, per-class precision/recall/F1 and a confusion matrix."""
    from pipeline.inference.evaluate import Classifier, evaluate_dir, evaluate_shards

    from pipeline.common.errors import expect_file_target, expect_folder

    out = expect_folder(out or checkpoint.parent, "--out", "pass --out with a folder for the report's files")
    json_path = json_path and expect_file_target(json_path, "--json")
    clf = Classifier.from_checkpoint(checkpoint, device)
    rep = (evaluate_dir(clf, data_dir, out, progress=True) if data_dir
           else evaluate_shards(clf, shards, split, out, storage=storage_config(cache_dir, cache_limit)))
    if rep.get("stray_files"):
        echo(f"{data_dir}: {len(rep['stray_files'])} file(s) outside the class folders, not scored: "
                   f"{', '.join(rep['stray_files'][:5])}{' ...' if len(rep['stray_files']) > 5 else ''}", err=True)
    width = max(len(n) for n in rep["per_class"]) if rep["per_class"] else 10
    echo(f"{'class':<{width}}  precision  recall     f1  support")
    for name, r in rep["per_class"].items():
        echo(f"{name:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1-score']:5.3f}  {int(r['support']):7d}")
    echo(f"{rep['source']}: {rep['images']} images, accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f}")
    if rep["absent_predictions"]:
        echo("predicted into classes absent from these images (counted as misses, not as classes): "
                   + ", ".join(f"{n} {k}" for n, k in rep["absent_predictions"].items()))
    if rep.get("unknown_classes"):
        echo(f"left out {rep['left_out']} images of classes the model does not know: "
                   f"{', '.join(rep['unknown_classes'])}")
    for f in rep.get("failed", []):
        echo(f"could not read {f['path']}: {f['reason']}", err=True)
    for w in rep["worst_confusions"][:5]:
        echo(f"  confused {w['true']} -> {w['predicted']}: {w['count']} ({100 * w['share']:.0f}% of {w['true']})")
    echo(f"confusion matrix: {rep['confusion_matrix_png']}; per-class table: {rep['per_class_csv']}")
    if json_path:
        from pipeline.common.files import write_text

        write_text(json_path, json.dumps(rep, indent=2) + "\n")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[CHECKPOINT] PATHS...")
@click.option("--top-k", type=Bounded("top_k"), default=3, help="Classes shown per image.")
@click.option("--device", type=DEVICES, default="auto")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), default=None,
              help="Run this exported .onnx file with ONNX Runtime instead of a checkpoint (then every "
                   "argument is an image or folder).")
def predict(paths, top_k, device, onnx_path) -> None:
    """Top-k classes with probabilities for image files or folders: CHECKPOINT PATHS..., or --onnx FILE PATHS..."""
    from pipeline.inference.evaluate import Classifier, predict_paths

    if onnx_path is not None:
        from pipeline.inference.export import OnnxClassifier

        clf = OnnxClassifier.load(onnx_path)
    else:
        if len(paths) < 2:
            raise click.UsageError("give a checkpoint and at least one image (or --onnx FILE and images)")
        clf = Classifier.from_checkpoint(paths[0], device)
        paths = paths[1:]
    results = predict_paths(clf, list(paths), top_k)
    if not results:
        raise UserError(f"no image files found in {', '.join(map(str, paths))}")
    for r in results:
        if "error" in r:
            echo(f"{r['path']}: ERROR {r['error']}")
        else:
            echo(f"{r['path']}: " + ", ".join(f"{n} {p:.3f}" for n, p in r["top"]))
    if any("error" in r for r in results):
        sys.exit(2)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The .onnx file [default: the checkpoint's name with .onnx, beside it].")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Shard set whose images check the export [default: the run's].")
def export(checkpoint, out, shards) -> None:
    """Export a checkpoint to ONNX (uint8 NHWC images in, probabilities out), checked against ONNX Runtime."""
    from pipeline.inference.export import PROB_TOL, export_onnx

    from pipeline.common.errors import expect_file_target

    out = expect_file_target(out or Path(checkpoint).with_suffix(".onnx"), "--out")
    r = export_onnx(checkpoint, out, shards)
    m = r["metadata"]
    echo(f"{out}: {m['model']} for {len(json.loads(m['class_names']))} classes at {m['image_size']} px "
               f"({r['bytes'] / 1e6:.1f} MB; {'averaged' if m['averaged_weights'] == 'true' else 'trained'} weights"
               f"{', test-time flip' if m['tta'] == 'true' else ''})")
    echo(f"checked on {r['check_images']} shard images: ONNX Runtime = PyTorch within {r['max_prob_diff']:.1e} "
               f"in probabilities (tolerance {PROB_TOL:g}), {r['max_logit_diff']:.1e} in logits")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Images to measure [default: the embedded look-alike set].")
@click.option("--size", type=SIZE, default=128, help="Square image side in pixels, a multiple of 16.")
@click.option("--model", "model_name", type=MODELS, default="bart",
              help="Network for the training-step stage.")
@click.option("--workers", type=Bounded("processes"), default=None,
              help="Workers for every parallel variant [default: CPU count].")
@click.option("--batch-size", type=Bounded("batch_size"), default=None,
              help="The project's batch size [default: 128, --quick 32].")
@click.option("--limit", type=Bounded("limit"), default=None, help="At most this many images [default: all, --quick 600].")
@click.option("--steps", type=Bounded("steps"), default=None,
              help="Timed training steps per variant [default: 5, --quick 2].")
@click.option("--quick", is_flag=True, help="Smoke run: under a minute on 2 cores.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write every figure, the options and the environment as JSON.")
def bench(data_dir, size, model_name, workers, batch_size, limit, steps, quick, json_path) -> None:
    """Throughput of every stage against the notebooks' way, side by side in one run."""
    from pipeline.tools.bench import run_bench
    from pipeline.common.config import BenchConfig, check_image_size

    from pipeline.common.errors import expect_file_target

    size = check_image_size(size)  # before resolve_data_dir, which may generate the look-alike set (~45 s)
    json_path = json_path and expect_file_target(json_path, "--json")
    cfg = BenchConfig.create(resolve_data_dir(data_dir), size=size, model=model_name, workers=workers,
                             batch_size=batch_size, limit=limit, steps=steps, quick=quick)
    r = run_bench(cfg, progress=lambda m: echo(m, err=True))
    env = r["environment"]
    echo(f"bench: {cfg.data_dir} at {size}px, {cfg.workers} workers, batch {cfg.batch_size}, device {r['device']}")
    echo(f"       {env['cpu_model']} x {env['cpu_count']}, PIL {env['pil_version']} "
               f"({'Pillow-SIMD' if env['pillow_simd'] else 'Pillow'}, libjpeg-turbo {env['libjpeg_turbo']}), "
               f"torch {env['torch']}")
    p = r["preprocess"]
    echo("\n1. preprocess                      images/s   peak MB")
    echo(f"   project (parallel, draft)     {p['project']['images_per_s']:10.0f}  {p['project']['peak_mb']:8.0f}")
    echo(f"   notebooks' loop               {p['notebook_loop']['images_per_s']:10.0f}  {p['notebook_loop']['peak_mb']:8.0f}")
    echo(f"   decode limit (decode only)    {p['decode_limit']['images_per_s']:10.0f}  {p['decode_limit']['peak_mb']:8.0f}")
    echo(f"   project / notebooks'          {p['ratio']:9.2f}x")
    echo(f"   decode limit / notebooks'     {p['limit_ratio']:9.2f}x")
    echo(f"   project / decode limit        {100 * p['project_vs_limit']:9.1f}%")
    ph = p["project"]["phases"]
    echo(f"   project's phases: {ph['before_s']:.2f} s before decoding, {ph['decode_s']:.2f} s decoding "
               f"({p['decode_phase_vs_limit']:.2f}x the decode limit's time), {ph['after_s']:.2f} s after "
               f"(shards {ph['shards_s']:.2f} s)")
    echo(f"   best reachable / decode limit {100 * p['best_vs_limit']:9.1f}%  (decoding at the limit, "
               f"the other phases as measured)")
    echo(f"   main process CPU per image    {p['main_cpu_us_per_image']:9.0f} us")
    for cores, c in p["ceilings"].items():
        echo(f"   on {cores:>2} cores: decode limit {c['decode_limit']:,.0f} img/s, main process caps at "
                   f"{c['main_process_cap']:,.0f} img/s ({c['bound_by']}-bound)")
    ld = r["loading"]
    rates = ld["images_per_s"]
    echo("\n2. one epoch of loading           images/s")
    for key, label in (("project_dataloader", "project DataLoader (shards)"), ("project_resident", "project resident"),
                       ("per_sample_dataset", "per-sample Dataset + torch"),
                       ("notebook_loader", "notebooks' loader (float32)"), ("decode_every_epoch", "decode every epoch"),
                       ("memory_limit_numpy", "memory limit, numpy gather"),
                       ("memory_limit_torch", "memory limit, torch gather")):
        echo(f"   {label:<29} {rates[key]:10.0f}")
    echo(f"   DataLoader / notebooks'       {ld['dataloader_vs_notebook']:9.2f}x")
    echo(f"   DataLoader / decode-every     {ld['dataloader_vs_decode']:9.2f}x")
    echo(f"   per-sample / DataLoader       {100 * ld['per_sample_vs_dataloader']:9.1f}%")
    echo(f"   resident / memory limit       {100 * ld['resident_vs_memory_limit']:9.1f}%")
    echo(f"\n3. {model_name} training step      compute img/s  end-to-end img/s  data wait")
    for key, t in r["training"].items():
        if "skipped" in t:
            echo(f"   {key:<8} skipped: {t['skipped']}")
        else:
            echo(f"   {key:<5} ({t['dtype']:<8})  {t['compute_images_per_s']:13.1f}  "
                       f"{t['end_to_end_images_per_s']:16.1f}  {100 * t['data_wait_share']:8.2f}%")
    if json_path:
        from pipeline.common.files import write_text

        write_text(json_path, json.dumps(r, indent=2, default=str) + "\n")
        echo(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
