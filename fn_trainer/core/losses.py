"""Loss, accuracy and label encoding for probability outputs."""
from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_positive_int

EPSILON = 1e-9


def cross_entropy(probs: Tensor, targets: Tensor, eps: float = EPSILON) -> Tensor:
    """Mean cross-entropy of clipped probabilities.

    ``loss = -mean_i sum_c t[i, c] * log(clip(p[i, c], eps, 1 - eps))``

    probs: ``(N, C)`` probabilities; targets: ``(N, C)`` one-hot (or soft) targets.
    Returns a 0-dim tensor that keeps its autograd graph.
    """
    _check_probs(probs, "cross_entropy")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor (N, C), got {type(targets).__name__}")
    if probs.shape != targets.shape:  # shapes only: no host sync on the training path
        raise ValueError(f"probs and targets must have the same shape (N, C), got {tuple(probs.shape)} "
                         f"and {tuple(targets.shape)}")
    if probs.dim() == 0 or probs.shape[0] == 0:  # the mean of nothing is NaN, a step on it no step
        raise ValueError(f"cross_entropy needs probs (N, C) of N >= 1 samples, got shape {tuple(probs.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 0.5:
        raise ValueError(f"eps must be a number in [0, 0.5): probabilities are clipped to [eps, 1 - eps], got {eps!r}")
    return -(targets * probs.clamp(eps, 1.0 - eps).log()).sum(-1).mean()


def accuracy(probs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows whose arg-max matches the target.

    probs: ``(N, C)``; targets: ``(N, C)`` one-hot or ``(N,)`` integer labels.
    Returns a 0-dim float64 tensor in ``[0, 1]`` (exact for counts below 2**53). Labels
    are not checked against ``C`` here, which would take a host sync (``check_labels`` does).
    """
    _check_probs(probs, "accuracy")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, one-hot (N, C) or labels (N,), got {type(targets).__name__}")
    if targets.shape != probs.shape and targets.shape != probs.shape[:-1]:
        raise ValueError(f"targets must be shaped like probs {tuple(probs.shape)} (one-hot) or "
                         f"{tuple(probs.shape[:-1])} (labels), got {tuple(targets.shape)}")
    if probs.dim() == 0 or probs.shape[0] == 0:  # the fraction of nothing is NaN
        raise ValueError(f"accuracy needs probs (N, C) of N >= 1 samples, got shape {tuple(probs.shape)}")
    if probs.shape[-1] == 0:
        raise ValueError(f"accuracy needs probs (N, C) of C >= 1 classes, got shape {tuple(probs.shape)}")
    if targets.dim() != probs.dim() and (targets.dtype.is_floating_point or targets.dtype.is_complex):
        raise ValueError(f"targets of shape (N,) must be integer labels, got {targets.dtype}")
    labels = targets.argmax(-1) if targets.dim() == probs.dim() else targets
    return (probs.argmax(-1) == labels).to(torch.float64).mean()


def _check_probs(probs: object, function: str) -> None:
    """Raise naming ``probs`` unless it is a floating tensor: metadata only, no host sync."""
    if not isinstance(probs, Tensor):
        raise TypeError(f"{function} needs probs, a torch.Tensor (N, C), got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{function} needs probs of a floating dtype, got {probs.dtype}")


def check_labels(labels: Tensor, n_classes: int, name: str = "labels") -> Tensor:
    """Raise ``ValueError`` unless ``labels`` is a 1-D integer tensor in ``[0, n_classes)``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{name} must lie in [0, {n_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def one_hot(labels: Tensor, n_classes: int) -> Tensor:
    """``(N,)`` integer labels in ``[0, n_classes)`` -> ``(N, n_classes)`` float32 one-hot."""
    check_positive_int("n_classes", n_classes)
    check_labels(labels, n_classes)
    return torch.nn.functional.one_hot(labels.long(), n_classes).to(torch.float32)
