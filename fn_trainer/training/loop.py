"""The one epoch loop under ``fit``, ``fit_sweep`` and populations.

It runs a pure ``step`` over the minibatches of each epoch and checks for divergence
once per epoch, at its end (no per-step host sync). A state holds one model, or K
members stacked along a leading axis (``Members``); a member whose loss, gradient norm
or state is not finite is located by replaying the epoch step by step, and stops there
with the state its failing step received, while the others go on.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..core.step import Step
from ..core.trees import finite_per_member, tree_clone, tree_finite, tree_index
from ..core.types import Batch, Params
from .compiled import DonatingStep

LOG_KEYS = ("train_accuracy", "validation_accuracy", "train_loss", "validation_loss",
            "train_gradient_norm")
N_TRAIN_EVAL = 2000  # train metrics are measured on the first 2000 training samples
Logs = Dict[str, List[float]]
Minibatch = Callable[[int, int], Batch]  # (epoch, index in the epoch) -> minibatch


class Progress(NamedTuple):
    """Where a run stands. Replaced as a whole after each step, so an interrupt can
    never observe parameters, optimizer state and position that disagree."""

    params: Params
    opt_state: object
    logs: Any  # a run's logs (its caller's format)
    epoch: int  # completed epochs
    batch: int  # completed minibatches of epoch ``epoch``
    last_grad_norm: Optional[Tensor] = None  # gradient norm(s) of the last completed minibatch


class Stopped(NamedTuple):
    """A member that diverged: the state its failing step received and the message."""

    params: Params
    opt_state: object
    message: str


class Members(NamedTuple):
    """How the loop sees the models of a state: ``count`` members stacked along a leading
    axis of every tensor (``stacked``), or one model as it is."""

    count: int = 1
    stacked: bool = False

    def finite(self, *trees: Any) -> Tensor:
        """``(count,)`` bool: whether each member's floating tensors are all finite."""
        if self.stacked:
            return finite_per_member(trees, self.count)
        return torch.tensor([tree_finite(*trees)])

    def finite_metrics(self, losses: Sequence[Tensor], grad_norms: Sequence[Tensor]) -> Tensor:
        """``(count,)`` bool: whether each member's losses and gradient norms are finite
        (0-dim, or ``(count,)``, tensors, one per step): one host sync in all."""
        if not losses:
            return torch.ones(self.count, dtype=torch.bool)
        both = torch.stack([torch.stack(list(losses)), torch.stack(list(grad_norms))])
        return torch.isfinite(both).reshape(2 * len(losses), self.count).all(0).cpu()

    def value(self, metric: Tensor, k: int) -> float:
        """Member ``k``'s value of a step metric."""
        return float(metric.reshape(-1)[k]) if self.stacked else float(metric)

    def take(self, tree: Any, k: int) -> Any:
        """Member ``k`` of a state: copies of a stacked one, the tree itself otherwise."""
        return tree_index(tree, k) if self.stacked else tree


# (the epoch's progress, members that diverged in it) -> (progress to continue from with the
# epoch logged, members whose end-of-epoch evaluation was not finite: see evaluation_message)
EndEpoch = Callable[[Progress, Dict[int, Stopped]], Tuple[Progress, Dict[int, Stopped]]]


def epoch_order(n: int, epoch: int, shuffle: bool, seed: int) -> Optional[Tensor]:
    """The sample order of one epoch: ``None`` (in order) or a permutation that
    depends only on ``(seed, epoch)``, so a resumed run replays it exactly."""
    if not shuffle:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def minibatches(rows: Callable[[Any], Batch], n: int, batch_size: int, shuffle: bool = False,
                seed: Union[int, Sequence[int]] = 0) -> Minibatch:
    """``minibatch(epoch, b)``: ``rows(index)`` for minibatch ``b`` of an epoch over ``n``
    samples, ``batch_size`` at a time in ``epoch_order`` (drawn once per epoch); the
    last minibatch may be smaller. ``seed`` a sequence of K seeds (with ``shuffle``):
    one order each, and ``rows`` gets ``(K, B)`` indices, a row per member."""
    orders: Dict[int, Optional[Tensor]] = {}

    def order_of(epoch: int) -> Optional[Tensor]:
        if isinstance(seed, int):
            return epoch_order(n, epoch, shuffle, seed)
        return torch.stack([epoch_order(n, epoch, True, s) for s in seed])

    def minibatch(epoch: int, b: int) -> Batch:
        if epoch not in orders:
            orders.clear()
            orders[epoch] = order_of(epoch)
        order, idx = orders[epoch], slice(b * batch_size, (b + 1) * batch_size)
        return rows(idx if order is None else order[..., idx])

    return minibatch


