"""simpsons-shards: decode once into HDF5 shards, train at memory speed.

The public API (README "Use from Python"); ``cli.py`` is a thin user of it:

    open_set(root) -> ShardSet          check a shard set and open it (classes, size, mean/std, counts, splits)
    ShardDataset(split)                 per-sample map-style Dataset: ds[i] -> (uint8 CHW tensor, int label)
    create_loader(split, ...)           the fast batch loader (resident or streaming, seeded, state_dict)
    DeviceTransform(mean, std, device)  normalise + augment whole batches on the device
    write_set(samples, classes, out)    build a shard set from (image, label) samples
    make_plan(model, recipe, ...)       a training run's configuration (pipeline.train.train runs it)
    Classifier.from_checkpoint(path)    model + label encoder: predict / predict_proba
    export_onnx(checkpoint, out)        the classifier as ONNX (uint8 NHWC in, probabilities out), checked
    load_checkpoint(path)               a checked, data-only checkpoint dict

Stages, one module each:
    synth         the embedded look-alike dataset (the default a new user runs on)
    discover      class-folder discovery and the skip rules for junk files
    decode        one image file -> uint8 RGB square (reduced-size JPEG decode)
    neardup       perceptual hash per stored image, near-duplicate groups
    split         train/val split by content (whole groups) and class-interleaved shard plan
    shard_format  the HDF5 shard format: write, open, check, verify (owner module)
    shard_commit  a set folder's ownership and commit protocol (lock, leftovers, journal, atomic commit)
    reuse         rows decoded before (the committed set's, an interrupted build's): incremental, resumed builds
    preprocess    the whole preprocess stage (parallel, streaming), and write_set
    dataset       the per-sample Dataset, and the per-process shard maps both datasets read
    sampler       the epoch plan: seeded order, class balance, ranks
    loader        the fast batch loader: three readers (streaming, RAM, device) behind one loader, data wait
    transform     normalise + augment whole batches on the device
    runtime       device choice, the AMP policy, CUDA switches
    optim         optimizer, learning-rate schedule, moving average of the weights
    metrics       accuracy, macro-F1, batch evaluation
    train         the training loop (checkpoints, exact resume)
    resume        what continuing a run needs: the checkpoint's plan, the checks before it
    steploop      the run's position and the epoch's sums, stop at a step boundary, NaN check, sync debugging
    evaluate      evaluate and predict
    export        ONNX export checked against ONNX Runtime, and the exported file's classifier
    bench         side-by-side throughput against the notebooks' way

Names are imported on first use, so ``import pipeline`` (and ``cli.py
--help``) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "open_set": "shard_format", "ShardSet": "shard_format", "ShardError": "shard_format",
    "ShardDataset": "dataset",
    "create_loader": "loader", "BatchLoader": "loader", "DeviceTransform": "transform",
    "write_set": "preprocess",
    "LoaderConfig": "config", "PreprocessConfig": "config", "TrainPlan": "config", "make_plan": "config",
    "resume_plan": "train",
    "Classifier": "evaluate",
    "export_onnx": "export", "OnnxClassifier": "export",
    "load_checkpoint": "checkpoint",
    "UserError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
