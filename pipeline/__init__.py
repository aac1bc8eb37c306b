"""simpsons-shards: decode once into HDF5 shards, train at memory speed.

The public API (docs/python.md "Use from Python"); ``cli.py`` is a thin user of it:

    open_set(root) -> ShardSet          check a shard set and open it (classes, size, mean/std, counts, splits);
                                        root a folder or a URL (s3://, gs://, http(s)://; storage=StorageConfig(...))
    publish(data_dir, url, cfg)         build a set here and publish it to object storage, manifest last
    ShardDataset(split)                 per-sample map-style Dataset: ds[i] -> (uint8 CHW tensor, int label)
    create_loader(split, ...)           the fast batch loader (resident or streaming, seeded, state_dict)
    DeviceTransform(mean, std, device)  normalise + augment whole batches on the device
    write_set(samples, classes, out)    build a shard set from (image, label) samples
    make_plan(model, recipe, ...)       a training run's configuration (train(shards, plan) runs it)
    Classifier.from_checkpoint(path)    model + label encoder: predict / predict_proba
    export_onnx(checkpoint, out)        the classifier as ONNX (uint8 NHWC in, probabilities out), checked
    train(shards, plan)                 run it: checkpoints, metrics, exact resume
    load_checkpoint(path)               a checked, data-only checkpoint dict

Stages, one package each, from the top down (each may import only the ones
below it; ``.importlinter`` states it and ``lint-imports`` checks it):

    tools       bench (side by side against the notebooks' way), synth (the look-alike set)
    inference   evaluate, predict, export: using a trained model
    training    a run: trainer, step loop, optimiser, checkpoint, resume, metrics, distributed, runtime, plots
    reading     the set into batches: per-sample dataset, sampler, batch loader, device transform
    building    a set from images: discover, split, reuse, commit, preprocess, publish
    shardset    the set on disk: the shard format, its manifest, open and verify; a set at any location
    storage     object storage (fsspec) and a node's cache of the shards it fetched
    imaging     one image: decode, perceptual hash and near-duplicate groups
    common      configuration, errors, files, environment

``model`` (the networks) stands below them all and imports nothing of ``pipeline``.

Names are imported on first use, so ``import pipeline`` (and ``cli.py
--help``) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "open_set": "shardset.sets", "ShardSet": "shardset.shard_format", "publish": "building.publish",
    "StorageConfig": "common.config", "StoreError": "storage.store", "ShardError": "shardset.shard_format",
    "ShardDataset": "reading.dataset",
    "create_loader": "reading.loader", "BatchLoader": "reading.loader", "DeviceTransform": "reading.transform",
    "write_set": "building.preprocess",
    "LoaderConfig": "common.config", "PreprocessConfig": "common.config", "TrainPlan": "common.config",
    "make_plan": "common.config",
    "train": "training.train", "resume_plan": "training.train",
    "Classifier": "inference.evaluate",
    "export_onnx": "inference.export", "OnnxClassifier": "inference.export",
    "load_checkpoint": "training.checkpoint",
    "UserError": "common.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
