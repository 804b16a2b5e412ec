"""Train K configurations of one network at once, in one vmapped step.

The K models' parameters and Adam states are stacked along a leading ``(K,)`` axis;
each state carries its own learning rate, so one ``vmap(step)`` updates all models
with their own hyper-parameters. The minibatch is either shared by all models or
taken from per-model data sets (raw and normalised images side by side). Models are
independent inside the vmap: a model whose loss goes non-finite is stopped in its
result (as ``fit`` would stop it) while the others go on.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from ..core.checks import check_positive_float, check_positive_int, check_seed
from ..core.data import Split
from ..core.losses import accuracy, cross_entropy
from ..core.networks import Network
from ..core.optim import adam
from ..core.step import Apply, make_step
from ..core.types import Params
from .compiled import compile_step
from .fit import (
    EVAL_CHUNK,
    LOG_KEYS,
    N_TRAIN_EVAL,
    FitResult,
    check_split,
    divergence_message,
    epoch_order,
    params_dtype,
)


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack K trees of equal structure (dicts, NamedTuples of tensors) leaf by leaf:
    each leaf ``(...)`` becomes ``(K, ...)``."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


def tree_index(tree: Any, k: int) -> Any:
    """Model ``k`` of a stacked tree, as independent tensors (copies)."""
    return tree_map(lambda leaf: leaf[k].clone(), tree)


def finite_per_model(tree: Any, n_models: int) -> Tensor:
    """``(K,)`` bool: whether every floating entry of model ``k`` in a stacked tree is finite."""
    ok = torch.ones(n_models, dtype=torch.bool)

    def visit(leaf: Tensor) -> None:
        nonlocal ok
        if leaf.is_floating_point():
            ok = ok & torch.isfinite(leaf).reshape(n_models, -1).all(1)

    tree_map(visit, tree)
    return ok


def _per_model_splits(name: str, data: Any, n_models: int, n_classes: int,
                      dtype: torch.dtype) -> Tuple[List[Split], List[int]]:
    """Distinct checked ``(X, one-hot targets)`` pairs and, per model, the index of its pair.

    ``data`` is one ``(X, y)`` shared by all models or a sequence of ``n_models`` pairs;
    a pair given several times (the same tensors) is stored once.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return [check_split(name, data, n_classes, dtype)], [0] * n_models
    if not isinstance(data, (tuple, list)) or len(data) != n_models:
        raise ValueError(
            f"{name} must be one (X, y) pair or a list of {n_models} pairs (one per learning rate), "
            f"got {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    distinct: Dict[Tuple[int, int], int] = {}
    splits: List[Split] = []
    which: List[int] = []
    for k, pair in enumerate(data):
        checked = check_split(f"{name}[{k}]", pair, n_classes, dtype)
        key = (id(pair[0]), id(pair[1]))
        if key not in distinct:
            distinct[key] = len(splits)
            splits.append(checked)
        which.append(distinct[key])
    shapes = {tuple(X.shape) for X, _ in splits}
    if len(shapes) > 1:
        raise ValueError(f"the {name} sets of all models must have the same shape, got {sorted(shapes)}")
    return splits, which


class SweepData:
    """Minibatches and evaluation sets for K models from their distinct data sets.

    One distinct set: tensors are shared (vmap ``in_dims=None``, no copies). Several:
    they are stacked once, ``(U, N, ...)``, and each minibatch is gathered to ``(K, B, ...)``.
    """

    def __init__(self, splits: List[Split], which: List[int]):
        self.shared = len(splits) == 1
        if self.shared:
            self.X, self.T = splits[0]
        else:
            self.X = torch.stack([X for X, _ in splits])
            self.T = torch.stack([T for _, T in splits])
        self.which = torch.tensor(which)
        self.n = splits[0][0].shape[0]

    @property
    def in_dims(self) -> Optional[int]:
        return None if self.shared else 0

    def rows(self, idx) -> Split:
        if self.shared:
            return self.X[idx], self.T[idx]
        return self.X[:, idx][self.which], self.T[:, idx][self.which]


def make_sweep_evaluate(network: Network):
    """``evaluate(params, data, n) -> (losses, accuracies)``, ``(K,)`` float64 tensors each:
    mean loss and accuracy of each stacked model on the first ``n`` rows of ``data``
    (chunks of 2000 rows, weighted by size, like ``make_evaluate``)."""

    def evaluate(params: Params, data: SweepData, n: int) -> Tuple[Tensor, Tensor]:
        apply = vmap(network.apply, in_dims=(0, data.in_dims))
        per_model = vmap(lambda p, t: torch.stack([cross_entropy(p, t).double(), accuracy(p, t)]),
                         in_dims=(0, data.in_dims))
        total = 0.0
        with torch.no_grad():
            for i in range(0, n, EVAL_CHUNK):
                X, T = data.rows(slice(i, min(i + EVAL_CHUNK, n)))
                probs = apply(params, X)
                total = total + per_model(probs, T) * probs.shape[1]
        return total[:, 0] / n, total[:, 1] / n

    return evaluate


def init_sweep(network: Network, lrs: Sequence[float], seed: int = 0) -> Tuple[Params, Any]:
    """Stacked parameters (K copies of ``network.init(seed)``) and Adam states, one per lr."""
    params0 = network.init(seed)
    return stack_trees([params0] * len(lrs)), stack_trees([adam(lr).init(params0) for lr in lrs])


def make_sweep_step(network: Network, batch_in_dims: Optional[int], *, compile: bool = False,
                    compiled_apply: Optional[Apply] = None):
    """``vmap`` of the pure Adam step over stacked models: ``(params, state, (x, targets))``
    with ``x: (K, B, ...)`` per model (``batch_in_dims=0``) or ``(B, ...)`` shared (``None``).

    ``compile=True``: under ``torch.compile``, with ``compiled_apply`` as the forward if
    given (``fn_trainer.speed.inductor_apply(network)``), ``network.apply`` otherwise; a
    minibatch of another shape runs eagerly with ``network.apply``."""
    in_dims = (0, 0, (batch_in_dims,) * 2)
    step = vmap(make_step(network.apply, adam()), in_dims=in_dims)
    if not compile:
        return step
    fast = step if compiled_apply is None else vmap(make_step(compiled_apply, adam()), in_dims=in_dims)
    return compile_step(fast, eager=step)


def fit_sweep(network: Network, lrs: Sequence[float], train: Any, valid: Any, *, epochs: int,
              batch_size: int = 128, seed: int = 0, n_classes: int = 10, progress: bool = True,
              shuffle: bool = False, compile: bool = False, compiled_apply: Optional[Apply] = None,
              desc: str = "sweep") -> List[FitResult]:
    """Train ``len(lrs)`` copies of ``network`` with Adam, one per learning rate, in one vmapped step.

    Every model starts from ``network.init(seed)``. ``train``/``valid``: one ``(X, y)``
    shared by all models, or a list with one ``(X, y)`` per model (same shapes). Returns
    one ``FitResult`` per model, in the order of ``lrs``, with ``fit``'s logs and
    divergence handling: a model whose loss, gradient norm or update goes non-finite
    keeps its completed epochs' logs and the parameters its failing step received, and
    ``diverged`` names the epoch, step and values; the others continue. Each model's
    trajectory is its solo ``fit`` run's up to float32 reassociation (batched matmuls).

    ``compile=True`` runs the vmapped step under ``torch.compile`` (one graph for full
    minibatches; a smaller last minibatch runs eagerly), worth it for long runs; the
    compiled graph applies ``compiled_apply`` if given (see ``make_sweep_step``).
    """
    check_positive_int("epochs", epochs, minimum=0)
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_classes", n_classes)
    check_seed("seed", seed)
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network (from build_network), got {type(network).__name__}")
    if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Sequence) or not lrs:
        raise ValueError(f"lrs must be a non-empty sequence of learning rates, got {lrs!r}")
    lrs = [check_positive_float(f"lrs[{i}]", lr) for i, lr in enumerate(lrs)]
    K = len(lrs)
    params, state = init_sweep(network, lrs, seed)
    dtype = params_dtype(params)
    train_data = SweepData(*_per_model_splits("train", train, K, n_classes, dtype))
    valid_data = SweepData(*_per_model_splits("valid", valid, K, n_classes, dtype))
    if train_data.X.shape[-3:] != valid_data.X.shape[-3:]:
        raise ValueError("train X and valid X must have the same sample shape")

    step = make_sweep_step(network, train_data.in_dims, compile=compile, compiled_apply=compiled_apply)
    evaluate = make_sweep_evaluate(network)
    n, n_batches = train_data.n, math.ceil(train_data.n / batch_size)
    n_train_eval = min(N_TRAIN_EVAL, n)

    logs: List[Dict[str, List[float]]] = [{k: [] for k in LOG_KEYS} for _ in range(K)]
    results: List[Optional[FitResult]] = [None] * K

    def log_metrics(p: Params, extra: Optional[Tensor] = None) -> None:
        values = {}
        for split, data, m in (("train", train_data, n_train_eval), ("validation", valid_data, valid_data.n)):
            values[f"{split}_loss"], values[f"{split}_accuracy"] = (v.tolist() for v in evaluate(p, data, m))
        if extra is not None:
            values["train_gradient_norm"] = extra.tolist()
        for k in range(K):
            if results[k] is None:
                for key, v in values.items():
                    logs[k][key].append(v[k])

    def minibatch(order: Optional[Tensor], b: int) -> Split:
        idx = slice(b * batch_size, (b + 1) * batch_size)
        return train_data.rows(idx if order is None else order[idx])

    log_metrics(params)
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    try:
        for epoch in bar:
            order = epoch_order(n, epoch, shuffle, seed)
            start = (params, state)
            losses, grad_norms = [], []
            for b in range(n_batches):
                params, state, metrics = step(params, state, minibatch(order, b))
                losses.append(metrics["loss"])
                grad_norms.append(metrics["grad_norm"])
            ok = (torch.isfinite(torch.stack(losses)).all(0) & torch.isfinite(torch.stack(grad_norms)).all(0)
                  & finite_per_model((params, state), K))
            newly = [k for k in range(K) if results[k] is None and not bool(ok[k])]
            if newly:
                for k, (p, s, message) in _locate_divergence(step, start, lambda b: minibatch(order, b),
                                                              n_batches, newly, epoch).items():
                    results[k] = FitResult(p, s, logs[k], message)
            log_metrics(params, grad_norms[-1])
            if all(r is not None for r in results):
                break
            bar.set_postfix(best_val_acc=f"{max(l['validation_accuracy'][-1] for l in logs):.4f}")
    finally:
        bar.close()
    return [r if r is not None else FitResult(tree_index(params, k), tree_index(state, k), logs[k])
            for k, r in enumerate(results)]


def _locate_divergence(step, start, minibatch, n_batches: int, models: List[int],
                       epoch: int) -> Dict[int, Tuple[Params, Any, str]]:
    """Replay the epoch from ``start`` checking every step; for each model in ``models``,
    the state its first failing step received and ``fit``'s message naming that step."""
    params, state = start
    K = len(next(iter(params.values())))
    found: Dict[int, Tuple[Params, Any, str]] = {}
    for b in range(n_batches):
        new_params, new_state, metrics = step(params, state, minibatch(b))
        update_ok = finite_per_model((new_params, new_state), K)
        for k in models:
            if k in found:
                continue
            loss, gnorm = float(metrics["loss"][k]), float(metrics["grad_norm"][k])
            if math.isfinite(loss) and math.isfinite(gnorm) and bool(update_ok[k]):
                continue
            found[k] = (tree_index(params, k), tree_index(state, k),
                        divergence_message(epoch + 1, b + 1, n_batches, loss, gnorm))
        if len(found) == len(models):
            break
        params, state = new_params, new_state
    for k in models:
        if k not in found:  # only a non-deterministic step gets here
            found[k] = (tree_index(start[0], k), tree_index(start[1], k),
                        divergence_message(epoch + 1, None, n_batches))
    return found
