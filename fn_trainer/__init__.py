"""fn_trainer: train small image classifiers the functional way, with ``torch.func``.

Networks are architectures applied to plain parameter dicts; training is a pure
``step(params, opt_state, batch) -> (params, opt_state, metrics)``.
"""
from .core.config import NetworkConfiguration
from .core.data import DatasetError, Split, Splits, load_fashion_mnist, normalize, standardizer
from .core.diagnostics import global_norm, gradient_norm, jacobian_norm, per_example_grad_norms
from .core.evaluate import make_evaluate
from .core.losses import EPSILON, accuracy, cross_entropy, one_hot
from .core.networks import (
                       Network,
                       activation,
                       build_network,
                       cnn,
                       count_parameters,
                       init_params,
                       mlp,
                       params_of,
)
from .core.optim import AdamState, Optimizer, adam
from .core.step import make_objective, make_step
from .speed.denormals import denormals_flushed, flush_denormals
from .training.checkpoint import CheckpointError
from .training.compiled import compile_step, multi_step
from .training.fit import FitResult, fit
from .training.population import Member, fit_population, fit_sweep

__all__ = [
    "CheckpointError", "compile_step", "multi_step", "fit_sweep", "NetworkConfiguration", "DatasetError", "Split", "Splits", "load_fashion_mnist", "normalize",
    "standardizer", "flush_denormals", "denormals_flushed", "global_norm", "gradient_norm",
    "jacobian_norm", "per_example_grad_norms",
    "EPSILON", "accuracy", "cross_entropy", "one_hot", "Network", "activation", "build_network",
    "cnn", "count_parameters", "init_params", "mlp", "params_of", "AdamState", "Optimizer", "adam",
    "make_objective", "make_step", "FitResult", "fit", "make_evaluate", "Member", "fit_population",
]
__version__ = "0.1.0"
