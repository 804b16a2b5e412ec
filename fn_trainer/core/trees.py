"""Trees of tensors: dicts, lists, tuples and NamedTuples (parameters, optimizer states),
walked with torch's own pytree utilities, the ones ``torch.func`` uses."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence, Union

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map


def tree_finite(*trees: Any) -> bool:
    """Whether every floating tensor in ``trees`` is finite."""
    return all(bool(torch.isfinite(leaf).all()) for leaf in tree_leaves(trees)
               if isinstance(leaf, Tensor) and leaf.is_floating_point())


def finite_per_member(tree: Any, count: int) -> Tensor:
    """``(K,)`` bool for a tree stacked along a leading axis of ``count`` members:
    whether every floating entry of member ``k`` is finite."""
    ok = None
    for leaf in tree_leaves(tree):
        if isinstance(leaf, Tensor) and leaf.is_floating_point():
            finite = torch.isfinite(leaf).reshape(count, -1).all(1)
            ok = finite if ok is None else ok & finite
    # one copy to the host at the end, not one per leaf
    return torch.ones(count, dtype=torch.bool) if ok is None else ok.cpu()


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack K trees of equal structure leaf by leaf: each leaf ``(...)`` becomes ``(K, ...)``."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


def tree_index(tree: Any, k: int) -> Any:
    """Member ``k`` of a stacked tree, as independent tensors (copies)."""
    return tree_map(lambda leaf: leaf[k].clone(), tree)


def tree_clone(tree: Any) -> Any:
    """``tree`` with a copy of every tensor, outside any autograd graph (other leaves as they are)."""
    return tree_map(lambda leaf: leaf.detach().clone() if isinstance(leaf, Tensor) else leaf, tree)


def tree_to(tree: Any, device: torch.device) -> Any:
    """``tree`` with every tensor on ``device`` (the same tensors where they already are)."""
    return tree_map(lambda leaf: leaf.to(device) if isinstance(leaf, Tensor) else leaf, tree)


def tensors_digest(tensors: Sequence[Union[Tensor, Sequence[Tensor]]], digits: int = 16) -> str:
    """The first ``digits`` hex digits of a SHA-256 over the tensors' shapes, dtypes and
    values, in order: a data set's identity (all of Fashion-MNIST's training data in a
    fraction of a second). An item that is a list of tensors of one shape and dtype
    counts as their ``torch.stack``, which is never made."""
    h = hashlib.sha256()
    for item in tensors:
        parts = [item] if isinstance(item, Tensor) else list(item)
        shape = tuple(parts[0].shape) if isinstance(item, Tensor) else (len(parts), *parts[0].shape)
        h.update(repr((shape, str(parts[0].dtype))).encode())
        for t in parts:
            # the raw bytes, through the buffer protocol: every dtype (numpy has no bfloat16)
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:digits]
