"""Checkpoints of a run in progress: saving its ``Progress`` and resuming it exactly.

A run's checkpoint holds its parameters and optimizer state (one model's, or K stacked
members'), its logs, its position (completed epochs and steps), the random generators'
states, the settings it was started with, its ``config`` and the wall-clock seconds it
has trained so far. Resuming checks all of it against the run that resumes, so a
hand-edited or foreign file is refused with a ``CheckpointError`` naming what is wrong,
never trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..core.checks import is_finite_number, shown
from ..core.paths import PathLike, ensure_writable_dir, unreplaceable_kind
from ..core.trees import tree_finite
from ..core.types import Params
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    plain_equal,
    restore_like,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from .loop import LOG_KEYS, Members, Progress, Stopped

# the settings that checkpoints hold from a later format version on: an older checkpoint is
# checked on the others (the command line's file names carry the data's fingerprint anyway)
SETTINGS_SINCE = {"data": 2, "network": 2, "dtype": 3}


def checkpoint_path(checkpoint: Optional[PathLike], resume: bool, writable: bool = True) -> Optional[Path]:
    """``checkpoint`` as a ``Path`` whose folder is ``writable`` if asked (``None`` stays
    ``None``), checked before any training so that a bad path fails now, not when the
    first epoch is saved. A leading ``~`` is the user's home, as for the data's root."""
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path to resume from, got checkpoint=None")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
    checkpoint = Path(checkpoint).expanduser()
    kind = unreplaceable_kind(checkpoint, follow_links=True)
    if kind is not None:
        raise CheckpointError(f"checkpoint must be a file path, got {str(checkpoint)!r}, {kind}")
    if writable:
        ensure_writable_dir(checkpoint.parent)
    return checkpoint


def save_progress(path: PathLike, cur: Progress, *, settings: Dict[str, Any], config: Any,
                  members: Members = Members(), stopped: Optional[Dict[int, Stopped]] = None,
                  seconds: float = 0.0) -> None:
    """Write ``cur`` (and a population's ``stopped`` members) to checkpoint ``path``, atomically;
    ``seconds``: the wall-clock seconds the run has trained so far, in every process."""
    last = cur.last_grad_norm
    state = {"params": cur.params, "opt_state": cur.opt_state, "logs": cur.logs,
             "epoch": cur.epoch, "batch": cur.batch,
             "last_grad_norm": None if last is None else (last.tolist() if members.stacked else float(last)),
             "rng": rng_states(), "settings": settings, "config": config, "seconds": float(seconds)}
    if members.stacked:
        state["stopped"] = {str(k): {"params": s.params, "opt_state": s.opt_state, "message": s.message}
                            for k, s in (stopped or {}).items()}
    save_checkpoint(path, state)


def load_progress(path: Path, params: Params, opt_state: object, *, settings: Dict[str, Any], config: Any,
                  epochs: int, n_batches: int,
                  members: Members = Members()) -> Tuple[Progress, Dict[int, Stopped], float]:
    """The ``Progress``, a population's stopped members and the seconds trained so far
    (0 in a checkpoint written before they were stored) in checkpoint ``path``, checked
    against this run: its ``params`` and ``opt_state`` at the start (shapes,
    hyper-parameters, step counts), ``settings``, ``config`` and ``epochs``."""
    data = load_checkpoint(path)
    try:
        return _checked_progress(path, data, params, opt_state, settings=settings, config=config, epochs=epochs,
                                 n_batches=n_batches, members=members)
    except (CheckpointError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # a hand-edited value of a type the checks did not foresee
        raise CheckpointError(f"checkpoint {str(path)!r} is inconsistent: {type(e).__name__}: {e}") from None


def _checked_progress(path: Path, data: Dict[str, Any], params: Params, opt_state: object, *,
                      settings: Dict[str, Any], config: Any, epochs: int, n_batches: int,
                      members: Members) -> Tuple[Progress, Dict[int, Stopped], float]:
    """``load_progress`` of the loaded checkpoint ``data``."""
    for what, expected in (("settings", settings), ("config", config)):
        found = data.get(what)
        if what == "settings" and isinstance(found, dict):
            expected = {k: v for k, v in expected.items() if SETTINGS_SINCE.get(k, 1) <= data["version"]}
        if not plain_equal(found, expected):
            raise CheckpointError(f"checkpoint {str(path)!r} belongs to a different run: {_difference(what, found, expected)}")
    try:
        epoch, batch, logs = data["epoch"], data["batch"], data["logs"]
        last = data["last_grad_norm"]
        rng = data["rng"]
        restored_params = restore_like(params, data["params"], "params")
        restored_state = restore_like(opt_state, data["opt_state"], "opt_state")
        stopped = _stopped(data["stopped"], params, opt_state, members) if members.stacked else {}
    except KeyError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: it has no {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run: {e}") from None
    problem = _members_problem(epoch, batch, logs, last, n_batches, members, stopped)  # names its member
    for k in range(members.count):
        if problem is not None:
            break
        problem = hyperparameter_problem(members.take(restored_state, k), members.take(opt_state, k))
        if problem is None and k not in stopped:
            problem = state_problem(members.take(restored_params, k), members.take(restored_state, k),
                                    members.take(opt_state, k), epoch * n_batches + batch)
        elif problem is None:
            problem = _stopped_problem(stopped[k], members.take(opt_state, k), len(logs[k]["train_gradient_norm"]),
                                       n_batches)
        if problem is not None and members.stacked:
            problem = f"member {k}: {problem}"
    seconds = data.get("seconds", 0.0)
    if problem is None and not (is_finite_number(seconds) and seconds >= 0):
        problem = f"seconds must be a finite number >= 0, got {shown(seconds)}"
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
    if members.stacked:
        logs = [{k: [float(v) for v in member[k]] for k in LOG_KEYS} for member in logs]
    else:
        logs, last = {k: [float(v) for v in logs[k]] for k in LOG_KEYS}, None if last is None else float(last)
    # float64 holds the stored Python float(s) exactly: the end-of-epoch log takes them as they were
    last = None if last is None else torch.tensor(last, dtype=torch.float64)
    return Progress(restored_params, restored_state, logs, epoch, batch, last), stopped, float(seconds)


_MISSING = object()


def _difference(what: str, found: Any, expected: Any, width: int = 200) -> str:
    """How a checkpoint's ``found`` settings (or config) differ from this run's ``expected``,
    on one line: the differing keys of two dicts, with both values where they are short."""
    def short(value: Any) -> Optional[str]:
        # the whole repr, or nothing: a value cut short could read as equal to this run's
        # (load_checkpoint bounds what a file can unfold to)
        try:
            text = repr(value)
        except ValueError:  # an int of more digits than Python prints
            return None
        return text if len(text) <= width and "\n" not in text else None

    if isinstance(found, dict) and isinstance(expected, dict):
        keys = sorted(set(found) | set(expected), key=str)
        if _counts_differ(found.get("members"), expected.get("members")):
            # a population's data digest covers which data set each member reads: it differs
            # with the number of members, and naming it would suggest the data changed too
            keys = [k for k in keys if k != "data"]
        parts = []
        for key in (k for k in keys if not plain_equal(found.get(k, _MISSING), expected.get(k, _MISSING))):
            theirs, mine = (short(d[key]) if key in d else "none" for d in (found, expected))
            parts.append(f"{key} {theirs} against this run's {mine}" if theirs and mine else f"{key}")
        return f"its {what} differ in " + "; ".join(parts)
    theirs, mine = short(found), short(expected)
    if theirs and mine:
        return f"its {what} are {theirs}, this run's are {mine}"
    return f"its {what} differ from this run's"


def _counts_differ(found: Any, expected: Any) -> bool:
    """Whether two populations' member lists (a checkpoint's and this run's) differ in length."""
    return isinstance(found, list) and isinstance(expected, list) and len(found) != len(expected)


def _stopped(data: Any, params: Params, opt_state: object, members: Members) -> Dict[int, Stopped]:
    """A population checkpoint's stopped members, restored like the members' states."""
    if not isinstance(data, dict) or not all(isinstance(k, str) and k.isdigit() and int(k) < members.count
                                             for k in data):
        raise CheckpointError(f"stopped must map member numbers below {members.count} to states")
    out = {}
    for key, entry in data.items():
        k = int(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("message"), str):
            raise CheckpointError(f"stopped[{key}] must hold params, opt_state and a message")
        p = restore_like(members.take(params, k), entry.get("params"), f"stopped[{key}].params")
        s = restore_like(members.take(opt_state, k), entry.get("opt_state"), f"stopped[{key}].opt_state")
        if not tree_finite(p, s):
            raise CheckpointError(f"stopped[{key}]: its parameters or optimizer state hold NaN or infinite values")
        out[k] = Stopped(p, s, entry["message"])
    return out


def _stopped_problem(entry: Stopped, given: object, ran: int, n_batches: int) -> Optional[str]:
    """What is wrong with a stopped member's stored state, or ``None``: its hyper-parameters
    must be this run's, and its step counter that of a step in the epoch after the ``ran``
    its logs hold (the step it failed at) or of that epoch's end (its evaluation failed)."""
    problem = hyperparameter_problem(entry.opt_state, given)
    count, start = getattr(entry.opt_state, "count", None), getattr(given, "count", None)
    if problem is None and isinstance(count, Tensor) and isinstance(start, Tensor):
        taken = int(count) - int(start)
        if not ran * n_batches <= taken <= (ran + 1) * n_batches:
            problem = (f"its optimizer state has taken {taken} steps (count), but its logs end after {ran} "
                       f"epochs of {n_batches} steps, so it stopped within steps {ran * n_batches} to "
                       f"{(ran + 1) * n_batches}")
    return None if problem is None else f"stopped: {problem}"


def _members_problem(epoch: Any, batch: Any, logs: Any, last: Any, n_batches: int, members: Members,
                     stopped: Dict[int, Stopped]) -> Optional[str]:
    """``position_problem`` for one model, or for each member of a population (a stopped
    member's logs end with the epoch before it stopped)."""
    if not members.stacked:
        return position_problem(epoch, batch, logs, last, n_batches)
    if not isinstance(logs, list) or len(logs) != members.count:
        return f"logs must be a list of {members.count} members' logs"
    if last is not None and (not isinstance(last, list) or len(last) != members.count):
        return f"last_grad_norm must be a list of {members.count} numbers or None"
    for k, member_logs in enumerate(logs):
        if k in stopped:
            ran = len(member_logs.get("validation_accuracy", [])) - 1 if isinstance(member_logs, dict) else -1
            problem = position_problem(ran, 0, member_logs, None, n_batches)
            # it stopped in epoch ran + 1: one the population has begun (at a boundary: completed)
            if problem is None and (not isinstance(epoch, int) or ran > epoch or (ran == epoch and batch == 0)):
                problem = (f"it stopped in epoch {ran + 1}, which the population, at epoch {shown(epoch)} step "
                           f"{shown(batch)}, has not begun")
        else:
            problem = position_problem(epoch, batch, member_logs, None if last is None else last[k], n_batches)
        if problem is not None:
            return f"member {k}: {problem}"
    return None


def position_problem(epoch: Any, batch: Any, logs: Any, last: Any, n_batches: int) -> Optional[str]:
    """What is wrong with a checkpoint's position and logs, or ``None``.

    After ``epoch`` completed epochs the metric logs hold ``epoch + 1`` numbers (one
    before training) and ``train_gradient_norm`` holds ``epoch``; ``0 <= batch <= n_batches``;
    ``last``, the last completed minibatch's gradient norm, is ``None`` only at ``batch == 0``.
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and is_finite_number(v)

    if not is_int(epoch) or epoch < 0:
        return f"epoch must be an integer >= 0, found {shown(epoch)}"
    if not is_int(batch) or not 0 <= batch <= n_batches:
        return f"step within the epoch must be an integer in [0, {n_batches}], found {shown(batch)}"
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
    if batch > 0 and last is None:  # the epoch's log takes the last completed minibatch's norm
        return f"last_grad_norm must be a number after step {batch} of the epoch, found None"
    if last is not None and not (is_number(last) and last >= 0):
        return f"last_grad_norm must be a finite number >= 0 or None, found {shown(last)}"
    return None


def state_problem(params: Params, stored: object, given: object, position: int) -> Optional[str]:
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


def hyperparameter_problem(stored: object, given: object) -> Optional[str]:
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