@contextmanager
def lost_interrupts() -> Iterator[Callable[[], None]]:
    """A check that raises the ``KeyboardInterrupt`` CPython dropped while the block ran.

    A signal handler's ``KeyboardInterrupt`` (Ctrl-C's, or a subclass such as the command's
    SIGTERM) that lands while a weakref callback or ``__del__`` runs, as torch's tensor
    finalisers often do, cannot propagate: CPython passes it to ``sys.unraisablehook``,
    prints "Exception ignored" and goes on. While the block runs in the main thread (the
    only one signal handlers run in), that hook keeps such an interrupt for the check to
    raise, and the block raises one still kept when it ends without an exception (a run that
    returns early, every member stopped); other unraisable exceptions go on to the previous
    hook.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    dropped: List[BaseException] = []
    previous = sys.unraisablehook

    def keep_interrupts(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            dropped.append(unraisable.exc_value)
        else:
            previous(unraisable)

    def check() -> None:
        if dropped:
            raise dropped.pop()

    sys.unraisablehook = keep_interrupts
    try:
        yield check
    finally:
        if sys.unraisablehook is keep_interrupts:  # unless someone replaced it meanwhile
            sys.unraisablehook = previous
    check()


class HeldSignals:
    """While a ``with held:`` block runs in the main thread, a SIGINT or SIGTERM whose
    handler is a Python function is kept and handed to that handler as the block ends
    (dropped if the block raises); at a second one in the same block the first is handed
    over at once, so that a stuck block can still be interrupted. For a
    :class:`DonatingStep`'s ``in_place``, whose state is torn until the step and its record
    are done. ``close()`` gives the handlers back."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.inside = False
        self.pending: Optional[Tuple[int, Any]] = None
        self.previous: Dict[int, Callable] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers run in the main thread only: nothing to hold elsewhere
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None and callable(signal.getsignal(number)):
                self.previous[number] = signal.signal(number, self.handle)

    def handle(self, number: int, frame: Any) -> None:
        if self.inside and self.pending is None:
            self.pending = (number, frame)
            return
        if self.inside:  # the second: the first one is handed over now, as it would have been
            (number, frame), self.pending = self.pending, None
        self.previous[number](number, frame)

    def __enter__(self) -> "HeldSignals":
        self.inside = True
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.inside = False
        pending, self.pending = self.pending, None
        if pending is not None and kind is None:
            self.previous[pending[0]](*pending)

    def close(self) -> None:
        for number, handler in self.previous.items():
            if signal.getsignal(number) == self.handle:  # unless someone replaced it meanwhile
                signal.signal(number, handler)


def copied(progress: Progress) -> Progress:
    """``progress`` with copies of its parameters and optimizer state."""
    return progress._replace(params=tree_clone(progress.params), opt_state=tree_clone(progress.opt_state))


def train_epochs(step: Step, cur: Progress, *, epochs: int, n_batches: int, minibatch: Minibatch,
                 end_epoch: EndEpoch, members: Members = Members(),
                 stopped: Optional[Dict[int, Stopped]] = None,
                 save: Optional[Callable[[Progress], None]] = None) -> Tuple[Progress, Dict[int, Stopped]]:
    """Run epochs ``cur.epoch + 1 .. epochs`` from ``cur``; returns ``(progress, stopped)``.

    After each epoch, members that went non-finite in it are located by replay and added
    to ``stopped`` (member index -> ``Stopped``); if every member has stopped, the loop
    ends there and returns the epoch's starting progress (its logs are the completed
    epochs'), else ``end_epoch(progress, newly_stopped)`` logs the epoch and returns the
    progress to continue from, and the members it stopped because their end-of-epoch
    evaluation was not finite (their logs end with the epoch before); if that leaves no
    member, the loop ends with that progress. ``save``, if given, is called with the
    progress to continue from and, on ``KeyboardInterrupt`` (re-raised), with the current
    step's when it is still finite. An interrupt CPython dropped (``lost_interrupts``) is
    raised after the step or the end of epoch it arrived in.

    A :class:`DonatingStep` runs ``in_place`` on the loop's own state: the first step of each
    minibatch shape (the one that compiles) runs on copies, as a pure step, so that the
    caller's tensors stay as they were and an interrupt during a compilation is not held;
    each epoch's start is copied for the replay; SIGINT and SIGTERM are held during every
    other step and its record (``HeldSignals``), and at a second signal within one step,
    which interrupts it at once, the epoch's start (a whole state) is what is saved.
    """
    stopped = dict(stopped or {})
    losses: List[Tensor] = []
    grad_norms: List[Tensor] = []
    donating = isinstance(step, DonatingStep)
    held, overwriting, shapes = None, False, set()  # shapes: those a donating step has run once (on copies)
    with lost_interrupts() as check_interrupt:
        try:
            held = HeldSignals() if donating else None
            while cur.epoch < epochs:
                # once a step has run, a donating one overwrites cur's tensors: the replay needs its own
                start, losses, grad_norms = (copied(cur) if shapes else cur), [], []
                for b in range(cur.batch, n_batches):
                    batch = minibatch(cur.epoch, b)
                    shape = tuple(batch[0].shape)
                    in_place = shape in shapes
                    with held if in_place else nullcontext():
                        overwriting = in_place  # set once the interrupt is held: cur is whole before
                        params, opt_state, metrics = (step.in_place if in_place else step)(
                            cur.params, cur.opt_state, batch)
                        losses.append(metrics["loss"])
                        grad_norms.append(metrics["grad_norm"])
                        cur = cur._replace(params=params, opt_state=opt_state, batch=b + 1,
                                           last_grad_norm=metrics["grad_norm"])
                        overwriting = False
                    if donating and not in_place:
                        shapes.add(shape)
                    check_interrupt()
                ok = members.finite_metrics(losses, grad_norms) & members.finite(cur.params, cur.opt_state)
                failed = [k for k in range(members.count) if k not in stopped and not bool(ok[k])]
                newly = locate_divergence(step, start, minibatch, n_batches, members, failed) if failed else {}
                stopped.update(newly)
                if len(stopped) == members.count:
                    return start, stopped
                cur, evaluated = end_epoch(cur, newly)
                stopped.update(evaluated)
                if len(stopped) == members.count:
                    return cur, stopped
                if save is not None:
                    save(cur)
                check_interrupt()
        except KeyboardInterrupt:
            if overwriting:  # a step overwriting cur's state was cut short: its epoch's start is whole
                cur, losses, grad_norms = start, [], []
            # Keep the last good checkpoint if a running member already went non-finite in this epoch.
            ok = members.finite_metrics(losses, grad_norms) & members.finite(cur.params, cur.opt_state)
            if save is not None and all(bool(ok[k]) for k in range(members.count) if k not in stopped):
                save(cur)
            raise
        finally:
            if held is not None:
                held.close()
    return cur, stopped


