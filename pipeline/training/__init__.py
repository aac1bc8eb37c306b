"""A training run: the trainer and its step loop, optimiser and schedule, checkpoints and exact
resume, metrics, torchrun, device and precision, plots.

May import: ``pipeline.reading``, ``pipeline.shardset``, ``pipeline.common``, ``model``.
"""
