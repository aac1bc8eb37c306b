"""The set on disk: the HDF5 shard format and its manifest, the one owner that writes, opens and verifies them.

May import: ``pipeline.imaging`` (the hash ``verify`` checks), ``pipeline.common``.
"""
