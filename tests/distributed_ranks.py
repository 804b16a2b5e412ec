"""One rank of the data-parallel tests (tests/test_distributed.py starts one per rank).

    python tests/distributed_ranks.py MODE OUT TIMEOUT_S

with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set as
torchrun sets them. MODE:

- ``agree``: train ``BATCH_SIZES`` minibatches data-parallel in float64; then start once more from parameters of each rank's own seed, which
  must stop with ``RanksDifferError`` before any step; save the results and that error's
  text to ``OUT/rank<R>.pt``;
- ``die`` / ``hang``: rank 1 kills / stops itself at step ``FAIL_AT``; the others train on;
- ``wait``: rank 0 works (sleeps) for 2 timeouts before it gathers every rank's rank, before
  it broadcasts a message and before all meet, as it does with a bigger share of a
  population, before sending the next run and before deleting a data-parallel run's
  checkpoint; the others wait for it. Saves what each rank got and how long
  it waited to ``OUT/rank<R>.pt``.

A ``RankLostError`` is printed as one line on stderr, exit status 2.
"""
import os
import signal
import sys
import time
from pathlib import Path

import torch

from fn_trainer import NetworkConfiguration, adam, build_network, one_hot
from fn_trainer.training.distributed import (
    RankLostError,
    RanksDifferError,
    broadcast_from_first,
    close_process_group,
    data_parallel_step,
    gather_to_first,
    init_process_group,
    launch_from_env,
    wait_for_all,
)

SHAPE = (1, 8, 8)
LR = 1e-2
# 13 rows split 7/6 over two ranks; the last minibatch has fewer rows than ranks
BATCH_SIZES = [13] * 19 + [1]
FAIL_AT = 3


def problem(dtype: torch.dtype, seed: int = 0):
    """``(network, optimizer, params, minibatches)``: the same on every rank and in the test."""
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    params = {k: v.to(dtype) for k, v in net.init(seed).items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, *SHAPE, generator=g, dtype=dtype),
                one_hot(torch.randint(0, 10, (b,), generator=g), 10).to(dtype)) for b in BATCH_SIZES]
    return net, adam(LR), params, batches


def train(step, params, state, batches, fail=None):
    """Apply ``step`` to every minibatch; ``fail(i)`` is called before step ``i``."""
    history = []
    for i, batch in enumerate(batches):
        if fail is not None:
            fail(i)
        params, state, metrics = step(params, state, batch)
        history.append(metrics)
    return params, state, {k: torch.stack([m[k] for m in history]) for k in history[0]}


def main(mode: str, out: Path, timeout_s: float) -> None:
    torch.set_num_threads(1)
    launch = launch_from_env()
    init_process_group(launch, timeout_s=timeout_s)
    try:  # left open at exit, a failed group's threads can abort the process (SIGABRT)
        run(mode, out, launch, timeout_s)
    finally:
        close_process_group()


def run(mode: str, out: Path, launch, timeout_s: float) -> None:
    results = {}
    if mode == "wait":
        started = time.monotonic()
        if launch.rank == 0:
            time.sleep(2 * timeout_s)
        results["gathered"] = gather_to_first(launch.rank, "while gathering")
        if launch.rank == 0:
            time.sleep(2 * timeout_s)
        results["message"] = broadcast_from_first("next" if launch.rank == 0 else None, "while waiting")
        if launch.rank == 0:
            time.sleep(2 * timeout_s)
        wait_for_all("at the end")
        results["waited_s"] = time.monotonic() - started
    elif mode == "agree":
        net, opt, params, batches = problem(torch.float64)
        params, state, metrics = train(data_parallel_step(net.apply, opt), params, opt.init(params), batches)
        results["agree"] = (params, state._asdict(), metrics)
        # the same launch checks differing starts: a second launch would cost two more processes
        net, opt, params, batches = problem(torch.float32, seed=launch.rank)

        def refuse(i):
            if i > 0:
                raise AssertionError("the first step from differing parameters ran")

        try:
            train(data_parallel_step(net.apply, opt), params, opt.init(params), batches, refuse)
        except RanksDifferError as e:
            results["differ"] = str(e)
    else:
        net, opt, params, batches = problem(torch.float32)
        stop = signal.SIGKILL if mode == "die" else signal.SIGSTOP

        def fail(i):
            if launch.rank == 1 and i == FAIL_AT:
                os.kill(os.getpid(), stop)

        train(data_parallel_step(net.apply, opt), params, opt.init(params), batches * 1000, fail)
    torch.save(results, out / f"rank{launch.rank}.pt")


if __name__ == "__main__":
    try:
        main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]))
    except RankLostError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(2)
    # as fn_trainer's own ranks: no interpreter finalization under gloo's worker threads
    sys.stdout.flush()
    os._exit(0)
