"""Functional Adam: an ``init``/``update`` pair over parameter dicts (optax style).

Nothing is mutated: ``update`` returns new parameters and a new state. The
hyper-parameters live in the state as 0-dim tensors, so a stack of states with
different learning rates can be ``vmap``-ed and a compiled step never specialises
on their values.
"""
from __future__ import annotations

import numbers
from functools import partial
from typing import Callable, Dict, NamedTuple, Tuple, Union

import torch
from torch import Tensor

from .checks import check_function, check_positive_float, described, is_finite_number
from .types import Params


class AdamState(NamedTuple):
    """``count``: int64 0-dim step counter; ``mu``/``nu``: first/second moments shaped
    like the parameters; ``lr``, ``b1``, ``b2``, ``eps``: 0-dim float64 tensors."""

    count: Tensor
    mu: Params
    nu: Params
    lr: Tensor
    b1: Tensor
    b2: Tensor
    eps: Tensor


class Optimizer(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params) -> (new_params, new_state)``.

    Unlike optax's ``update``, which returns updates to add, ``update`` here returns the
    new parameters themselves: Adam's step is applied inside it."""

    init: Callable[[Params], AdamState]
    update: Callable[[Params, AdamState, Params], Tuple[Params, AdamState]]


def _scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


Power = Callable[[Tensor, Tensor], Tensor]


def tensor_power(base: Tensor, exponent: Union[Tensor, float]) -> Tensor:
    """``base ** exponent`` with ``torch.pow``, as torch.optim.Adam computes it: the reference."""
    # as a tensor: torch.pow(x, 0.5) with a Python exponent takes sqrt, which can round
    # differently from the pow of Python's x ** 0.5
    return torch.pow(base, torch.as_tensor(exponent, dtype=torch.float64))


def exp_log_power(base: Tensor, exponent: Union[Tensor, float]) -> Tensor:
    """``base ** exponent = exp(exponent * log(base))`` for ``base > 0``, equal to
    ``tensor_power`` up to float64 rounding. For compiled steps: Inductor computes a
    scalar built from exp/log once per step, but recomputes ``pow`` inside every
    parameter's element loop (about 20% of a compiled MLP step)."""
    return torch.exp(torch.as_tensor(exponent, dtype=torch.float64) * torch.log(base))


def adam(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
         power: Power = tensor_power) -> Optimizer:
    """Adam (Kingma & Ba), the same arithmetic as ``torch.optim.Adam`` without weight decay.

    With ``t = count + 1``::

        m_t = b1 * m + (1 - b1) * g
        v_t = b2 * v + (1 - b2) * g**2
        p_t = p - lr / (1 - b1**t) * m_t / (sqrt(v_t) / sqrt(1 - b2**t) + eps)

    ``power`` computes the scalar powers ``b**t``: ``tensor_power`` (torch.optim.Adam's
    arithmetic), or ``exp_log_power`` for a step to be compiled.
    """
    lr = check_positive_float("lr", lr)
    for name, beta in (("b1", b1), ("b2", b2)):
        check_beta(name, beta)
    eps = check_positive_float("eps", eps)
    check_function("power", power)

    def init(params: Params) -> AdamState:
        check_params(params)
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return AdamState(
            count=torch.zeros((), dtype=torch.int64),
            mu=zeros,
            nu={k: torch.zeros_like(v) for k, v in params.items()},
            lr=_scalar(lr), b1=_scalar(b1), b2=_scalar(b2), eps=_scalar(eps),
        )

    return Optimizer(init, adam_update if power is tensor_power else partial(adam_update, power=power))


def check_beta(name: str, beta: object) -> None:
    """Raise naming ``name`` unless ``beta`` is a number in ``[0, 1)``: a moment's decay."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {beta!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {beta}")


MAKE_STATE = "make the state with the optimizer's init(params)"


def check_params(params: object) -> None:
    """Raise naming ``params`` unless it is a dict of tensors (their dtypes are the step's to check)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of parameter name -> tensor, got {described(params)}")
    for k, p in params.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{k!r}] must be a tensor, got {described(p)}")


