"""Epoch times: N ranks of one thread against one process of N threads, in both ``--parallel`` modes.

    python -m benchmarks.distributed [--smoke] [--reps 5] [--ranks 2] [--modes data,population]
                                     [--population mlp|cnn] [--reference] [--no-eager | --no-compile]
                                     [--flush-denormals] [--default-malloc] [--json results.json]

The same work on the same cores two ways, on synthetic data of Fashion-MNIST shape (469
minibatches of 128). First one process with ``--ranks`` threads times the single-process
paths (``single_*``), eager and compiled. Then ``--ranks`` processes of one thread each
(this module again, started with the variables torchrun sets; gloo over loopback) time
the parallel paths. Two modes, each with its own paths:

- ``data``: the MLP 784-256-256-10. The single process times ``make_step``; the ranks the
  data-parallel step (``data_parallel_*``): eager; compiled as one graph with the
  collective traced inside (what ``fn-trainer --parallel data`` runs); and compiled as two
  graphs around an eager ``all_reduce``, the alternative it was chosen against.
- ``population``: ``benchmarks.epoch``'s ``population_mlp``, K = 8 MLPs of seeds 0..7 at lr
  1e-3 (``--population cnn``: its ``population_cnn``, K = 4 CNNs (16, 32, 45) of seeds
  0..3). The single process trains all K members in one vmapped step; each rank trains its
  consecutive share of the members (``slice_bounds``, as ``fn-trainer --parallel
  population`` splits them: K/N each) in one vmapped step (``population_parallel_*``),
  eager and compiled (the vmapped ``inductor_apply`` forward). The members are independent,
  so no collective runs during an epoch: each rank times its own epochs, the ranks starting
  every timed epoch together (an untimed barrier), and a repetition's figure is the
  slowest rank's epoch, since the job ends when its last rank does (every rank's times
  are in the JSON too).

Figures: the median over ``--reps`` repetitions of one epoch of training steps, paths
alternated within each process, compile warm-up timed apart; ``ratio`` is each path's
median over its mode's single-process compiled one (its eager one with ``--no-compile``).
With ``--reference`` the single process also times the population's members one after
another in the template's loop (``reference``, ``N`` threads, alternated with its other
paths), and every path of that mode gets ``ratio_to_reference``: the ratio
``benchmarks.epoch`` gives a population. Each rank then also trains its share in the
template's loop on one thread (``reference_parallel``, its time the slowest rank's), and
the ranks' paths get ``ratio_to_split_reference``: the split population against the loop
split the same way, which gains from the second process as much as it can; those are
alternated rounds within the ranks. The ranks run after the single process, so their
``ratio`` and ``ratio_to_reference`` span two runs, not alternated rounds. As in
``benchmarks.epoch``, glibc's malloc thresholds are fixed in every process
(``--default-malloc`` leaves them) and ``--flush-denormals`` flushes subnormals.

Every path of a mode starts from the same parameters (``network.init(0)``; the members'
``network.init(seed)``) and trains the same minibatches, so each records ``final_loss``,
its parameters' loss on the first minibatch after its last repetition: one for the data
mode, one per member in member order for the population (the ranks' members gathered to
rank 0). They agree up to float32 rounding.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from fn_trainer import adam, build_network, make_step, one_hot
from fn_trainer.core.diagnostics import global_norm
from fn_trainer.core.losses import accuracy
from fn_trainer.core.optim import Optimizer
from fn_trainer.core.step import Apply, Params, Step, make_gradient
from fn_trainer.core.trees import tree_index
from fn_trainer.speed import inductor_apply
from fn_trainer.speed.denormals import flush_denormals
from fn_trainer.speed.malloc import steady_malloc
from fn_trainer.training.compiled import compile_step
from fn_trainer.training.distributed import (
    _pack,
    _unpack,
    close_process_group,
    data_parallel_step,
    gather_to_first,
    init_process_group,
    launch_from_env,
    lost_ranks_raise,
    place,
    slice_bounds,
)
from fn_trainer.training.population import MemberData

from .epoch import (
    CNN_CONFIG,
    MLP_CONFIG,
    N_TRAIN,
    SMOKE_CNN,
    SMOKE_MLP,
    first_batch_loss,
    functional_loop,
    machine,
    measure,
    network_type,
    population,
    sequential_reference,
    start_params,
    synthetic_data,
    vmapped_paths,
)
from .report_file import checked_json_path, exit_status, write_report

BATCH_SIZE = 128
LR = 1e-3
BASELINES = ("single_compiled", "single_eager")  # a mode's ratios' denominator: the first one timed
MODES = ("data", "population")  # what the ranks split: every minibatch's rows, or a population's members
# --population: benchmarks.epoch's shape, K = 8 MLPs or 4 CNNs (16, 32, 45), seeds 0..K-1, lr 1e-3
POPULATIONS = {"mlp": "population_mlp", "cnn": "population_cnn"}
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


def data_mode_paths(parallel: bool, compiled: bool, eager: bool, config, X, T, n_steps: int) -> Dict[str, Callable]:
    """The single-process paths, or (``parallel``) the data-parallel ones of this rank;
    the compiled ones only if ``compiled``, the eager one only if ``eager``."""
    net = build_network("mlp", config)
    fast = inductor_apply(net)
    optimizer = adam(LR)
    eager_step = make_step(net.apply, optimizer)
    if parallel:
        steps = {"data_parallel_eager": data_parallel_step(net.apply, optimizer)}
        if compiled:
            steps["data_parallel_compiled"] = data_parallel_step(net.apply, optimizer, compiled_apply=fast)
            steps["data_parallel_two_graphs"] = two_graph_step(fast, optimizer)
    else:
        steps = {"single_eager": eager_step}
        if compiled:
            steps["single_compiled"] = compile_step(make_step(fast, optimizer), eager=eager_step,
                                                    guard_closures=False)
    if not eager:
        steps.pop("data_parallel_eager" if parallel else "single_eager")

    def batch_of(b):
        return X[b * BATCH_SIZE:(b + 1) * BATCH_SIZE], T[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]

    out = {}
    for name, step in steps.items():
        params = net.init(0)
        out[name] = functional_loop(step, {"params": params, "opt_state": optimizer.init(params)}, batch_of, n_steps)
    return out


def population_mode_paths(args: argparse.Namespace, parallel: bool, config, X, T,
                          n_steps: int) -> Dict[str, Callable]:
    """The single process's vmapped step of all the population's members, or
    (``parallel``) that of this rank's consecutive share of them (``slice_bounds``, as
    ``--parallel population`` splits them); the compiled one unless ``--no-compile``, the
    eager one unless ``--no-eager``. With ``--reference`` the single process also trains
    the members one after another in the template's loop (``reference``), and each rank
    its share of them (``reference_parallel``): the loop split as the population is."""
    kind = network_type(POPULATIONS[args.population])
    members = population(POPULATIONS[args.population])[0]
    if parallel:
        start, stop = slice_bounds(len(members), *place())
        members = members[start:stop]
    net = build_network(kind, config)
    timed = vmapped_paths(net, members, MemberData([(X, T)], [0] * len(members)), BATCH_SIZE, n_steps,
                          not args.no_compile)
    if args.no_eager:
        del timed["vmapped_eager"]
    prefix = "population_parallel" if parallel else "single"
    paths = {f"{prefix}_{name.removeprefix('vmapped_')}": run for name, run in timed.items()}
    if args.reference:
        paths["reference_parallel" if parallel else "reference"] = sequential_reference(
            kind, config, members, [X] * len(members), T, BATCH_SIZE, n_steps)
    return paths


def member_losses(kind: str, config, X, y, T) -> Callable[[Params], List[float]]:
    """``params -> [loss of member k]`` for members stacked along a leading axis: one
    network's ``first_batch_loss``, member by member, so that a rank's share of the members
    is scored with the same arithmetic as the whole population."""
    loss = first_batch_loss(kind, config, X, y, T, BATCH_SIZE)
    return lambda params: [loss(tree_index(params, k)) for k in range(len(next(iter(params.values()))))]


def time_paths(args: argparse.Namespace, mode: str, parallel: bool,
               log) -> Tuple[Dict[str, Dict], Union[float, List[float]]]:
    """Timings of this process's paths of ``mode``, and the loss (a list of the members'
    losses for the population) they all start from."""
    n = 512 if args.smoke else N_TRAIN
    kind = "mlp" if mode == "data" else network_type(POPULATIONS[args.population])
    config = {"mlp": SMOKE_MLP if args.smoke else MLP_CONFIG, "cnn": SMOKE_CNN if args.smoke else CNN_CONFIG}[kind]
    X, y = synthetic_data(n)
    T = one_hot(y, 10)
    n_steps = 2 if args.smoke else math.ceil(n / BATCH_SIZE)
    if mode == "data":
        timed = data_mode_paths(parallel, not args.no_compile, not args.no_eager, config, X, T, n_steps)
        shape, loss = "mlp", first_batch_loss("mlp", config, X, y, T, BATCH_SIZE)
    else:
        timed = population_mode_paths(args, parallel, config, X, T, n_steps)
        shape, loss = POPULATIONS[args.population], member_losses(kind, config, X, y, T)
    # the ranks of a split population never wait for each other within an epoch: an
    # untimed barrier starts each timed epoch on every rank at once
    before = dist.barrier if parallel and mode == "population" else (lambda: None)
    with torch.no_grad():
        initial_loss = loss(start_params(shape, config))
    return measure(timed, 1 if args.smoke else args.reps, 1.0, log, loss, baseline=next(iter(timed)),
                   before=before), initial_loss


def slowest_rank(shares: List[Dict[str, Dict]]) -> Dict[str, Dict]:
    """The split population's timings as one job's, from every rank's (rank order): per
    repetition the slowest rank's epoch (the job ends when its last rank does), and its
    median; the slowest warm-up; the members' final losses in member order (the ranks'
    shares are consecutive). Every rank's own times are kept (``rank_*``)."""
    out = {}
    for name in shares[0]:
        ranks = [share[name] for share in shares]
        epochs = [max(times) for times in zip(*(v["epoch_s"] for v in ranks))]
        out[name] = {"warmup_s": max(v["warmup_s"] for v in ranks), "epoch_s": epochs,
                     "median_s": statistics.median(epochs),
                     "rank_warmup_s": [v["warmup_s"] for v in ranks], "rank_epoch_s": [v["epoch_s"] for v in ranks],
                     "final_loss": [loss for v in ranks for loss in v["final_loss"]]}
    return out


