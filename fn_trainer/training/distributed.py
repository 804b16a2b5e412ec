"""Data-parallel training over ``torch.distributed``: the data-parallel step and the
process-group helpers it runs in.

Every rank holds the same parameters and optimizer state and is handed the same whole
minibatch of ``B`` rows. Rank ``r`` of ``W`` takes its slice, ``b_r`` rows (``B // W`` or
one more, ``slice_bounds``), computes the gradient ``g_r`` and mean loss ``L_r`` of its
slice, and one all-reduce (a sum) hands every rank::

    g = sum_r (b_r / B) g_r        L = sum_r (b_r / B) L_r        correct = sum_r correct_r

the gradient, the mean loss and the count of correctly classified rows of the whole
minibatch: a mean of the slices weighted by their sizes, so an uneven split (the last
minibatch of an epoch) counts every row once. The optimizer then makes the same update
on every rank, so the parameters stay identical without ever being sent. Gradient,
loss and count travel in one flat buffer laid out in the parameters' order (the same on
every rank: checked with the parameters at the first step), one collective per step.

The collective is a functional one (``torch.distributed._functional_collectives``),
which ``torch.compile`` traces: a compiled data-parallel step is one graph, collective
included, built by the same ``compile_step`` as the single-process step (its eager
fallback for the odd last minibatch included). Measured against the step compiled as
two graphs around an eager ``all_reduce`` (``python -m benchmarks.distributed``, MLP,
two ranks on a shared 2-core machine), neither was faster beyond the machine's noise
(one graph faster in 8 of 12 paired repetitions, the medians 3.3 against 2.9 and 3.9
against 3.3 s an epoch), so the form that needs no compiled path of its own was kept.

Backends: gloo for CPU tensors, nccl for CUDA ones. A rank that dies breaks its peers'
connections and a rank that hangs within a step runs into the process group's timeout:
either way the other ranks raise ``RankLostError`` instead of waiting forever. Waiting
for another rank's work (``gather_to_first``, ``broadcast_from_first``: a share of a
population trained, the next run chosen) may take as long as that work, far beyond a
step: those waits go through a second group, gloo over the CPU, with a timeout of
``WAIT_LIMIT_S``, so that they end only when the work does or a rank's connection drops.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional
from torch import Tensor
from torch.utils._pytree import keystr, tree_flatten_with_path

from ..core.checks import check_positive_float
from ..core.diagnostics import global_norm
from ..core.losses import accuracy, cross_entropy
from ..core.optim import Optimizer
from ..core.step import Apply, Loss, Step, make_gradient
from ..core.types import Batch, Params
from .compiled import DonatingStep, compile_step

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for each process
# The longest wait for another rank's work; also the longest --rank-timeout: a year, as good
# as no limit here, while 1e10 s (about 300 years) overflowed the collectives' clock.
WAIT_LIMIT_S = 365 * 24 * 3600
MIN_RANK_TIMEOUT_S = 1.0  # the shortest --rank-timeout: it also bounds joining the other ranks
_waiting_group: Optional[dist.ProcessGroup] = None  # the group of the long waits, while joined


class Launch(NamedTuple):
    """Where this process sits among the processes torchrun started: ``rank`` in
    ``[0, world_size)`` over all nodes, ``local_rank`` on its own node (its GPU)."""

    rank: int
    world_size: int
    local_rank: int


class RankLostError(RuntimeError):
    """A collective failed: another rank died, or did not answer within the process
    group's timeout."""


