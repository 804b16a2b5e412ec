"""A data split ``(X, y)`` checked and made ready for training: floating inputs in the
parameters' dtype and one-hot targets."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .losses import check_labels, one_hot


def params_dtype(params: Any) -> torch.dtype:
    """The one floating dtype of every tensor in ``params`` (a dict), else ``TypeError``."""
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of tensors, got {type(params).__name__}")
    dtypes = {v.dtype for v in params.values() if isinstance(v, Tensor)}
    if len(dtypes) != 1 or len(params) != sum(isinstance(v, Tensor) for v in params.values()):
        raise TypeError(f"params must be tensors of one floating dtype, got dtypes {sorted(map(str, dtypes))}")
    (dtype,) = dtypes
    if not dtype.is_floating_point:
        raise TypeError(f"params must have a floating dtype, got {dtype}")
    for key, value in params.items():
        check_holds_values(f"params[{key!r}]", value)
    return check_training_dtype(dtype, "params")


def check_training_dtype(dtype: torch.dtype, name: str) -> torch.dtype:
    """``dtype`` unless it is float16, which cannot train: ``TypeError`` naming ``name``."""
    if dtype == torch.float16:  # bfloat16 has float32's range and keeps them
        raise TypeError(f"{name} must not be float16 for training: Adam's eps (1e-8) and the loss's clipping "
                        "(1e-9) round to 0 in it, and a first step gives NaN; use float32, float64 or bfloat16")
    return dtype


def check_holds_values(name: str, tensor: Tensor) -> None:
    """``ValueError`` naming ``name`` for a tensor on the meta device, which has a shape but no values."""
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values: pass a tensor with data")


def check_split(name: str, split: Any, n_classes: int,
                dtype: Optional[torch.dtype] = None, finite: bool = True) -> Tuple[Tensor, Tensor]:
    """Return ``(X, targets)`` for a split ``(X, y)``, or raise naming ``name``.

    ``X``: a non-empty floating tensor ``(N, ...)`` with finite values, returned cast to
    ``dtype`` if given (the parameters' dtype: float64 data trains a float32 network in
    float32, and a float64 network in float64); ``y``: ``(N,)`` integer labels in
    ``[0, n_classes)`` or ``(N, n_classes)`` targets. ``finite=False`` skips the scans
    for NaN and infinity (a pass over ``X``), for callers that check a result instead.
    """
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise TypeError(f"{name} must be a pair (X, y) of tensors, got {type(split).__name__}")
    X, y = split
    for part, t in ((f"{name} X", X), (f"{name} y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{part} must be a torch.Tensor, got {type(t).__name__}")
        check_holds_values(part, t)
    if not X.dtype.is_floating_point:
        raise TypeError(f"{name} X must have a floating dtype, got {X.dtype}")
    if X.dim() < 2 or X.shape[0] == 0:
        raise ValueError(f"{name} X must be (N, ...) with N >= 1 samples, got shape {tuple(X.shape)}")
    if y.dim() == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{name} y must have one entry per sample of X ({X.shape[0]}), got shape {tuple(y.shape)}"
        )
    if finite and not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} X contains NaN or infinite values")
    if dtype is not None and X.dtype != dtype:
        X = X.to(dtype)
        if not bool(torch.isfinite(X).all()):  # float64 values beyond float32's range
            raise ValueError(f"{name} X has values too large for the parameters' dtype {dtype}")
    if y.dim() == 1:
        return X, one_hot(check_labels(y, n_classes, f"{name} y"), n_classes)
    if y.dim() != 2 or y.shape[1] != n_classes or not y.dtype.is_floating_point:
        raise ValueError(
            f"{name} y must be (N,) integer labels or (N, {n_classes}) float targets, got "
            f"shape {tuple(y.shape)} {y.dtype}"
        )
    if finite and not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} y contains NaN or infinite values")
    return X, y

