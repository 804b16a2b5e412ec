"""Question 4: a CNN with filters (16, 32, 45) and a solved kernel size against the MLP."""
from __future__ import annotations

from typing import Sequence

from . import experiment_name
from .architectures import Architecture, kernel_cnn, reference_mlp
from .comparison import Comparison

NAME = experiment_name(__name__)


def solved_kernel(archs: Sequence[Architecture], batch_size: int) -> str:
    config = archs[0].config
    return (f"Kernel size solved for the budget: {config.kernel_sizes[0]} (filters {config.n_channels}, "
            f"stride 1, padding 0, dense {config.dense_hiddens}).")


QUESTION = Comparison(NAME, "4. CNN with a solved kernel size against the MLP", "CNN against MLP",
                      architectures=lambda: [kernel_cnn(), reference_mlp()], note=solved_kernel,
                      contrasts=((0, 1),))  # the CNN against the MLP
run = QUESTION.run
