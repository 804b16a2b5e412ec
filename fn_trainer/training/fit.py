"""Evaluation and the training loop over a pure step."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int, check_seed
from ..core.losses import accuracy, check_labels, cross_entropy, one_hot
from ..core.paths import PathLike, ensure_writable_dir
from ..core.step import Apply, Loss, Params, Step
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_like,
    rng_states,
    save_checkpoint,
    set_rng_states,
    to_plain,
)

LOG_KEYS = ("train_accuracy", "validation_accuracy", "train_loss", "validation_loss",
            "train_gradient_norm")
N_TRAIN_EVAL = 2000  # train metrics are measured on the first 2000 training samples
EVAL_CHUNK = 2000  # rows evaluated at once: bounds the memory of an evaluation pass
Logs = Dict[str, List[float]]
Evaluate = Callable[[Params, Tensor, Tensor], Tuple[float, float]]


def make_evaluate(apply: Apply, loss: Loss = cross_entropy, chunk_size: int = EVAL_CHUNK) -> Evaluate:
    """``evaluate(params, X, targets) -> (mean loss, accuracy)`` as Python floats.

    ``targets`` are one-hot ``(N, C)``. Runs without autograd in chunks of
    ``chunk_size`` rows; chunk results are weighted by their size.
    """
    check_positive_int("chunk_size", chunk_size)

    def evaluate(params: Params, X: Tensor, targets: Tensor) -> Tuple[float, float]:
        n = X.shape[0]
        if n == 0:
            raise ValueError("evaluate needs at least one sample, got an empty X")
        total_loss = total_acc = 0.0
        with torch.no_grad():
            for i in range(0, n, chunk_size):
                probs = apply(params, X[i:i + chunk_size])
                t = targets[i:i + chunk_size]
                total_loss += float(loss(probs, t)) * probs.shape[0]
                total_acc += float(accuracy(probs, t)) * probs.shape[0]
        return total_loss / n, total_acc / n

    return evaluate


class FitResult(NamedTuple):
    """The outcome of ``fit``.

    ``params`` and ``opt_state``: the final ones or, if the run diverged, the last
    finite ones (those the failing step received). ``logs``: as in the homework's
    ``train_logs``, one entry per completed epoch. ``diverged``: ``None``, or a message
    naming the epoch, the step and the non-finite value that stopped the run.
    """

    params: Params
    opt_state: object
    logs: Logs
    diverged: Optional[str] = None


class Progress(NamedTuple):
    """Where a run stands. Replaced as a whole after each step, so an interrupt can
    never observe parameters, optimizer state and position that disagree."""

    params: Params
    opt_state: object
    logs: Logs
    epoch: int  # completed epochs
    batch: int  # completed minibatches of epoch ``epoch``
    last_grad_norm: Optional[Tensor] = None  # gradient norm of the last completed minibatch


def epoch_order(n: int, epoch: int, shuffle: bool, seed: int) -> Optional[Tensor]:
    """The sample order of one epoch: ``None`` (in order) or a permutation that
    depends only on ``(seed, epoch)``, so a resumed run replays it exactly."""
    if not shuffle:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def params_dtype(params: Any) -> torch.dtype:
    """The one floating dtype of every tensor in ``params`` (a dict), else ``TypeError``."""
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of tensors, got {type(params).__name__}")
    dtypes = {v.dtype for v in params.values() if isinstance(v, Tensor)}
    if len(dtypes) != 1 or len(params) != sum(isinstance(v, Tensor) for v in params.values()):
        raise TypeError(f"params must be tensors of one floating dtype, got dtypes {sorted(map(str, dtypes))}")
    (dtype,) = dtypes
    if not dtype.is_floating_point:
        raise TypeError(f"params must have a floating dtype, got {dtype}")
    return dtype


def check_split(name: str, split: Any, n_classes: int,
                dtype: Optional[torch.dtype] = None, finite: bool = True) -> Tuple[Tensor, Tensor]:
    """Return ``(X, targets)`` for a split ``(X, y)``, or raise naming ``name``.

    ``X``: a non-empty floating tensor ``(N, ...)`` with finite values, returned cast to
    ``dtype`` if given (the parameters' dtype: float64 data trains a float32 network in
    float32, and a float64 network in float64); ``y``: ``(N,)`` integer labels in
    ``[0, n_classes)`` or ``(N, n_classes)`` targets. ``finite=False`` skips the scans
    for NaN and infinity (a pass over ``X``), for callers that check a result instead.
    """
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise TypeError(f"{name} must be a pair (X, y) of tensors, got {type(split).__name__}")
    X, y = split
    for part, t in ((f"{name} X", X), (f"{name} y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{part} must be a torch.Tensor, got {type(t).__name__}")
    if not X.dtype.is_floating_point:
        raise TypeError(f"{name} X must have a floating dtype, got {X.dtype}")
    if X.dim() < 2 or X.shape[0] == 0:
        raise ValueError(f"{name} X must be (N, ...) with N >= 1 samples, got shape {tuple(X.shape)}")
    if y.dim() == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{name} y must have one entry per sample of X ({X.shape[0]}), got shape {tuple(y.shape)}"
        )
    if finite and not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} X contains NaN or infinite values")
    if dtype is not None and X.dtype != dtype:
        X = X.to(dtype)
        if not bool(torch.isfinite(X).all()):  # float64 values beyond float32's range
            raise ValueError(f"{name} X has values too large for the parameters' dtype {dtype}")
    if y.dim() == 1:
        return X, one_hot(check_labels(y, n_classes, f"{name} y"), n_classes)
    if y.dim() != 2 or y.shape[1] != n_classes or not y.dtype.is_floating_point:
        raise ValueError(
            f"{name} y must be (N,) integer labels or (N, {n_classes}) float targets, got "
            f"shape {tuple(y.shape)} {y.dtype}"
        )
    if finite and not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} y contains NaN or infinite values")
    return X, y


def fit(step: Step, evaluate: Evaluate, params: Params, opt_state: object,
        train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor], *, epochs: int,
        batch_size: int = 128, n_classes: int = 10, shuffle: bool = False, seed: int = 0,
        progress: bool = True, desc: str = "train", checkpoint: Optional[PathLike] = None,
        resume: bool = False, config: Optional[Dict[str, Any]] = None,
        write_checkpoint: bool = True) -> FitResult:
    """Train for ``epochs`` epochs of minibatches, logging like the homework's ``train_loop``.

    ``train`` and ``valid`` are ``(X, y)`` with ``y`` labels ``(N,)`` or one-hot ``(N, C)``.
    Metrics are logged once before training and after every epoch (``epochs + 1``
    entries; train metrics on the first 2000 training samples); ``train_gradient_norm``
    holds the last minibatch's gradient norm of each epoch (``epochs`` entries).
    Batches are taken in order unless ``shuffle``; the last one may be smaller.

    Divergence: the losses and gradient norms of an epoch, and the parameters and
    optimizer state at its end, are checked once, at its end (no per-step host sync).
    If one is not finite, the epoch is replayed step by step to find the first step
    whose loss or gradient norm is not finite or whose update is not; the run stops
    there and returns the state that step received (the last finite one), with
    ``FitResult.diverged`` naming the epoch and step (both 1-based) and the values.
    The logs keep every completed epoch; nothing is raised. If a non-deterministic
    ``step`` does not repeat the failure on replay, the epoch's starting state is
    returned and the message says so.

    Checkpoints: with ``checkpoint`` (a file path), the full state (parameters,
    optimizer state, logs, position, RNG states, the fit settings and ``config``, a
    dict of plain values describing the run) is written atomically after every epoch,
    and at the current step on ``KeyboardInterrupt``, which is then re-raised. With
    ``resume=True`` an existing checkpoint is continued, after checking that it was
    written with the same settings, ``config`` and parameter shapes (else
    ``CheckpointError``, a ``ValueError``); the result is bitwise the same as an
    uninterrupted run. Without ``resume`` an existing checkpoint is overwritten.
    ``write_checkpoint=False`` only reads ``checkpoint``, to resume, and never writes it:
    the ranks of a data-parallel run other than rank 0, which writes it for them all.
    """
    check_positive_int("epochs", epochs, minimum=0)
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_classes", n_classes)
    check_seed("seed", seed)
    dtype = params_dtype(params)
    X_train, T_train = check_split("train", train, n_classes, dtype)
    X_valid, T_valid = check_split("valid", valid, n_classes, dtype)
    if X_train.shape[1:] != X_valid.shape[1:]:
        raise ValueError(
            f"train X and valid X must have the same sample shape, got {tuple(X_train.shape[1:])} "
            f"and {tuple(X_valid.shape[1:])}"
        )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path to resume from, got checkpoint=None")
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():  # found now, not when the first epoch's work is to be saved
            raise ValueError(f"checkpoint must be a file path, got {str(checkpoint)!r}, an existing folder")
        if write_checkpoint:
            ensure_writable_dir(checkpoint.parent)
    plain_config = to_plain(config, "config")
    settings = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed, "n_classes": n_classes,
                "train_shape": list(X_train.shape), "valid_shape": list(X_valid.shape)}
    n = X_train.shape[0]
    n_batches = math.ceil(n / batch_size)

    def minibatch(order: Optional[Tensor], b: int) -> Tuple[Tensor, Tensor]:
        idx = slice(b * batch_size, (b + 1) * batch_size)
        if order is not None:
            idx = order[idx]
        return X_train[idx], T_train[idx]

    def metrics_of(p: Params) -> Dict[str, float]:
        out = {}
        for split, X, T in (("train", X_train[:N_TRAIN_EVAL], T_train[:N_TRAIN_EVAL]),
                            ("validation", X_valid, T_valid)):
            out[f"{split}_loss"], out[f"{split}_accuracy"] = evaluate(p, X, T)
        return out

    def save(cur: Progress) -> None:
        save_checkpoint(checkpoint, {
            "params": cur.params, "opt_state": cur.opt_state, "logs": cur.logs,
            "epoch": cur.epoch, "batch": cur.batch,
            "last_grad_norm": None if cur.last_grad_norm is None else float(cur.last_grad_norm),
            "rng": rng_states(), "settings": settings, "config": plain_config,
        })

    if resume and checkpoint.exists():
        cur = _resume(checkpoint, params, opt_state, settings, plain_config, epochs, n_batches)
    else:
        cur = Progress(params, opt_state, _appended({k: [] for k in LOG_KEYS}, metrics_of(params)), 0, 0)

    diverged = None
    losses: List[Tensor] = []
    grad_norms: List[Tensor] = []
    bar = tqdm(total=epochs, initial=cur.epoch, desc=desc, disable=not progress, leave=False)
    try:
        while cur.epoch < epochs:
            order = epoch_order(n, cur.epoch, shuffle, seed)
            start, losses, grad_norms = cur, [], []
            for b in range(cur.batch, n_batches):
                new_params, new_state, metrics = step(cur.params, cur.opt_state, minibatch(order, b))
                losses.append(metrics["loss"])
                grad_norms.append(metrics["grad_norm"])
                cur = cur._replace(params=new_params, opt_state=new_state, batch=b + 1,
                                   last_grad_norm=metrics["grad_norm"])
            if not (metrics_finite(losses, grad_norms) and tree_finite(cur.params, cur.opt_state)):
                cur, diverged = _locate_divergence(step, start, lambda b: minibatch(order, b), n_batches)
                break
            logs = _appended(cur.logs, {"train_gradient_norm": float(cur.last_grad_norm),
                                        **metrics_of(cur.params)})
            cur = Progress(cur.params, cur.opt_state, logs, cur.epoch + 1, 0)
            if checkpoint is not None and write_checkpoint:
                save(cur)
            bar.update(1)
            bar.set_postfix(val_acc=f"{logs['validation_accuracy'][-1]:.4f}")
    except KeyboardInterrupt:
        # Keep the last good checkpoint if this epoch already went non-finite.
        if (checkpoint is not None and write_checkpoint and metrics_finite(losses, grad_norms)
                and tree_finite(cur.params, cur.opt_state)):
            save(cur)
        raise
    finally:
        bar.close()
    return FitResult(cur.params, cur.opt_state, cur.logs, diverged)


def metrics_finite(losses: Sequence[Tensor], grad_norms: Sequence[Tensor]) -> bool:
    """Whether every loss and gradient norm (0-dim tensors) is finite: one host sync in all."""
    if not losses:
        return True
    return bool((torch.isfinite(torch.stack(list(losses))) & torch.isfinite(torch.stack(list(grad_norms)))).all())


def tree_finite(*trees: Any) -> bool:
    """Whether every floating tensor in ``trees`` (dicts, lists, tuples, NamedTuples) is finite."""
    stack = list(trees)
    while stack:
        t = stack.pop()
        if isinstance(t, Tensor):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return False
        elif isinstance(t, dict):
            stack.extend(t.values())
        elif isinstance(t, (list, tuple)):
            stack.extend(t)
    return True


def divergence_message(epoch: int, step: Optional[int], n_batches: int, loss: float = math.nan,
                       grad_norm: float = math.nan) -> str:
    """``FitResult.diverged``'s text for 1-based ``epoch`` and ``step``.

    A finite ``loss`` and ``grad_norm`` mean the step's update made the state non-finite;
    ``step=None`` means the failure seen in the epoch did not recur on replay.
    """
    if step is None:
        return (f"diverged in epoch {epoch}: a non-finite loss, gradient or parameter was seen but "
                "did not recur when the epoch was replayed; returning the parameters from the "
                "start of the epoch")
    where, values = f"diverged in epoch {epoch} at step {step} of {n_batches}", f"loss={loss}, grad_norm={grad_norm}"
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return (f"{where}: its update made the parameters or optimizer state non-finite ({values}); "
                "returning the parameters from before that step")
    return f"{where}: {values}; returning the parameters from before that step"


def _locate_divergence(step: Step, start: Progress, minibatch, n_batches: int) -> Tuple[Progress, str]:
    """Replay the epoch from ``start``, checking every step, to find the first one whose loss
    or gradient norm is not finite or whose update leaves non-finite parameters or optimizer
    state. Returns the state that step received and a message naming it."""
    cur = start
    for b in range(start.batch, n_batches):
        new_params, new_state, metrics = step(cur.params, cur.opt_state, minibatch(b))
        loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(gnorm) and tree_finite(new_params, new_state)):
            return cur, divergence_message(start.epoch + 1, b + 1, n_batches, loss, gnorm)
        cur = cur._replace(params=new_params, opt_state=new_state, batch=b + 1,
                           last_grad_norm=metrics["grad_norm"])
    # Only a non-deterministic step gets here: the values seen the first time did not recur.
    return start, divergence_message(start.epoch + 1, None, n_batches)


def _appended(logs: Logs, entries: Dict[str, float]) -> Logs:
    """A copy of ``logs`` with one entry appended to each list named in ``entries``."""
    return {k: v + [entries[k]] if k in entries else list(v) for k, v in logs.items()}


def _resume(path: Path, params: Params, opt_state: object, settings: Dict[str, Any],
            config: Any, epochs: int, n_batches: int) -> Progress:
    """The ``Progress`` stored in checkpoint ``path``, checked against this run."""
    data = load_checkpoint(path)
    for what, expected in (("settings", settings), ("config", config)):
        found = data.get(what)
        if found != expected:
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to a different run: its {what} are {found!r}, "
                f"this run's are {expected!r}"
            )
    try:
        epoch, batch, logs = data["epoch"], data["batch"], data["logs"]
        last = data["last_grad_norm"]
        rng = data["rng"]
        restored_params = restore_like(params, data["params"], "params")
        restored_state = restore_like(opt_state, data["opt_state"], "opt_state")
    except KeyError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: it has no {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run: {e}") from None
    problem = _position_problem(epoch, batch, logs, last, n_batches)
    if problem is None:
        problem = _hyperparameter_problem(restored_state, opt_state)
    if problem is None:
        problem = _state_problem(restored_params, restored_state, opt_state, epoch * n_batches + batch)
    if problem is not None:
        raise CheckpointError(f"checkpoint {str(path)!r} is inconsistent: {problem}")
    if epoch > epochs or (epoch == epochs and batch > 0):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is already past epochs={epochs} (epoch {epoch}, step {batch})"
        )
    try:
        set_rng_states(rng)
    except (CheckpointError, AttributeError, KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} holds unusable random generator states: {e}") from None
    return Progress(restored_params, restored_state, {k: [float(v) for v in logs[k]] for k in LOG_KEYS}, epoch,
                    batch, None if last is None else torch.tensor(float(last)))


def _position_problem(epoch: Any, batch: Any, logs: Any, last: Any, n_batches: int) -> Optional[str]:
    """What is wrong with a checkpoint's position and logs, or ``None``.

    After ``epoch`` completed epochs the metric logs hold ``epoch + 1`` numbers (one
    before training) and ``train_gradient_norm`` holds ``epoch``; ``0 <= batch <= n_batches``.
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not is_int(epoch) or epoch < 0:
        return f"epoch must be an integer >= 0, found {epoch!r}"
    if not is_int(batch) or not 0 <= batch <= n_batches:
        return f"step within the epoch must be an integer in [0, {n_batches}], found {batch!r}"
    if not isinstance(logs, dict) or set(logs) != set(LOG_KEYS):
        found = sorted(logs) if isinstance(logs, dict) else type(logs).__name__
        return f"logs must have the keys {sorted(LOG_KEYS)}, found {found}"
    for key, values in logs.items():
        expected = epoch if key == "train_gradient_norm" else epoch + 1
        if not isinstance(values, list) or len(values) != expected or not all(map(is_number, values)):
            return (f"logs[{key!r}] must be a list of {expected} numbers after {epoch} epochs, found "
                    f"{len(values) if isinstance(values, list) else type(values).__name__}"
                    + ("" if not isinstance(values, list) or len(values) != expected else " with non-numbers or non-finite values"))
    for key in ("train_accuracy", "validation_accuracy"):
        outside = [v for v in logs[key] if not 0 <= v <= 1]
        if outside:
            return f"logs[{key!r}] must hold accuracies in [0, 1], found {outside[0]!r}"
    if last is not None and not (is_number(last) and last >= 0):
        return f"last_grad_norm must be a finite number >= 0 or None, found {last!r}"
    return None


