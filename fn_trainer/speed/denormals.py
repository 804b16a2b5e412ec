"""Subnormal floats on the CPU: flush them to zero in every thread torch computes on.

Adam's first moment decays by ``beta1`` per step wherever the gradient is (nearly)
zero, and a saturated softmax gives gradients below ``1e-38``; after a few hundred
steps a large part of ``m`` is subnormal (float32 below ``1.18e-38``). x86 CPUs take
a slow path for every operation on such a value: on synthetic Fashion-MNIST data the
compiled MLP step goes from 1.1 to 1.6 ms after about 600 steps, and the template's
``torch.optim.Adam`` loop slows alike. With flush-to-zero and denormals-are-zero (the
CPU's FTZ/DAZ modes, which XLA turns on for JAX) the values become 0 and nothing slows.
Only magnitudes below ``1.18e-38`` change.

``torch.set_flush_denormal`` sets the mode of the calling thread only. Torch's
intra-op threads (OpenMP: matrix products, Inductor's kernels, ``parallel_for``) keep
the mode they started with, so :func:`flush_denormals` also sets it inside one
OpenMP parallel region of ``torch.get_num_threads()`` threads, the team torch uses.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Callable, Optional

import torch

from ..core.checks import check_bool

_REGION_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=1)
def _gomp_parallel() -> Optional[Callable]:
    """``GOMP_parallel`` of the OpenMP runtime torch has loaded, or ``None`` (not Linux, or
    not GNU OpenMP)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgomp" in line and "/" in line})
        if not paths:
            return None
        # torch's own copy (torch/lib or torch.libs) where another one is loaded as well
        own = [p for p in paths if p.startswith(os.path.dirname(torch.__file__))]  # prefix of both
        gomp_parallel = ctypes.CDLL((own or paths)[0]).GOMP_parallel  # the loaded copy: its threads are torch's
    except (OSError, AttributeError):
        return None
    gomp_parallel.argtypes = [_REGION_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp_parallel.restype = None
    return gomp_parallel


def flush_denormals(enabled: bool = True) -> bool:
    """Turn flush-to-zero on (``enabled=True``) or off for subnormal float32/float64 values
    in the calling thread and in torch's intra-op OpenMP threads.

    Returns ``False`` where the CPU has no such mode (nothing changed). Without GNU
    OpenMP (not Linux), only the calling thread and threads it starts later change.
    Threads started later inherit the mode of the thread that starts them.
    """
    enabled = check_bool("enabled", enabled)
    if not torch.set_flush_denormal(enabled):
        return False
    gomp_parallel = _gomp_parallel()
    if gomp_parallel is not None:
        # a ctypes call releases the GIL, so each thread of the region can take it in turn
        region = _REGION_FN(lambda _: torch.set_flush_denormal(enabled))
        gomp_parallel(region, None, torch.get_num_threads(), 0)
    return True


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormal floats to zero."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # subnormal; 0 if flushed on conversion
    return bool((tiny * 2.0)[0] == 0)  # DAZ zeroes a subnormal input
