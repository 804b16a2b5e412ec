"""The CNN forward pass in the form Inductor compiles fastest on a CPU: the layer walk.

``Network.apply`` runs the homework's ``nn.Sequential`` as it is (the reference). A
compiled step that asks for speed applies :func:`inductor_apply` instead, which computes
the same function with :func:`sequential_forward`: these rewrites of every ``Conv2d -> activation -> MaxPool2d(2) |
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
3. **Winograd F(2x2, 3x3) for 3x3 convolutions of stride 1 with a 2x2 max-pool** and at
   least ``winograd_min_channels`` input channels (Lavin and Gray, 2016; the threshold is
   measured per CPU, :mod:`.calibration`). Each pool window
   is one Winograd tile: its 4x4 input window ``d`` (the same patches as in 2.) and the
   kernel ``g`` give the 2x2 outputs ``A^T [(G g G^T) * (B^T d B)] A``, so the product over
   channels becomes 16 products of ``(N L, C) @ (C, O)``, one per tile position (4 times
   fewer multiply-adds than the four shifted 4x4 kernels of 2., 2.25 times fewer than the
   plain convolution). The transforms are additions done by Inductor's loops; their
   backward passes are written out (:class:`WinogradInput`, :class:`WinogradPool`) so
   each is one pass over memory, and the pool's backward keeps the index of the maximum.
4. **Only what is read.** Every plain convolution gets only the top-left part of its
   input map that the network's output depends on (:func:`_extents_read`): rows and
   columns that a later stride or 2x2 pool drops are never computed.

Every other layer runs in the module's own functional form; activations stay
channels-last in memory between rewritten layers.

Values equal the eager module's up to float32 rounding. Sub-gradients at exact ties
differ in one place: ``torch.maximum`` shares the gradient between tied entries of a
pool rewritten as in 2. (and of the Winograd pool of 3. in its form for ``vmap``), where
``MaxPool2d`` (and the Winograd pool otherwise) gives it to the first one. The parameter
gradient is the same either way unless two different input
patches give bitwise-equal values (tied patches of constant background contribute
equally), so training is unaffected; a Jacobian with respect to the input may split
differently.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..core.networks import Network, Params, conv_output_size
from .calibration import DEFAULTS
from .patches import conv_max_pool, few_slices, patch_conv
from .winograd import winograd_conv_max_pool

MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid)  # max commutes with these


def _is_pool2(module: nn.Module) -> bool:
    return (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2))
            and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
            and module.dilation in (1, (1, 1)) and not module.ceil_mode)


def _plain_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
            and module.stride[0] == module.stride[1] and module.padding[0] == module.padding[1]
            and module.kernel_size[0] == module.kernel_size[1])


def _geometry(conv: nn.Conv2d) -> Tuple[int, int, int]:
    """Kernel size, stride and padding of a :func:`_plain_conv` (equal along both axes)."""
    return conv.kernel_size[0], conv.stride[0], conv.padding[0]


def _pooled_conv(x: Tensor, conv: nn.Conv2d, pool: nn.Module, w: Tensor,
                 winograd_min_channels: int, for_vmap: bool) -> Optional[Tensor]:
    """``pool(conv(x))`` without bias in the form of this module's docstring (Winograd's
    from ``winograd_min_channels`` input channels, in its ``for_vmap`` form if asked), or
    ``None`` when ``pool`` is neither ``MaxPool2d(2)`` nor ``AdaptiveMaxPool2d``."""
    k, s, p = _geometry(conv)
    if _is_pool2(pool):
        if k == 3 and s == 1 and conv.in_channels >= winograd_min_channels:
            return winograd_conv_max_pool(x, w, p, for_vmap=for_vmap)
        if few_slices(k + s, 2 * s):
            return conv_max_pool(x, w, s, p)
        return F.max_pool2d(F.conv2d(x, w, stride=s, padding=p), 2)
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        z = patch_conv(x, w, s, p) if few_slices(k, s) else F.conv2d(x, w, stride=s, padding=p)
        return F.adaptive_max_pool2d(z, pool.output_size)
    return None


Extent = Optional[Tuple[int, int]]


def _output_extent(layer: nn.Module, extent: Extent) -> Extent:
    """Height and width of ``layer``'s output for an input of ``extent`` (``None``: not a map,
    or a layer this walk does not follow, such as the adaptive pool: nothing after it is cropped)."""
    if extent is None:
        return None
    if _plain_conv(layer):
        k, s, p = _geometry(layer)
        return conv_output_size(extent[0], k, s, p), conv_output_size(extent[1], k, s, p)
    if _is_pool2(layer):
        return extent[0] // 2, extent[1] // 2
    if isinstance(layer, MONOTONE):
        return extent
    return None


def _extents_read(layers: List[nn.Module], input_extent: Tuple[int, int]) -> List[Extent]:
    """For every layer, the top-left part ``(h, w)`` of its input map that the network's output
    depends on (``None``: all of it, or not a map).

    A plain convolution reads rows ``< (h_out - 1) s + k - p`` for ``h_out`` outputs, a 2x2
    pool ``2 h_out`` rows, an activation what its output needs; anything else (the adaptive
    pool, the flatten) reads everything. The benchmark CNN's first layer thus computes
    24x24 of its 26x26 outputs: the second layer's pooled 5x5 reads 12 of the 13 rows.
    """
    extents: List[Extent] = []
    extent: Extent = input_extent
    for layer in layers:
        extents.append(extent)
        extent = _output_extent(layer, extent)
    needed: Extent = None  # of the current layer's output; None: all of it
    for i in range(len(layers) - 1, -1, -1):
        layer, full = layers[i], extents[i]
        if needed is None or full is None:
            read = None
        elif _plain_conv(layer):
            k, s, p = _geometry(layer)
            read = tuple(min(f, max(1, (n - 1) * s + k - p)) for f, n in zip(full, needed))
        elif _is_pool2(layer):
            read = tuple(min(f, 2 * n) for f, n in zip(full, needed))
        elif isinstance(layer, MONOTONE):
            read = needed
        else:
            read = None
        extents[i] = read if read != full else None
        needed = read if read is not None else full
    return extents


def sequential_forward(module: nn.Sequential, params: Params, x: Tensor, *,
                       winograd_min_channels: int = DEFAULTS.winograd_min_channels,
                       for_vmap: bool = False) -> Tensor:
    """``functional_call(module, params, (x,))`` with the rewrites of this module's docstring
    applied to every ``Conv2d -> activation -> MaxPool2d(2) | AdaptiveMaxPool2d`` triple
    (the Winograd one, 3., from ``winograd_min_channels`` input channels; ``for_vmap``: in
    the form Dynamo traces under ``vmap``, see :func:`winograd_conv_max_pool`), and every
    plain convolution given only the part of its input map the output depends on
    (:func:`_extents_read`)."""
    # not named_children(): it lists a module shared by several positions (the builders
    # reuse one activation instance) only once
    layers: List[tuple] = list(module._modules.items())
    reads = _extents_read([layer for _, layer in layers], tuple(x.shape[-2:])) if x.dim() == 4 else [None] * len(layers)
    i = 0
    while i < len(layers):
        name, layer = layers[i]
        if reads[i] is not None and _plain_conv(layer):
            x = x[..., :reads[i][0], :reads[i][1]]
        if i + 2 < len(layers) and _plain_conv(layer) and isinstance(layers[i + 1][1], MONOTONE):
            z = _pooled_conv(x, layer, layers[i + 2][1], params[f"{name}.weight"], winograd_min_channels,
                             for_vmap)
            if z is not None:
                b = params.get(f"{name}.bias")
                x = layers[i + 1][1](z if b is None else z + b[:, None, None])
                i += 3
                continue
        prefix = f"{name}."
        x = functional_call(layer, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, (x,))
        i += 1
    return x


def inductor_apply(network: Network, *, vmapped: bool = False,
                   winograd_min_channels: int = DEFAULTS.winograd_min_channels) -> Callable[[Params, Tensor], Tensor]:
    """``apply(params, x)`` for a step to be compiled: :func:`sequential_forward` for a CNN,
    ``network.apply`` for an MLP (Inductor already fuses its layers). The same function up
    to float32 rounding; the input checks of ``network.apply`` run first. Pooled 3x3
    layers with ``winograd_min_channels`` input channels or more run as Winograd products
    (the default: as measured on a 2-core Intel Xeon; ``calibrate()`` measures this CPU's).

    ``vmapped=True`` for a step that ``torch.func.vmap`` maps over stacked models (a
    population) before it is compiled: the Winograd rewrite leaves its backward passes to
    autograd, as Dynamo cannot trace ``vmap`` over the written-out ones
    (``torch.autograd.Function``); the threshold is the single model's.

    Forward-mode derivatives (``torch.func.jvp``, ``jacfwd``, ``hessian``) need
    ``vmapped=True`` where a layer runs as Winograd: the written-out backward passes have no
    ``jvp``, and Dynamo refuses to trace an ``autograd.Function`` that defines one.
    """
    if network.network_type != "cnn":
        return network.apply

    def apply(params: Params, x: Tensor) -> Tensor:
        network.check_input(x, params)
        return sequential_forward(network.module, params, x, winograd_min_channels=winograd_min_channels,
                                  for_vmap=vmapped)

    return apply
