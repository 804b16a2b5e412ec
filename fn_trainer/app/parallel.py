"""``--parallel``: one command over the processes of a torchrun launch.

Rank 0 runs the command as a single process would: it decides which runs to train,
and it alone prints, shows progress and writes run records, checkpoints, figures and
the report. Before it trains a run it sends the run to the other ranks, which wait
for runs in ``serve`` and train each one with it. ``--parallel data``: every rank on its
slice of every minibatch (``fn_trainer.training.distributed``); the other ranks read
rank 0's checkpoint to resume with it. With several nodes, every node needs the data
in ``--data`` (only rank 0 downloads), and ``--resume`` needs ``--out`` on storage all
nodes see.

``--parallel population`` (the members of a population split across the ranks) is
reserved: it would send a group of runs where ``data`` sends one.
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Tuple

import torch.distributed as dist

from ..core.optim import Optimizer
from ..core.step import Step
from ..speed import inductor_apply
from ..training.distributed import (
    Launch,
    close_process_group,
    data_parallel_step,
    init_process_group,
    launch_from_env,
    lost_ranks_raise,
)

if TYPE_CHECKING:
    from ..core.networks import Network
    from .experiments.context import Context
    from .experiments.records import RunSpec


def detect(mode: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[Launch]:
    """This process's place in a torchrun launch for ``--parallel mode`` (``None``: no
    ``--parallel``), or ``None`` for a process on its own. Raises ``ValueError`` for a
    mode without torchrun, or torchrun's processes without a mode (each would train
    and write every run)."""
    launch = launch_from_env(environ)
    if mode is None:
        if launch is not None and launch.world_size > 1:
            raise ValueError(f"this is one of {launch.world_size} processes started by torchrun (WORLD_SIZE), "
                             "but without --parallel each would train and write every run: pass --parallel "
                             "data, or start the command as one process")
        return None
    if mode == "population":
        raise ValueError("--parallel population (a population's members split across the ranks) is not "
                         "available yet; --parallel data is")
    if launch is None:
        raise ValueError("--parallel data runs under torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK: "
                         "torchrun --standalone --nproc_per_node=N -m fn_trainer ... --parallel data")
    return launch


@contextlib.contextmanager
def session(launch: Optional[Launch], device: str, timeout_s: float) -> Iterator[str]:
    """Join the launch's process group for the command's duration (nothing without a
    launch) and yield the device this rank computes on; a rank waits ``timeout_s`` seconds
    for the others. When rank 0 completes, it tells the other ranks to stop waiting for
    runs; when it fails, they lose contact with it."""
    if launch is None:
        yield device
        return
    joined = init_process_group(launch, device, timeout_s=timeout_s)
    try:
        yield str(joined)
        if launch.rank == 0:
            _send(None)
    finally:
        close_process_group()


def serve(ctx: "Context") -> None:
    """The ranks other than 0: train every run rank 0 sends, until it sends none."""
    from .experiments.training import train_one  # training imports this module

    while True:
        spec = _receive()
        if spec is None:
            return
        train_one(ctx, spec)


def data_parallel_run(ctx: "Context", spec: "RunSpec", network: "Network", optimizer: Optimizer,
                      compiled: bool) -> Tuple[Step, str]:
    """The step for ``spec`` on every rank, and how the run was trained; rank 0 first
    sends ``spec`` to the others. Compiled: the forward written for Inductor."""
    if ctx.settings.rank == 0:
        _send(spec)
    step = data_parallel_step(network.apply, optimizer, compiled_apply=inductor_apply(network) if compiled else None)
    return step, f"fit (data parallel, {dist.get_world_size()} ranks{', compiled' if compiled else ''})"


def rank_prefix(environ: Mapping[str, str] = os.environ) -> str:
    """``"rank R of W: "`` for a rank other than 0 of a torchrun launch, else ``""``: rank 0
    speaks for the command, and the others' error lines say whose they are."""
    try:
        launch = launch_from_env(environ)
    except ValueError:
        return ""
    return f"rank {launch.rank} of {launch.world_size}: " if launch is not None and launch.rank > 0 else ""


def _send(spec: Optional["RunSpec"]) -> None:
    with lost_ranks_raise("while sending them the next run"):
        dist.broadcast_object_list([spec], src=0)


def _receive() -> Optional["RunSpec"]:
    message = [None]
    with lost_ranks_raise("while waiting for rank 0's next run"):
        dist.broadcast_object_list(message, src=0)
    return message[0]
