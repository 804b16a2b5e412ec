"""Evaluation: mean loss and accuracy of parameters on a data set, without autograd."""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

from .checks import check_positive_int, described
from .losses import accuracy, cross_entropy
from .step import Apply, Loss
from .types import Params

EVAL_CHUNK = 2000  # rows evaluated at once: bounds the memory of an evaluation pass
Evaluate = Callable[[Params, Tensor, Tensor], Tuple[float, float]]


def make_evaluate(apply: Apply, loss: Loss = cross_entropy, chunk_size: int = EVAL_CHUNK) -> Evaluate:
    """``evaluate(params, X, targets) -> (mean loss, accuracy)`` as Python floats.

    ``targets`` are one-hot ``(N, C)``. Runs without autograd in chunks of
    ``chunk_size`` rows; chunk results are weighted by their size.
    """
    check_positive_int("chunk_size", chunk_size)

    def evaluate(params: Params, X: Tensor, targets: Tensor) -> Tuple[float, float]:
        if not isinstance(X, Tensor) or X.dim() == 0 or X.shape[0] == 0:
            raise ValueError(f"evaluate needs X, a tensor of at least one sample, got {described(X)}")
        n = X.shape[0]
        # chunks of both would silently drop extra rows
        if not isinstance(targets, Tensor) or targets.ndim != 2 or targets.shape[0] != n:
            raise ValueError(f"evaluate's targets must be one-hot (N, C) with N = {n} rows of X, got "
                             f"{described(targets)}")
        total_loss = total_acc = 0.0
        with torch.no_grad():
            for i in range(0, n, chunk_size):
                probs = apply(params, X[i:i + chunk_size])
                t = targets[i:i + chunk_size]
                total_loss += float(loss(probs, t)) * probs.shape[0]
                total_acc += float(accuracy(probs, t)) * probs.shape[0]
        return total_loss / n, total_acc / n

    return evaluate