def locate_divergence(step: Step, start: Progress, minibatch: Minibatch, n_batches: int,
                      members: Members, which: Sequence[int]) -> Dict[int, Stopped]:
    """Replay the epoch from ``start``, checking every step, to find for each member in
    ``which`` the first step whose loss or gradient norm is not finite or whose update
    leaves non-finite parameters or optimizer state: the state that step received and a
    message naming it."""
    cur, found = start, {}
    for b in range(start.batch, n_batches):
        params, opt_state, metrics = step(cur.params, cur.opt_state, minibatch(start.epoch, b))  # pure
        update_ok = members.finite(params, opt_state)
        for k in which:
            if k in found:
                continue
            loss, gnorm = members.value(metrics["loss"], k), members.value(metrics["grad_norm"], k)
            if not (math.isfinite(loss) and math.isfinite(gnorm) and bool(update_ok[k])):
                found[k] = Stopped(members.take(cur.params, k), members.take(cur.opt_state, k),
                                   divergence_message(start.epoch + 1, b + 1, n_batches, loss, gnorm))
        if len(found) == len(which):
            return found
        cur = cur._replace(params=params, opt_state=opt_state, batch=b + 1, last_grad_norm=metrics["grad_norm"])
    # Only a non-deterministic step gets here: the values seen the first time did not recur.
    for k in which:
        if k not in found:
            found[k] = Stopped(members.take(start.params, k), members.take(start.opt_state, k),
                               divergence_message(start.epoch + 1, None, n_batches))
    return found


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


def evaluation_message(epoch: int, values: Dict[str, float]) -> Optional[str]:
    """``FitResult.diverged``'s text for a model whose state is finite after 1-based
    ``epoch`` but whose end-of-epoch ``values`` (losses, accuracies) are not, else ``None``:
    its outputs overflowed. It stops there, keeping the logs of the epochs before."""
    found = non_finite(values)
    if not found:
        return None
    return (f"diverged in epoch {epoch}: its parameters are finite, but the end-of-epoch evaluation is not "
            f"({found}); returning the parameters from the end of that epoch, logged up to the epoch before")


def non_finite(values: Dict[str, float]) -> str:
    """``validation_loss=nan, ...``: the values that are not finite, or ``""``."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))


def check_initial_evaluation(values: Dict[str, float], who: str = "") -> None:
    """Raise ``ValueError`` if the evaluation before training (``values``: losses,
    accuracies) is not finite: the outputs overflow on this data before any step, which no
    training can mend, and a log that starts with it could not be resumed from. ``who``:
    whose evaluation, for a population's member."""
    found = non_finite(values)
    if found:
        raise ValueError(f"{who}the evaluation before training is not finite ({found}): the untrained network "
                         "or the loss overflows on this data, which no step can mend; check the inputs' scale")


def appended(logs: Logs, entries: Dict[str, float]) -> Logs:
    """A copy of ``logs`` with one entry appended to each list named in ``entries``."""
    return {k: v + [entries[k]] if k in entries else list(v) for k, v in logs.items()}
