"""``--parallel``: one command over the processes of a torchrun launch.

Rank 0 runs the command as a single process would: it decides which runs to train,
and it alone prints, shows progress and writes run records, checkpoints, figures and
the report. Before it trains a run it sends the run to the other ranks, which wait
for runs in ``serve`` and train each one with it. ``--parallel data``: every rank on its
slice of every minibatch (``fn_trainer.training.distributed``); the other ranks read
rank 0's checkpoint to resume with it. With several nodes, every node needs the data
in ``--data`` (only rank 0 downloads), and ``--resume`` needs ``--out`` on storage all
nodes see.

``--parallel population``: the members of a population (a configuration's seeds, the
learning-rate sweep) split across the ranks; each rank trains its share in one vmapped
step and checkpoints it, and rank 0 gathers every member's result and writes the
records. Under torchrun without ``--parallel`` (``auto``), populations split their
members and single runs their minibatches.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from ..core.optim import Optimizer
from ..core.step import Step
from ..core.trees import tree_to
from ..speed.denormals import denormals_flushed
from ..training.distributed import (
    Launch,
    RanksDifferError,
    broadcast_from_first,
    close_process_group,
    data_parallel_step,
    gather_to_first,
    init_process_group,
    launch_from_env,
    lost_ranks_raise,
    slice_bounds,
)
from .signals import on_sigterm

if TYPE_CHECKING:
    from ..core.networks import Network
    from .experiments.context import Context, Settings
    from .experiments.records import RunSpec


def detect(mode: Optional[str], environ: Mapping[str, str] = os.environ) -> Tuple[Optional[Launch], Optional[str]]:
    """This process's place in a torchrun launch and the ``--parallel`` mode it runs in:
    ``(None, None)`` for a process on its own. Under torchrun without ``--parallel`` the
    mode is ``"auto"``: a population splits its members over the ranks, a single run
    its minibatches. Raises ``ValueError`` for a mode without torchrun."""
    launch = launch_from_env(environ)
    if launch is None:
        if mode is not None:
            raise ValueError(f"--parallel {mode} runs under torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK: "
                             f"torchrun --standalone --nproc_per_node=N -m fn_trainer ... --parallel {mode}")
        return None, None
    return launch, mode or "auto"


def splits_populations(settings: "Settings") -> bool:
    """Whether the members of a population are split over the ranks (``population``,
    ``auto``); with ``data`` every run trains alone, over all ranks' minibatch slices."""
    return settings.parallel in ("population", "auto")


@contextlib.contextmanager
def session(launch: Optional[Launch], device: str, timeout_s: float) -> Iterator[str]:
    """Join the launch's process group for the command's duration (nothing without a
    launch) and yield the device this rank computes on; within a training step a rank
    waits ``timeout_s`` seconds for the others, for their other work as long as it takes
    (``fn_trainer.training.distributed``). When rank 0 completes, it tells the other
    ranks to stop waiting for runs, and every rank leaves the group only after all have
    finished their collectives (a group torn down under a message still in flight can
    abort the process); when rank 0 fails, the others lose contact with it."""
    if launch is None:
        yield device
        return
    joined = init_process_group(launch, device, timeout_s=timeout_s)
    try:
        yield str(joined)
        if launch.rank == 0:
            _send(None, None)
        with lost_ranks_raise("while finishing"):
            dist.barrier()
    finally:
        close_process_group()


def sigterm_ends() -> ContextManager[None]:
    """SIGTERM's default action, the process ending at once, while this rank waits without
    a time limit for the others (for rank 0's next run, for the others' shares): a Python
    handler (the command's, which saves a run's position) would run only once the wait
    is over, and there is no position to save in it."""
    return on_sigterm(signal.SIG_DFL)


def share_calibration(ctx: "Context") -> None:
    """Every rank takes rank 0's calibration (``ctx.calibration``): ranks deciding for
    themselves (other CPUs, other thread counts) could compile a run that rank 0 trains
    eagerly, or take another Winograd threshold, and their replicas would drift apart."""
    ctx.calibration = broadcast_from_first(ctx.calibration if ctx.settings.rank == 0 else None,
                                           "while sharing rank 0's calibration")


