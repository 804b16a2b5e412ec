"""Data-parallel training: two CPU processes (gloo) against one, differing starts, lost ranks."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
from compiling import compiles
from distributed_ranks import BATCH_SIZES, LR, problem, train
from fakedata import write_fashion_mnist
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.distributed import free_port
from fn_trainer import make_step
from fn_trainer.app import cli
from fn_trainer.app.cli import settings_of
from fn_trainer.training.checkpoint import load_checkpoint, save_checkpoint
from fn_trainer.training.distributed import (
    Launch,
    RankLostError,
    data_parallel_step,
    init_process_group,
    launch_from_env,
    lost_ranks_raise,
    make_data_parallel_step,
    slice_bounds,
)

HELPER = Path(__file__).with_name("distributed_ranks.py")
STEPS = len(BATCH_SIZES)
# Two ranks sum two half-minibatch gradients where one process sums one: the same sums in
# another order. float64: agreement to 1e-12 (measured: 4e-16 in the losses, 1e-16 in the
# parameters); slices weighted alike rather than by their rows (7 and 6 of 13) are off by
# percents. float32, compiled against eager: Inductor fuses and reorders the sums; losses and
# gradient norms to 1e-5 relative (measured: 2e-7), parameters to 1e-5 of Adam's largest
# possible move, lr * steps (measured: 3e-7 of it).
TOL64 = dict(rtol=1e-12, atol=1e-12)
METRICS32 = dict(rtol=1e-5, atol=0.0)
PARAMS32 = dict(rtol=0.0, atol=1e-5 * LR * STEPS)


def launch_env(rank: int, world_size: int, port: int) -> dict:
    """The environment torchrun gives rank ``rank``: one node, loopback rendezvous."""
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def start_ranks(argv, world_size: int = 2, argv_of=None):
    """``world_size`` ranks of ``argv``, or of ``argv_of(rank)`` if given."""
    port = free_port()
    return [subprocess.Popen([sys.executable, *map(str, argv if argv_of is None else argv_of(r))],
                             env=launch_env(r, world_size, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(world_size)]


def finish(process: subprocess.Popen, timeout: float):
    """``(exit status, stdout, stderr)``; a process still running after ``timeout`` s is killed
    and fails the test."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"rank still running after {timeout} s; stderr: {err[-2000:]}")
    return process.returncode, out, err


def run_ranks(argv, wait: float = 240.0, argv_of=None, world_size: int = 2):
    """Start ``world_size`` ranks of ``argv`` (``argv_of(rank)``) and wait for them all:
    ``[(exit status, stdout, stderr)]``."""
    return [finish(p, wait) for p in start_ranks(argv, world_size, argv_of=argv_of)]


def run_helper(mode: str, out: Path, timeout_s: float = 30.0):
    return run_ranks([HELPER, mode, out, timeout_s])


def error_lines(err: str):
    """stderr's lines, less the warnings torch may log on its own."""
    return [line for line in err.splitlines() if line.strip() and "Warning" not in line and "W1" not in line[:20]]


def test_two_ranks_train_like_one_process_and_refuse_differing_starts(tmp_path):
    for rc, _, err in run_helper("agree", tmp_path):
        assert rc == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    (params, state, metrics), (params1, _, metrics1) = (r["agree"] for r in ranks)
    # the same update on every rank: the parameters never drift apart
    for k in params:
        assert torch.equal(params[k], params1[k]), k
    assert all(torch.equal(metrics[k], metrics1[k]) for k in metrics)
    net, opt, start, batches = problem(torch.float64)
    ref_params, ref_state, ref = train(make_step(net.apply, opt), start, opt.init(start), batches)
    assert int(state["count"]) == int(ref_state.count) == STEPS
    assert torch.equal(metrics["accuracy"], ref["accuracy"])
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(metrics[key], ref[key], **TOL64)
    for k in ref_params:
        torch.testing.assert_close(params[k], ref_params[k], **TOL64)
    # then every rank started from its own seed's parameters: the first step refused on both
    for r in ranks:
        assert r["differ"].startswith("rank 1 and rank 0 hold different parameters (first at ")
        assert "the same seed" in r["differ"]


