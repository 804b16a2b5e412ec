"""Question 3: the reference MLP against a deep 64-unit MLP with about as many parameters."""
from __future__ import annotations

from . import experiment_name
from .architectures import deep_mlp, reference_mlp
from .comparison import Comparison

NAME = experiment_name(__name__)

QUESTION = Comparison(NAME, "3. Depth: MLP 256-256 against a deep 64-unit MLP",
                      "MLP 256-256 against a deep 64-unit MLP",
                      architectures=lambda: [reference_mlp(), deep_mlp(64)], gradient_norm=True,
                      contrasts=((1, 0),))  # the deep MLP against the MLP
run = QUESTION.run
