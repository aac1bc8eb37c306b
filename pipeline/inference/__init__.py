"""Using a trained model: evaluate on a split or a folder, predict, export to ONNX.

May import: ``pipeline.training`` (checkpoints, metrics, runtime), ``pipeline.reading``,
``pipeline.building`` (discovery of a folder to evaluate), the floors below, ``model``.
"""