def prepare_process(args: argparse.Namespace) -> Optional[Dict[str, int]]:
    """This process's allocator and subnormal mode, as ``benchmarks.epoch`` sets them; the
    malloc settings, or ``None`` where left as they were."""
    malloc = None if args.default_malloc else steady_malloc()
    if args.flush_denormals:
        flush_denormals(True)
    return malloc


def run_rank(args: argparse.Namespace) -> None:
    """One rank of the parallel half; rank 0 writes the timings of every mode to ``args.worker``."""
    torch.set_num_threads(1)  # before flushing: flush_denormals sets the mode in torch's threads
    prepare_process(args)
    launch = launch_from_env()
    init_process_group(launch, timeout_s=600)
    results = {}
    try:
        log = print_to_stderr if launch.rank == 0 and not args.quiet else (lambda msg: None)
        for mode in args.modes:
            log(f" {mode} mode" + (" (rank 0's share)" if mode == "population" else ""))
            results[mode], _ = time_paths(args, mode, True, log)
            if mode == "population":
                shares = gather_to_first(results[mode], "while gathering the ranks' timings")
                if shares is not None:  # rank 0
                    results[mode] = slowest_rank(shares)
        # as fn_trainer.app.parallel.session does: no rank leaves the group before every rank
        # has finished its collectives (the gather's last message)
        with lost_ranks_raise("while finishing"):
            dist.barrier()
    finally:
        close_process_group()
    if launch.rank == 0:
        Path(args.worker).write_text(json.dumps(results))


