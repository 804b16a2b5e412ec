"""The pure training step: ``step(params, opt_state, batch) -> (params, opt_state, metrics)``."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from torch import Tensor
from torch.func import grad_and_value

from .checks import check_function
from .diagnostics import global_norm
from .losses import accuracy, cross_entropy
from .optim import Optimizer
from .types import Batch, Params

Metrics = Dict[str, Tensor]
Apply = Callable[[Params, Tensor], Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[Params, object, Batch], Tuple[Params, object, Metrics]]
Gradient = Callable[[Params, Tensor, Tensor], Tuple[Params, Tuple[Tensor, Tensor]]]


def make_objective(apply: Apply, loss: Loss = cross_entropy) -> Callable[[Params, Tensor, Tensor], Tensor]:
    """``objective(params, x, targets) = loss(apply(params, x), targets)``."""

    def objective(params: Params, x: Tensor, targets: Tensor) -> Tensor:
        return loss(apply(params, x), targets)

    return objective


def make_gradient(apply: Apply, loss: Loss = cross_entropy) -> Gradient:
    """``gradient(params, x, targets) -> (grads, (loss_value, probs))``: the step's first half.

    ``grads`` is ``d loss(apply(params, x), targets) / d params``, shaped like ``params``;
    ``loss_value`` the 0-dim loss and ``probs`` the ``(B, n_classes)`` outputs it was
    computed from. A data-parallel step runs it on each rank's slice of the minibatch.
    """

    check_function("apply", apply)
    check_function("loss", loss)

    def objective(params: Params, x: Tensor, targets: Tensor):
        probs = apply(params, x)
        return scalar_loss(loss(probs, targets)), probs

    return grad_and_value(objective, has_aux=True)


def scalar_loss(value: object) -> Tensor:
    """A loss's value as the 0-dim tensor ``grad`` takes: one element (0-dim, or ``(1,)`` as
    ``torch.autograd.grad`` takes it too) of a floating dtype, else a ``ValueError`` naming
    ``loss``."""
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.dtype.is_floating_point:
        found = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"loss must return a floating tensor of one element (the batch's loss), got {found}")
    return value.reshape(())


def make_step(apply: Apply, optimizer: Optimizer, loss: Loss = cross_entropy) -> Step:
    """Build a pure training step.

    ``batch = (x, targets)`` with ``x: (B, C, H, W)`` and ``targets: (B, n_classes)``
    one-hot. ``metrics`` holds 0-dim tensors (no host sync): ``loss`` and ``accuracy``
    of the batch before the update, and ``grad_norm``, the global gradient norm.
    Adam's hyper-parameters come from ``opt_state`` (whichever ``adam(...).init`` made
    it), never from ``optimizer``: one step serves states of any learning rate.

    The step is differentiable: parameters that require gradients (a module's, say) give
    new parameters and moments that are part of their autograd graph, step after step,
    for differentiating through training. For plain training pass detached tensors, as
    ``fit`` does, or the graph and its memory grow with every step.
    """
    gradient = make_gradient(apply, loss)
    if not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimizer must have an update(grads, state, params), as adam() gives, got "
                        f"{type(optimizer).__name__}")

    def step(params: Params, opt_state, batch: Batch):
        x, targets = batch
        grads, (loss_value, probs) = gradient(params, x, targets)
        new_params, new_state = optimizer.update(grads, opt_state, params)
        metrics = {
            "loss": loss_value.detach(),
            "accuracy": accuracy(probs.detach(), targets),
            "grad_norm": global_norm(grads),
        }
        return new_params, new_state, metrics

    return step
