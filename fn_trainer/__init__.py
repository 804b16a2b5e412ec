"""fn_trainer: train small image classifiers the functional way, with ``torch.func``.

Networks are architectures applied to plain parameter dicts; training is a pure
``step(params, opt_state, batch) -> (params, opt_state, metrics)``. The entry points a
user calls are re-exported here, grouped as below; everything else lives in the layer
that defines it: ``fn_trainer.core`` (the functional core), ``fn_trainer.training``
(loops, populations, checkpoints, compilation), ``fn_trainer.speed`` (speed-only code
chosen explicitly) and ``fn_trainer.app`` (the command line, experiments, grading).
"""
# networks: architectures applied to parameter dicts
from .core.config import NetworkConfiguration

# data
from .core.data import DatasetError, load_fashion_mnist, normalize

# diagnostics through torch.func
from .core.diagnostics import global_norm, gradient_norm, jacobian_norm, per_example_grad_norms

# training: one model, or a population in one vmapped step
from .core.evaluate import make_evaluate

# the pure step: loss, optimizer, gradients
from .core.losses import accuracy, cross_entropy, one_hot
from .core.networks import Network, build_network, count_parameters
from .core.optim import AdamState, adam
from .core.step import make_step

# speed, always asked for: subnormal floats flushed to zero for long CPU training
from .speed.denormals import flush_denormals
from .training.checkpoint import CheckpointError
from .training.compiled import compile_evaluate, compile_step
from .training.fit import FitResult, fit
from .training.population import Member, fit_population, fit_sweep

__all__ = [
    "NetworkConfiguration", "Network", "build_network", "count_parameters",
    "accuracy", "cross_entropy", "one_hot", "AdamState", "adam", "make_step",
    "global_norm", "gradient_norm", "jacobian_norm", "per_example_grad_norms",
    "DatasetError", "load_fashion_mnist", "normalize",
    "make_evaluate", "CheckpointError", "compile_step", "compile_evaluate", "FitResult", "fit", "Member",
    "fit_population", "fit_sweep",
    "flush_denormals",
]
__version__ = "0.1.0"
