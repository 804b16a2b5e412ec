"""Autodiff diagnostics built on ``torch.func``: gradient and Jacobian norms.

The functions differentiated must be composable with ``torch.func``'s transforms: a
``torch.autograd.Function`` needs ``setup_context`` (the older single ``forward(ctx, ...)``
form is refused by torch), a value that leaves torch (NumPy) has no derivative there, and
a function may not change a tensor it holds in place (a ``BatchNorm`` layer in training
mode, which updates its running statistics: put it in ``eval()`` mode first).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Union

import torch
from torch import Tensor
from torch.func import grad, jacrev, vmap

from .checks import check_function, described
from .types import Params

LOW_PRECISION = (torch.float16, torch.bfloat16)  # their squares are summed in float32


def global_norm(tensors: Union[Params, Iterable[Tensor]]) -> Tensor:
    """Euclidean norm of all entries of ``tensors`` (a dict's values or an iterable) together:
    ``sqrt(sum_t sum_i t_i**2)``, a 0-dim tensor of the tensors' promoted floating dtype.
    The squares of float16 and bfloat16 tensors are summed in float32: 300**2 is already
    past float16's largest number, though a norm of 600 is not."""
    values = list(tensors.values() if isinstance(tensors, dict) else tensors)
    if not values or not all(isinstance(t, Tensor) for t in values):
        raise ValueError(f"tensors must hold at least one tensor and only tensors, got "
                         f"{[type(t).__name__ for t in values]}")
    other = next((t.dtype for t in values if not t.dtype.is_floating_point), None)
    if other is not None:
        raise ValueError(f"tensors must all be real floating tensors, got one of {other}")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in values))
    squares = (t.float().square().sum() if t.dtype in LOW_PRECISION else t.square().sum() for t in values)
    return torch.sqrt(sum(squares)).to(dtype)


def gradient_norm(f: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """``||grad f(t_1, ..., t_n)||_2`` over all ``t_i`` together.

    ``f(*tensors)`` must return a tensor of one element (0-dim, or ``(1,)`` as
    ``torch.autograd.grad`` takes it too) computed from the tensors with torch operations;
    every ``t_i`` must be a floating tensor. Returns a 0-dim tensor.
    """
    check_function("f", f)
    if not tensors:
        raise ValueError("gradient_norm needs at least one tensor to differentiate with respect to")
    for i, t in enumerate(tensors):
        check_differentiable(f"tensors[{i}]", t)

    def scalar_f(*args: Tensor) -> Tensor:
        out = f(*args)
        if not isinstance(out, Tensor) or out.numel() != 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f must return a tensor of one element (a scalar) to have a gradient, got {shape}")
        if not out.dtype.is_floating_point:  # autograd would give an integer output no gradient, silently 0
            raise ValueError(f"f must return a floating tensor to have a gradient, got {out.dtype}")
        if not out.requires_grad:  # torch.func.grad would give zeros, as if f were flat there
            raise ValueError("f's output does not depend on the tensors through differentiable operations: a "
                             ".detach(), .item(), NumPy or another library inside f cuts the graph, as comparisons "
                             "and argmax do (torch.autograd.grad refuses such an output too)")
        return out.reshape(())

    grads = grad(scalar_f, argnums=tuple(range(len(tensors))))(*tensors)
    return global_norm(grads)


def check_differentiable(name: str, t: object) -> Tensor:
    """Raise ``TypeError`` naming ``name`` unless ``t`` is a tensor autodiff can take
    derivatives with respect to (a floating dtype)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype to be differentiated, got {t.dtype}")
    return t


def jacobian_norm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Frobenius norm ``||J_f(x)||_F`` of the Jacobian of ``f`` at ``x`` (via ``jacrev``)."""
    check_function("f", f)
    check_differentiable("x", x)

    def tensor_f(t: Tensor) -> Tensor:
        out = f(t)
        if not isinstance(out, Tensor):
            raise TypeError(f"f must return a torch.Tensor to have a Jacobian, got {type(out).__name__}")
        return out

    return torch.linalg.vector_norm(jacrev(tensor_f)(x))


def per_example_grad_norms(loss_of_params: Callable[[Params, Tensor, Tensor], Tensor],
                           params: Params, x: Tensor, y: Tensor) -> Tensor:
    """``(N,)`` gradient norms, one per example, via ``vmap(grad(...))``.

    ``loss_of_params(params, x, y)`` is evaluated on a batch of one: ``x[i:i+1]``,
    ``y[i:i+1]``.
    """

    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor of at least one example, got {described(x)}")
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a tensor of one target per example of x ({x.shape[0]}), got {described(y)}")

    def one(xi: Tensor, yi: Tensor) -> Tensor:
        return global_norm(grad(loss_of_params)(params, xi.unsqueeze(0), yi.unsqueeze(0)))

    return vmap(one)(x, y)