def check_state_like(state: object, params: Params) -> None:
    """Raise naming ``opt_state`` unless ``state`` is an ``AdamState`` made for ``params``:
    0-dim tensors for the count and the hyper-parameters, and moments of the parameters'
    names, shapes, dtypes and devices (``init(params)`` makes such a state). Metadata
    only, so a compiled step traces it away."""
    if not isinstance(state, AdamState):
        raise TypeError(f"opt_state must be an AdamState, got {described(state)}: {MAKE_STATE}")
    for name in ("count", "lr", "b1", "b2", "eps"):
        value = getattr(state, name)
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise ValueError(f"opt_state.{name} must be a 0-dim tensor, got {described(value)}: {MAKE_STATE}")
    for field in ("mu", "nu"):
        moments = getattr(state, field)
        if not isinstance(moments, dict) or moments.keys() != params.keys():
            found = sorted(moments) if isinstance(moments, dict) else type(moments).__name__
            raise ValueError(f"opt_state.{field} must have the parameters' names {sorted(params)}, got {found}: "
                             f"{MAKE_STATE}")
        for k, p in params.items():
            m = moments[k]
            if not isinstance(m, Tensor) or (m.shape, m.dtype, m.device) != (p.shape, p.dtype, p.device):
                found = f"{tuple(m.shape)} {m.dtype} on {m.device}" if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"opt_state.{field}[{k!r}] must be like params[{k!r}], {tuple(p.shape)} {p.dtype} "
                                 f"on {p.device}, got {found}: {MAKE_STATE}")


def check_state(state: object, params: Params) -> None:
    """Raise naming ``opt_state`` if ``state`` is an ``AdamState`` that is not one for
    ``params`` (:func:`check_state_like`), or whose values no Adam run reaches: a count
    below 0, betas outside ``[0, 1)``, ``lr`` and ``eps`` that are not numbers in their
    dtype (:func:`check_hyperparameters_fit`), negative second moments. Another
    optimizer's state is left to its step."""
    if not isinstance(state, AdamState):
        return
    check_state_like(state, params)
    if state.count.is_floating_point() or state.count.dtype == torch.bool or int(state.count) < 0:
        raise ValueError(f"opt_state.count must be an integer >= 0, got {state.count.item()!r} ({state.count.dtype})")
    for name in ("b1", "b2"):
        check_beta(f"opt_state.{name}", float(getattr(state, name)))
    for dtype in {p.dtype for p in params.values() if p.is_floating_point()}:
        check_hyperparameters_fit(float(state.lr), float(state.eps), dtype, "opt_state.")
    negative = [k for k, v in state.nu.items() if bool((v < 0).any())]  # averages of squares
    if negative:
        raise ValueError(f"opt_state.nu[{negative[0]!r}] holds negative values: second moments are averages of "
                         "squared gradients")


def check_grads(grads: object, params: Params) -> None:
    """Raise naming ``grads`` unless it holds a tensor of each parameter's name, shape and
    dtype, and nothing else: the gradients that ``torch.func.grad`` gives for ``params``.
    Metadata only, so a compiled step traces it away."""
    if not isinstance(grads, dict) or grads.keys() != params.keys():
        found = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
        raise ValueError(f"grads must have the parameters' names {sorted(params)}, got {found}")
    for k, p in params.items():
        g = grads[k]
        if not isinstance(g, Tensor) or (g.shape, g.dtype) != (p.shape, p.dtype):
            found = f"{tuple(g.shape)} {g.dtype}" if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"grads[{k!r}] must be like params[{k!r}], {tuple(p.shape)} {p.dtype}, got {found}")


def check_hyperparameters_fit(lr: float, eps: float, dtype: torch.dtype, prefix: str = "") -> None:
    """Raise ``ValueError`` naming ``{prefix}lr`` or ``{prefix}eps`` unless it is a normal finite
    number in ``dtype``, the parameters' (``lr`` may be 0, where a schedule ends). The update
    computes with them in that dtype, where a learning rate of 1e39 is infinite in float32
    and an eps of 1e-46 is 0 (a subnormal one too, with subnormals flushed); the update that
    follows would read as the run's divergence."""
    check_fits_dtype(f"{prefix}lr", lr, dtype, zero_ok=True)
    check_fits_dtype(f"{prefix}eps", eps, dtype)


