"""CPU thread counts for the backends: physical cores, because hyper-threads slow convolutions down."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["physical_core_count"]


def physical_core_count() -> int:
    """Physical CPU cores available to this process (hyper-threads counted once).

    Linux: distinct ``core_cpus_list`` (``thread_siblings_list`` on old kernels) among the CPUs this process may
    run on; elsewhere, or if that fails, the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores: set[str] = set()
    topology = Path("/sys/devices/system/cpu")
    for cpu in cpus:
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / f"cpu{cpu}" / "topology" / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return max(1, len(cpus))
    return max(1, len(cores))
