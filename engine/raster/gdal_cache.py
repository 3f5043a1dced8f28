"""GDAL's block cache, bounded for a run.

GDAL's cache defaults to 5 % of RAM and keeps blocks that were written until it is full, so without a bound the
memory of a run grows with the raster up to that cap (1.2 GB on a 24 GB machine). The command line bounds it by
setting ``GDAL_CACHEMAX`` before GDAL starts; inside QGIS, where GDAL is long started and the cache is shared
with everything else, :func:`bounded_gdal_cache` lowers it for the duration of the run and restores it after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GDAL_CACHE_MB", "bounded_gdal_cache"]

#: GDAL block cache of a run, in MB: still holds a 256-row block row of a 3-band 40,000-px-wide input.
GDAL_CACHE_MB = 32

_lock = threading.Lock()
_runs = 0
_saved_bytes: int | None = None


@contextmanager
def bounded_gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Iterator[None]:
    """While the block runs, GDAL's block cache (the one rasterio uses) holds at most ``megabytes``.

    The cache size is global to the process: overlapping runs (two algorithms in QGIS at once) share one bound,
    set by the first to start and restored to the original size when the last one ends. A cache already smaller
    is left as it is.
    """
    global _runs, _saved_bytes
    from rasterio.env import get_gdal_config, set_gdal_config  # GDAL_CACHEMAX here is GDALGet/SetCacheMax64: bytes

    limit = int(megabytes) * 2**20
    with _lock:
        if _runs == 0:
            current = int(get_gdal_config("GDAL_CACHEMAX"))
            _saved_bytes = current if current > limit else None
            if _saved_bytes is not None:
                set_gdal_config("GDAL_CACHEMAX", limit)
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _saved_bytes is not None:
                set_gdal_config("GDAL_CACHEMAX", _saved_bytes)
                _saved_bytes = None
