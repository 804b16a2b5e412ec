"""Winograd F(2x2, 3x3) for a 3x3 convolution of stride 1 followed by a 2x2 max-pool.

Each pool window is one Winograd tile (Lavin and Gray, 2016): its 4x4 input window ``d``
(the patches of :func:`fn_trainer.speed.patches.phase_patches`, window 4, stride 2) and
the kernel ``g`` give the 2x2 outputs ``A^T [(G g G^T) * (B^T d B)] A``, so the product
over channels becomes 16 products of ``(N L, C) @ (C, O)``, one per tile position. The
transforms are additions done by Inductor's loops; their backward passes are written out
(:class:`WinogradInput`, :class:`WinogradPool`) so each is one pass over memory, and the
pool's backward keeps the index of the first maximum, as ``MaxPool2d`` does. Under
``torch.func.vmap`` Dynamo cannot trace an ``autograd.Function``: the form for a vmapped
step (``for_vmap=True``) leaves the backward passes to autograd.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .patches import channels_last, phase_patches


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


def _input_transform(patches: Tensor) -> Tensor:
    """``B^T d B`` of every tile: ``(M, 16 C) -> (16, M, C)``."""
    columns = patches.unflatten(-1, (16, -1)).unbind(-2)
    window = [columns[j] for j in _COLUMN_OF_WINDOW]
    return torch.stack([_combination(window, row) for row in _WINO_INPUT])


def _output_transform(m: Tensor) -> List[Tensor]:
    """``A^T m A`` of every tile: ``(16, M, O)`` -> its four outputs, each ``(M, O)``, row-major."""
    planes = m.unbind(0)
    return [_combination(planes, row) for row in _WINO_OUTPUT]


def _max4(y: List[Tensor]) -> Tensor:
    return torch.maximum(torch.maximum(y[0], y[1]), torch.maximum(y[2], y[3]))


class WinogradInput(torch.autograd.Function):
    """``B^T d B`` of every tile: patches ``(M, 16 C)`` of :func:`phase_patches` (window 4,
    stride 2) -> ``(16, M, C)``, one ``(M, C)`` matrix per tile position."""

    generate_vmap_rule = True

    @staticmethod
    def forward(patches: Tensor) -> Tensor:
        return _input_transform(patches)

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
        y = _output_transform(m)
        best = _max4(y)
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


def winograd_conv_max_pool(x: Tensor, weight: Tensor, padding: int, *, for_vmap: bool = False) -> Tensor:
    """``max_pool2d(conv2d(x, weight, padding=padding), 2)`` without bias, for a 3x3 kernel
    of stride 1, by Winograd F(2x2, 3x3) with one tile per pool window.

    x: ``(N, C, H, W)``; weight: ``(O, C, 3, 3)``. Returns ``(N, O, Ho // 2, Wo // 2)``,
    channels-last in memory; ties give the gradient to the first maximum, as ``MaxPool2d``.
    ``for_vmap=True``: the same values with the backward passes left to autograd, for a step
    that ``torch.func.vmap`` maps before Dynamo traces it; ties then share the gradient, as
    ``torch.maximum`` does.
    """
    patches, h, w = phase_patches(channels_last(x, padding), 4, 2)
    if for_vmap:
        m = torch.bmm(_input_transform(patches), winograd_kernel(weight))
        pooled = _max4(_output_transform(m))
    else:
        m = torch.bmm(WinogradInput.apply(patches), winograd_kernel(weight))  # (16, N L, O)
        pooled, _ = WinogradPool.apply(m)
    return pooled.view(x.shape[0], h, w, weight.shape[0]).permute(0, 3, 1, 2)