def free_port() -> int:
    """A free loopback port for rank 0 to listen on, below the kernel's range of ephemeral
    ports where it says which (Linux): a port that ``bind(0)`` hands out is free only until
    it is closed, and any process's next outgoing connection may take it before rank 0
    listens ("The server socket has failed to listen on any local network address")."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    chooser = random.SystemRandom()  # whatever the caller has seeded
    for _ in range(100):
        port = chooser.randrange(max(1024, ephemeral_low - 10000), ephemeral_low) if ephemeral_low > 2048 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use: another
                continue
            return s.getsockname()[1]
    raise OSError("no free loopback port below the ephemeral range")


def run_ranks(args: argparse.Namespace, argv) -> Dict[str, Dict[str, Dict]]:
    """Start ``args.ranks`` processes of this module, one thread each, as torchrun would;
    their timings per mode and path."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank0.json"
        processes = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.distributed", *argv, "--worker", str(out)], cwd=ROOT,
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(args.ranks), "LOCAL_RANK": str(r),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
            for r in range(args.ranks)]
        codes = wait_all(processes)
        if any(codes):
            raise SystemExit(f"{PROG}: error: a rank failed (exit statuses {codes})")
        return json.loads(out.read_text())


def wait_all(processes: List[subprocess.Popen], poll_s: float = 0.05) -> List[int]:
    """Every process's exit status. Once one fails, the others are killed at once (they
    would wait for it in their collectives until their timeout, ten minutes); on an
    interrupt of this process too, so that no rank runs on without it."""
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(poll_s)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return [p.wait() for p in processes]