def test_a_stopped_rank_stops_the_other_with_one_line_within_the_timeout(tmp_path):
    # a stopped rank answers nothing: the process group's timeout ends the wait (a killed
    # rank's closed sockets end it at once: the command's test below)
    first, second = start_ranks([HELPER, "hang", tmp_path, 2.0])
    started = time.monotonic()
    try:
        rc, _, err = finish(first, timeout=120)
        waited = time.monotonic() - started
    finally:
        second.kill()  # a stopped process too
        second.communicate()
    assert rc == 2, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith("RankLostError: lost contact with the other ranks during a training step")
    assert re.search("Timed out", line)
    assert waited < 60  # start-up and a few steps; without a timeout it would wait forever


def test_a_rank_done_with_its_work_waits_for_the_others_beyond_the_step_timeout(tmp_path):
    # rank 0 trains a bigger share of a population (or chooses the next run) for 2 timeouts
    for rc, _, err in run_helper("wait", tmp_path, timeout_s=2.0):
        assert rc == 0, err[-3000:]
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert first["gathered"] == [0, 1] and second["gathered"] is None
    assert first["message"] == second["message"] == "next"
    assert second["waited_s"] >= 6 * 2.0


@given(st.integers(0, 300), st.integers(1, 9))
def test_slices_cover_the_minibatch_in_order_and_differ_by_at_most_one_row(n_rows, world_size):
    bounds = [slice_bounds(n_rows, r, world_size) for r in range(world_size)]
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n_rows))
    sizes = [stop - start for start, stop in bounds]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1