def check_shared_out(ctx: "Context") -> None:
    """``RanksDifferError`` on every rank unless every rank's ``--out`` is rank 0's folder:
    rank 0 leaves a file of a random name there, and each rank looks for it in its own.
    A rank writing elsewhere resumes from other checkpoints than rank 0 (a data-parallel
    run's ranks then start from different steps and wait for each other until the
    timeout), and keeps its population shares' checkpoints where rank 0 never deletes
    them. The same storage may be mounted at another path on another machine: what is
    compared is what the ranks see, not the path they type."""
    from ..core.paths import ensure_writable_dir, write_text

    rank = ctx.settings.rank
    doing = "while comparing the ranks' output folders"
    marker = None
    if rank == 0:
        marker = ensure_writable_dir(ctx.out) / f".rank-0-{secrets.token_hex(8)}"
        write_text(marker, "rank 0 of a launch looks for this file in every rank's --out; it deletes it after\n")
    try:
        name = broadcast_from_first(None if marker is None else marker.name, doing)
        sees = gather_to_first((ctx.out / name).is_file(), doing)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    blind = broadcast_from_first([r for r, seen in enumerate(sees or []) if not seen], doing)
    if blind:
        who = "this rank" if rank == blind[0] else f"rank {blind[0]}"
        raise RanksDifferError(f"--out {ctx.settings.out}: {who} does not see rank 0's output folder there; every "
                               "rank needs --out on storage all of them see (--resume reads the checkpoints there)")


def serve(ctx: "Context") -> None:
    """The ranks other than 0: train every run rank 0 sends (a list: a population, this
    rank's share of it), until it sends none."""
    from .experiments.training import train_one, train_population  # training imports this module

    while True:
        with sigterm_ends():
            work, agreement = _receive()
        if work is None:
            return
        _check_agreement(ctx, agreement)
        if isinstance(work, list):
            train_population(ctx, work)
        else:
            train_one(ctx, work)


def population_parallel_run(ctx: "Context", specs: List["RunSpec"], train_share: Callable) -> List:
    """A population over the ranks: rank 0 sends ``specs`` to the others, every rank trains
    its consecutive share of the members (``slice_bounds``) with ``train_share(ctx,
    share_specs)``, each checkpointing its own share, and rank 0 gathers every member's
    result in order. Returns them on rank 0, ``[]`` on the others."""
    if ctx.settings.rank == 0:
        _send(specs, ctx)
    rank, world = dist.get_rank(), dist.get_world_size()
    start, stop = slice_bounds(len(specs), rank, world)
    mine = train_share(ctx, specs[start:stop]) if start < stop else []
    # on the CPU: a tensor pickled on this rank's GPU would be unpickled onto the same GPU
    # index in rank 0's process, another rank's GPU or one that its machine lacks
    mine = tree_to(mine, torch.device("cpu"))
    with sigterm_ends():  # its share is checkpointed: nothing to save while it waits for the others'
        shares = gather_to_first(mine, "while gathering the population's results")
    return [] if shares is None else [trained for share in shares for trained in share]


def share_checkpoints(ctx: "Context", specs: List["RunSpec"]) -> List[Path]:
    """The checkpoint files of a population's shares over the launch's ranks."""
    from .experiments.records import population_checkpoint_path

    world_size = dist.get_world_size()
    bounds = [slice_bounds(len(specs), rank, world_size) for rank in range(world_size)]
    return [population_checkpoint_path(ctx, specs[a:b]) for a, b in bounds if a < b]