def check_fits_dtype(name: str, value: float, dtype: torch.dtype, *, zero_ok: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a normal finite number in
    ``dtype`` (or 0 if ``zero_ok``): see :func:`check_hyperparameters_fit`."""
    info = torch.finfo(dtype)
    if not ((zero_ok and value == 0) or info.tiny <= value <= info.max):
        raise ValueError(f"{name} must be a normal number in {dtype}, the parameters' dtype "
                         f"({info.tiny:.3g} to {info.max:.3g}{' or 0' if zero_ok else ''}), got {value!r}")


def scheduled_lr(state: AdamState, lr: Union[float, Tensor]) -> AdamState:
    """``state`` with the learning rate a schedule sets: any finite ``lr >= 0``, a 0-dim
    tensor too. A schedule may end at 0, where a step moves only the moments, as
    ``torch.optim.Adam``'s does."""
    value = float(lr) if isinstance(lr, Tensor) else lr
    if not is_finite_number(value) or value < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {value!r}")
    return state._replace(lr=_scalar(float(value)))


def _bias_corrections(lr, b1, b2, t, power: Callable) -> Tuple:
    """``(lr / (1 - b1**t), sqrt(1 - b2**t))``: the step size and the second moment's
    correction, in float64 (0-dim tensors or Python floats alike). The arithmetic
    mirrors torch.optim.Adam operation for operation (pow rather than sqrt) so that
    both agree to the last bit."""
    return lr / (1 - power(b1, t)), power(1 - power(b2, t), 0.5)


def adam_update(grads: Params, state: AdamState, params: Params, *, inplace: bool = False,
                power: Power = tensor_power) -> Tuple[Params, AdamState]:
    """One Adam step; the hyper-parameters are read from ``state``.

    Returns the new parameters (not the updates) and the new state. With
    ``inplace=True`` the parameters and moments are overwritten and returned, with
    bit-for-bit the values of the pure form: the object-oriented optimizer's fast
    path. It computes as torch.optim.Adam does, with Python floats for the scalars
    (a tensor operation each would cost more than the update of a small layer) and
    one pass per operation. Eager only; no autograd. ``power``: see ``adam``.
    """
    check_state_like(state, params)
    check_grads(grads, params)
    if inplace:
        return _adam_update_inplace(grads, state, params)
    count = state.count + 1
    step_size, bias_correction2_sqrt = _bias_corrections(state.lr, state.b1, state.b2, count.to(torch.float64),
                                                         power)
    # cast once per dtype rather than once per parameter: eagerly each cast is a dispatch
    coefficients: Dict[torch.dtype, Tuple[Tensor, ...]] = {}
    mu, nu, new_params = {}, {}, {}
    for k, p in params.items():
        # A compiled CNN can hand over a channels-last weight gradient; the state stays in
        # the parameters' layout so that the next compiled call sees the same strides.
        g = grads[k].contiguous()
        if g.dtype not in coefficients:
            coefficients[g.dtype] = tuple(c.to(g.dtype) for c in (
                1 - state.b1, state.b2, 1 - state.b2, bias_correction2_sqrt, state.eps, -step_size))
        one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, neg_step_size = coefficients[g.dtype]
        mu[k] = m = state.mu[k].lerp(g, one_minus_b1)
        nu[k] = v = torch.addcmul(state.nu[k] * b2, one_minus_b2 * g, g)
        new_params[k] = p + (neg_step_size * m) / (v.sqrt() / bc2_sqrt + eps)
    # field by field, not state._replace: torch 2.11's Dynamo made _replace a state short of
    # fields, which failed the compiled step's second call (2.14's traces it right; earlier
    # versions refused to trace it: pytorch/pytorch#158772)
    return new_params, AdamState(count, mu, nu, state.lr, state.b1, state.b2, state.eps)


def _adam_update_inplace(grads: Params, state: AdamState, params: Params) -> Tuple[Params, AdamState]:
    """``adam_update(..., inplace=True)``. A float64 Python scalar is rounded to the
    tensor's dtype inside each kernel, as the pure form's casts round it, and addcmul
    and addcdiv multiply by their scalar first, as the pure form does."""
    lr, b1, b2, eps = (float(x) for x in (state.lr, state.b1, state.b2, state.eps))
    count = int(state.count) + 1
    step_size, bias_correction2_sqrt = _bias_corrections(lr, b1, b2, float(count), pow)
    for k, p in params.items():
        g = grads[k]
        m = state.mu[k].lerp_(g, 1 - b1)
        v = state.nu[k].mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m, v.sqrt().div_(bias_correction2_sqrt).add_(eps), value=-step_size)
    return params, state._replace(count=torch.tensor(count, dtype=torch.int64))
