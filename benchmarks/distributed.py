"""Data-parallel epoch times: N ranks of one thread against one process of N threads.

    python -m benchmarks.distributed [--smoke] [--reps 5] [--ranks 2] [--json results.json]

The same work on the same cores two ways, for the MLP 784-256-256-10 on synthetic data
of Fashion-MNIST shape (469 minibatches of 128). First one process with ``--ranks``
threads times ``make_step``, eager and compiled (``single_*`` paths). Then ``--ranks``
processes of one thread each (this module again, started with the variables torchrun
sets; gloo over loopback) time the data-parallel step (``data_parallel_*``): eager;
compiled as one graph with the collective traced inside (what ``fn-trainer --parallel
data`` runs); and compiled as two graphs around an eager ``all_reduce``, the alternative
it was chosen against. Figures: the median over ``--reps`` repetitions of one epoch of
training steps, paths alternated within each process, compile warm-up timed apart;
``ratio`` is each path's median over the single process's compiled one (its eager one
with ``--no-compile``).

Every path starts from ``network.init(0)`` and trains the same minibatches, so each
records ``final_loss`` (its parameters' loss on the first minibatch after its last
repetition), which agree up to float32 rounding.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from fn_trainer import adam, build_network, make_step, one_hot
from fn_trainer.core.diagnostics import global_norm
from fn_trainer.core.losses import accuracy
from fn_trainer.core.optim import Optimizer
from fn_trainer.core.step import Apply, Step, make_gradient
from fn_trainer.speed import inductor_apply
from fn_trainer.training.compiled import compile_step
from fn_trainer.training.distributed import (
    _pack,
    _unpack,
    close_process_group,
    data_parallel_step,
    init_process_group,
    launch_from_env,
    place,
    slice_bounds,
)

from .epoch import (
    MLP_CONFIG,
    N_TRAIN,
    SMOKE_MLP,
    first_batch_loss,
    functional_loop,
    machine,
    measure,
    synthetic_data,
)

BATCH_SIZE = 128
LR = 1e-3
BASELINES = ("single_compiled", "single_eager")  # the ratios' denominator: the first one timed
PROG = "python -m benchmarks.distributed"
ROOT = Path(__file__).resolve().parents[1]  # where ``-m benchmarks`` is found


def two_graph_step(apply: Apply, optimizer: Optimizer) -> Step:
    """The data-parallel step compiled as two graphs (the slice's gradient packed into the
    buffer; the update from the reduced buffer) around an eager ``dist.all_reduce``: the
    same arithmetic as ``make_data_parallel_step``, the collective outside the graphs."""
    rank, world_size = place()
    gradient = make_gradient(apply)

    def share(params, x, targets):
        start, stop = slice_bounds(x.shape[0], rank, world_size)
        grads, (loss_value, probs) = gradient(params, x[start:stop], targets[start:stop])
        correct = torch.round(accuracy(probs.detach(), targets[start:stop]) * (stop - start))
        return _pack(params, grads, loss_value.detach(), correct, (stop - start) / x.shape[0])

    def update(params, opt_state, total, n_rows: int):
        grads, loss_value, correct = _unpack(total, params)
        new_params, new_state = optimizer.update(grads, opt_state, params)
        return new_params, new_state, {"loss": loss_value, "accuracy": correct.to(torch.float64) / n_rows,
                                       "grad_norm": global_norm(grads)}

    share = torch.compile(share, fullgraph=True, dynamic=False)
    update = torch.compile(update, fullgraph=True, dynamic=False)

    def step(params, opt_state, batch):
        total = share(params, *batch)
        dist.all_reduce(total)
        return update(params, opt_state, total, batch[0].shape[0])

    return step


def paths(parallel: bool, compiled: bool, config, X, T, n_steps: int) -> Dict[str, Callable]:
    """The single-process paths, or (``parallel``) the data-parallel ones of this rank;
    the compiled ones only if ``compiled``."""
    net = build_network("mlp", config)
    fast = inductor_apply(net)
    optimizer = adam(LR)
    if parallel:
        steps = {"data_parallel_eager": data_parallel_step(net.apply, optimizer)}
        if compiled:
            steps["data_parallel_compiled"] = data_parallel_step(net.apply, optimizer, compiled_apply=fast)
            steps["data_parallel_two_graphs"] = two_graph_step(fast, optimizer)
    else:
        eager = make_step(net.apply, optimizer)
        steps = {"single_eager": eager}
        if compiled:
            steps["single_compiled"] = compile_step(make_step(fast, optimizer), eager=eager)

    def batch_of(b):
        return X[b * BATCH_SIZE:(b + 1) * BATCH_SIZE], T[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]

    out = {}
    for name, step in steps.items():
        params = net.init(0)
        out[name] = functional_loop(step, {"params": params, "opt_state": optimizer.init(params)}, batch_of, n_steps)
    return out


def time_paths(args: argparse.Namespace, parallel: bool, log) -> Tuple[Dict[str, Dict], float]:
    """Timings of this process's paths, and the loss they all start from."""
    n = 512 if args.smoke else N_TRAIN
    config = SMOKE_MLP if args.smoke else MLP_CONFIG
    X, y = synthetic_data(n)
    T = one_hot(y, 10)
    n_steps = 2 if args.smoke else math.ceil(n / BATCH_SIZE)
    timed = paths(parallel, not args.no_compile, config, X, T, n_steps)
    loss = first_batch_loss("mlp", config, X, y, T, BATCH_SIZE)
    with torch.no_grad():
        initial_loss = loss(build_network("mlp", config).init(0))
    return measure(timed, 1 if args.smoke else args.reps, 1.0, log, loss, baseline=next(iter(timed))), initial_loss


