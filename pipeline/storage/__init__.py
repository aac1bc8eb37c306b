"""Where a shard set lives beyond one disk: object storage (:mod:`.store`) and a node's cache of it (:mod:`.cache`).

Below the shard format: it knows objects and files, not shards.
"""
