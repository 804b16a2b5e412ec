"""The functions a submission's ``gradient_norm`` and ``jacobian_norm`` are tried on.

Both processes know them by name: the grader sends a name and tensors, the
submission's process calls its own ``gradient_norm(FUNCTION, *tensors)``, and the
grader compares the answer with ``fn_trainer.core.diagnostics`` on the same function.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor

# Scalar functions of one to three tensors of one shape (``gradient_norm``).
SCALAR_FUNCTIONS: Dict[str, Callable[..., Tensor]] = {
    "sum_of_squares": lambda *ts: sum((t * t).sum() for t in ts),
    "sum_of_products": lambda *ts: sum((t * ts[(i + 1) % len(ts)]).sum() for i, t in enumerate(ts)),
    "tanh_then_sum": lambda *ts: sum(torch.tanh(t).sum() * (i + 1) for i, t in enumerate(ts)),
    "log_sum_exp": lambda *ts: torch.logsumexp(torch.cat([t.flatten() * (i + 1) for i, t in enumerate(ts)]), 0),
}

# Functions from a tensor to a tensor (``jacobian_norm``). The first two act entry by
# entry, so their Jacobian is diagonal; the others mix entries or change the shape.
TENSOR_FUNCTIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "cube": lambda x: x ** 3,
    "cumulative_sum": lambda x: torch.cumsum(x.flatten(), 0),
    "differences": lambda x: x.flatten()[1:] - 2 * x.flatten()[:-1],
    "softmax": lambda x: torch.softmax(x.flatten(), 0),
    "outer_product": lambda x: torch.outer(x.flatten(), torch.sin(x.flatten())),
}
ELEMENTWISE = ("tanh", "cube")