def print_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per path (median reported)")
    p.add_argument("--ranks", type=int, default=2,
                   help="processes of the parallel half, and threads of the single process")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated subset of data,population: what the ranks split (every minibatch's rows, "
                        "or the population's members)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled paths")
    p.add_argument("--no-eager", action="store_true", help="skip the eager paths")
    p.add_argument("--population", choices=sorted(POPULATIONS), default="mlp",
                   help="the population mode's members: 8 MLPs (default) or 4 CNNs (16, 32, 45)")
    p.add_argument("--reference", action="store_true",
                   help="population mode: also time the members one after another in the template's loop, in "
                        "the single process (ratio_to_reference) and split over the ranks as the population is "
                        "(ratio_to_split_reference)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: small MLPs, 512 samples, 2 steps, 1 repetition")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's adaptive malloc thresholds alone, in every process (as in benchmarks.epoch)")
    p.add_argument("--flush-denormals", action="store_true",
                   help="flush subnormal floats to zero in every process, as the fn-trainer command does")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a rank of the parallel half: its output file
    args = p.parse_args(argv)
    for name in ("reps", "ranks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.ranks > (os.cpu_count() or 1):
        p.error(f"--ranks must be at most this machine's CPU count ({os.cpu_count()}), got {args.ranks}")
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        p.error(f"--modes must be a comma-separated subset of {','.join(MODES)}, got {args.modes!r}")
    args.modes = [mode for mode in MODES if mode in modes]
    if args.reference and "population" not in args.modes:
        p.error("--reference times the population mode's members: give it with --modes population")
    if args.population != "mlp" and "population" not in args.modes:
        p.error("--population chooses the population mode's members: give it with --modes population")
    if args.no_compile and args.no_eager:
        p.error("--no-compile and --no-eager leave nothing to time: give at most one of them")
    K = len(population(POPULATIONS[args.population])[0])
    if "population" in args.modes and args.ranks > K:  # a rank without members would time nothing
        p.error(f"--ranks must be at most the population's {K} members with --modes population, got {args.ranks}")
    if not args.worker:
        args.json = checked_json_path(p, args.json)
    return args


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_rank(args)
        # leave without finalizing the interpreter: a gloo worker thread still dropping its
        # last finished collective (whose tensors need the GIL to be freed) aborts the
        # process when the interpreter is torn down under it (seen in about 1 of 8 runs)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    log = (lambda msg: None) if args.quiet else print_to_stderr
    load_before = os.getloadavg()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.ranks)
    malloc = prepare_process(args)
    results: Dict[str, Dict] = {}
    try:
        log(f"one process, {args.ranks} threads")
        for mode in args.modes:
            log(f" {mode} mode")
            paths, initial_loss = time_paths(args, mode, False, log)
            results[mode] = {"initial_loss": initial_loss, "paths": paths}
    finally:
        torch.set_num_threads(threads)
    log(f"{args.ranks} ranks, 1 thread each")
    for mode, paths in run_ranks(args, argv).items():
        results[mode]["paths"].update(paths)
    for r in results.values():
        r["baseline"] = baseline = next(name for name in BASELINES if name in r["paths"])
        for v in r["paths"].values():
            # paired per round only within one process: the ratios here span the single process and the ranks
            v.pop("ratio_paired", None)
            v.pop("ratio_paired_range", None)
            v["ratio"] = round(v["median_s"] / r["paths"][baseline]["median_s"], 3)
            if "reference" in r["paths"]:
                v["ratio_to_reference"] = round(v["median_s"] / r["paths"]["reference"]["median_s"], 3)
        if "reference_parallel" in r["paths"]:  # the ranks' paths against the loop split as they are
            split = r["paths"]["reference_parallel"]["median_s"]
            for name, v in r["paths"].items():
                if name.startswith("population_parallel") or name == "reference_parallel":
                    v["ratio_to_split_reference"] = round(v["median_s"] / split, 3)
    K = len(population(POPULATIONS[args.population])[0])
    kind = network_type(POPULATIONS[args.population])
    report = {
        "command": " ".join([PROG, *argv]),
        "what": f"median seconds per epoch of training steps ({'2' if args.smoke else '469'} minibatches of "
                f"{BATCH_SIZE}): one process of {args.ranks} threads (single_*) against {args.ranks} ranks of one "
                f"thread; data mode: one MLP, every rank on its slice of every minibatch (data_parallel_*); "
                f"population mode: {K} {kind.upper()}s, one vmapped step of all of them against each rank's share in one "
                f"vmapped step, a repetition's time the slowest rank's (population_parallel_*); ratio = path / "
                f"its mode's baseline (single_compiled, or single_eager without it); final_loss per member for "
                f"the population",
        "smoke": args.smoke, "reps": 1 if args.smoke else args.reps, "ranks": args.ranks,
        "machine": machine(), "malloc": malloc or "default", "flush_denormals": args.flush_denormals,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "results": results,
    }
    if args.json is not None:  # first: a table piped into a closed reader must not lose it
        write_report(args.json, report)
    print_table(report)
    return 0


