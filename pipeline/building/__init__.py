"""Building a set: discover a class-folder tree, decode (or reuse) every image once, group
near-duplicates, split, and commit the shards atomically (``preprocess``, ``write_set``).

May import: ``pipeline.shardset``, ``pipeline.imaging``, ``pipeline.common``.
"""