def data_parallel_run(ctx: "Context", spec: "RunSpec", network: "Network", optimizer: Optimizer,
                      compiled: Optional[Tuple[Optimizer, Tuple[int, ...]]]) -> Tuple[Step, str]:
    """The step for ``spec`` on every rank, and how the run was trained; rank 0 first
    sends ``spec`` to the others. ``compiled``: ``None``, or the optimizer of the compiled
    graph and the full minibatch's shape it is made for; its forward is the one written
    for Inductor."""
    if ctx.settings.rank == 0:
        _send(spec, ctx)
    step = data_parallel_step(network.apply, optimizer, compiled_apply=ctx.fast_apply(network) if compiled else None,
                              compiled_optimizer=compiled[0] if compiled else None,
                              batch_shape=compiled[1] if compiled else None)
    return step, f"fit (data parallel, {dist.get_world_size()} ranks{', compiled' if compiled else ''})"


def rank_prefix(environ: Mapping[str, str] = os.environ) -> str:
    """``"rank R of W: "`` for a rank other than 0 of a torchrun launch, else ``""``: rank 0
    speaks for the command, and the others' error lines say whose they are."""
    try:
        launch = launch_from_env(environ)
    except ValueError:
        return ""
    return f"rank {launch.rank} of {launch.world_size}: " if launch is not None and launch.rank > 0 else ""


def _send(work, ctx: Optional["Context"]) -> None:
    """Send the next run (a ``RunSpec``, a population's list of them, or ``None``: no more)
    with rank 0's ``_agreement``, and check that every rank's agrees."""
    broadcast_from_first((work, None if ctx is None else _agreement(ctx)), "while sending them the next run")
    if work is not None:
        _check_agreement(ctx, _agreement(ctx))


def _receive() -> Tuple[object, Optional[Agreement]]:
    """``(work, rank 0's agreement)`` of :func:`_send`."""
    return broadcast_from_first(None, "while waiting for rank 0's next run")


Agreement = Tuple[Tuple[str, object], ...]


def _agreement(ctx: "Context") -> Agreement:
    """What every rank of a launch must share, named as the user gives it: a rank that
    splits populations while rank 0 does not waits for rank 0 for ever, one resuming
    while the others start afresh trains another share, and one with other data (another
    ``--limit``, or other files in ``--data``) gives a population members from other data
    and a run mixed gradients. ``--limit`` comes before the data it changes. A rank that
    keeps subnormal floats where the others flush them computes other Adam updates, and a
    data-parallel run's copies of the parameters drift apart."""
    s = ctx.settings
    mode = "data" if s.parallel == "data" else "population or none"  # no --parallel splits as "population" does
    return (("--parallel", mode), ("--resume", s.resume), ("--limit", s.limit),
            ("--keep-denormals", not denormals_flushed()), ("data", ctx.fingerprint))


def _check_agreement(ctx: "Context", first: Agreement) -> None:
    """Raise ``RanksDifferError`` on every rank unless every rank's ``_agreement`` is rank
    0's ``first``; rank 0 compares them all and tells every rank, so that none trains on."""
    mine = _agreement(ctx)
    everyone = gather_to_first(mine, "while comparing the ranks' options and data")
    differing = [(rank, theirs) for rank, theirs in enumerate(everyone or []) if theirs != first]
    differing = broadcast_from_first(differing, "while comparing the ranks' options and data")
    if mine != first:
        raise RanksDifferError(_difference(ctx, "this rank", mine, first))
    if differing:
        rank, theirs = differing[0]
        raise RanksDifferError(_difference(ctx, f"rank {rank}", theirs, first))


def _difference(ctx: "Context", who: str, theirs: Agreement, first: Agreement) -> str:
    """The first entry in which ``who``'s agreement ``theirs`` differs from rank 0's, in words."""
    name, value, expected = next((n, v, e) for (n, v), (_, e) in zip(theirs, first) if v != e)
    if name == "data":
        return (f"--data {ctx.settings.data}: {who}'s data set differs from rank 0's (fingerprint {value} "
                f"against {expected}); every machine needs the same files")

    def as_typed(v: object) -> str:
        return f"no {name}" if v is None or v is False else name if v is True else f"{name} {v}"
    return (f"the ranks' options differ: {who} runs with {as_typed(value)}, rank 0 with {as_typed(expected)}; "
            "every rank of a launch needs the same options")
