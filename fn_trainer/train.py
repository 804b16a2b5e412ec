"""Evaluation and the training loop over a pure step."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import check_positive_int
from .losses import accuracy, cross_entropy, one_hot
from .step import Apply, Loss, Params, Step

LOG_KEYS = ("train_accuracy", "validation_accuracy", "train_loss", "validation_loss",
            "train_gradient_norm")
N_TRAIN_EVAL = 2000  # train metrics are measured on the first 2000 training samples
Logs = Dict[str, List[float]]
Evaluate = Callable[[Params, Tensor, Tensor], Tuple[float, float]]


def make_evaluate(apply: Apply, loss: Loss = cross_entropy, chunk_size: int = 2000) -> Evaluate:
    """``evaluate(params, X, targets) -> (mean loss, accuracy)`` as Python floats.

    ``targets`` are one-hot ``(N, C)``. Runs without autograd in chunks of
    ``chunk_size`` rows; chunk results are weighted by their size.
    """

    def evaluate(params: Params, X: Tensor, targets: Tensor) -> Tuple[float, float]:
        n = X.shape[0]
        if n == 0:
            raise ValueError("evaluate needs at least one sample, got an empty X")
        total_loss = total_acc = 0.0
        with torch.no_grad():
            for i in range(0, n, chunk_size):
                probs = apply(params, X[i:i + chunk_size])
                t = targets[i:i + chunk_size]
                total_loss += float(loss(probs, t)) * probs.shape[0]
                total_acc += float(accuracy(probs, t)) * probs.shape[0]
        return total_loss / n, total_acc / n

    return evaluate


class FitResult(NamedTuple):
    """Final parameters and optimizer state, the logs, and ``diverged``: ``None``, or a
    message naming the step and value at which a non-finite loss or gradient stopped
    the run."""

    params: Params
    opt_state: object
    logs: Logs
    diverged: Optional[str] = None


def as_targets(y: Tensor, n_classes: int) -> Tensor:
    """One-hot targets from ``(N,)`` labels; ``(N, C)`` targets pass through."""
    return y if y.dim() == 2 else one_hot(y, n_classes)


def epoch_order(n: int, epoch: int, shuffle: bool, seed: int) -> Optional[Tensor]:
    """The sample order of one epoch: ``None`` (in order) or a permutation that
    depends only on ``(seed, epoch)``, so a resumed run replays it exactly."""
    if not shuffle:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def fit(step: Step, evaluate: Evaluate, params: Params, opt_state: object,
        train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor], *, epochs: int,
        batch_size: int = 128, n_classes: int = 10, shuffle: bool = False, seed: int = 0,
        progress: bool = True, desc: str = "train") -> FitResult:
    """Train for ``epochs`` epochs of minibatches, logging like the homework's ``train_loop``.

    ``train`` and ``valid`` are ``(X, y)`` with ``y`` labels ``(N,)`` or one-hot ``(N, C)``.
    Metrics are logged once before training and after every epoch (``epochs + 1``
    entries; train metrics on the first 2000 training samples); ``train_gradient_norm``
    holds the last minibatch's gradient norm of each epoch (``epochs`` entries).
    Batches are taken in order unless ``shuffle``; the last one may be smaller.
    """
    check_positive_int("epochs", epochs, minimum=0)
    check_positive_int("batch_size", batch_size)
    X_train, X_valid = train[0], valid[0]
    T_train, T_valid = as_targets(train[1], n_classes), as_targets(valid[1], n_classes)
    n = X_train.shape[0]
    if n == 0:
        raise ValueError("train must hold at least one sample, got an empty X")
    n_batches = math.ceil(n / batch_size)
    logs: Logs = {k: [] for k in LOG_KEYS}

    def log_metrics() -> None:
        for split, X, T in (("train", X_train[:N_TRAIN_EVAL], T_train[:N_TRAIN_EVAL]),
                            ("validation", X_valid, T_valid)):
            loss_value, acc = evaluate(params, X, T)
            logs[f"{split}_loss"].append(loss_value)
            logs[f"{split}_accuracy"].append(acc)

    log_metrics()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        order = epoch_order(n, epoch, shuffle, seed)
        metrics = None
        for b in range(n_batches):
            idx = slice(b * batch_size, (b + 1) * batch_size)
            if order is not None:
                idx = order[idx]
            params, opt_state, metrics = step(params, opt_state, (X_train[idx], T_train[idx]))
        logs["train_gradient_norm"].append(float(metrics["grad_norm"]))
        log_metrics()
        bar.set_postfix(val_acc=f"{logs['validation_accuracy'][-1]:.4f}")
    return FitResult(params, opt_state, logs)
