"""Populations: K members of one network trained at once, in one vmapped step.

Each member has its own seed (its initialisation ``network.init(seed)`` and, when
shuffling, its data order), its own Adam hyper-parameters and its own data set (raw
and normalised images side by side). The members' parameters and Adam states are
stacked along a leading ``(K,)`` axis; each state carries its own hyper-parameters as
tensors, so one ``vmap(step)`` updates every member with its own. Members are
independent inside the vmap: one whose loss goes non-finite stops where ``fit`` would
stop it, while the others go on. ``fit_sweep`` (one seed, K learning rates) is the
population of the homework's learning-rate sweep.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap
from tqdm.auto import tqdm

from ..core.checks import (
    check_bool,
    check_function,
    check_positive_float,
    check_positive_int,
    check_seed,
    shown,
)
from ..core.evaluate import Evaluate, make_evaluate
from ..core.networks import Network, check_dtype
from ..core.optim import AdamState, adam, check_fits_dtype, check_hyperparameters_fit, exp_log_power
from ..core.paths import PathLike
from ..core.splits import check_split, check_training_dtype, params_dtype
from ..core.step import Apply, Step, make_step
from ..core.trees import stack_trees, tensors_digest, tree_index, tree_to
from ..core.types import Params
from .checkpoint import to_plain
from .compiled import compile_step
from .fit import FitResult
from .loop import (
    LOG_KEYS,
    N_TRAIN_EVAL,
    Members,
    Progress,
    Stopped,
    appended,
    check_initial_evaluation,
    evaluation_message,
    minibatches,
    train_epochs,
)
from .resume import checkpoint_path, load_progress, save_progress

Split = Tuple[Tensor, Tensor]


class Member(NamedTuple):
    """One member of a population: its seed and its Adam hyper-parameters
    (``fn_trainer.adam``'s defaults where not given)."""

    seed: int = 0
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def optimizer_state(self, params: Params) -> AdamState:
        return adam(self.lr, self.b1, self.b2, self.eps).init(params)


STATE_COPIES = 7  # per parameter: itself, its gradient, Adam's two moments, and a step's new three


def physical_memory() -> Optional[int]:
    """This machine's memory in bytes, or ``None`` where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_population_fits(network: Network, n_members: int, dtype: torch.dtype = torch.float32) -> None:
    """Raise ``ValueError`` when ``n_members`` members' parameters, gradients and Adam state
    alone (``STATE_COPIES`` copies of the parameters each) exceed this machine's memory:
    such a population would end in an out-of-memory kill, after initialising every member."""
    total = physical_memory()
    n_params = sum(p.numel() for p in network.module.parameters())
    need = n_members * n_params * STATE_COPIES * torch.finfo(dtype).bits // 8
    if total is not None and need > total:
        raise ValueError(f"a population of {n_members} members of {n_params:,} parameters needs about "
                         f"{need / 2**30:.1f} GiB for their parameters, gradients and Adam moments, more than "
                         f"this machine's {total / 2**30:.1f} GiB: train fewer members (seeds, learning rates) at once")


def init_population(network: Network, members: Sequence[Member],
                    dtype: torch.dtype = torch.float32) -> Tuple[Params, AdamState]:
    """Stacked parameters (member k's equal ``network.init(members[k].seed, dtype)``) and Adam states."""
    params = [network.init(m.seed, dtype) for m in members]
    return stack_trees(params), stack_trees([m.optimizer_state(p) for m, p in zip(members, params)])


class MemberData:
    """Minibatches and evaluation sets for K members from their distinct data sets.

    ``splits`` holds the distinct ``(X, T)`` pairs and ``which[k]`` member k's. The inputs
    are kept apart from the targets: inputs that every member reads (the same tensor, in
    pairs that differ in their targets too) are one shared tensor (vmap ``in_dims=None``,
    never copied), else the distinct ones are stacked once, ``(U, N, ...)``, with
    ``which_x[k]`` member k's; the targets are shared when there is one pair, else stacked
    per pair, ``(P, N, C)``. A minibatch that every member reads in one order leaves the
    shared part unbatched; one order per member gathers ``(K, B, ...)`` rows of both.
    """

    def __init__(self, splits: List[Split], which: List[int]):
        inputs: List[Tensor] = []  # distinct by identity: member_splits hands over one tensor per input
        of_pair: List[int] = []  # each pair's index into them
        for X, _ in splits:
            u = next((u for u, seen in enumerate(inputs) if seen is X), len(inputs))
            if u == len(inputs):
                inputs.append(X)
            of_pair.append(u)
        self.x_shared, self.shared = len(inputs) == 1, len(splits) == 1
        self.X = inputs[0] if self.x_shared else torch.stack(inputs)
        self.T = splits[0][1] if self.shared else torch.stack([T for _, T in splits])
        self.pair_inputs = [X for X, _ in splits]  # references, for the data's identity (tensors)
        self.which = torch.tensor(which, device=self.X.device)
        self.which_x = torch.tensor([of_pair[w] for w in which], device=self.X.device)
        self.n = splits[0][0].shape[0]

    @property
    def sample_shape(self) -> torch.Size:
        return self.X.shape[1:] if self.x_shared else self.X.shape[2:]

    def in_dims(self, one_order: bool) -> Tuple[Optional[int], Optional[int]]:
        """vmap's ``in_dims`` of a minibatch ``(x, targets)`` from :meth:`rows`: ``None`` for
        a part that every member shares and reads in ``one_order``, ``0`` for ``(K, B, ...)``."""
        return tuple(None if one_order and shared else 0 for shared in (self.x_shared, self.shared))

    def tensors(self) -> List[Union[Tensor, List[Tensor]]]:
        """What identifies the data, for ``tensors_digest``, however it is stored: the pairs'
        inputs (one tensor, or the list of them that counts as their stack), the targets
        and the members' pairs; the inputs' shape in that form is ``pairs_shape``."""
        return [self.X if self.shared else self.pair_inputs, self.T, self.which]

    @property
    def pairs_shape(self) -> List[int]:
        """The shape of the pairs' inputs, ``(N, ...)`` for one pair, else ``(P, N, ...)``."""
        return list(self.X.shape) if self.shared else [len(self.pair_inputs), *self.pair_inputs[0].shape]

    def member(self, k: int) -> Split:
        """The whole ``(X, T)`` that member ``k`` reads."""
        return (self.X if self.x_shared else self.X[int(self.which_x[k])],
                self.T if self.shared else self.T[int(self.which[k])])

    def rows(self, idx: Any) -> Split:
        """Rows ``idx`` (a slice or ``(B,)`` indices: the same for every member; ``(K, B)``:
        a row of indices per member)."""
        return (_rows(self.X, self.x_shared, self.which_x, idx), _rows(self.T, self.shared, self.which, idx))


def _rows(part: Tensor, shared: bool, which: Tensor, idx: Any) -> Tensor:
    """Rows ``idx`` of a shared ``(N, ...)`` or stacked ``(U, N, ...)`` part of the data:
    ``(B, ...)`` for a shared part read in one order, ``(K, B, ...)`` otherwise."""
    if shared:
        return part[idx]
    if isinstance(idx, Tensor) and idx.dim() == 2:
        return part[which[:, None], idx]
    return part[:, idx][which]


def member_splits(name: str, data: Any, n_members: int, n_classes: int,
                  dtype: torch.dtype) -> MemberData:
    """Checked data for ``n_members``: ``data`` is one ``(X, y)`` shared by all members or a
    sequence of ``n_members`` pairs (same shapes). An input or label tensor given several
    times (the same tensor, or views of the same memory alike) is stored once."""
    # one pair unless its first item is a pair itself: check_split names an X that is not a tensor
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        return MemberData([check_split(name, data, n_classes, dtype)], [0] * n_members)
    if not isinstance(data, (tuple, list)) or len(data) != n_members:
        raise ValueError(
            f"{name} must be one (X, y) pair or a list of {n_members} pairs (one per member), "
            f"got {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    inputs: Dict[Tuple[Any, ...], Tensor] = {}  # a given tensor's key -> its checked form, kept once
    targets: Dict[Tuple[Any, ...], Tensor] = {}
    pairs: Dict[Tuple[Any, ...], int] = {}
    splits: List[Split] = []
    which: List[int] = []
    for k, pair in enumerate(data):
        X, T = check_split(f"{name}[{k}]", pair, n_classes, dtype)  # pair: two tensors from here on
        keys = tuple(_memory_key(t) for t in pair)
        X, T = inputs.setdefault(keys[0], X), targets.setdefault(keys[1], T)
        if keys not in pairs:
            pairs[keys] = len(splits)
            splits.append((X, T))
        which.append(pairs[keys])
    shapes = {tuple(X.shape) for X, _ in splits}
    if len(shapes) > 1:
        raise ValueError(f"the {name} sets of all members must have the same shape, got {sorted(shapes)}")
    return MemberData(splits, which)


def _memory_key(t: Tensor) -> Tuple[Any, ...]:
    """Equal for two tensors that view the same memory the same way (hence hold the same
    values): a lazily negated or conjugated view (``z.conj().imag``) reads it otherwise."""
    return (t.device, t.dtype, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.is_neg(),
            t.is_conj())


def make_population_evaluate(evaluate_one: Evaluate):
    """``evaluate(params, data, n) -> (losses, accuracies)``, ``(K,)`` float64 tensors each:
    mean loss and accuracy of each member on the first ``n`` rows of its data, by
    ``evaluate_one`` for one member after another. One vmapped pass over all members took
    longer (2.2 times as long for 3 CNNs, 1.6 times for 18 MLPs, 14,000 rows on 2 cores)."""

    def evaluate(params: Params, data: MemberData, n: int) -> Tuple[Tensor, Tensor]:
        scores = [evaluate_one(tree_index(params, k), *(part[:n] for part in data.member(k)))
                  for k in range(len(data.which))]
        losses, accuracies = zip(*scores)
        return torch.tensor(losses, dtype=torch.float64), torch.tensor(accuracies, dtype=torch.float64)

    return evaluate


BatchInDims = Union[Optional[int], Tuple[Optional[int], Optional[int]]]


def make_population_step(network: Network, batch_in_dims: BatchInDims, *, compile: bool = False,
                         compiled_apply: Optional[Apply] = None,
                         batch_shape: Optional[Tuple[int, ...]] = None) -> Step:
    """``vmap`` of the pure Adam step over stacked members: ``(params, state, (x, targets))``
    with ``x: (K, B, ...)`` per member (``batch_in_dims=0``) or ``(B, ...)`` shared (``None``),
    and the targets alike; a pair ``(x's, targets')`` (``MemberData.in_dims``) sets them apart.

    ``compile=True``: under ``torch.compile``, with ``compiled_apply`` as the forward if
    given (``fn_trainer.speed.inductor_apply(network)``), ``network.apply`` otherwise, and
    Adam's powers as ``exp_log_power``, for minibatches of ``batch_shape`` (``x``'s; see
    ``compile_step``); a minibatch of another shape runs the eager step."""
    if compiled_apply is not None:  # checked even where unused: a mistake
        check_function("compiled_apply", compiled_apply)
    in_dims = (0, 0, tuple(batch_in_dims) if isinstance(batch_in_dims, tuple) else (batch_in_dims,) * 2)
    step = vmap(make_step(network.apply, adam()), in_dims=in_dims)
    if not compile:
        return step
    fast = make_step(compiled_apply or network.apply, adam(power=exp_log_power))
    return compile_step(vmap(fast, in_dims=in_dims), eager=step, guard_closures=False, batch_shape=batch_shape,
                        donate=True)


def check_members(members: Any) -> List[Member]:
    """``members`` as a list of checked ``Member``s, else an error naming the bad entry."""
    if isinstance(members, Member):  # a NamedTuple is a sequence too: of its fields
        raise TypeError("members must be a list of Member, got a single Member: pass [Member(...)]")
    if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
        raise ValueError(f"members must be a non-empty sequence of Member, got {shown(members)}")
    checked = []
    for k, m in enumerate(members):
        if not isinstance(m, Member):
            raise TypeError(f"members[{k}] must be a Member, got {type(m).__name__}")
        seed, lr = check_seed(f"members[{k}].seed", m.seed), check_positive_float(f"members[{k}].lr", m.lr)
        try:
            adam(lr, m.b1, m.b2, m.eps)  # checks the betas and eps, naming them
        except (TypeError, ValueError) as e:
            raise type(e)(f"members[{k}].{e}") from None
        checked.append(Member(seed, lr, float(m.b1), float(m.b2), float(m.eps)))  # plain numbers: numpy's too
    return checked


def fit_population(network: Network, members: Sequence[Member], train: Any, valid: Any, *, epochs: int,
                   batch_size: int = 128, n_classes: int = 10, shuffle: bool = False,
                   dtype: torch.dtype = torch.float32, compile: bool = False,
                   compiled_apply: Optional[Apply] = None, evaluate: Optional[Evaluate] = None,
                   progress: bool = True, desc: str = "population", checkpoint: Optional[PathLike] = None,
                   resume: bool = False, config: Optional[Dict[str, Any]] = None) -> List[FitResult]:
    """Train the members of a population of ``network`` with Adam, all in one vmapped step.

    Member k starts from ``network.init(members[k].seed, dtype)`` with its own hyper-parameters
    (two equal members, on the same data, train the same run twice: nothing refuses them);
    with ``shuffle`` it reads the data in ``fit``'s order for its seed. ``train``/``valid``:
    one ``(X, y)`` shared by all members (never copied per member), or a list with one
    ``(X, y)`` per member (same shapes; an ``X`` that several members read is stored once,
    whatever their labels). Returns one ``FitResult`` per member, in order,
    with ``fit``'s logs and divergence handling: a member whose loss, gradient norm or
    update goes non-finite keeps its completed epochs' logs and the parameters its
    failing step received, and ``diverged`` names the epoch, step and values; the others
    go on. Each member's trajectory is its solo ``fit`` run's up to the reassociation of
    sums in the batched matmuls: in general not bitwise (a population of one neither), but
    apart by that rounding, which Adam's normalised step can grow to about ``lr``
    per parameter and step where a gradient is near zero (the README's 256-256 MLP on 512
    random images, 8 shuffled steps: parameters up to 2e-5 apart at lr 1e-3, 0.02 at lr
    1e-2). Every member's ``wall_time_s`` is the population's.

    ``compile=True`` runs the vmapped step under ``torch.compile`` (one graph for full
    minibatches; a smaller last minibatch runs eagerly), worth it for long runs; the
    compiled graph applies ``compiled_apply`` if given (see ``make_population_step``).
    ``evaluate`` measures one member before training and after each epoch
    (``make_evaluate(network.apply)`` if not given; ``compile_evaluate`` for a compiled
    forward, worth it for a CNN).

    ``checkpoint``, ``resume`` and ``config`` work as in ``fit``: the whole population (and
    its stopped members) is saved after every epoch and on ``KeyboardInterrupt``, and a
    resumed run is bitwise the same as an uninterrupted one.
    """
    epochs = check_positive_int("epochs", epochs, minimum=0)  # plain ints from here: numpy's are accepted
    batch_size = check_positive_int("batch_size", batch_size)
    n_classes = check_positive_int("n_classes", n_classes)
    shuffle, compile = check_bool("shuffle", shuffle), check_bool("compile", compile)
    progress, resume = check_bool("progress", progress), check_bool("resume", resume)
    if evaluate is not None:
        check_function("evaluate", evaluate)
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network (from build_network), got {type(network).__name__}")
    if n_classes != network.n_classes:
        raise ValueError(f"n_classes must be the network's {network.n_classes}, got {n_classes}")
    check_training_dtype(check_dtype(dtype), "dtype")  # before the members' eps, which float16 cannot hold
    members = check_members(members)
    for k, m in enumerate(members):
        check_hyperparameters_fit(m.lr, m.eps, dtype, f"members[{k}].")
    K = len(members)
    check_population_fits(network, K, dtype)
    params, state = init_population(network, members, dtype)
    dtype = params_dtype(params)
    checkpoint = checkpoint_path(checkpoint, resume)
    train_data = member_splits("train", train, K, n_classes, dtype)
    valid_data = member_splits("valid", valid, K, n_classes, dtype)
    for name, split in (("train", train_data), ("valid", valid_data)):
        if tuple(split.sample_shape) != tuple(network.input_shape):
            raise ValueError(f"{name} X must have samples of the network's input_shape {tuple(network.input_shape)}, "
                             f"got {tuple(split.sample_shape)}")
    if train_data.X.device != valid_data.X.device:
        raise ValueError(f"train X and valid X must be on one device, got {train_data.X.device} and {valid_data.X.device}")
    params, state = tree_to((params, state), train_data.X.device)  # the members train where their data is

    n, n_batches = train_data.n, math.ceil(train_data.n / batch_size)
    seeds = sorted({m.seed for m in members})
    one_order = not shuffle or len(seeds) == 1
    # members of different seeds read the data in their own orders: (K, B) rows gathered per member
    minibatch = minibatches(train_data.rows, n, batch_size, shuffle, seeds[0] if one_order else [m.seed for m in members])
    in_dims = train_data.in_dims(one_order)
    full = (min(batch_size, n), *train_data.sample_shape)  # what a resumed run may not see first
    step = make_population_step(network, in_dims, compile=compile, compiled_apply=compiled_apply,
                                batch_shape=full if in_dims[0] is None else (len(members), *full))
    evaluate = make_population_evaluate(make_evaluate(network.apply) if evaluate is None else evaluate)
    n_train_eval = min(N_TRAIN_EVAL, n)
    everyone = Members(K, stacked=True)
    settings = {"members": [list(m) for m in members], "batch_size": batch_size, "shuffle": shuffle,
                "n_classes": n_classes, "dtype": str(dtype), "train_shape": train_data.pairs_shape,
                "valid_shape": valid_data.pairs_shape, "network": str(network.module),
                "data": None if checkpoint is None else tensors_digest(train_data.tensors() + valid_data.tensors())}
    plain_config = to_plain(config, "config", tensors=False)

    def metrics(p: Params, grad_norms: Optional[Tensor] = None) -> Dict[str, List[float]]:
        values = {}
        for split, data, m in (("train", train_data, n_train_eval), ("validation", valid_data, valid_data.n)):
            values[f"{split}_loss"], values[f"{split}_accuracy"] = (v.tolist() for v in evaluate(p, data, m))
        if grad_norms is not None:
            values["train_gradient_norm"] = grad_norms.tolist()
        return values

    start, earlier = time.perf_counter(), 0.0  # earlier: the seconds of the processes a resumed run ran in
    if resume and checkpoint.exists():
        cur, stopped, earlier = load_progress(checkpoint, params, state, settings=settings, config=plain_config,
                                              epochs=epochs, n_batches=n_batches, members=everyone)
    else:
        values = metrics(params)
        for k in range(K):
            check_initial_evaluation({key: v[k] for key, v in values.items()}, f"members[{k}]: ")
        cur, stopped = Progress(params, state, [appended({k: [] for k in LOG_KEYS}, {key: v[k] for key, v in values.items()})
                                                for k in range(K)], 0, 0), {}
    bar = tqdm(total=epochs, initial=cur.epoch, desc=desc, disable=not progress, leave=False)

    def end_epoch(cur: Progress, newly_stopped: Dict[int, Stopped]) -> Tuple[Progress, Dict[int, Stopped]]:
        stopped.update(newly_stopped)
        values = metrics(cur.params, cur.last_grad_norm)
        mine = [{key: v[k] for key, v in values.items()} for k in range(K)]  # each member's values
        evaluated = {}
        for k in range(K):
            message = None if k in stopped else evaluation_message(cur.epoch + 1, mine[k])
            if message is not None:
                evaluated[k] = Stopped(tree_index(cur.params, k), tree_index(cur.opt_state, k), message)
        stopped.update(evaluated)
        logs = [member if k in stopped else appended(member, mine[k]) for k, member in enumerate(cur.logs)]
        bar.update(1)
        running = [l["validation_accuracy"][-1] for k, l in enumerate(logs) if k not in stopped]
        if running:
            bar.set_postfix(best_val_acc=f"{max(running):.4f}")
        return Progress(cur.params, cur.opt_state, logs, cur.epoch + 1, 0), evaluated

    def save(cur: Progress) -> None:
        save_progress(checkpoint, cur, settings=settings, config=plain_config, members=everyone, stopped=stopped,
                      seconds=earlier + time.perf_counter() - start)

    try:
        cur, stopped = train_epochs(step, cur, epochs=epochs, n_batches=n_batches, minibatch=minibatch,
                                    end_epoch=end_epoch, members=everyone, stopped=stopped,
                                    save=None if checkpoint is None else save)
    finally:
        bar.close()
    logs, wall_time_s = cur.logs, earlier + time.perf_counter() - start  # the population's, every member's
    return [FitResult(s.params, s.opt_state, logs[k], s.message, wall_time_s) if (s := stopped.get(k)) is not None
            else FitResult(tree_index(cur.params, k), tree_index(cur.opt_state, k), logs[k], wall_time_s=wall_time_s)
            for k in range(K)]


def fit_sweep(network: Network, lrs: Sequence[float], train: Any, valid: Any, *, epochs: int,
              batch_size: int = 128, seed: int = 0, n_classes: int = 10, progress: bool = True,
              shuffle: bool = False, dtype: torch.dtype = torch.float32, compile: bool = False,
              compiled_apply: Optional[Apply] = None, evaluate: Optional[Evaluate] = None, desc: str = "sweep",
              checkpoint: Optional[PathLike] = None, resume: bool = False,
              config: Optional[Dict[str, Any]] = None) -> List[FitResult]:
    """``len(lrs)`` copies of ``network``, one per learning rate, all from ``network.init(seed)``:
    ``fit_population`` with ``Member(seed, lr)`` for each learning rate (checkpoints and
    ``evaluate`` too)."""
    check_seed("seed", seed)
    if isinstance(lrs, (np.ndarray, Tensor)) and lrs.ndim == 1:  # a 1-D array of numbers is a sequence too
        lrs = lrs.tolist()
    if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Sequence) or not lrs:
        raise ValueError(f"lrs must be a non-empty list of learning rates, got {shown(lrs)}")
    lrs = [check_positive_float(f"lrs[{i}]", lr) for i, lr in enumerate(lrs)]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:  # another dtype is fit_population's to name
        for i, lr in enumerate(lrs):
            check_fits_dtype(f"lrs[{i}]", lr, dtype)
    return fit_population(network, [Member(seed, lr) for lr in lrs], train, valid, epochs=epochs,
                          batch_size=batch_size, n_classes=n_classes, shuffle=shuffle, dtype=dtype, compile=compile,
                          compiled_apply=compiled_apply, evaluate=evaluate, progress=progress, desc=desc,
                          checkpoint=checkpoint, resume=resume, config=config)
