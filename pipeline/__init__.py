"""simpsons-shards: decode once into HDF5 shards, train at memory speed.

Stages, one module each:
    synth       the embedded look-alike dataset (the default a new user runs on)
    discover    class-folder discovery and the skip rules for junk files
    decode      one image file -> uint8 RGB square (reduced-size JPEG decode)
    split       stratified train/val split and class-interleaved shard plan
    shard_format  the HDF5 shard format: write, open, verify (owner module)
    preprocess  the whole preprocess stage (parallel, streaming, atomic)
    loader      epoch plans, shard batch reader, resident cache, device transform
    train       the training loop (AMP, checkpoints, resume)
    evaluate    evaluate and predict
    bench       side-by-side throughput against the notebooks' way
"""

__version__ = "0.1.0"
