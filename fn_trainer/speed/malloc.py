"""glibc's malloc thresholds, fixed for the process so that big buffers are reused.

By default glibc moves its mmap and trim thresholds as memory is freed: a buffer above
the mmap threshold is mapped fresh and page-faulted on every allocation, and freeing one
raises the threshold, so a training step's multi-megabyte buffers switch between reused
heap memory and fresh mappings as the process goes. The template's CNN loop then took
6.7 or 9.4 s an epoch within one run (``python -m benchmarks.epoch --default-malloc``),
and a compiled CNN step with Winograd products 6.2 or 8-11 ms (2-core AMD EPYC), enough
to reverse which form of a layer is faster. Fixed at glibc's own largest mmap threshold
(32 MiB) with a trim threshold above it, the buffers stay in the heap and are reused.

The setting is the whole process's and cannot be undone (glibc has no call to make the
thresholds adaptive again), so the ``fn-trainer`` command sets it for its process
(``--default-malloc`` leaves it), and the library never does on its own.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Dict, Optional

MALLOPT_PARAMETERS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # their numbers in malloc.h
STEADY_MALLOC = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30}


def steady_malloc() -> Optional[Dict[str, int]]:
    """Fix glibc malloc's thresholds for this process to ``STEADY_MALLOC``; returns them,
    or ``None`` where that is not possible (not glibc)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return None
    ok = [mallopt(MALLOPT_PARAMETERS[name], value) for name, value in STEADY_MALLOC.items()]
    return dict(STEADY_MALLOC) if all(ok) else None
