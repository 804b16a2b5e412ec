"""Speed-only code for CPUs, always chosen explicitly by the caller.

Nothing here changes what is computed beyond float32 rounding (or, for the subnormal
flush, below 1.18e-38); the plain forms in ``fn_trainer.core.networks`` stay the reference and
are what the exported ``solution.py`` carries.

- :mod:`.cnn_forward`: the CNN forward walk and :func:`inductor_apply`, the ``apply`` a
  compiled step uses;
- :mod:`.patches`: convolutions (and a following 2x2 max-pool) as patch matrix products;
- :mod:`.winograd`: Winograd F(2x2, 3x3) for pooled 3x3 convolutions;
- :mod:`.calibration`: the choices that depend on the CPU (the Winograd threshold, when
  compiling pays), measured on it and stored per CPU;
- :mod:`.denormals`: subnormal floats flushed to zero in every intra-op thread;
- :mod:`.malloc`: glibc's malloc thresholds fixed, so that big buffers are reused.
"""
from .cnn_forward import inductor_apply, sequential_forward

__all__ = ["inductor_apply", "sequential_forward"]