def run_rank(args: argparse.Namespace) -> None:
    """One rank of the data-parallel half; rank 0 writes its timings to ``args.worker``."""
    torch.set_num_threads(1)
    launch = launch_from_env()
    init_process_group(launch, timeout_s=600)
    try:
        log = print_to_stderr if launch.rank == 0 and not args.quiet else (lambda msg: None)
        results, _ = time_paths(args, True, log)
    finally:
        close_process_group()
    if launch.rank == 0:
        Path(args.worker).write_text(json.dumps(results))


def run_ranks(args: argparse.Namespace, argv) -> Dict[str, Dict]:
    """Start ``args.ranks`` processes of this module, one thread each, as torchrun would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank0.json"
        processes = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.distributed", *argv, "--worker", str(out)], cwd=ROOT,
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(args.ranks), "LOCAL_RANK": str(r),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
            for r in range(args.ranks)]
        codes = [p.wait() for p in processes]
        if any(codes):
            raise SystemExit(f"{PROG}: error: a rank failed (exit statuses {codes})")
        return json.loads(out.read_text())


def print_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per path (median reported)")
    p.add_argument("--ranks", type=int, default=2,
                   help="processes of the data-parallel half, and threads of the single process")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled paths")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: a small MLP, 512 samples, 2 steps, 1 repetition")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a rank of the data-parallel half: its output file
    args = p.parse_args(argv)
    for name in ("reps", "ranks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.ranks > (os.cpu_count() or 1):
        p.error(f"--ranks must be at most this machine's CPU count ({os.cpu_count()}), got {args.ranks}")
    return args


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_rank(args)
        return 0
    log = (lambda msg: None) if args.quiet else print_to_stderr
    load_before = os.getloadavg()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.ranks)
    try:
        log(f"one process, {args.ranks} threads")
        results, initial_loss = time_paths(args, False, log)
    finally:
        torch.set_num_threads(threads)
    log(f"{args.ranks} ranks, 1 thread each")
    results.update(run_ranks(args, argv))
    baseline = next(name for name in BASELINES if name in results)
    for v in results.values():
        v["ratio"] = round(v["median_s"] / results[baseline]["median_s"], 3)
    report = {
        "command": " ".join([PROG, *argv]),
        "what": f"median seconds per epoch of training steps ({'2' if args.smoke else '469'} minibatches of "
                f"{BATCH_SIZE}): one process of {args.ranks} threads (single_*) against {args.ranks} ranks of one "
                f"thread (data_parallel_*); ratio = path / {baseline}",
        "smoke": args.smoke, "reps": 1 if args.smoke else args.reps, "ranks": args.ranks,
        "machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "initial_loss": initial_loss, "results": results,
    }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: Dict) -> None:
    print(f"{report['command']}\n{report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
          f"{report['machine']['torch']}; load {report['load_average_before'][0]:.1f} -> "
          f"{report['load_average_after'][0]:.1f}")
    print(f"{'path':26} {'median s/epoch':>14} {'ratio':>6} {'warm-up s':>9} {'final loss':>10}")
    for name, v in report["results"].items():
        print(f"{name:26} {v['median_s']:14.3f} {v['ratio']:6.2f} {v['warmup_s']:9.2f} {v['final_loss']:10.5f}")


if __name__ == "__main__":
    sys.exit(main())
