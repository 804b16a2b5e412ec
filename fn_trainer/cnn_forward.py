"""The CNN forward pass in the form Inductor compiles fastest on a CPU.

``Network.apply`` runs the homework's ``nn.Sequential`` eagerly (the reference); under
``torch.compile`` it runs :func:`sequential_forward` instead, which computes the same
function with these rewrites of every ``Conv2d -> activation -> MaxPool2d(2) |
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
   least ``WINOGRAD_MIN_CHANNELS`` input channels (Lavin and Gray, 2016). Each pool window
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
pool rewritten as in 2., where ``MaxPool2d`` (and the Winograd pool of 3.) gives it to the
first one. The parameter gradient is the same either way unless two different input
patches give bitwise-equal values (tied patches of constant background contribute
equally), so training is unaffected; a Jacobian with respect to the input may split
differently.
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
# below this the transforms outweigh the saved products: forward and backward of a 13x13
# layer with 32 outputs, batch 128, compiled, in ms (patch product / Winograd): 1.89 / 2.00
# at 8 input channels, 1.92 / 1.82 at 10, 2.82 / 2.09 at 16 (0.48 / 0.84 at 1: the first layer)
WINOGRAD_MIN_CHANNELS = 10


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
    w = w.permute(0, 2, 4, 3, 5, 1).reshape(o, -1)  # (O, K)
    # The layout picks the weight gradient's orientation: stored (K, O), it is P^T @ dz of
    # shape (K, O); stored (O, K) (a transposed view), dz^T @ P of shape (O, K). The product
    # with the longer output rows was the faster: the benchmark CNN's last layer (K = 288,
    # O = 45) steps 2% faster as (O, K), its first (K = 16, O = 64) is slower so.
    return w.t() if w.shape[1] > o else w.t().contiguous()


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


def _combination(terms: List[Tensor], coefficients: List[float]) -> Tensor:
    """``sum(c * t)`` over the non-zero coefficients, written with additions where ``c`` is 1 or -1."""
    out: Optional[Tensor] = None
    for t, c in zip(terms, coefficients):
        if c == 0:
            continue
        term = t if c == 1 else -t if c == -1 else t * c
        out = term if out is None else (out - t if c == -1 else out + term)
    assert out is not None
    return out


def _outer(a: Tuple[Tuple[float, ...], ...], b: Tuple[Tuple[float, ...], ...]) -> List[List[float]]:
    """Kronecker product of two matrices as nested lists: row ``(i, j)``, column ``(k, l)``."""
    return [[x * y for x in ra for y in rb] for ra in a for rb in b]


# Winograd F(2, 3): y = A^T [(G g) * (B^T d)] for a 4-tap input d and a 3-tap kernel g
_WINO_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINO_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINO_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
# the 2-D transforms on row-major flattened tiles
_WINO_INPUT = _outer(_WINO_BT, _WINO_BT)     # (16 tile positions, 16 window entries)
_WINO_KERNEL = _outer(_WINO_G, _WINO_G)      # (16 tile positions, 9 kernel entries)
_WINO_OUTPUT = _outer(_WINO_AT, _WINO_AT)    # (4 outputs, 16 tile positions)
# patch column (du, dv, r, q) holds window entry (u, v) = (2 du + r, 2 dv + q), flattened u * 4 + v
_WINDOW_OF_COLUMN = [(2 * du + r) * 4 + 2 * dv + q for du in (0, 1) for dv in (0, 1) for r in (0, 1) for q in (0, 1)]
_COLUMN_OF_WINDOW = sorted(range(16), key=_WINDOW_OF_COLUMN.__getitem__)


class WinogradInput(torch.autograd.Function):
    """``B^T d B`` of every tile: patches ``(M, 16 C)`` of :func:`phase_patches` (window 4,
    stride 2) -> ``(16, M, C)``, one ``(M, C)`` matrix per tile position."""

    generate_vmap_rule = True

    @staticmethod
    def forward(patches: Tensor) -> Tensor:
        columns = patches.unflatten(-1, (16, -1)).unbind(-2)
        window = [columns[j] for j in _COLUMN_OF_WINDOW]
        return torch.stack([_combination(window, row) for row in _WINO_INPUT])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_v: Tensor) -> Tensor:
        g = grad_v.unbind(0)
        grad_window = [_combination(g, [row[s] for row in _WINO_INPUT]) for s in range(16)]
        return torch.stack([grad_window[s] for s in _WINDOW_OF_COLUMN], -2).flatten(-2)


class WinogradPool(torch.autograd.Function):
    """``A^T m A`` of every tile and the maximum of its four outputs: ``m (16, M, O)`` ->
    ``(M, O)`` and the index (int32, row-major in the 2x2 tile) of the first maximum."""

    generate_vmap_rule = True

    @staticmethod
    def forward(m: Tensor) -> Tuple[Tensor, Tensor]:
        planes = m.unbind(0)
        y = [_combination(planes, row) for row in _WINO_OUTPUT]
        best = torch.maximum(torch.maximum(y[0], y[1]), torch.maximum(y[2], y[3]))
        # int32: Inductor's loops over an int8 index ran 4 times slower
        first = torch.where(y[0] == best, 0, torch.where(y[1] == best, 1, torch.where(y[2] == best, 2, 3)))
        return best, first.to(torch.int32)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad_best: Tensor, _grad_index: Optional[Tensor]) -> Tensor:
        (index,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad_best.dtype, device=grad_best.device)
        grad_y = [torch.where(index == k, grad_best, zero) for k in range(4)]
        return torch.stack([_combination(grad_y, [row[t] for row in _WINO_OUTPUT]) for t in range(16)])


def winograd_kernel(weight: Tensor) -> Tensor:
    """``G g G^T`` of every kernel: ``(O, C, 3, 3) -> (16, C, O)``."""
    taps = weight.permute(2, 3, 1, 0).flatten(0, 1).unbind(0)  # 9 x (C, O)
    return torch.stack([_combination(taps, row) for row in _WINO_KERNEL])


def winograd_conv_max_pool(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """``max_pool2d(conv2d(x, weight, padding=padding), 2)`` without bias, for a 3x3 kernel
    of stride 1, by Winograd F(2x2, 3x3) with one tile per pool window.

    x: ``(N, C, H, W)``; weight: ``(O, C, 3, 3)``. Returns ``(N, O, Ho // 2, Wo // 2)``,
    channels-last in memory; ties give the gradient to the first maximum, as ``MaxPool2d``.
    """
    patches, h, w = phase_patches(_channels_last(x, padding), 4, 2)
    m = torch.bmm(WinogradInput.apply(patches), winograd_kernel(weight))  # (16, N L, O)
    pooled, _ = WinogradPool.apply(m)
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


def _geometry(conv: nn.Conv2d) -> Tuple[int, int, int]:
    """Kernel size, stride and padding of a :func:`_plain_conv` (equal along both axes)."""
    return conv.kernel_size[0], conv.stride[0], conv.padding[0]


def _pooled_conv(x: Tensor, conv: nn.Conv2d, pool: nn.Module, w: Tensor) -> Optional[Tensor]:
    """``pool(conv(x))`` without bias in the form of this module's docstring, or ``None``
    when ``pool`` is neither ``MaxPool2d(2)`` nor ``AdaptiveMaxPool2d``."""
    k, s, p = _geometry(conv)
    if _is_pool2(pool):
        if k == 3 and s == 1 and conv.in_channels >= WINOGRAD_MIN_CHANNELS:
            return winograd_conv_max_pool(x, w, p)
        if _few_slices(k + s, 2 * s):
            return conv_max_pool(x, w, s, p)
        return F.max_pool2d(F.conv2d(x, w, stride=s, padding=p), 2)
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        z = patch_conv(x, w, s, p) if _few_slices(k, s) else F.conv2d(x, w, stride=s, padding=p)
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
        return (extent[0] + 2 * p - k) // s + 1, (extent[1] + 2 * p - k) // s + 1
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


def sequential_forward(module: nn.Sequential, params: Params, x: Tensor) -> Tensor:
    """``functional_call(module, params, (x,))`` with the rewrites of this module's docstring
    applied to every ``Conv2d -> activation -> MaxPool2d(2) | AdaptiveMaxPool2d`` triple,
    and every plain convolution given only the part of its input map the output depends on
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
