"""Inference: the request, the tile grid, blending, test-time augmentation and the one tile loop.

Modules: :mod:`.request` (what a run is asked and reports), :mod:`.tiling` (the global tile grid),
:mod:`.stitching` (blend weights, strip accumulator), :mod:`.tta` (test-time augmentation) and :mod:`.pipeline`
(:func:`~engine.inference.pipeline.stitch_raster`, the one tile loop, and
:func:`~engine.inference.pipeline.segment_raster`, a whole run).
"""