def _state_problem(params: Params, stored: object, given: object, position: int) -> Optional[str]:
    """What is wrong with a checkpoint's parameters and optimizer state, or ``None``:
    non-finite values anywhere, negative second moments (a field ``nu``: squared
    gradients' averages), or a step counter (a field ``count``) that is not the
    given state's plus ``position``, the steps taken (``epoch * n_batches + batch``)."""
    if not tree_finite(params, stored):
        return "its parameters or optimizer state hold NaN or infinite values"
    fields = getattr(given, "_fields", ())
    if "nu" in fields and not all(bool((v >= 0).all()) for v in getattr(stored, "nu").values()):
        return "its optimizer state has negative second moments (nu)"
    if "count" in fields and isinstance(given.count, Tensor):
        expected = int(given.count) + position
        if int(stored.count) != expected:
            return (f"its optimizer state has taken {int(stored.count)} steps (count), but its position "
                    f"is {position} steps into the run, so count must be {expected}")
    return None


def _hyperparameter_problem(stored: object, given: object) -> Optional[str]:
    """Which hyper-parameter of a checkpoint's optimizer state differs from this run's
    (the 0-dim floating tensors among the state's fields, e.g. Adam's lr, b1, b2, eps)."""
    if not (isinstance(given, tuple) and hasattr(given, "_fields")):
        return None
    for field in given._fields:
        mine, theirs = getattr(given, field), getattr(stored, field)
        if (isinstance(mine, Tensor) and mine.dim() == 0 and mine.is_floating_point()
                and not torch.equal(mine.cpu(), theirs.cpu())):
            return (f"its optimizer state has {field}={float(theirs)!r}, this run's optimizer has "
                    f"{field}={float(mine)!r}")
    return None
