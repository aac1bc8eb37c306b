"""Reading a set: the per-sample dataset, the epoch's order (sampler), the batch loader and its
three readers, and the transform that normalises and augments whole batches on the device.

May import: ``pipeline.shardset``, ``pipeline.common``.
"""
