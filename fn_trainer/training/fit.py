"""``fit``: train one model with a pure step, with checkpoints and exact resume."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, NamedTuple, Optional, Tuple

from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_bool, check_function, check_positive_int, check_seed
from ..core.evaluate import Evaluate
from ..core.optim import check_state
from ..core.paths import PathLike
from ..core.splits import check_split, params_dtype
from ..core.step import Step
from ..core.trees import tensors_digest
from ..core.types import Params
from .checkpoint import to_plain
from .loop import (
    LOG_KEYS,
    N_TRAIN_EVAL,
    Logs,
    Progress,
    Stopped,
    appended,
    check_initial_evaluation,
    evaluation_message,
    minibatches,
    train_epochs,
)
from .resume import checkpoint_path, load_progress, save_progress


class FitResult(NamedTuple):
    """The outcome of ``fit``.

    ``params`` and ``opt_state``: the final ones or, if the run diverged, the last
    finite ones (those the failing step received, or the epoch's last ones when only its
    end-of-epoch evaluation was not finite). ``logs``: as in the homework's ``train_logs``,
    one entry per completed epoch. ``diverged``: ``None``, or a message naming the epoch,
    the step and the non-finite value that stopped the run. ``wall_time_s``: the
    wall-clock seconds the run took, those of the processes it was interrupted in
    included when it was resumed from a checkpoint (``None`` if not measured).
    """

    params: Params
    opt_state: object
    logs: Logs
    diverged: Optional[str] = None
    wall_time_s: Optional[float] = None


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
    A run whose state is finite after an epoch but whose end-of-epoch evaluation is not
    (its outputs overflow) stops there too, with that state and the logs of the epochs
    before.
    The logs keep every completed epoch; nothing is raised. If a non-deterministic
    ``step`` does not repeat the failure on replay, the epoch's starting state is
    returned and the message says so.

    Checkpoints: with ``checkpoint`` (a file path), the full state (parameters,
    optimizer state, logs, position, RNG states, the fit settings, a digest of the data
    and ``config``, a dict of plain values describing the run) is written atomically after every epoch,
    and at the current step on ``KeyboardInterrupt``, which is then re-raised. With
    ``resume=True`` an existing checkpoint is continued, after checking that it was
    written with the same settings, data, ``config`` and parameter shapes (else
    ``CheckpointError``, a ``ValueError``); the result is bitwise the same as an
    uninterrupted run. Where there is no checkpoint yet, ``resume=True`` trains from the
    start, so one call serves a run and its rerun after an interruption. Without
    ``resume`` an existing checkpoint is overwritten.
    ``write_checkpoint=False`` only reads ``checkpoint``, to resume, and never writes it:
    the ranks of a data-parallel run other than rank 0, which writes it for them all.

    A step that overwrites its arguments (``compile_step(..., donate=True)``) is run on
    copies of ``params`` and ``opt_state``: the tensors given here are left as they were.
    """
    epochs = check_positive_int("epochs", epochs, minimum=0)  # plain ints from here: numpy's are accepted
    batch_size = check_positive_int("batch_size", batch_size)
    n_classes = check_positive_int("n_classes", n_classes)
    seed = check_seed("seed", seed)
    shuffle, progress = check_bool("shuffle", shuffle), check_bool("progress", progress)
    resume, write_checkpoint = check_bool("resume", resume), check_bool("write_checkpoint", write_checkpoint)
    check_function("step", step)
    check_function("evaluate", evaluate)
    dtype = params_dtype(params)
    # a module's parameters (requires_grad) would chain each step's graph onto the last, and
    # memory would grow with every step: the run's are plain tensors
    if any(v.requires_grad for v in params.values()):
        params = {k: v.detach() for k, v in params.items()}
    check_state(opt_state, params)
    X_train, T_train = check_split("train", train, n_classes, dtype)
    X_valid, T_valid = check_split("valid", valid, n_classes, dtype)
    if X_train.shape[1:] != X_valid.shape[1:]:
        raise ValueError(
            f"train X and valid X must have the same sample shape, got {tuple(X_train.shape[1:])} "
            f"and {tuple(X_valid.shape[1:])}"
        )
    checkpoint = checkpoint_path(checkpoint, resume, writable=write_checkpoint)
    plain_config = to_plain(config, "config", tensors=False)
    settings = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed, "n_classes": n_classes,
                "dtype": str(dtype), "train_shape": list(X_train.shape), "valid_shape": list(X_valid.shape),
                "data": None if checkpoint is None else tensors_digest([X_train, T_train, X_valid, T_valid])}
    n = X_train.shape[0]
    n_batches = math.ceil(n / batch_size)

    minibatch = minibatches(lambda idx: (X_train[idx], T_train[idx]), n, batch_size, shuffle, seed)

    def metrics_of(p: Params) -> Dict[str, float]:
        out = {}
        for split, X, T in (("train", X_train[:N_TRAIN_EVAL], T_train[:N_TRAIN_EVAL]),
                            ("validation", X_valid, T_valid)):
            out[f"{split}_loss"], out[f"{split}_accuracy"] = evaluate(p, X, T)
            accuracy = out[f"{split}_accuracy"]
            if math.isfinite(accuracy) and not 0 <= accuracy <= 1:  # a checkpoint holding it would be refused
                raise ValueError(f"evaluate must return (loss, accuracy) with the accuracy a fraction in [0, 1], got "
                                 f"{accuracy!r} on the {split} samples")
        return out

    start, earlier = time.perf_counter(), 0.0  # earlier: the seconds of the processes a resumed run ran in

    def save(cur: Progress) -> None:
        save_progress(checkpoint, cur, settings=settings, config=plain_config,
                      seconds=earlier + time.perf_counter() - start)

    if resume and checkpoint.exists():
        cur, _, earlier = load_progress(checkpoint, params, opt_state, settings=settings, config=plain_config,
                                        epochs=epochs, n_batches=n_batches)
    else:
        values = metrics_of(params)
        check_initial_evaluation(values)
        cur = Progress(params, opt_state, appended({k: [] for k in LOG_KEYS}, values), 0, 0)

    bar = tqdm(total=epochs, initial=cur.epoch, desc=desc, disable=not progress, leave=False)

    def end_epoch(cur: Progress, newly_stopped: Dict[int, Stopped]) -> Tuple[Progress, Dict[int, Stopped]]:
        values = metrics_of(cur.params)
        bar.update(1)
        message = evaluation_message(cur.epoch + 1, values)
        if message is not None:
            return cur._replace(epoch=cur.epoch + 1, batch=0), {0: Stopped(cur.params, cur.opt_state, message)}
        logs = appended(cur.logs, {"train_gradient_norm": float(cur.last_grad_norm), **values})
        bar.set_postfix(val_acc=f"{logs['validation_accuracy'][-1]:.4f}")
        return Progress(cur.params, cur.opt_state, logs, cur.epoch + 1, 0), {}

    try:
        cur, stopped = train_epochs(step, cur, epochs=epochs, n_batches=n_batches, minibatch=minibatch,
                                    end_epoch=end_epoch,
                                    save=None if checkpoint is None or not write_checkpoint else save)
    finally:
        bar.close()
    wall_time_s = earlier + time.perf_counter() - start
    if stopped:
        return FitResult(stopped[0].params, stopped[0].opt_state, cur.logs, stopped[0].message, wall_time_s)
    return FitResult(cur.params, cur.opt_state, cur.logs, wall_time_s=wall_time_s)
