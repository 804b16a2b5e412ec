"""Question 3: the reference MLP against a deep 64-unit MLP with about as many parameters."""
from __future__ import annotations

from .architectures import deep_mlp, reference_mlp
from .comparison import Comparison

NAME = "depth"

QUESTION = Comparison(NAME, "3. Depth: MLP 256-256 against a deep 64-unit MLP",
                      "MLP 256-256 against a deep 64-unit MLP", batch_size=128,
                      architectures=lambda: [reference_mlp(), deep_mlp(64)], gradient_norm=True)
run = QUESTION.run
