"""Preload of the engine's local Dask workers: Ctrl-C is the client's to handle.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, the local cluster's worker processes
included; each would die printing a traceback while the client is already canceling the run and closing the
cluster. Dask runs :func:`dask_setup` in every worker it starts (restarted ones too), on the worker's main thread.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process; the client stops it when the run ends."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
