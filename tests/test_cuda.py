"""On a CUDA GPU: the step, the compiled step, a population, the command, and both kinds of
``--parallel`` over nccl, each against its CPU or single-process counterpart.

Skipped where torch sees no GPU. Each comparison prints the largest relative difference
it found (``pytest -s`` shows them), so that a run on a new GPU reports its figures.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from compiling import compiles
from fakedata import banded_tensors, write_fashion_mnist

from fn_trainer import (
    Member,
    NetworkConfiguration,
    adam,
    build_network,
    fit,
    fit_population,
    make_evaluate,
    make_step,
    one_hot,
)
from fn_trainer.app import cli
from fn_trainer.core.optim import exp_log_power
from fn_trainer.core.trees import tree_to
from fn_trainer.speed import inductor_apply
from fn_trainer.training.compiled import compile_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU, CPU = torch.device("cuda"), torch.device("cpu")
LR = 1e-3
STEPS = 4
NETWORKS = {
    "mlp": NetworkConfiguration(dense_hiddens=(32, 16)),
    # every rewrite of fn_trainer.speed in one graph (as tests/test_compiled.py's WINOGRAD_CNN)
    "cnn": NetworkConfiguration(n_channels=(10, 6, 4), kernel_sizes=(3, 3, 3), dense_hiddens=()),
}
# float64: another device, or Inductor, sums in another order (~1e-16 of a value), far below
# Adam's eps, so no step turns over. Metrics to a relative 1e-12 (measured on an H200:
# 3e-16 against the CPU, 6e-15 a population's members against their solo runs), parameters
# to a billionth of Adam's largest move, lr * steps, as in tests/test_compiled.py
# (measured: 4e-10 of it, the compiled CNN)
TOL64 = 1e-12
PARAMS64 = 1e-9
# float32 through the command: cuBLAS and the CPU's kernels round differently; over the
# runs' 12 steps at lr 1e-4, a relative 1e-5 of every logged value (measured on an H200:
# 2e-7 against the CPU, 1e-7 one data-parallel rank against a population)
TOL32 = 1e-5
# fit_population's compiled step is made for the full minibatch; the short last one runs eagerly
GRAPHS_OF_A_COMPILED_POPULATION = 1
CLI_RUN = ["depth", "--limit", "64", "--batch-size", "16", "--epochs", "3", "--no-download", "--no-progress"]


def largest_relative_difference(got, want, what: str) -> float:
    """``max |got - want| / max(|want|, tiny)`` over two tensors or lists (on any device),
    printed with ``what``."""
    got, want = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (got, want))
    assert got.shape == want.shape, what
    found = float(((got - want).abs() / want.abs().clamp_min(1e-30)).max()) if want.numel() else 0.0
    print(f"{what}: largest relative difference {found:.1e}")
    return found


def batches(dtype: torch.dtype, device: torch.device):
    X, y = banded_tensors(STEPS * 16, 0)
    T = one_hot(y, 10)
    return [(X[i:i + 16].to(device, dtype), T[i:i + 16].to(device, dtype)) for i in range(0, STEPS * 16, 16)]


def train(step, params, data):
    state = adam(LR).init(params)
    logs = []
    for batch in data:
        params, state, metrics = step(params, state, batch)
        logs.append(torch.stack([metrics["loss"], metrics["accuracy"], metrics["grad_norm"]]))
    return params, torch.stack(logs)


@pytest.mark.parametrize("kind", NETWORKS)
def test_a_step_on_the_gpu_is_the_cpu_step_in_float64(kind):
    net = build_network(kind, NETWORKS[kind])
    start = net.init(0, torch.float64)
    step = make_step(net.apply, adam(LR))
    on_cpu = train(step, start, batches(torch.float64, CPU))
    on_gpu = train(step, tree_to(start, GPU), batches(torch.float64, GPU))
    assert all(p.device.type == "cuda" for p in on_gpu[0].values())
    assert largest_relative_difference(on_gpu[1], on_cpu[1], f"{kind} metrics") < TOL64
    for name, p in on_cpu[0].items():
        moved = float((on_gpu[0][name].cpu() - p).abs().max())
        assert moved < PARAMS64 * LR * STEPS, name
    # the bound is far below what training moved: the step really trains
    assert max(float((on_cpu[0][k] - start[k]).abs().max()) for k in start) > 0.5 * LR * STEPS


@pytest.mark.parametrize("kind", NETWORKS)
def test_the_compiled_step_on_the_gpu_equals_its_eager_step(kind):
    """Compiled as the command compiles it: the forward written for Inductor, Adam's
    powers as Inductor computes them, closures unguarded; one graph, no recompile."""
    net = build_network(kind, NETWORKS[kind])
    torch._dynamo.reset()
    eager = make_step(net.apply, adam(LR))
    compiled = compile_step(make_step(inductor_apply(net), adam(LR, power=exp_log_power)), eager=eager,
                            guard_closures=False)
    start = tree_to(net.init(0, torch.float64), GPU)
    data = batches(torch.float64, GPU)
    with compiles(1):
        train(compiled, start, data[:1])
    with compiles(0), torch._dynamo.config.patch(error_on_recompile=True):
        got = train(compiled, start, data)
    want = train(eager, start, data)
    assert largest_relative_difference(got[1], want[1], f"compiled {kind} metrics") < TOL64
    for name, p in want[0].items():
        assert float((got[0][name] - p).abs().max()) < PARAMS64 * LR * STEPS, name


@pytest.mark.parametrize("compile", [False, True])
def test_a_population_on_the_gpu_follows_its_members_solo_runs(compile):
    net = build_network("mlp", NETWORKS["mlp"])
    train_data, valid_data = ((X.to(GPU), y.to(GPU)) for X, y in (banded_tensors(200, 0), banded_tensors(64, 1)))
    members = [Member(0, 1e-2), Member(1, 1e-3, b1=0.8, b2=0.99), Member(2, 3e-3, eps=1e-6)]
    torch._dynamo.reset()
    with compiles(GRAPHS_OF_A_COMPILED_POPULATION if compile else 0):
        results = fit_population(net, members, train_data, valid_data, epochs=2, batch_size=64, shuffle=True,
                                 dtype=torch.float64, compile=compile, progress=False,
                                 compiled_apply=inductor_apply(net, vmapped=True) if compile else None)
    for m, got in zip(members, results):
        opt = adam(m.lr, m.b1, m.b2, m.eps)
        start = tree_to(net.init(m.seed, torch.float64), GPU)
        want = fit(make_step(net.apply, opt), make_evaluate(net.apply), start, opt.init(start), train_data,
                   valid_data, epochs=2, batch_size=64, shuffle=True, seed=m.seed, progress=False)
        assert got.diverged is None and int(got.opt_state.count) == int(want.opt_state.count) == 8
        for key in want.logs:
            assert largest_relative_difference(got.logs[key], want.logs[key], f"member {m.seed} {key}") < TOL64
        for name, p in want.params.items():
            assert got.params[name].device.type == "cuda"
            assert float((got.params[name] - p).abs().max()) < PARAMS64 * m.lr * 8, name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=64, n_test=200, seed=1)


def records(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def assert_same_logs(got: dict, want: dict, what: str, tol: float = TOL32) -> None:
    """Every record of ``want`` in ``got``, its logs within a relative ``tol`` (0: equal)."""
    assert list(got) == list(want) and len(want) == 4, what  # 2 networks x 2 seeds
    for name, record in want.items():
        assert got[name]["diverged"] is None
        for key, values in record["logs"].items():
            found = largest_relative_difference(got[name]["logs"][key], values, f"{what} {name} {key}")
            assert found <= tol if tol == 0 else found < tol, (name, key)


def test_the_command_trains_on_the_gpu_as_on_the_cpu(data_root, tmp_path):
    run = [*CLI_RUN, "--seeds", "2", "--data", str(data_root)]
    assert cli.main([*run, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    assert cli.main([*run, "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    # the command trained on the GPU: it held at least a population's parameters there
    # (2 seeds of the depth question's smaller network, float32)
    n_params = build_network("mlp", NetworkConfiguration(dense_hiddens=(256, 256))).n_params
    assert torch.cuda.max_memory_allocated() - before >= 2 * 4 * n_params
    assert_same_logs(records(tmp_path / "gpu"), records(tmp_path / "cpu"), "cuda against cpu")


@pytest.mark.parametrize("parallel", ["data", "population"])
def test_torchrun_over_nccl_trains_as_one_process(parallel, data_root, tmp_path):
    """As many ranks as GPUs, two at most (nccl takes one GPU per rank): ``--parallel data``
    splits every minibatch's rows, ``--parallel population`` the members of each seed
    population; rank 0 writes the records of a single process on the GPU. On one GPU the
    one rank splits nothing, but every collective still runs over nccl; its population
    share is the whole population, trained in the same vmapped step: equal logs."""
    world_size = min(2, torch.cuda.device_count())
    run = [*CLI_RUN, "--seeds", "2", "--data", str(data_root), "--device", "cuda"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world_size}", "-m", "fn_trainer", *run, "--parallel", parallel,
                           "--out", str(tmp_path / "ranks")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"--parallel {parallel} over nccl: {world_size} rank(s)")
    assert cli.main([*run, "--out", str(tmp_path / "one")]) == 0
    exact = parallel == "population" and world_size == 1
    assert_same_logs(records(tmp_path / "ranks"), records(tmp_path / "one"), f"{parallel} over nccl",
                     tol=0.0 if exact else TOL32)