def test_launch_is_read_from_torchruns_variables():
    assert launch_from_env({}) is None
    assert launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    for env, message in (({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK missing"),
                         ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK must be an integer"),
                         ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK < WORLD_SIZE")):
        with pytest.raises(ValueError, match=message):
            launch_from_env(env)


@pytest.fixture
def one_rank_group():
    """A gloo group of this process alone."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_is_bitwise_the_single_process_step(one_rank_group):
    net, opt, params, batches = problem(torch.float32)
    got = train(make_data_parallel_step(net.apply, opt), params, opt.init(params), batches)
    want = train(make_step(net.apply, opt), params, opt.init(params), batches)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert torch.equal(a, b)


def test_the_compiled_data_parallel_step_is_one_graph_and_agrees_with_the_eager_step(one_rank_group):
    # the functional all-reduce is traced into the one graph (on a group of one as on more:
    # the compiled code calls _c10d_functional.all_reduce_); two ranks' arithmetic is the
    # float64 test above
    net, opt, params, batches = problem(torch.float32)
    torch._dynamo.reset()
    step = data_parallel_step(net.apply, opt, compiled_apply=net.apply)
    with compiles(1):
        got = train(step, params, opt.init(params), batches)
        # as every compiled run's, its in-place form (what fit runs) writes the same values into its state
        own = {k: v.clone() for k, v in params.items()}
        in_place = train(step.in_place, own, opt.init(own), batches)
    assert in_place[0] is own and all(torch.equal(own[k], got[0][k]) for k in own)
    want = train(make_step(net.apply, opt), params, opt.init(params), batches)
    assert torch.equal(got[2]["accuracy"], want[2]["accuracy"]) and int(got[1].count) == STEPS
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(got[2][key], want[2][key], **METRICS32)
    for k in want[0]:
        torch.testing.assert_close(got[0][k], want[0][k], **PARAMS32)


def test_the_compiled_data_parallel_step_is_made_for_the_full_minibatch_with_its_own_optimizer(one_rank_group,
                                                                                              monkeypatch):
    # a data-parallel run resumed at an epoch's short last minibatch sees that one first
    from fn_trainer import adam
    from fn_trainer.core.optim import exp_log_power
    from fn_trainer.training import distributed

    net, opt, params, batches = problem(torch.float32)
    full, short = batches[0], tuple(t[:5] for t in batches[0])
    fast = adam(LR, power=exp_log_power)
    made_with = []
    real = distributed.make_data_parallel_step
    monkeypatch.setattr(distributed, "make_data_parallel_step",
                        lambda apply, optimizer, *a, **k: made_with.append(optimizer) or real(apply, optimizer, *a, **k))
    torch._dynamo.reset()
    step = data_parallel_step(net.apply, opt, compiled_apply=net.apply, compiled_optimizer=fast,
                              batch_shape=tuple(full[0].shape))
    assert made_with == [opt, fast]  # the eager step's, the compiled one's
    with compiles(0):
        step(params, opt.init(params), short)
    with compiles(1):
        got = step(params, opt.init(params), full)
    want = make_step(net.apply, fast)(params, fast.init(params), full)
    for k in want[0]:
        torch.testing.assert_close(got[0][k], want[0][k], rtol=0.0, atol=1e-5 * LR)  # a step moves them by ~LR


def test_a_data_parallel_run_compiles_for_its_full_minibatch_with_the_powers_written_for_inductor(
        one_rank_group, monkeypatch):
    from types import SimpleNamespace

    from fn_trainer.app import parallel
    from fn_trainer.app.experiments import training
    from fn_trainer.core.optim import exp_log_power

    made, powers = [], {}
    real_adam = training.adam

    def adam(lr, **kw):  # which optimizer was made with which powers
        optimizer = real_adam(lr, **kw)
        powers[id(optimizer)] = kw.get("power")
        return optimizer

    monkeypatch.setattr(training, "adam", adam)
    monkeypatch.setattr(parallel, "data_parallel_step", lambda apply, optimizer, **kw: made.append(kw) or "step")
    monkeypatch.setattr(training, "fit", lambda *a, **k: SimpleNamespace(wall_time_s=0.0))
    monkeypatch.setattr(training, "evaluation", lambda *a: None)
    monkeypatch.setattr(training, "wait_for_all", lambda doing: None)
    monkeypatch.setattr(training, "worth_compiling", lambda *a: True)
    X = torch.zeros(300, 1, 28, 28)
    ctx = SimpleNamespace(settings=SimpleNamespace(rank=1, parallel="data", device="cpu", progress=False,
                                                   resume=False),
                          data=lambda normalization: ((X, None), (X, None)), fast_apply=lambda net: "fast",
                          fingerprint="f", out=Path("unused"))
    spec = SimpleNamespace(network_type="mlp", config=parallel_config(), seed=0, lr=LR, batch_size=128, epochs=1,
                           name="r", normalization=True, identity=lambda fingerprint: {})
    monkeypatch.setattr(training, "checkpoint_path", lambda ctx, spec: None)
    _, trainer = training.train_one(ctx, spec)
    (kw,) = made
    assert kw["compiled_apply"] == "fast" and kw["batch_shape"] == (128, 1, 28, 28)
    assert powers[id(kw["compiled_optimizer"])] is exp_log_power and trainer.endswith("compiled)")


def parallel_config():
    from fn_trainer import NetworkConfiguration

    return NetworkConfiguration(dense_hiddens=(8,))


def test_a_cuda_rank_needs_its_own_gpu_and_an_explicit_other_index_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^LOCAL_RANK=1 needs GPU cuda:1, but this machine has 1 GPU\(s\): start "
                                         r"at most 1 process\(es\) per machine \(--nproc_per_node\)$"):
        init_process_group(Launch(1, 2, 1), "cuda", timeout_s=5)
    with pytest.raises(ValueError, match=r"^--device cuda:0: under torchrun each process computes on GPU "
                                         r"LOCAL_RANK of its machine \(here cuda:1\); give --device cuda$"):
        init_process_group(Launch(1, 2, 1), "cuda:0", timeout_s=5)
    assert not dist.is_initialized()


def test_only_collective_failures_become_lost_ranks():
    with pytest.raises(RankLostError, match="^lost contact with the other ranks while testing .*: Timed out "
                                            "waiting 2000ms for recv operation to complete$"):
        with lost_ranks_raise("while testing"):
            raise RuntimeError("[/src/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for "
                               "recv operation to complete")
    with pytest.raises(RuntimeError, match="^mat1 and mat2 shapes cannot be multiplied$"):
        with lost_ranks_raise("while testing"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


# --- the command line ------------------------------------------------------------------------

CLI_TOL = 1e-5  # relative, as METRICS32 (measured: 1e-7 over the 40 steps of a run)
MARK = 9.5
CLI_RUN = ["depth", "--limit", "64", "--batch-size", "16", "--epochs", "10", "--no-download", "--no-progress", "--seeds", "1"]


@pytest.fixture(scope="module")
def cli_data_root(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=64, n_test=200, seed=1)


def torchrun(args, world_size: int = 2):
    """``torchrun --standalone`` of ``python -m fn_trainer args`` with ``world_size`` processes."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world_size}", "-m", "fn_trainer", *map(str, args)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_rank_1_once(argv, folder: Path, pattern: str):
    """Start two ranks of ``argv``, SIGKILL rank 1 once a file matching ``pattern`` is in
    ``folder``, and check rank 0's one-line error; returns that line, the seconds rank 0 took
    to stop after the kill, and the file found (``None`` if rank 0 ended first)."""
    first, second = start_ranks(argv)
    try:
        deadline, found = time.monotonic() + 120, None
        while found is None and first.poll() is None and time.monotonic() < deadline:
            found = next(folder.glob(pattern), None) if folder.is_dir() else None
            time.sleep(0.01)
        second.kill()
        killed = time.monotonic()
        rc, _, err = finish(first, timeout=120)
        waited = time.monotonic() - killed
    finally:
        second.kill()
        second.communicate()
    assert rc == 2, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith("fn-trainer: error: lost contact with the other ranks")
    assert line.endswith("; rerun with --resume to continue from the last checkpoint")
    return line, waited, found


def test_a_rank_that_loses_rank_0_before_any_checkpoint_does_not_advise_resume(cli_data_root, tmp_path):
    """Rank 0 refuses a broken calibration file; rank 1, waiting for rank 0's calibration,
    loses contact and says so without pointing to a checkpoint there is none of."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "calibration.json").write_text("{not json")
    done = run_ranks(["-m", "fn_trainer", *CLI_RUN, "--data", cli_data_root, "--parallel", "population",
                      "--rank-timeout", "30", "--out", out], wait=120)
    assert [rc for rc, _, _ in done] == [2, 2], "".join(err for _, _, err in done)[-3000:]
    (first,), (second,) = (error_lines(err) for _, _, err in done)
    assert "calibration.json" in first and "--resume" not in first
    assert second.startswith("fn-trainer: error: rank 1 of 2: lost contact with the other ranks")
    assert second.endswith("; there is no checkpoint to resume from: finished runs are saved, and a rank that "
                           "failed says why"), second


SIGTERM_WAIT = """
import signal, sys, time
from fn_trainer.app.parallel import sigterm_ends

def handler(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, handler)
with sigterm_ends():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    print("READY", flush=True)
    time.sleep(60)  # a collective without a time limit: a handler would run only after it
"""


def test_a_rank_waiting_without_a_time_limit_ends_at_once_on_sigterm(tmp_path):
    from fn_trainer.app.parallel import sigterm_ends

    child = subprocess.Popen([sys.executable, "-c", SIGTERM_WAIT], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_ends():
        pass
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is back after the wait


def test_a_lost_rank_stops_the_command_and_torchrun_resumes_it(cli_data_root, tmp_path):
    run = [*CLI_RUN, "--data", cli_data_root]
    args = [*run, "--parallel", "data", "--rank-timeout", "30", "--out", tmp_path / "parallel"]
    checkpoints = tmp_path / "parallel" / "runs"
    # after rank 0 wrote the first epoch's checkpoint
    line, waited, _ = kill_rank_1_once(["-m", "fn_trainer", *args], checkpoints, "*.checkpoint.pt")
    # seen at once, not after --rank-timeout's 30 s: the killed rank's sockets closed
    assert re.search("Connection (closed|reset) by peer", line) and waited < 25
    # a mark in the interrupted run's logs: a run resumed from its checkpoint keeps them
    (checkpoint,) = checkpoints.glob("*.checkpoint.pt")
    state = load_checkpoint(checkpoint)
    state["logs"]["train_loss"][0] = MARK
    save_checkpoint(checkpoint, state)

    done = torchrun([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone prints: one summary line per run (trained or found done) and the report's path
    assert len([line for line in done.stdout.splitlines() if "params;" in line]) == 2
    assert done.stdout.count("report: ") == 1
    assert not list(checkpoints.glob("*.checkpoint.pt"))

    assert cli.main([*map(str, run), "--out", str(tmp_path / "single")]) == 0
    records = sorted(checkpoints.glob("*.json"))
    assert len(records) == 2
    for path in records:
        parallel, single = (json.loads(p.read_text()) for p in (path, tmp_path / "single" / "runs" / path.name))
        assert parallel["trainer"] == "fit (data parallel, 2 ranks)"
        if path.name == checkpoint.name.replace(".checkpoint.pt", ".json"):
            assert parallel["logs"]["train_loss"][0] == MARK
            parallel["logs"]["train_loss"][0] = single["logs"]["train_loss"][0]
        for key, values in parallel["logs"].items():
            assert values == pytest.approx(single["logs"][key], rel=CLI_TOL)


@pytest.mark.parametrize("args, env, message", [
    (["--parallel", "data"], {}, "--parallel data runs under torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK"),
    (["--parallel", "population"], {}, "--parallel population runs under torchrun"),
    (["--parallel", "data"], {"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK missing"),
    (["--rank-timeout", "0"], {}, "--rank-timeout must be a positive finite number, got 0.0"),
])
def test_parallel_options_that_cannot_work_are_one_line_errors(cli_data_root, tmp_path, capsys, monkeypatch,
                                                                args, env, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc = cli.main(["depth", *CLI_RUN[1:], "--data", str(cli_data_root), "--out", str(tmp_path), *args])
    (line,) = capsys.readouterr().err.splitlines()
    assert rc == 2 and re.match(f"fn-trainer: error: .*{message}", line)
    assert not (tmp_path / "runs").exists()


def test_only_rank_0_shows_progress_or_downloads_and_every_rank_trains_each_run_alone(monkeypatch):
    args = cli.build_parser().parse_args(["lr-sweep", "--parallel", "data"])
    leader, other = (settings_of(args, "fn-trainer", rank) for rank in (0, 1))
    assert (leader.progress, leader.download, other.progress, other.download) == (True, True, False, False)
    assert (leader.rank, other.rank, leader.parallel, other.parallel) == (0, 1, "data", "data")
    from fn_trainer.app.experiments import lr_sweep, training

    groups = []
    monkeypatch.setattr(lr_sweep, "execute", lambda ctx, specs, group=None: groups.append(group) or [])
    for settings in (leader, settings_of(cli.build_parser().parse_args(["lr-sweep"]), "fn-trainer")):
        lr_sweep.train(type("Ctx", (), {"settings": settings})(), {False: [], True: []})
    # a vmapped sweep or population is one process's work: under --parallel each run trains alone
    assert groups[:2] == [None, None] and groups[2] is training.train_population


@pytest.mark.parametrize("parallel, world_size", [("population", 2), ("data", 3)])
def test_ranks_with_different_data_stop_with_one_line_before_training(cli_data_root, tmp_path, parallel, world_size):
    """Each machine reads its own copy of --data: a rank whose files differ from rank 0's
    would train a population's members, or a run's minibatch slices, on other data. Every
    rank stops, the ones whose data agree with rank 0's too."""
    other = write_fashion_mnist(tmp_path / "other", n_train=64, n_test=200, seed=2)
    out, last = tmp_path / "out", world_size - 1
    run = [*CLI_RUN[:-1], "2", "--parallel", parallel, "--rank-timeout", "30", "--out", out]
    done = run_ranks(None, world_size=world_size, argv_of=lambda rank: [
        "-m", "fn_trainer", *run, "--data", other if rank == last else cli_data_root])
    assert [rc for rc, _, _ in done] == [2] * world_size, "".join(err for _, _, err in done)[-3000:]
    fingerprints = r"\(fingerprint [0-9a-f]+ against [0-9a-f]+\); every machine needs the same files"
    for rank, (_, _, err) in enumerate(done):
        (line,) = error_lines(err)
        prefix = "fn-trainer: error: " + (f"rank {rank} of {world_size}: " if rank else "")
        says = (f"--data {re.escape(str(other))}: this rank's data set differs from rank 0's " if rank == last
                else f"--data {re.escape(str(cli_data_root))}: rank {last}'s data set differs from rank 0's ")
        assert re.fullmatch(re.escape(prefix) + says + fingerprints, line), line
    assert not list((out / "runs").glob("*.json"))  # nothing trained, nothing recorded


def test_ranks_writing_to_different_output_folders_stop_with_one_line_before_training(cli_data_root, tmp_path):
    """Rank 1 with its own --out would resume from other checkpoints than rank 0 and keep its
    shares' checkpoints where rank 0 never deletes them: what counts is the folder the ranks
    see, which rank 0 marks with a file that rank 1 looks for."""
    outs = [tmp_path / "out0", tmp_path / "out1"]
    run = [*CLI_RUN[:-1], "2", "--rank-timeout", "30", "--data", cli_data_root]
    done = run_ranks(None, world_size=2, argv_of=lambda rank: ["-m", "fn_trainer", *run, "--out", outs[rank]],
                     wait=120)
    assert [rc for rc, _, _ in done] == [2, 2], "".join(err for _, _, err in done)[-3000:]
    for rank, (_, _, err) in enumerate(done):
        (line,) = error_lines(err)
        who = "this rank" if rank else "rank 1"
        assert line == ("fn-trainer: error: " + (f"rank {rank} of 2: " if rank else "") + f"--out {outs[rank]}: "
                        f"{who} does not see rank 0's output folder there; every rank needs --out on storage all "
                        "of them see (--resume reads the checkpoints there)"), line
    assert [sorted(p.name for p in out.iterdir()) if out.exists() else [] for out in outs] == [[], []]


@pytest.mark.parametrize("rank_1, says", [
    (["--parallel", "data"], "rank 1 runs with --parallel data, rank 0 with --parallel population or none"),
    ([], None),  # no --parallel: populations split as with --parallel population
    (["--parallel", "population", "--keep-denormals"],
     "rank 1 runs with --keep-denormals, rank 0 with no --keep-denormals"),
    (["--parallel", "population", "--resume"], "rank 1 runs with --resume, rank 0 with no --resume"),
    (["--parallel", "population", "--limit", "48"], "rank 1 runs with --limit 48, rank 0 with --limit 64"),
])
def test_ranks_with_different_options_stop_with_one_line_before_training(cli_data_root, tmp_path, rank_1, says):
    """Each machine types its own command line: a rank that splits populations while
    rank 0 does not would leave rank 0 waiting for ever, one that resumes alone would
    train another share. Every rank stops, naming the option."""
    out = tmp_path / "out"
    run = [*CLI_RUN[:-1], "2", "--rank-timeout", "30", "--out", out, "--data", cli_data_root]
    done = run_ranks(None, world_size=2, argv_of=lambda rank: [
        "-m", "fn_trainer", *run, *(rank_1 if rank else ["--parallel", "population"])], wait=120)
    if says is None:
        assert [rc for rc, _, _ in done] == [0, 0], "".join(err for _, _, err in done)[-3000:]
        return
    assert [rc for rc, _, _ in done] == [2, 2], "".join(err for _, _, err in done)[-3000:]
    for rank, (_, _, err) in enumerate(done):
        (line,) = error_lines(err)
        who = "this rank" if rank else "rank 1"
        assert line == ("fn-trainer: error: " + (f"rank {rank} of 2: " if rank else "") + "the ranks' options differ: "
                        + says.replace("rank 1", who, 1) + "; every rank of a launch needs the same options"), line
    assert not list((out / "runs").glob("*.json"))


def test_a_population_split_over_two_ranks_survives_a_lost_rank_and_resumes_to_the_single_process_logs(
        cli_data_root, tmp_path):
    """--parallel population: 3 seeds of each network of the depth question, members 2 + 1
    over two ranks, each rank training and checkpointing its share in one vmapped step.
    Rank 1 is killed while the first population trains: rank 0 stops with one line, and
    the same command with --resume continues every share from its own checkpoint (rank
    1's may be epochs behind rank 0's) and trains the second population uninterrupted;
    rank 0 writes every member's record, with the logs of the single-process population."""
    run = [*CLI_RUN[:-1], "3", "--data", cli_data_root]
    args = [*run, "--parallel", "population", "--rank-timeout", "30", "--out", tmp_path / "parallel"]
    runs = tmp_path / "parallel" / "runs"
    # members 2 + 1: rank 1's share checkpoint is the one of one member; killed once it is
    # written (a write killed midway: test_writes)
    line, waited, share = kill_rank_1_once(["-m", "fn_trainer", *args], runs, "*-x1-*.checkpoint.pt")
    assert waited < 60
    assert not list(runs.glob("*.json"))  # no member's record before every share is gathered
    assert share is not None
    epochs = int(run[run.index("--epochs") + 1])
    assert 0 < load_checkpoint(share)["epoch"] < epochs  # rank 1 stopped mid-population
    # a mark in the first member of each share: a share resumed from its checkpoint keeps it
    marked = []
    for checkpoint in sorted(runs.glob("*.checkpoint.pt")):
        state = load_checkpoint(checkpoint)
        state["logs"][0]["train_loss"][0] = MARK
        save_checkpoint(checkpoint, state)
        first_member = re.fullmatch(r"(.+)-x[0-9]+-[0-9a-f]+\.checkpoint\.pt", checkpoint.name).group(1)
        marked.append(f"{first_member}-")
    assert len(marked) == 2, marked  # rank 0's share and the killed rank 1's

    # resumed by the same two ranks (torchrun's own launch: the data-parallel test above)
    (rc, out, err), (rc1, out1, err1) = run_ranks(["-m", "fn_trainer", *args, "--resume"])
    assert rc == rc1 == 0, (err + err1)[-3000:]
    assert len([line for line in out.splitlines() if "params;" in line]) == 6 and not out1  # rank 0 alone prints
    resumed = sorted(line.rsplit(" ", 1)[1] for line in out.splitlines() if line.startswith("resuming from"))
    assert [re.fullmatch(r"(.+)-x[0-9]+-[0-9a-f]+\.checkpoint\.pt", name).group(1) + "-" for name in resumed] == \
        sorted(marked)  # every share's checkpoint is named, as a single process names its population's
    assert cli.main([*map(str, run), "--out", str(tmp_path / "single")]) == 0
    parallel, single = (sorted(p.glob("*.json")) for p in (runs, tmp_path / "single" / "runs"))
    assert [p.name for p in parallel] == [p.name for p in single] and len(single) == 6
    assert sorted(runs.iterdir()) == parallel  # no checkpoint left, nor a killed write's temporary file
    for a, b in zip(parallel, single):
        mine, theirs = json.loads(a.read_text()), json.loads(b.read_text())
        assert re.match(r"fit_population \((2 runs together|alone)", mine["trainer"]), mine["trainer"]
        if any(a.name.startswith(prefix) for prefix in marked):
            assert mine["logs"]["train_loss"][0] == MARK, a.name
            mine["logs"]["train_loss"][0] = theirs["logs"]["train_loss"][0]
        for key, values in mine["logs"].items():
            assert values == pytest.approx(theirs["logs"][key], rel=CLI_TOL, abs=1e-7), (a.name, key)