class RanksDifferError(ValueError):
    """The ranks do not hold the same data, or a data-parallel run's ranks the same start."""


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Optional[Launch]:
    """The ``Launch`` that ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` describe, as torchrun
    sets them, or ``None`` when none is set (a process started on its own).

    Raises ``ValueError`` naming the variable when only some are set or one is not an
    integer in range.
    """
    present = [name for name in LAUNCH_VARIABLES if name in environ]
    if not present:
        return None
    if len(present) != len(LAUNCH_VARIABLES):
        missing = [name for name in LAUNCH_VARIABLES if name not in environ]
        raise ValueError(f"environment variables {', '.join(LAUNCH_VARIABLES)} must be set together, as "
                         f"torchrun sets them; {', '.join(missing)} missing")
    values = {}
    for name in LAUNCH_VARIABLES:
        text = environ[name].strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise ValueError(f"environment variable {name} must be an integer >= 0, got {environ[name]!r}")
        values[name] = int(text)
    rank, world_size, local_rank = (values[name] for name in LAUNCH_VARIABLES)
    if world_size < 1 or rank >= world_size or local_rank > rank:
        raise ValueError(f"environment variables RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} "
                         "must satisfy 0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
    return Launch(rank, world_size, local_rank)


def backend_for(device: torch.device) -> str:
    """The collective backend for tensors on ``device``: nccl for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(launch: Launch, device: str | torch.device = "cpu", *,
                       timeout_s: float) -> torch.device:
    """Join the launch's process group (``env://``: ``MASTER_ADDR`` and ``MASTER_PORT``,
    set by torchrun) and return the device this rank computes on: ``cuda:LOCAL_RANK``
    for a CUDA device, else ``device``. A collective that waits longer than
    ``timeout_s`` seconds for another rank fails with ``RankLostError``."""
    timeout_s = check_positive_float("timeout_s", timeout_s)
    device = torch.device(device)
    if device.type == "cuda":
        _check_gpu(launch, device)
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    global _waiting_group
    step_timeout, wait_timeout = datetime.timedelta(seconds=timeout_s), datetime.timedelta(seconds=WAIT_LIMIT_S)
    # the waiting group connects within the step timeout, then waits long (where torch can change it)
    set_timeout = getattr(dist, "set_timeout", None)
    with lost_ranks_raise("while joining the other ranks"):
        dist.init_process_group(backend_for(device), rank=launch.rank, world_size=launch.world_size,
                                timeout=step_timeout)
        try:
            _waiting_group = dist.new_group(backend="gloo", timeout=step_timeout if set_timeout else wait_timeout)
            if set_timeout is not None:
                set_timeout(wait_timeout, _waiting_group)
        except BaseException:
            close_process_group()
            raise
    return device


def _check_gpu(launch: Launch, device: torch.device) -> None:
    """Each rank computes on GPU ``LOCAL_RANK`` of its node: refuse a rank without one, and an
    explicit other index, which would be ignored."""
    if device.index is not None and device.index != launch.local_rank:
        raise ValueError(f"--device {device}: under torchrun each process computes on GPU LOCAL_RANK of its "
                         f"machine (here cuda:{launch.local_rank}); give --device cuda")
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ValueError(f"LOCAL_RANK={launch.local_rank} needs GPU cuda:{launch.local_rank}, but this machine "
                         f"has {count} GPU(s): start at most {count} process(es) per machine (--nproc_per_node)")


def wait_for_all(doing: str) -> None:
    """Return once every rank has come here, however long the others' work takes."""
    with lost_ranks_raise(doing):
        dist.barrier(group=_waiting_group)


def close_process_group() -> None:
    """Leave the process group, if this process is in one."""
    global _waiting_group
    _waiting_group = None
    if dist.is_initialized():
        dist.destroy_process_group()


