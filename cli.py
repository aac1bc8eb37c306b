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

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


@click.group(context_settings=CONTEXT)
@click.option("-v", "--verbose", help="Log at INFO level (DEBUG with -vv).", count=True)
def main(verbose: int) -> None:
    """Decode images once into HDF5 shards, then train at memory speed."""
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
def info() -> None:
    """Versions, PIL backend (Pillow-SIMD?), libjpeg-turbo, CPUs and CUDA devices."""
    from pipeline.env import environment

    env = environment()
    click.echo(f"python        {env['python']}")
    click.echo(f"torch         {env['torch']}")
    click.echo(f"h5py          {env['h5py']} (HDF5 {env['hdf5']})")
    click.echo(f"numpy         {env['numpy']}")
    click.echo(f"PIL           {env['pil_version']} ({'Pillow-SIMD' if env['pillow_simd'] else 'Pillow'})")
    click.echo(f"libjpeg-turbo {'yes' if env['libjpeg_turbo'] else 'no'} (libjpeg {env['jpeg_version']})")
    click.echo(f"CPU           {env['cpu_model']} x {env['cpu_count']}")
    click.echo(f"CUDA devices  {', '.join(env['cuda_devices']) or 'none'}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/lookalike"), help="Destination folder.")
@click.option("--scale", type=float, default=1.0, help="Times the real per-class counts (1.0 = 16,764 images).")
@click.option("--seed", type=int, default=0, help="Same seed, same bytes.")
@click.option("--workers", type=int, default=None, help="Processes [default: CPU count].")
def synth(out: Path, scale: float, seed: int, workers: int | None) -> None:
    """Generate the embedded look-alike Simpsons set (42 classes, real counts and quirks)."""
    from pipeline.config import SynthConfig
    from pipeline.synth import generate

    try:
        summary = generate(out, SynthConfig(scale=scale, seed=seed), workers=workers, progress=True)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    click.echo(f"wrote {summary['images']} images ({summary['bytes'] / 1e6:.1f} MB) in "
               f"{summary['classes']} classes to {out}; quirks: {summary['quirks']}")


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The given folder, a notebook location of the real set, or the look-alike (made if absent)."""
    from pipeline.config import SynthConfig
    from pipeline.discover import default_data_dir
    from pipeline.synth import generate

    if data_dir is not None:
        return data_dir
    path, how = default_data_dir()
    click.echo(f"no --data-dir: using {how}", err=True)
    if not path.is_dir():
        click.echo(f"generating the look-alike set in {path} (once)", err=True)
        generate(path, SynthConfig(), progress=True)
    return path


@main.command()
@click.option("--size", type=int, default=128, help="Square output side in pixels (64 or 128 in the notebooks).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="One sub-folder per class [default: characters_train/ if present, else the look-alike set].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("shards"), help="Shard folder.")
@click.option("--val-frac", type=float, default=0.15, help="Validation share of each class.")
@click.option("--seed", type=int, default=42, help="Seeds the split and the shard order.")
@click.option("--fit", type=click.Choice(["squash", "pad", "crop"]), default="squash",
              help="Aspect policy: squash (the notebooks'), pad or crop.")
@click.option("--shard-mb", type=float, default=64.0, help="Target shard size in MB.")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none",
              help="HDF5 compression (none is fastest to read).")
@click.option("--workers", type=int, default=None, help="Decode processes [default: CPU count].")
@click.option("--force", is_flag=True, help="Rebuild even if the shards are up to date.")
def preprocess(size, data_dir, out, val_frac, seed, fit, shard_mb, compression, workers, force) -> None:
    """Decode every image once, resize in parallel, write stratified HDF5 shards."""
    from pipeline.config import PreprocessConfig
    from pipeline.discover import DatasetError
    from pipeline.preprocess import preprocess as run

    try:
        cfg = PreprocessConfig(size=size, fit=fit, val_frac=val_frac, seed=seed, shard_mb=shard_mb,
                               compression=None if compression == "none" else compression)
        m = run(resolve_data_dir(data_dir), out, cfg, workers=workers, force=force, progress=True)
    except (DatasetError, ValueError, OSError) as exc:
        _fail(str(exc))
    if m["up_to_date"]:
        click.echo(f"{out}: up to date ({m['counts']['train']} train, {m['counts']['val']} val); "
                   f"--force rebuilds")
        return
    t = m["timings"]
    click.echo(f"{out}: {m['counts']['train']} train / {m['counts']['val']} val images at {size}x{size} "
               f"in {sum(1 for _ in m['shards'])} shards")
    click.echo(f"skipped {len(m['skipped'])} files, dropped {len(m['duplicates'])} duplicates "
               f"(reasons in {out}/manifest.json)")
    for s in m["skipped"][:10]:
        click.echo(f"  skipped {s['path']}: {s['reason']}")
    if len(m["skipped"]) > 10:
        click.echo(f"  ... and {len(m['skipped']) - 10} more")
    if m["single_image_classes"]:
        click.echo(f"single-image classes (train only): {', '.join(m['single_image_classes'])}")
    click.echo(f"{m['files_found']} files in {t['total_s']:.1f} s ({t['images_per_s']:.0f} images/s, "
               f"{m['workers']} workers)")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("shards"), help="Shard folder.")
def verify(out: Path) -> None:
    """Re-check shard hashes, counts, labels and shapes; non-zero exit names the bad shard."""
    from pipeline.shard_format import ShardError, read_manifest
    from pipeline.shard_format import verify as check

    try:
        problems = check(out)
    except ShardError as exc:
        _fail(str(exc))
    if problems:
        for p in problems:
            click.echo(f"BAD {p}", err=True)
        sys.exit(1)
    m = read_manifest(out)
    click.echo(f"{out}: {len(m['shards'])} shards OK ({m['counts']['train']} train, {m['counts']['val']} val)")


if __name__ == "__main__":
    main()
