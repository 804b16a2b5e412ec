"""Evaluation: mean loss and accuracy of parameters on a data set, without autograd."""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

from .checks import check_function, check_positive_int, described
from .losses import accuracy, cross_entropy
from .step import Apply, Loss
from .types import Params

EVAL_CHUNK = 2000  # rows evaluated at once: bounds the memory of an evaluation pass
Evaluate = Callable[[Params, Tensor, Tensor], Tuple[float, float]]
ChunkScores = Callable[[Params, Tensor, Tensor], Tuple[Tensor, Tensor]]


def make_evaluate(apply: Apply, loss: Loss = cross_entropy, chunk_size: int = EVAL_CHUNK) -> Evaluate:
    """``evaluate(params, X, targets) -> (mean loss, accuracy)`` as Python floats.

    ``targets`` are one-hot ``(N, C)``. Runs without autograd in chunks of
    ``chunk_size`` rows; chunk results are weighted by their size (:func:`chunked_mean`).
    """
    check_function("apply", apply)
    check_function("loss", loss)
    return evaluate_in_chunks(chunk_scores(apply, loss), chunk_size)


def chunk_scores(apply: Apply, loss: Loss = cross_entropy) -> ChunkScores:
    """``scores(params, x, targets) -> (loss, accuracy)``, 0-dim tensors: ``loss`` and
    :func:`accuracy` of ``apply(params, x)`` on one chunk of rows."""
    def scores(params: Params, x: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        probs = apply(params, x)
        return loss(probs, targets), accuracy(probs, targets)

    return scores


def evaluate_in_chunks(scores: ChunkScores, chunk_size: int = EVAL_CHUNK) -> Evaluate:
    """``evaluate(params, X, targets)``: the mean of ``scores(params, chunk of X, chunk of
    targets)`` over chunks of ``chunk_size`` rows (:func:`chunked_mean`), as Python floats."""
    check_positive_int("chunk_size", chunk_size)

    def evaluate(params: Params, X: Tensor, targets: Tensor) -> Tuple[float, float]:
        return chunked_mean(lambda x, t: scores(params, x, t), X, targets, chunk_size)

    return evaluate


def chunked_mean(loss_and_accuracy: Callable[[Tensor, Tensor], Tuple[object, object]], X: Tensor, targets: Tensor,
                 chunk_size: int = EVAL_CHUNK) -> Tuple[float, float]:
    """The mean over the rows of ``X`` of ``loss_and_accuracy(X chunk, targets chunk)``, a
    pair of numbers (0-dim tensors or floats) per chunk of ``chunk_size`` rows, weighted by
    the chunk's rows: ``sum_j n_j * value_j / N``. Without autograd; ``targets`` one-hot ``(N, C)``."""
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
            x = X[i:i + chunk_size]
            chunk_loss, chunk_acc = loss_and_accuracy(x, targets[i:i + chunk_size])
            total_loss += float(chunk_loss) * x.shape[0]
            total_acc += float(chunk_acc) * x.shape[0]
    return total_loss / n, total_acc / n
