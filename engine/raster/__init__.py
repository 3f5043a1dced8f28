"""Raster I/O: reading tiles on the processing grid, writing class and heatmap GeoTIFFs on the input grid.

* :mod:`.reader` -- :class:`~engine.raster.reader.RasterSource`: boundless, normalised tile reads with validity;
* :mod:`.bands`, :mod:`.regions` -- matching bands to the card, EXTENT/MASK filters;
* :mod:`.writer` -- :class:`~engine.raster.writer.SegmentationWriter`: all-or-nothing outputs via temp files;
* :mod:`.geotiff` -- block-row GeoTIFF writing; :mod:`.heatmaps` -- the UInt16 probability encoding;
* :mod:`.write_behind` -- compression overlapped with inference; :mod:`.output_paths` -- the one path check;
* :mod:`.write_checks` -- free space, complete files after close, one-line write errors; :mod:`.temp_files` --
  temporaries named with their owner, leftovers of killed runs removed; :mod:`.input_identity` -- an input that
  changes during the run; :mod:`.gdal_cache` -- GDAL's block cache bounded for a run.

The reader and the writer do not import each other: the writer states what it needs of the input as a protocol.
"""
