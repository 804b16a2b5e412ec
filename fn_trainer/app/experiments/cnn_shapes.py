"""Question 5: deep (1x1 kernels), shallow (one 28x28 kernel) and question 4's CNN."""
from __future__ import annotations

from typing import Sequence

from . import experiment_name
from .architectures import Architecture, deep_cnn, kernel_cnn, shallow_cnn
from .comparison import Comparison

NAME = experiment_name(__name__)


def solved_channels(archs: Sequence[Architecture], batch_size: int) -> str:
    shallow = archs[2]
    return (f"Shallow CNN channel count solved for the budget: {shallow.config.n_channels[0]}. "
            f"The deep CNN is fixed by the question (not solved); its difference is reported as is. "
            f"All three CNNs, question 4's included, are trained here with batch size {batch_size}.")


QUESTION = Comparison(NAME, "5. CNN shapes: deep 1x1 kernels, shallow 28x28 kernel", "three CNN shapes",
                      architectures=lambda: [kernel_cnn(), deep_cnn(), shallow_cnn()],
                      note=solved_channels, with_reference=True,
                      contrasts=((1, 0), (2, 0), (1, 2)))  # deep and shallow against question 4's, deep against shallow
run = QUESTION.run
