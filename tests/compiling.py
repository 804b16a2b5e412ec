"""Proof that a compiled path really ran compiled: Dynamo's count of the graphs it compiled.

Comparing a compiled function's values with eager ones proves nothing on its own: with
``TORCHDYNAMO_DISABLE=1``, a graph break or a recompile limit reached, ``torch.compile``
quietly runs the function eagerly and the values agree trivially.
"""
from contextlib import contextmanager
from typing import Iterator

from torch._dynamo.utils import counters


def graphs_compiled() -> int:
    """Graphs Dynamo has handed to a backend in this process so far (``torch._dynamo.reset``
    keeps the count; 0 under ``TORCHDYNAMO_DISABLE=1``)."""
    return counters["stats"]["unique_graphs"]


@contextmanager
def compiles(n_graphs: int) -> Iterator[None]:
    """Assert that the block compiles exactly ``n_graphs`` graphs. A recompilation is one
    graph more, so ``compiles(0)`` after a warm-up also proves that none happened."""
    before = graphs_compiled()
    yield
    assert graphs_compiled() - before == n_graphs, (
        f"compiled {graphs_compiled() - before} graphs, expected {n_graphs}")
