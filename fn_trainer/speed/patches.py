"""Convolutions as matrix products over channels-last patches, with a 2x2 max-pool folded in.

A convolution of stride ``t`` and window ``K`` is ``patches (N L, K K C) @ kernel (K K C, O)``.
The patches are cut from the *phase view* of the ``(N, H, W, C)`` input,
``(N, H/t, W/t, t, t, C)``, as ``D x D`` shifted slices (``D = ceil(K / t)``), so their
backward, the input gradient, is a sum of ``D^2`` shifted blocks that Inductor fuses into
one pass. A 2x2 max-pool is folded into the product: output ``(i, j)`` of the pool is the
maximum of the convolution at ``(2i + a, 2j + c)`` for ``a, c`` in ``{0, 1}``, a
convolution of stride ``2s`` with the kernel shifted by ``(a s, c s)`` inside a ``(k + s)``
window; the four shifted kernels are the column blocks of one matrix, and an element-wise
maximum of the four output blocks is the pool (``torch.maximum`` shares the gradient of
tied entries). See :mod:`fn_trainer.speed.cnn_forward` for where these are used.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

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


def few_slices(window: int, stride: int) -> bool:
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
    return patches.reshape(n * ho * wo, d * d * t * t * c), ho, wo  # explicit: n may be 0


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


def channels_last(x: Tensor, padding: int) -> Tensor:
    return (F.pad(x, (padding,) * 4) if padding else x).permute(0, 2, 3, 1)


def patch_conv(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``conv2d(x, weight, stride=stride, padding=padding)`` without bias as one matrix
    product. x: ``(N, C, H, W)``; returns ``(N, O, Ho, Wo)``, channels-last in memory."""
    patches, ho, wo = phase_patches(channels_last(x, padding), weight.shape[-1], stride)
    return (patches @ patch_kernel(weight, stride)).view(x.shape[0], ho, wo, weight.shape[0]).permute(0, 3, 1, 2)


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
    patches, h, w = phase_patches(channels_last(x, padding), weight.shape[-1] + s, 2 * s)
    z = patches @ patch_kernel(shifted_kernels(weight, s), 2 * s)
    z0, z1, z2, z3 = z.chunk(4, dim=-1)
    pooled = torch.maximum(torch.maximum(z0, z1), torch.maximum(z2, z3))  # (N L, O)
    return pooled.view(x.shape[0], h, w, weight.shape[0]).permute(0, 3, 1, 2)
