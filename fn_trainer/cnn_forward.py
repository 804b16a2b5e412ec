"""The CNN forward pass in the form Inductor compiles fastest on a CPU.

``Network.apply`` runs the homework's ``nn.Sequential`` eagerly (the reference); under
``torch.compile`` it runs :func:`sequential_forward` instead, which computes the same
function with two rewrites (``python -m benchmarks.epoch --shapes cnn`` measures them on
the CNN (16, 32, 45): its ``compiled_module`` path compiles the module's own forward):

1. **Pool before bias and activation.** For a monotone non-decreasing activation ``f``
   (ReLU, tanh, sigmoid) and a per-channel bias ``b``,
   ``maxpool(f(conv(x) + b)) == f(maxpool(conv(x)) + b)``: the bias add and activation
   then touch the pooled map only (a quarter of the elements after a 2x2 pool); the
   same holds for ``AdaptiveMaxPool2d``.
2. **The first convolution and its 2x2 max-pool as one matrix product.** Output
   ``(i, j)`` of the pool is the maximum of the convolution at ``(2i + a, 2j + c)`` for
   ``a, c`` in ``{0, 1}``, which is a convolution with stride ``2s`` of the kernel shifted
   by ``(a s, c s)`` inside a ``(k + s) x (k + s)`` window. The four shifted kernels are
   stacked as the columns of one matrix; the input's ``(k + s)``-patches of stride ``2s``
   times that matrix give all four candidates, channels last, and an element-wise
   maximum of the four blocks gives the pool. The full-size feature map
   ``(N, O, H - k + 1, W - k + 1)`` is never built, and the weight gradient is one more
   matrix product (no convolution backward). For the 1-channel Fashion-MNIST input the
   extra multiply-adds of the zero-padded kernels cost far less than the feature map
   saved; deeper layers are compute-bound and keep ``conv -> max_pool2d``, and they
   need the input gradient, which the first layer does not.

Every other layer runs in the module's own functional form.

Values equal the eager module's up to float32 rounding. Sub-gradients at exact ties
differ in one place: in the first layer's pool, ``torch.maximum`` shares the gradient
between tied entries where ``MaxPool2d`` gives it to the first one. The parameter
gradient is the same either way unless two different input patches give bitwise-equal
convolution values (tied patches of constant background contribute equally), so
training is unaffected; a Jacobian with respect to the input may split differently.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = Dict[str, Tensor]
MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid)  # max commutes with these


def shifted_kernels(weight: Tensor, stride: int) -> Tensor:
    """``(O, C, k, k) -> (4 O, C, k + s, k + s)``: the kernel at offsets (0,0), (0,s), (s,0), (s,s)."""
    s = stride
    return torch.cat([F.pad(weight, (c * s, (1 - c) * s, a * s, (1 - a) * s)) for a in (0, 1) for c in (0, 1)])


def conv_max_pool(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``max_pool2d(conv2d(x, weight, stride=stride, padding=padding), 2)`` without bias,
    computed on patch matrices with the four shifted kernels.

    x: ``(N, C, H, W)``; weight: ``(O, C, k, k)``. Returns ``(N, O, Ho // 2, Wo // 2)`` with
    ``Ho = (H + 2 padding - k) // stride + 1`` (likewise ``Wo``), channels-last in memory.
    With ``K = k + stride``: patches ``(N, L, C K K)`` of stride ``2 * stride`` times the
    kernels ``(C K K, 4 O)`` give ``(N, L, 4 O)``, whose four ``O``-wide blocks are maxed.
    Ties share the gradient.
    """
    o, k = weight.shape[0], weight.shape[-1]
    h = ((x.shape[-2] + 2 * padding - k) // stride + 1) // 2
    w = ((x.shape[-1] + 2 * padding - k) // stride + 1) // 2
    patches = F.unfold(x, k + stride, stride=2 * stride, padding=padding).transpose(1, 2)
    z = patches @ shifted_kernels(weight, stride).reshape(4 * o, -1).t()
    z0, z1, z2, z3 = z.chunk(4, dim=-1)
    pooled = torch.maximum(torch.maximum(z0, z1), torch.maximum(z2, z3))  # (N, L, O)
    return pooled.transpose(1, 2).unflatten(2, (h, w))


def _is_pool2(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
            and module.dilation in (1, (1, 1)) and not module.ceil_mode)


def _plain_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
            and module.stride[0] == module.stride[1] and module.padding[0] == module.padding[1]
            and module.kernel_size[0] == module.kernel_size[1])


def _pooled_conv(x: Tensor, conv: nn.Conv2d, pool: nn.Module, w: Tensor, first: bool) -> Optional[Tensor]:
    """``pool(conv(x))`` without bias in the form of this module's docstring, or ``None``
    when ``pool`` is neither ``MaxPool2d(2)`` nor ``AdaptiveMaxPool2d``."""
    s, p = conv.stride[0], conv.padding[0]
    if _is_pool2(pool):
        return conv_max_pool(x, w, s, p) if first else F.max_pool2d(F.conv2d(x, w, stride=s, padding=p), 2)
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        return F.adaptive_max_pool2d(F.conv2d(x, w, stride=s, padding=p), pool.output_size)
    return None


def sequential_forward(module: nn.Sequential, params: Params, x: Tensor) -> Tensor:
    """``functional_call(module, params, (x,))`` with the rewrites of this module's docstring
    applied to every ``Conv2d -> activation -> MaxPool2d(2) | AdaptiveMaxPool2d`` triple."""
    # not named_children(): it lists a module shared by several positions (the builders
    # reuse one activation instance) only once
    layers: List[tuple] = list(module._modules.items())
    i = 0
    while i < len(layers):
        name, layer = layers[i]
        if i + 2 < len(layers) and _plain_conv(layer) and isinstance(layers[i + 1][1], MONOTONE):
            z = _pooled_conv(x, layer, layers[i + 2][1], params[f"{name}.weight"], first=i == 0)
            if z is not None:
                b = params.get(f"{name}.bias")
                x = layers[i + 1][1](z if b is None else z + b[:, None, None])
                i += 3
                continue
        prefix = f"{name}."
        x = functional_call(layer, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, (x,))
        i += 1
    return x
