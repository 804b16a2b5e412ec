"""A network's layers as plain strings, the same in both processes.

``describe_layers(module)`` lists the leaf modules in registration order, or in the
order a forward pass called them (``called_order``; a module used at several places,
like one activation instance, is listed at each), each as
``Kind(arguments)`` with the arguments that matter to the homework normalised
(pairs for sizes, ``dim=-1`` written ``1`` for the ``(N, C)`` softmax).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

WEIGHTED = (nn.Linear, nn.Conv2d)
KINDS = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Softmax,
         nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def describe_layer(m: nn.Module) -> str:
    """``"Linear(4, 3)"``, ``"MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"``, ..."""
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}, {m.out_features})"
    if isinstance(m, nn.Conv2d):
        return (f"Conv2d({m.in_channels}, {m.out_channels}, kernel_size={_pair(m.kernel_size)}, "
                f"stride={_pair(m.stride)}, padding={_pair(m.padding)})")
    if isinstance(m, nn.MaxPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return (f"MaxPool2d(kernel_size={_pair(m.kernel_size)}, stride={_pair(stride)}, "
                f"padding={_pair(m.padding)})")
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return f"AdaptiveMaxPool2d({_pair(m.output_size)})"
    if isinstance(m, nn.Flatten):
        return "Flatten()" if (m.start_dim, m.end_dim) == (1, -1) else f"Flatten({m.start_dim}, {m.end_dim})"
    if isinstance(m, nn.Softmax):  # dim=None: torch's implicit choice, dim 1 for the (N, C) output
        return f"Softmax(dim={1 if m.dim in (-1, None) else m.dim})"
    for kind in KINDS:
        # a subclass of Identity with a forward of its own is no Identity
        if isinstance(m, kind) and (kind is not nn.Identity or type(m).forward is nn.Identity.forward):
            return f"{kind.__name__}()"
    return f"{type(m).__name__} (not one of the torch.nn layers the homework names)"


def leaf_modules(module: nn.Module) -> List[nn.Module]:
    """The modules without children, in registration order, repeats included."""
    return [m for _, m in module.named_modules(remove_duplicate=False) if not list(m.children())]


def describe_layers(module: nn.Module, order: Optional[List[nn.Module]] = None) -> List[str]:
    """``describe_layer`` of each leaf module, in ``order`` if given (``called_order``),
    else in registration order."""
    return [describe_layer(m) for m in (leaf_modules(module) if order is None else order)]


def called_order(module: nn.Module, forward: Callable[[], Any]) -> Tuple[Any, Optional[List[nn.Module]]]:
    """``forward()``'s value and the leaf modules of ``module`` in the order it called them
    (repeats included): a network whose ``forward`` runs its layers in another order than
    it registered them is described as it computes. The order is ``None`` (registration
    order applies) when the calls missed a Linear or Conv2d layer, which a forward using
    ``layer.forward(x)`` or ``F.linear`` instead of ``layer(x)`` does."""
    leaves = leaf_modules(module)
    called: List[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: called.append(m)) for m in dict.fromkeys(leaves)]
    try:
        value = forward()
    finally:
        for hook in hooks:
            hook.remove()
    weighted = {m for m in leaves if isinstance(m, WEIGHTED)}
    return value, called if called and weighted <= set(called) else None


def weighted_parameters(module: nn.Module, order: Optional[List[nn.Module]] = None) -> List[torch.Tensor]:
    """``[weight, bias, weight, bias, ...]`` of the Linear/Conv2d layers in ``order`` (as
    ``describe_layers``; a layer called twice counts once, a missing bias is skipped)."""
    found = []
    for m in dict.fromkeys(leaf_modules(module) if order is None else order):
        if isinstance(m, WEIGHTED):
            found += [p.detach().clone() for p in (m.weight, m.bias) if p is not None]
    return found


def _arguments(m: nn.Module) -> Dict[str, Any]:
    """The constructor arguments that rebuild layer ``m`` (of one of ``KINDS``)."""
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
                "stride": m.stride, "padding": m.padding, "bias": m.bias is not None}
    if isinstance(m, nn.MaxPool2d):
        return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return {"output_size": m.output_size}
    if isinstance(m, nn.Flatten):
        return {"start_dim": m.start_dim, "end_dim": m.end_dim}
    if isinstance(m, nn.Softmax):
        return {"dim": m.dim}
    return {}


def recipe(module: nn.Module) -> List[Tuple[str, Dict[str, Any]]]:
    """``module``'s leaf layers as ``(class name, constructor arguments)``: what
    ``from_recipe`` rebuilds in another process, with plain values only."""
    return [(type(m).__name__, _arguments(m)) for m in leaf_modules(module)]


def from_recipe(layers: List[Tuple[str, Dict[str, Any]]]) -> nn.Sequential:
    """The ``nn.Sequential`` of ``recipe``'s layers, made from ``torch.nn`` classes of ``KINDS`` only."""
    allowed = {kind.__name__: kind for kind in KINDS}
    return nn.Sequential(*(allowed[name](**arguments) for name, arguments in layers))
