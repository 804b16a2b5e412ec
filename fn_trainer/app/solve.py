"""Size solvers: pick the free hyper-parameter of an architecture so that its parameter
count (``fn_trainer.core.networks.count_parameters``) lands near a budget.

The homework's budget is the 784-256-256-10 MLP (269,322 scalars) with a tolerance of
10,000: "approximately the same number of parameters".
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Tuple

from ..core.checks import check_positive_int
from ..core.config import NetworkConfiguration
from ..core.networks import count_parameters

INPUT_SHAPE = (1, 28, 28)
REFERENCE_MLP = NetworkConfiguration((), (), (), (), (256, 256))
TOLERANCE = 10_000


class Solution(NamedTuple):
    """``value``: the chosen hyper-parameter; ``config``: the configuration it gives;
    ``n_params``: its parameter count; ``difference = n_params - target``."""

    value: int
    config: NetworkConfiguration
    n_params: int
    difference: int


def mlp_config(dense_hiddens: Tuple[int, ...]) -> NetworkConfiguration:
    """An MLP configuration: no conv layers, ``dense_hiddens`` hidden widths."""
    return NetworkConfiguration((), (), (), (), tuple(dense_hiddens))


def reference_budget(input_shape: Tuple[int, int, int] = INPUT_SHAPE, n_classes: int = 10) -> int:
    """Parameter count of the homework's MLP 256-256 (269,322 for 1x28x28 inputs, 10 classes)."""
    return count_parameters("mlp", REFERENCE_MLP, input_shape, n_classes)


def fixed_solution(network_type: str, config: NetworkConfiguration, target: int,
                   input_shape: Tuple[int, int, int] = INPUT_SHAPE, n_classes: int = 10) -> Solution:
    """The count of a fixed configuration and its difference to ``target`` (``value`` = 0)."""
    n = count_parameters(network_type, config, input_shape, n_classes)
    return Solution(0, config, n, n - target)


def solve(network_type: str, make_config: Callable[[int], NetworkConfiguration],
          candidates: Iterable[int], target: int, *, tolerance: int = TOLERANCE,
          input_shape: Tuple[int, int, int] = INPUT_SHAPE, n_classes: int = 10) -> Solution:
    """The candidate ``v`` minimising ``|count(make_config(v)) - target|`` (ties: smallest ``v``).

    Candidates whose configuration is invalid for ``input_shape`` (e.g. a kernel larger
    than its feature map) are skipped. Raises ``ValueError`` if no valid candidate lands
    within ``tolerance`` of ``target``.
    """
    check_positive_int("target", target)
    check_positive_int("tolerance", tolerance, minimum=0)
    best = None
    for v in candidates:
        config = make_config(v)
        try:
            n = count_parameters(network_type, config, input_shape, n_classes)
        except ValueError:
            continue
        if best is None or abs(n - target) < abs(best.difference):
            best = Solution(v, config, n, n - target)
    if best is None or abs(best.difference) > tolerance:
        closest = "no valid candidate" if best is None else (
            f"the closest, {best.value}, gives {best.n_params:,} ({best.difference:+,})")
        raise ValueError(
            f"no {network_type} configuration among the candidates has a parameter count within "
            f"{tolerance:,} of {target:,}: {closest}"
        )
    return best


def solve_mlp_depth(width: int = 64, target: int | None = None, *, max_depth: int = 256,
                    tolerance: int = TOLERANCE, n_classes: int = 10) -> Solution:
    """Number of ``width``-unit hidden layers whose MLP count is closest to ``target``
    (default: the reference MLP). ``value`` is the depth; the count is
    ``(784 + 1) w + (L - 1)(w + 1) w + (w + 1) n_classes``."""
    check_positive_int("width", width)
    target = reference_budget(n_classes=n_classes) if target is None else target
    return solve("mlp", lambda depth: mlp_config((width,) * depth),
                 range(1, max_depth + 1), target, tolerance=tolerance, n_classes=n_classes)


def solve_cnn_kernel(n_channels: Tuple[int, ...] = (16, 32, 45), dense_hiddens: Tuple[int, ...] = (256, 256),
                     target: int | None = None, *, tolerance: int = TOLERANCE,
                     n_classes: int = 10) -> Solution:
    """One kernel size ``k`` shared by all conv layers (stride 1, padding 0) whose CNN count
    is closest to ``target``; ``value`` is ``k``. Kernels that do not fit the 28x28 input
    after pooling are skipped."""
    target = reference_budget(n_classes=n_classes) if target is None else target
    n = len(n_channels)

    def config(k: int) -> NetworkConfiguration:
        return NetworkConfiguration(tuple(n_channels), (k,) * n, (1,) * n, (0,) * n, tuple(dense_hiddens))

    return solve("cnn", config, range(1, INPUT_SHAPE[1] + 1), target, tolerance=tolerance,
                 n_classes=n_classes)


def solve_cnn_channels(kernel_size: int = 28, dense_hiddens: Tuple[int, ...] = (256, 256),
                       target: int | None = None, *, max_channels: int = 4096,
                       tolerance: int = TOLERANCE, n_classes: int = 10) -> Solution:
    """Channel count ``c`` of a one-conv-layer CNN (kernel ``kernel_size``, stride 1,
    padding 0) whose count is closest to ``target``; ``value`` is ``c``."""
    check_positive_int("kernel_size", kernel_size)
    target = reference_budget(n_classes=n_classes) if target is None else target
    return solve("cnn", lambda c: NetworkConfiguration((c,), (kernel_size,), (1,), (0,), tuple(dense_hiddens)),
                 range(1, max_channels + 1), target, tolerance=tolerance, n_classes=n_classes)
