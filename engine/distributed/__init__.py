"""Scale-out on Dask: one raster segmented by a cluster, with the same outputs as one process.

Optional: needs the ``distributed`` extra (``pip install 'bicorseg-qgis[distributed]'``: dask and distributed).
Nothing in the rest of the engine imports this package, and importing it does not import Dask: the client side
(:mod:`~engine.distributed.runner`) imports it when a run starts.

* :mod:`~engine.distributed.plan`: block-aligned super-tiles (the work units) and their redundant tiles;
* :mod:`~engine.distributed.worker`: the task run on a worker (the engine's own tile loop on one super-tile,
  written as a part) and the per-process model cache;
* :mod:`~engine.distributed.assemble`: the parts into one class raster (and heatmaps) by the engine's writer;
* :mod:`~engine.distributed.runner`: :func:`segment_distributed`, the client side;
* :mod:`~engine.distributed.upload`: a worker plugin sending the model file once to each worker.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {
    "ClusterOptions": "runner",
    "DistributedResult": "runner",
    "WorkerCounts": "runner",
    "segment_distributed": "runner",
    "DEFAULT_SUPER_TILE_PX": "plan",
    "SuperTile": "plan",
    "plan_super_tiles": "plan",
    "redundant_tile_share": "plan",
}

__all__ = [
    "DEFAULT_SUPER_TILE_PX",
    "ClusterOptions",
    "DistributedResult",
    "SuperTile",
    "WorkerCounts",
    "plan_super_tiles",
    "redundant_tile_share",
    "segment_distributed",
]


def __getattr__(name: str) -> Any:
    """Import public names lazily from their submodules."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine.distributed' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
