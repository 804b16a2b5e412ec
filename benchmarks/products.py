"""The matrix products of an MLP's training step, and nothing else: a measured floor.

A training step of a dense layer ``z = x Wᵀ + b`` (``x: (B, in)``, ``W: (out, in)``) does
three products, each ``B · in · out`` multiply-adds:

    forward           x Wᵀ      (B, in) @ (in, out)
    weight gradient   dzᵀ x     (out, B) @ (B, in)
    input gradient    dz W      (B, out) @ (out, in)     (not for the first layer)

``products_loop`` times exactly these with torch's GEMM, in the layouts the compiled step
hands it (transposed views, no copies), into buffers allocated once, for ``members``
models at once (``torch.bmm`` over the members, as the vmapped step batches them). No
activation, loss or optimizer runs: a step doing these products can take no less time,
so a speed target below this path's ratio needs fewer FLOPs or faster products (other
shapes for the same FLOPs, such as one wide product for members sharing their input),
not less work around them. Unlike the matmul floor of ``benchmarks.epoch`` (the FLOPs at
the peak of a 1024-square product), it is the rate these thin shapes reach on the machine.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple

import torch

from fn_trainer import NetworkConfiguration
from fn_trainer.core.data import IMAGE_SIZE, N_CLASSES


class Product(NamedTuple):
    """``lhs @ rhs`` with ``lhs: (m, k)`` and ``rhs: (k, n)``; ``*_transposed``: the operand is
    the transposed view of a row-major ``(k, m)`` or ``(n, k)`` tensor, as the step passes it."""

    m: int
    k: int
    n: int
    lhs_transposed: bool
    rhs_transposed: bool


def dense_products(config: NetworkConfiguration, batch_size: int) -> List[Product]:
    """The products of one training step of the MLP ``config`` on ``batch_size`` rows."""
    widths = (IMAGE_SIZE[0] * IMAGE_SIZE[1], *config.dense_hiddens, N_CLASSES)
    products = []
    for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        products.append(Product(batch_size, fan_in, fan_out, False, True))   # x Wᵀ
        products.append(Product(fan_out, batch_size, fan_in, True, False))   # dzᵀ x
        if layer:
            products.append(Product(batch_size, fan_out, fan_in, False, False))  # dz W
    return products


def product_flops(products: List[Product], members: int = 1) -> int:
    """FLOPs of ``products`` for ``members`` models: 2 per multiply-add."""
    return 2 * members * sum(p.m * p.k * p.n for p in products)


def _operand(members: int, rows: int, cols: int, transposed: bool, generator: torch.Generator) -> torch.Tensor:
    """A ``(members, rows, cols)`` operand, row-major or the transposed view of one."""
    if transposed:
        return torch.randn(members, cols, rows, generator=generator).transpose(1, 2)
    return torch.randn(members, rows, cols, generator=generator)


def products_loop(products: List[Product], members: int, n_steps: int, seed: int = 0) -> Callable[[], None]:
    """``run()`` does ``products`` ``n_steps`` times for ``members`` models (``torch.mm`` for
    one, ``torch.bmm`` for more), on random operands made once, into outputs made once."""
    g = torch.Generator().manual_seed(seed)
    calls = []
    for p in products:
        lhs = _operand(members, p.m, p.k, p.lhs_transposed, g)
        rhs = _operand(members, p.k, p.n, p.rhs_transposed, g)
        out = torch.empty(members, p.m, p.n)
        calls.append((lhs[0], rhs[0], out[0]) if members == 1 else (lhs, rhs, out))
    product = torch.mm if members == 1 else torch.bmm

    def run() -> None:
        for _ in range(n_steps):
            for lhs, rhs, out in calls:
                product(lhs, rhs, out=out)

    return run