def place(group: Optional[dist.ProcessGroup] = None) -> Tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group`` (default: every process)."""
    return dist.get_rank(group), dist.get_world_size(group)


@contextlib.contextmanager
def lost_ranks_raise(doing: str) -> Iterator[None]:
    """Re-raise a collective's failure (a peer's closed connection, a timeout) as
    ``RankLostError`` with its first line; ``doing`` says when it happened."""
    try:
        yield
    except RankLostError:
        raise
    except RuntimeError as e:
        if not _is_collective_failure(e):
            raise
        raise RankLostError(f"lost contact with the other ranks {doing} (one of them stopped, or did not "
                            f"answer within the timeout): {_reason(e)}") from None


def _is_collective_failure(e: RuntimeError) -> bool:
    # gloo and the functional collectives raise plain RuntimeErrors; their texts name them.
    text = str(e)
    return isinstance(e, dist.DistError) or any(
        marker in text for marker in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out"))


def _reason(e: BaseException) -> str:
    """The first sentence of ``e``'s first line, without a ``[source.cc:123]`` prefix."""
    lines = str(e).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else "")
    return (line.split(". ")[0].rstrip(".") or type(e).__name__)


def gather_to_first(obj: Any, doing: str) -> Optional[List[Any]]:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the others.
    A rank waits for the others as long as their work takes (``WAIT_LIMIT_S``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: Optional[List[Any]] = [None] * world if rank == 0 else None
    with lost_ranks_raise(doing):
        dist.gather_object(obj, gathered, dst=0, group=_waiting_group)
    return gathered


def broadcast_from_first(obj: Any, doing: str) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank; the others wait for it as long as rank 0's
    work takes (``WAIT_LIMIT_S``)."""
    message = [obj if dist.get_rank() == 0 else None]
    with lost_ranks_raise(doing):
        dist.broadcast_object_list(message, src=0, group=_waiting_group)
    return message[0]


def slice_bounds(n_rows: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``(start, stop)``: rank ``rank``'s rows of a minibatch of ``n_rows``.

    The ranks take consecutive slices in rank order; the first ``n_rows % world_size``
    take ``n_rows // world_size + 1`` rows, the others one fewer (none when there are
    fewer rows than ranks).
    """
    base, extra = divmod(n_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def make_data_parallel_step(apply: Apply, optimizer: Optimizer, loss: Loss = cross_entropy, *,
                            group: Optional[dist.ProcessGroup] = None) -> Step:
    """``make_step``'s data-parallel twin: the same signature and metrics, computed over
    the ranks of ``group`` (default: every process), each on its slice of the minibatch.

    Every rank must call it with the same parameters, optimizer state and minibatch
    (``check_same_start``); all return the same new parameters and state and the whole
    minibatch's ``loss``, ``accuracy`` and ``grad_norm`` (that of the reduced gradient).
    With one rank the results are bitwise ``make_step``'s.
    """
    rank, world_size = place(group)
    group = dist.group.WORLD if group is None else group
    gradient = make_gradient(apply, loss)

    def step(params: Params, opt_state, batch: Batch):
        x, targets = batch
        n_rows = x.shape[0]
        start, stop = slice_bounds(n_rows, rank, world_size)
        if stop > start:
            grads, (loss_value, probs) = gradient(params, x[start:stop], targets[start:stop])
            correct = torch.round(accuracy(probs.detach(), targets[start:stop]) * (stop - start))
            local = _pack(params, grads, loss_value.detach(), correct, (stop - start) / n_rows)
        else:  # fewer rows than ranks: this rank's empty slice adds nothing
            first = next(iter(params.values()))
            local = first.new_zeros(sum(p.numel() for p in params.values()) + 2)
        grads, loss_value, correct = _unpack(functional.all_reduce(local, "sum", group), params)
        new_params, new_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": loss_value, "accuracy": correct.to(torch.float64) / n_rows,
                   "grad_norm": global_norm(grads)}
        return new_params, new_state, metrics

    return step


def _pack(params: Params, grads: Params, loss_value: Tensor, correct: Tensor, weight: float) -> Tensor:
    """``[weight * g (flat, in params' order), weight * loss, correct]``: one rank's share."""
    flat = torch.cat([grads[k].reshape(-1) for k in params] + [loss_value.reshape(1)])
    return torch.cat([flat * weight, correct.reshape(1).to(flat.dtype)])


def _unpack(total: Tensor, params: Params) -> Tuple[Params, Tensor, Tensor]:
    """``_pack``'s layout back into ``(grads shaped like params, loss, correct)``."""
    parts = torch.split(total, [p.numel() for p in params.values()] + [1, 1])
    grads = {k: part.view(p.shape) for (k, p), part in zip(params.items(), parts)}
    return grads, parts[-2].reshape(()), parts[-1].reshape(())


def check_same_start(params: Params, opt_state: Any, batch: Batch,
                     group: Optional[dist.ProcessGroup] = None) -> None:
    """Raise ``RanksDifferError`` on every rank unless all ranks of ``group`` hold bitwise
    the same parameters, optimizer state and minibatch (names, shapes, dtypes, values).

    One gather of a digest per tensor; the message names the first rank and tensor that
    differ from rank 0's.
    """
    rank, world_size = place(group)
    mine = {"parameters": _digests(params), "optimizer state": _digests(opt_state), "minibatch": _digests(batch)}
    everyone: List[Optional[Dict[str, Any]]] = [None] * world_size
    with lost_ranks_raise("while comparing the ranks' starting states"):
        dist.all_gather_object(everyone, mine, group=group)
    for other in range(1, world_size):
        for what, digests in everyone[other].items():
            reference = everyone[0][what]
            if digests != reference:
                where = next((name for (name, *a), (_, *b) in zip(digests, reference) if a != b),
                             f"{len(digests)} tensors against {len(reference)}")
                raise RanksDifferError(
                    f"rank {other} and rank 0 hold different {what} (first at {where}): every rank must start "
                    "from the same parameters and optimizer state (the same seed, or the same checkpoint to "
                    "resume from) and be handed the same minibatches (the same data)")


def _digests(tree: Any) -> List[Tuple[str, Tuple[int, ...], str, str]]:
    """Per tensor of ``tree``: its path, shape, dtype and a hash of its bytes."""
    leaves, _ = tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        if isinstance(leaf, Tensor):
            data = leaf.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes()
            out.append((keystr(path), tuple(leaf.shape), str(leaf.dtype), hashlib.sha256(data).hexdigest()))
        else:
            out.append((keystr(path), (), type(leaf).__name__, repr(leaf)))
    return out


def checked(step: Step, group: Optional[dist.ProcessGroup] = None) -> Step:
    """``step`` that checks the ranks' starting state (``check_same_start``) at its first
    call, and raises a lost rank as ``RankLostError``. Wraps a compiled step from outside:
    neither the check nor the error handling is traced."""
    started = False

    def checked_step(params: Params, opt_state, batch: Batch):
        nonlocal started
        if not started:
            check_same_start(params, opt_state, batch, group)
            started = True
        with lost_ranks_raise("during a training step"):
            return step(params, opt_state, batch)

    return checked_step


def data_parallel_step(apply: Apply, optimizer: Optimizer, loss: Loss = cross_entropy, *,
                       compiled_apply: Optional[Apply] = None, compiled_optimizer: Optional[Optimizer] = None,
                       batch_shape: Optional[Tuple[int, ...]] = None,
                       group: Optional[dist.ProcessGroup] = None) -> Step:
    """The step a data-parallel run trains with: ``make_data_parallel_step``, compiled with
    ``compile_step`` when ``compiled_apply`` is given (that forward and ``compiled_optimizer``,
    default ``optimizer``, in the compiled graph, made for minibatches of ``batch_shape``;
    ``apply`` for a minibatch of another shape; a ``DonatingStep``, as every compiled run's),
    and ``checked``."""
    step = make_data_parallel_step(apply, optimizer, loss, group=group)
    if compiled_apply is None:
        return checked(step, group)
    donating = compile_step(make_data_parallel_step(compiled_apply, compiled_optimizer or optimizer, loss, group=group),
                            eager=step, guard_closures=False, batch_shape=batch_shape, donate=True)
    return DonatingStep(checked(donating.in_place, group))
