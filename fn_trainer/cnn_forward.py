"""The CNN forward pass in the form Inductor compiles fastest on a CPU.

``Network.apply`` runs the homework's ``nn.Sequential`` eagerly (the reference); under
``torch.compile`` it runs :func:`sequential_forward` instead, which computes the same
function with two rewrites of every ``Conv2d -> activation -> MaxPool2d(2) |
AdaptiveMaxPool2d`` triple (``python -m benchmarks.epoch --shapes cnn`` measures them on
the CNN (16, 32, 45): its ``compiled_module`` path compiles the module's own forward):

1. **Pool before bias and activation.** For a monotone non-decreasing activation ``f``
   (ReLU, tanh, sigmoid) and a per-channel bias ``b``,
   ``maxpool(f(conv(x) + b)) == f(maxpool(conv(x)) + b)``: the bias add and activation
   then touch the pooled map only (a quarter of the elements after a 2x2 pool).
2. **Convolutions as one matrix product over channels-last patches.** A convolution of
   stride ``t`` and window ``K`` is ``patches (N L, K K C) @ kernel (K K C, O)``. The
   patches are cut from the *phase view* of the ``(N, H, W, C)`` input,
   ``(N, H/t, W/t, t, t, C)``, as ``D x D`` shifted slices (``D = ceil(K / t)``), so
   their backward, the input gradient, is a sum of ``D^2`` shifted blocks that
   Inductor fuses into one pass (slicing the input directly costs ``K^2`` masked
   gathers; ``F.fold`` is slower still). A 2x2 max-pool is folded into the product:
   output ``(i, j)`` of the pool is the maximum of the convolution at ``(2i + a, 2j + c)``
   for ``a, c`` in ``{0, 1}``, a convolution of stride ``2s`` with the kernel shifted by
   ``(a s, c s)`` inside a ``(k + s)`` window; the four shifted kernels are the column
   blocks of one matrix, and an element-wise maximum of the four output blocks is the
   pool. The full-size feature map is never built, and every convolution backward
   becomes two more matrix products. A layer whose patches would need more than
   ``MAX_SLICES`` slices (a large kernel of stride 1) keeps ``F.conv2d``.

Every other layer runs in the module's own functional form; activations stay
channels-last in memory between rewritten layers.

Values equal the eager module's up to float32 rounding. Sub-gradients at exact ties
differ in one place: ``torch.maximum`` shares the gradient between tied entries of a
rewritten pool where ``MaxPool2d`` gives it to the first one. The parameter gradient is
the same either way unless two different input patches give bitwise-equal values
(tied patches of constant background contribute equally), so training is unaffected;
a Jacobian with respect to the input may split differently.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = Dict[str, Tensor]
MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid)  # max commutes with these
# D^2 up to 9 measured faster than F.conv2d (9: the benchmark CNN's last layer, 3x3 of
# stride 1); larger windows of small stride keep the conv
MAX_SLICES = 9


def shifted_kernels(weight: Tensor, stride: int) -> Tensor:
    """``(O, C, k, k) -> (4 O, C, k + s, k + s)``: the kernel at offsets (0,0), (0,s), (s,0), (s,s)."""
    s = stride
    return torch.cat([F.pad(weight, (c * s, (1 - c) * s, a * s, (1 - a) * s)) for a in (0, 1) for c in (0, 1)])


def _n_phases(window: int, stride: int) -> int:
    """``D = ceil(window / stride)``: phase blocks per side that cover a window."""
    return -(-window // stride)


def _few_slices(window: int, stride: int) -> bool:
    """Whether a window's patches take at most ``MAX_SLICES`` slices of the phase view."""
    return _n_phases(window, stride) ** 2 <= MAX_SLICES


