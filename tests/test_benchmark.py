"""The benchmark's smoke mode runs end to end, every path doing the same work, and writes
self-describing JSON."""
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo
from compiling import compiles

from benchmarks.epoch import (
    CNN_CONFIG,
    MLP_CONFIG,
    SMOKE_CNN,
    SMOKE_MLP,
    SWEEP_LRS,
    compat_loop,
    compat_trainer,
    in_turn_paths,
    main,
    population_data,
    reference_trainer,
    sequential_reference,
    synthetic_data,
    train_flops,
)
from benchmarks.products import Product, dense_products, product_flops, products_loop
from benchmarks.reference import ReferenceTrainer
from fn_trainer import build_network, count_parameters, one_hot
from fn_trainer.speed.denormals import denormals_flushed, flush_denormals
from fn_trainer.training.population import init_population

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_json_and_every_path_does_the_same_work(tmp_path, capsys):
    out = tmp_path / "bench.json"
    torch._dynamo.reset()  # the compiled MLP path compiles its graph here, not in an earlier test
    # --default-malloc: the test process keeps its allocator settings
    # the smoke run compiles one graph, the MLP's functional step; no peer
    with compiles(1):
        assert main(["--smoke", "--quiet", "--default-malloc", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["malloc"] == "default" and report["flush_denormals"] is False
    assert report["smoke"] and report["command"].startswith("python -m benchmarks.epoch --smoke")
    assert set(report["results"]) == {"mlp", "cnn", "sweep", "population_mlp", "population_cnn"}
    expected_paths = {"mlp": {"reference", "compat", "eager", "compiled", "products"},
                      "cnn": {"reference", "compat", "eager"},
                      "sweep": {"reference", "vmapped_eager", "in_turn_eager", "products"},
                      "population_mlp": {"reference", "vmapped_eager", "in_turn_eager", "products"},
                      "population_cnn": {"reference", "vmapped_eager", "in_turn_eager"}}
    # the sweep's models at lr 1e-8 barely move; every other model's loss moves by far more
    # than the float32 rounding (relative 1e-5) its paths may differ by
    moves = {"mlp": [True], "cnn": [True], "sweep": [lr > 1e-8 for lr in SWEEP_LRS] * 2,
             "population_mlp": [True] * 8, "population_cnn": [True] * 4}
    for shape, r in report["results"].items():
        paths = r["paths"]
        assert set(paths) == expected_paths[shape]
        assert paths["reference"]["ratio"] == 1.0
        for v in paths.values():
            assert v["median_s"] > 0 and len(v["epoch_s"]) == report["reps"] and v["pct_of_matmul_peak"] > 0
            # one round: the paired ratio is that round's epoch over the reference's
            paired = round(v["epoch_s"][0] / paths["reference"]["epoch_s"][0], 3)
            assert v["ratio_paired"] == paired and v["ratio_paired_range"] == [paired, paired]
        assert r["target_met"] is None and r.get("compat_target_met") is None
        start = torch.tensor(r["initial_loss"]).reshape(-1)  # one loss per model
        want = torch.tensor(paths["reference"]["final_loss"]).reshape(-1)
        assert paths.get("products", {}).get("final_loss") is None  # it trains nothing
        for name, v in paths.items():
            if name == "products":
                continue
            torch.testing.assert_close(torch.tensor(v["final_loss"]).reshape(-1), want, rtol=1e-5, atol=0.0,
                                       msg=lambda m: f"{shape} {name}: {m}")
        for moved, a, b in zip(moves[shape], start, want):
            assert not moved or abs(float(a - b)) > 100 * 1e-5 * abs(float(b)), (shape, float(a), float(b))
    assert report["matmul_peak_gflops"] > 0 and "cpu" in report["machine"]
    out = capsys.readouterr().out
    assert "not evaluated (smoke)" in out
    for shape in ("sweep", "population_mlp", "population_cnn"):  # the vmapped step against the members apart
        against = report["results"][shape]["vmapped_against_in_turn"]
        timed = report["results"][shape]["paths"]
        assert set(against) == {"eager"} and against["eager"]["ratio"] == round(
            timed["vmapped_eager"]["median_s"] / timed["in_turn_eager"]["median_s"], 3)
        assert f"{shape:6} one vmapped step against the members in turn: eager {against['eager']['ratio']:.2f}" in out


@pytest.mark.parametrize("shape", ["sweep", "population_mlp"])
def test_members_in_turn_train_what_the_template_loop_trains_with_one_compiled_graph_for_all(shape):
    """The members apart, compiled: one graph serves every member (same shapes), and each
    member ends where the template's loop takes it from its own seed on its own inputs."""
    X, y = synthetic_data(48)
    T = one_hot(y, 10)
    members, data = population_data(shape, X, y, T)
    net = build_network("mlp", SMOKE_MLP)
    torch._dynamo.reset()
    paths = in_turn_paths(net, members, data, 16, 3, compile=True)
    with compiles(1):
        got = paths["in_turn_compiled"]()
    eager = paths["in_turn_eager"]()
    inputs = [data.member(k)[0] for k in range(len(members))]
    want = sequential_reference("mlp", SMOKE_MLP, members, inputs, T, 16, 3)()
    start = init_population(net, members)[0]
    for name in want:
        moved = (want[name] - start[name]).abs().amax(dim=tuple(range(1, want[name].dim())))
        assert bool((moved[[m.lr > 1e-8 for m in members]] > 1e-4).all()), name  # every trained member moved
        for k, member in enumerate(members):  # float32 rounding, amplified by Adam: 1% of 3 steps' reach
            for path in (got, eager):
                torch.testing.assert_close(path[name][k], want[name][k], rtol=1e-5, atol=3 * member.lr * 1e-2)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_steady_malloc_fixes_glibc_thresholds():
    # in a child process: mallopt changes the whole process
    code = "from fn_trainer.speed.malloc import steady_malloc, STEADY_MALLOC; print(steady_malloc() == STEADY_MALLOC)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "True"


def test_training_flops_match_the_issue_figures():
    # 3 matmuls per dense layer (forward, weight grad, input grad), 2 FLOPs per multiply-add
    assert train_flops("mlp", MLP_CONFIG, 1) == 2 * (3 * (784 * 256 + 256 * 256 + 256 * 10) - 784 * 256)
    assert round(train_flops("mlp", MLP_CONFIG, 60000) / 1e9) == 73
    assert round(train_flops("cnn", CNN_CONFIG, 60000) / 1e9) == 357


def test_products_are_the_three_per_dense_layer_that_the_flop_count_counts():
    # forward x Wᵀ, weight gradient dzᵀ x, and after the first layer the input gradient dz W
    assert dense_products(SMOKE_MLP, 8) == [Product(8, 784, 32, False, True), Product(32, 8, 784, True, False),
                                            Product(8, 32, 10, False, True), Product(10, 8, 32, True, False),
                                            Product(8, 10, 32, False, False)]
    for members in (1, 8):
        assert product_flops(dense_products(MLP_CONFIG, 128), members) == members * train_flops("mlp", MLP_CONFIG, 128)


@pytest.mark.parametrize("members", [1, 3])
def test_products_loop_multiplies_operands_of_the_products_shapes(members, monkeypatch):
    seen = []
    real = {"mm": torch.mm, "bmm": torch.bmm}

    def recording(name):
        def product(lhs, rhs, out):
            seen.append((name, tuple(lhs.shape), tuple(rhs.shape), lhs.is_contiguous(), rhs.is_contiguous()))
            return real[name](lhs, rhs, out=out)
        return product

    monkeypatch.setattr(torch, "mm", recording("mm"))
    monkeypatch.setattr(torch, "bmm", recording("bmm"))
    products = dense_products(SMOKE_MLP, 8)
    products_loop(products, members, n_steps=2)()
    lead = () if members == 1 else (members,)
    assert seen == 2 * [("mm" if members == 1 else "bmm", (*lead, p.m, p.k), (*lead, p.k, p.n),
                         not p.lhs_transposed, not p.rhs_transposed) for p in products]


def test_reference_trainer_learns_and_has_the_homework_shape():
    trainer = ReferenceTrainer("mlp", MLP_CONFIG, lr=1e-3)
    assert sum(p.numel() for p in trainer.network.parameters()) == count_parameters("mlp", MLP_CONFIG)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(64, 1, 28, 28, generator=g)
    T = one_hot(torch.randint(0, 10, (64,), generator=g), 10)
    before = float(trainer.compute_loss_and_accuracy(X, T)[0].detach())
    for _ in range(20):
        norm = trainer.train_steps(X, T, batch_size=64, n_steps=1)
    assert norm > 0 and float(trainer.compute_loss_and_accuracy(X, T)[0].detach()) < before


@pytest.mark.parametrize("argv, message", [
    (["--reps", "0"], "--reps must be >= 1"),
    (["--shapes", "mlp,rnn"], "--shapes must be a subset of ['cnn', 'mlp', 'population_cnn', 'population_mlp', 'sweep'], got ['mlp', 'rnn']"),
    (["--cnn-steps", "-1"], "--cnn-steps must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--threads", "99"], "--threads must be at most this machine's CPU count (2), got 99"),
    (["--shapes", "mlp,mlp"], "--shapes names a shape twice: mlp,mlp"),
    (["--device", "mps"], "--device must be 'cpu' or 'cuda', got 'mps'"),
    (["--smoke", "--check-targets", "--reps", "9"], "--smoke runs 1 repetition of 2 steps of tiny networks and "
                                                    "checks no target: --reps, --check-targets would have no effect"),
    (["--json", ""], "--json must name a file, got an empty string"),
    (["--json", "."], "--json .: it is a folder, not a file"),
    (["--json", "afile/bench.json"],
     "--json afile/bench.json: output folder 'afile' cannot be written: 'afile' is a file, not a folder"),
])
def test_bad_options_exit_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m benchmarks.epoch: error: {message}"


def test_flush_denormals_option_is_recorded(tmp_path):
    out = tmp_path / "bench.json"
    try:
        assert main(["--smoke", "--no-compile", "--quiet", "--default-malloc", "--shapes", "mlp",
                     "--flush-denormals", "--json", str(out)]) == 0
        assert denormals_flushed()
    finally:  # the option leaves the whole process flushing: back to torch's default
        flush_denormals(False)
    report = json.loads(out.read_text())
    assert report["flush_denormals"] is True and "--flush-denormals" in report["command"]


def test_the_json_replaces_a_link_and_never_writes_through_it(tmp_path):
    earlier, out = tmp_path / "earlier.json", tmp_path / "bench.json"
    earlier.write_text('{"kept": 1}')
    out.symlink_to(earlier)
    assert main(["--smoke", "--no-compile", "--quiet", "--default-malloc", "--shapes", "mlp", "--json", str(out)]) == 0
    assert earlier.read_text() == '{"kept": 1}' and not out.is_symlink()
    assert json.loads(out.read_text())["smoke"] is True


@pytest.mark.parametrize("network_type, config", [("mlp", SMOKE_MLP), ("cnn", SMOKE_CNN)])
def test_compat_path_does_the_reference_work_bit_for_bit(network_type, config):
    """Same seed, same batches: the compat Trainer's parameters equal the template loop's,
    so the compat row times the same training, not a shortcut."""
    X, y = synthetic_data(96, seed=1)
    T = one_hot(y, 10)
    start = build_network(network_type, config).init(0)
    reference = reference_trainer(network_type, config, 1e-3, start)
    ours = compat_loop(compat_trainer(network_type, config, 1e-3, start), X, T, 32, 3)()
    reference.train_steps(X, T, 32, 3)
    for name, theirs in reference.network.named_parameters():
        assert torch.equal(ours[name], theirs) and not torch.equal(ours[name], start[name]), name


def test_distributed_smoke_run_times_one_process_and_two_ranks_doing_the_same_work(tmp_path):
    from benchmarks import distributed

    out = tmp_path / "bench.json"
    # --default-malloc: the test process keeps its allocator settings
    assert distributed.main(["--smoke", "--no-compile", "--default-malloc", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ranks"] == 2 and report["command"].startswith("python -m benchmarks.distributed --smoke")
    assert set(report["results"]) == {"data", "population"}
    data, members = (report["results"][mode] for mode in ("data", "population"))
    paths = data["paths"]
    assert set(paths) == {"single_eager", "data_parallel_eager"} and paths["single_eager"]["ratio"] == 1.0
    assert all(v["median_s"] > 0 for v in paths.values())
    # one process on whole minibatches, two ranks on halves: the same training up to float32
    # rounding, a hundred times less than training moved the loss
    single, parallel = (paths[k]["final_loss"] for k in ("single_eager", "data_parallel_eager"))
    assert parallel == pytest.approx(single, rel=1e-5)
    assert abs(data["initial_loss"] - single) > 100 * 1e-5 * single

    # the population: all 8 members in one process against 4 on each rank, every member's
    # final loss gathered back in member order
    paths = members["paths"]
    assert set(paths) == {"single_eager", "population_parallel_eager"} and paths["single_eager"]["ratio"] == 1.0
    split = paths["population_parallel_eager"]
    assert all(v["median_s"] > 0 for v in paths.values()) and len(split["rank_epoch_s"]) == 2
    assert split["epoch_s"] == [max(times) for times in zip(*split["rank_epoch_s"])]  # the slowest rank's
    start, single, parallel = (torch.tensor(x) for x in (members["initial_loss"], paths["single_eager"]["final_loss"],
                                                          split["final_loss"]))
    assert start.shape == single.shape == (8,)
    torch.testing.assert_close(parallel, single, rtol=1e-5, atol=0.0)
    assert bool(((start - single).abs() > 100 * 1e-5 * single.abs()).all()), (start, single)


def test_measure_pairs_each_round_with_the_baselines_round(monkeypatch):
    from benchmarks import epoch

    # each path's warm-up, then its epoch in each of 3 rounds; the baseline is the second path
    seconds = {"fast": iter([9.0, 1.0, 3.0, 2.0]), "base": iter([9.0, 2.0, 2.0, 8.0])}
    order = []

    def timed(run):
        order.append(run())
        return next(seconds[order[-1]]), None

    monkeypatch.setattr(epoch, "timed", timed)
    out = epoch.measure({"fast": lambda: "fast", "base": lambda: "base"}, 3, 1.0, lambda msg: None, loss=None,
                        baseline="base")
    # warm-ups in order, then rounds starting one path later each time
    assert order == ["fast", "base", "fast", "base", "base", "fast", "fast", "base"]
    assert out["fast"]["epoch_s"] == [1.0, 3.0, 2.0] and out["base"]["epoch_s"] == [2.0, 2.0, 8.0]
    assert out["fast"]["ratio"] == round(2.0 / 2.0, 3)  # median over median
    assert out["fast"]["ratio_paired"] == 0.5 and out["fast"]["ratio_paired_range"] == [0.25, 1.5]
    assert out["base"]["ratio_paired"] == 1.0


def test_distributed_cnn_population_split_over_ranks_trains_what_the_template_loop_trains(tmp_path):
    """``--population cnn --reference``: 4 CNNs one after another in the template's loop (in
    one process, and 2 + 2 on two ranks), in one vmapped step, and 2 + 2 on two ranks reach
    the same parameters, member by member, up to float32 rounding; ``ratio_to_reference`` is
    each path's median over the loop's, ``ratio_to_split_reference`` the ranks' over the
    split loop's."""
    from benchmarks import distributed

    out = tmp_path / "bench.json"
    assert distributed.main(["--smoke", "--no-compile", "--default-malloc", "--quiet", "--modes", "population",
                             "--population", "cnn", "--reference", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    members = report["results"]["population"]
    paths = members["paths"]
    assert set(paths) == {"single_eager", "reference", "population_parallel_eager", "reference_parallel"}
    for name, v in paths.items():
        assert "ratio_paired" not in v  # the single process's and the ranks' rounds are not pairs
        assert v["ratio_to_reference"] == round(v["median_s"] / paths["reference"]["median_s"], 3)
        split = round(v["median_s"] / paths["reference_parallel"]["median_s"], 3)
        assert v.get("ratio_to_split_reference") == (split if name.endswith("parallel_eager") or
                                                     name == "reference_parallel" else None), name
    start, reference, single, parallel, split = (torch.tensor(x) for x in (
        members["initial_loss"], paths["reference"]["final_loss"], paths["single_eager"]["final_loss"],
        paths["population_parallel_eager"]["final_loss"], paths["reference_parallel"]["final_loss"]))
    assert start.shape == reference.shape == (4,) and len(set(start.tolist())) == 4  # four seeds
    for other in (split, single):  # the loop on 1 thread, the vmapped step on 2: rounding apart
        torch.testing.assert_close(other, reference, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(parallel, reference, rtol=1e-5, atol=0.0)
    assert bool(((start - reference).abs() > 100 * 1e-5 * reference.abs()).all()), (start, reference)


@pytest.mark.parametrize("argv, message", [
    (["--no-compile", "--no-eager"], "--no-compile and --no-eager leave nothing to time: give at most one of them"),
    (["--modes", "data", "--reference"],
     "--reference times the population mode's members: give it with --modes population"),
    (["--population", "cnn", "--ranks", "5"],
     "--ranks must be at most the population's 4 members with --modes population, got 5"),
    (["--modes", "data,pop"], "--modes must be a comma-separated subset of data,population, got 'data,pop'"),
    (["--ranks", "9"], "--ranks must be at most the population's 8 members with --modes population, got 9"),
    (["--modes", "data", "--population", "cnn"],
     "--population chooses the population mode's members: give it with --modes population"),
    (["--json", "."], "--json .: it is a folder, not a file"),
])
def test_distributed_bad_options_exit_with_a_message(argv, message, capsys, monkeypatch):
    from benchmarks import distributed

    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 16)  # the members are the limit, not the cores
    with pytest.raises(SystemExit) as stopped:
        distributed.parse_args(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m benchmarks.distributed: error: {message}"


def test_when_one_rank_fails_the_others_are_stopped_at_once():
    from benchmarks.distributed import wait_all

    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.monotonic()
    assert wait_all([waiting, failing]) == [-signal.SIGKILL, 3]
    assert time.monotonic() - start < 30


def test_distributed_split_population_is_timed_by_its_slowest_rank():
    from benchmarks.distributed import slowest_rank

    # rank 0 is slower in the first repetition, rank 1 in the second and in warm-up
    shares = [{"split": {"warmup_s": 1.0, "epoch_s": [0.3, 0.1, 0.2], "final_loss": [1.5, 2.5]}},
              {"split": {"warmup_s": 2.0, "epoch_s": [0.2, 0.4, 0.1], "final_loss": [3.5]}}]
    joined = slowest_rank(shares)["split"]
    assert joined["epoch_s"] == [0.3, 0.4, 0.2] and joined["median_s"] == 0.3 and joined["warmup_s"] == 2.0
    assert joined["rank_epoch_s"] == [[0.3, 0.1, 0.2], [0.2, 0.4, 0.1]] and joined["rank_warmup_s"] == [1.0, 2.0]
    assert joined["final_loss"] == [1.5, 2.5, 3.5]  # the members in rank order


JAX_MISSING = importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None


@pytest.mark.skipif(JAX_MISSING, reason="needs jax and optax (pip install -e '.[peers]')")
@pytest.mark.parametrize("network_type", ["mlp", "cnn"])
def test_jax_peer_trains_the_template_loops_parameters(network_type):
    """Same start, same minibatches (4 full ones and a partial fifth, so the scan path runs
    one scan of 4 and a jitted step): each JAX path reaches the template loop's parameters
    up to float32 rounding, far below the 1e-3 an Adam step moves them. In a child process,
    so that JAX's threads stay out of the test worker."""
    code = f"""
import json, torch
from benchmarks.epoch import SMOKE_CNN, SMOKE_MLP, reference_trainer, synthetic_data
from benchmarks.jax_peer import jax_paths
from fn_trainer import build_network, one_hot
config = {{"mlp": SMOKE_MLP, "cnn": SMOKE_CNN}}["{network_type}"]
X, y = synthetic_data(300, seed=1)
T = one_hot(y, 10)
net = build_network("{network_type}", config)
start = net.init(0)
reference = reference_trainer("{network_type}", config, 1e-3, start)
reference.train_steps(X, T, 64, 5)
want = dict(reference.network.named_parameters())
out = {{}}
for name, run in jax_paths(net.module, start, 1e-3, X, T, 64, 5).items():
    reached = run()
    out[name] = {{"keys": sorted(reached) == sorted(want),
                 "error": max(float((reached[k] - want[k].detach()).abs().max()) for k in want),
                 "moved": min(float((want[k].detach() - start[k]).abs().max()) for k in want)}}
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    out = json.loads(done.stdout.splitlines()[-1])
    assert set(out) == {"jax_jit", "jax_scan"}
    for name, r in out.items():
        assert r["keys"] and r["moved"] > 1e-3 and r["error"] < 1e-5, (name, r)


@pytest.mark.skipif(JAX_MISSING, reason="needs jax and optax (pip install -e '.[peers]')")
def test_jax_option_adds_the_jax_paths_and_names_the_fastest(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.epoch", "--smoke", "--jax", "--no-compile",
                           "--shapes", "mlp", "--default-malloc", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    paths = json.loads(out.read_text())["results"]["mlp"]["paths"]
    assert {"jax_jit", "jax_scan"} <= set(paths)
    want = paths["reference"]["final_loss"]
    for name in ("jax_jit", "jax_scan"):
        assert abs(paths[name]["final_loss"] - want) <= 1e-5 * abs(want), (name, paths[name]["final_loss"], want)
    fastest = min(("jax_jit", "jax_scan"), key=lambda name: paths[name]["median_s"])
    assert f"mlp    JAX's best: {fastest} " in done.stdout


def test_jax_option_without_jax_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    with pytest.raises(SystemExit) as stopped:
        main(["--jax", "--smoke"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m benchmarks.epoch: error: --jax needs jax and optax: pip install -e '.[peers]'")


def test_ctrl_c_is_one_line_and_status_130(capsys):
    from benchmarks.report_file import exit_status

    def interrupted():
        raise KeyboardInterrupt
    assert exit_status(interrupted, "python -m benchmarks.epoch") == 130
    assert capsys.readouterr().err == "python -m benchmarks.epoch: interrupted; nothing was written\n"
    assert exit_status(lambda: 1, "python -m benchmarks.epoch") == 1


@pytest.mark.parametrize("available, argv, message", [
    (False, ["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
    (True, ["--device", "cuda", "--jax"], "--jax times the peer on the CPU only; leave out --jax or --device cuda"),
    (True, ["--device", "cuda", "--check-targets"],
     "--check-targets: the targets are stated for CPUs; a --device cuda run checks none"),
])
def test_a_gpu_run_needs_a_gpu_and_refuses_what_only_a_cpu_run_does(available, argv, message, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m benchmarks.epoch: error: {message}"
