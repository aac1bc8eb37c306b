"""One image at a time: decode a file into a uint8 square, its perceptual hash, near-duplicate groups.

May import: ``pipeline.common``.
"""
