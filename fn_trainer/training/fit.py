"""``fit``: train one model with a pure step, with checkpoints and exact resume."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int, check_seed
from ..core.evaluate import Evaluate
from ..core.paths import PathLike, ensure_writable_dir
from ..core.splits import check_split, params_dtype
from ..core.step import Step
from ..core.trees import tree_finite
from ..core.types import Params
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_like,
    rng_states,
    save_checkpoint,
    set_rng_states,
    to_plain,
)
from .loop import LOG_KEYS, N_TRAIN_EVAL, Logs, Progress, Stopped, appended, minibatches, train_epochs


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


def fit(step: Step, evaluate: Evaluate, params: Params, opt_state: object,
        train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor], *, epochs: int,
        batch_size: int = 128, n_classes: int = 10, shuffle: bool = False, seed: int = 0,
        progress: bool = True, desc: str = "train", checkpoint: Optional[PathLike] = None,
        resume: bool = False, config: Optional[Dict[str, Any]] = None) -> FitResult:
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
        ensure_writable_dir(checkpoint.parent)
    plain_config = to_plain(config, "config")
    settings = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed, "n_classes": n_classes,
                "train_shape": list(X_train.shape), "valid_shape": list(X_valid.shape)}
    n = X_train.shape[0]
    n_batches = math.ceil(n / batch_size)

    minibatch = minibatches(lambda idx: (X_train[idx], T_train[idx]), n, batch_size, shuffle, seed)

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
        cur = Progress(params, opt_state, appended({k: [] for k in LOG_KEYS}, metrics_of(params)), 0, 0)

    bar = tqdm(total=epochs, initial=cur.epoch, desc=desc, disable=not progress, leave=False)

    def end_epoch(cur: Progress, newly_stopped: Dict[int, Stopped]) -> Progress:
        logs = appended(cur.logs, {"train_gradient_norm": float(cur.last_grad_norm), **metrics_of(cur.params)})
        bar.update(1)
        bar.set_postfix(val_acc=f"{logs['validation_accuracy'][-1]:.4f}")
        return Progress(cur.params, cur.opt_state, logs, cur.epoch + 1, 0)

    try:
        cur, stopped = train_epochs(step, cur, epochs=epochs, n_batches=n_batches, minibatch=minibatch,
                                    end_epoch=end_epoch, save=None if checkpoint is None else save)
    finally:
        bar.close()
    if stopped:
        return FitResult(stopped[0].params, stopped[0].opt_state, cur.logs, stopped[0].message)
    return FitResult(cur.params, cur.opt_state, cur.logs)


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
