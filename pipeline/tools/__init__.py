"""Tools around the product: ``bench`` (every stage side by side against the notebooks' way)
and ``synth`` (the embedded look-alike dataset a new user runs on).

May import: every stage.
"""