def phase_patches(x: Tensor, window: int, stride: int) -> Tuple[Tensor, int, int]:
    """Patches of a channels-last map: ``x (N, H, W, C) -> (N * Ho * Wo, D D t t C), Ho, Wo``.

    ``Ho = (H - window) // stride + 1`` (likewise ``Wo``), ``t = stride``,
    ``D = ceil(window / t)``. Column ``(du, dv, r, q, c)`` holds ``x[n, t (i + du) + r,
    t (j + dv) + q, c]`` for output ``(i, j)``: the window, widened to ``D t``, in the
    order :func:`patch_kernel` lays out a kernel.
    """
    n, h, w, c = x.shape
    t, d = stride, _n_phases(window, stride)
    ho, wo = (h - window) // t + 1, (w - window) // t + 1
    hp, wp = t * (ho + d - 1), t * (wo + d - 1)
    if hp > h or wp > w:  # the widened window of the last output reads past the map; zeros meet zero weights
        x = F.pad(x, (0, 0, 0, max(wp - w, 0), 0, max(hp - h, 0)))
    phases = x[:, :hp, :wp].reshape(n, hp // t, t, wp // t, t, c).permute(0, 1, 3, 2, 4, 5)
    patches = torch.cat([phases[:, du:du + ho, dv:dv + wo] for du in range(d) for dv in range(d)], 3)
    return patches.reshape(n * ho * wo, -1), ho, wo


def patch_kernel(weight: Tensor, stride: int) -> Tensor:
    """``(O, C, K, K) -> (D D t t C, O)``, zero-padded to the window ``D t`` of :func:`phase_patches`."""
    o, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    t, d = stride, _n_phases(k, stride)
    w = F.pad(weight, (0, d * t - k, 0, d * t - k)).view(o, c, d, t, d, t)
    # contiguous (not a transposed view): the weight gradient is then P^T @ dz, the faster orientation
    return w.permute(0, 2, 4, 3, 5, 1).reshape(o, -1).t().contiguous()


def _channels_last(x: Tensor, padding: int) -> Tensor:
    return (F.pad(x, (padding,) * 4) if padding else x).permute(0, 2, 3, 1)


def patch_conv(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``conv2d(x, weight, stride=stride, padding=padding)`` without bias as one matrix
    product. x: ``(N, C, H, W)``; returns ``(N, O, Ho, Wo)``, channels-last in memory."""
    patches, ho, wo = phase_patches(_channels_last(x, padding), weight.shape[-1], stride)
    return (patches @ patch_kernel(weight, stride)).view(x.shape[0], ho, wo, -1).permute(0, 3, 1, 2)


def conv_max_pool(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``max_pool2d(conv2d(x, weight, stride=stride, padding=padding), 2)`` without bias,
    as one matrix product with the four shifted kernels.

    x: ``(N, C, H, W)``; weight: ``(O, C, k, k)``. Returns ``(N, O, Ho // 2, Wo // 2)``
    with ``Ho = (H + 2 padding - k) // stride + 1`` (likewise ``Wo``), channels-last in
    memory. Patches of window ``k + stride`` and stride ``2 stride`` times the kernels
    ``(D D t t C, 4 O)`` give ``(N L, 4 O)``, whose four ``O``-wide blocks are maxed.
    Ties share the gradient.
    """
    s = stride
    patches, h, w = phase_patches(_channels_last(x, padding), weight.shape[-1] + s, 2 * s)
    z = patches @ patch_kernel(shifted_kernels(weight, s), 2 * s)
    z0, z1, z2, z3 = z.chunk(4, dim=-1)
    pooled = torch.maximum(torch.maximum(z0, z1), torch.maximum(z2, z3))  # (N L, O)
    return pooled.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)


def _is_pool2(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
            and module.dilation in (1, (1, 1)) and not module.ceil_mode)


def _plain_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
            and module.stride[0] == module.stride[1] and module.padding[0] == module.padding[1]
            and module.kernel_size[0] == module.kernel_size[1])


def _pooled_conv(x: Tensor, conv: nn.Conv2d, pool: nn.Module, w: Tensor) -> Optional[Tensor]:
    """``pool(conv(x))`` without bias in the form of this module's docstring, or ``None``
    when ``pool`` is neither ``MaxPool2d(2)`` nor ``AdaptiveMaxPool2d``."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if _is_pool2(pool):
        if _few_slices(k + s, 2 * s):
            return conv_max_pool(x, w, s, p)
        return F.max_pool2d(F.conv2d(x, w, stride=s, padding=p), 2)
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        z = patch_conv(x, w, s, p) if _few_slices(k, s) else F.conv2d(x, w, stride=s, padding=p)
        return F.adaptive_max_pool2d(z, pool.output_size)
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
            z = _pooled_conv(x, layer, layers[i + 2][1], params[f"{name}.weight"])
            if z is not None:
                b = params.get(f"{name}.bias")
                x = layers[i + 1][1](z if b is None else z + b[:, None, None])
                i += 3
                continue
        prefix = f"{name}."
        x = functional_call(layer, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, (x,))
        i += 1
    return x