def print_table(report: Dict) -> None:
    print(f"{report['command']}\n{report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
          f"{report['machine']['torch']}; load {report['load_average_before'][0]:.1f} -> "
          f"{report['load_average_after'][0]:.1f}")
    print(f"{'mode':10} {'path':28} {'median s/epoch':>14} {'ratio':>6} {'warm-up s':>9} {'final loss':>10}"
          f" {'to reference':>12} {'to split reference':>18}")
    for mode, r in report["results"].items():
        for name, v in r["paths"].items():
            loss = v["final_loss"]  # the population's: the members' mean here, each member's in the JSON
            loss = statistics.fmean(loss) if isinstance(loss, list) else loss
            to_reference = f"{v['ratio_to_reference']:12.2f}" if "ratio_to_reference" in v else f"{'-':>12}"
            to_split = f"{v['ratio_to_split_reference']:18.2f}" if "ratio_to_split_reference" in v else f"{'-':>18}"
            print(f"{mode:10} {name:28} {v['median_s']:14.3f} {v['ratio']:6.2f} {v['warmup_s']:9.2f} {loss:10.5f}"
                  f" {to_reference} {to_split}")
    if "population" in report["results"]:
        print("population: final loss is the members' mean; s/epoch and warm-up of population_parallel_* are "
              "the slowest rank's")


if __name__ == "__main__":
    sys.exit(exit_status(main, PROG))
