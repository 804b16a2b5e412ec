import dataclasses
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torch._dynamo
from compiling import compiles
from fakedata import write_fashion_mnist

from fn_trainer.app import cli
from fn_trainer.app.experiments import EXPERIMENTS, experiment, training
from fn_trainer.app.experiments.context import CALIBRATION_FILE, Context, Settings
from fn_trainer.app.experiments.records import load_record
from fn_trainer.speed.calibration import DEFAULTS, cpu_key, store_calibration
from fn_trainer.training import population
from fn_trainer.training.checkpoint import load_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ONE_EPOCH = ["--epochs", "1", "--limit", "16", "--no-progress"]
QUICK = [*ONE_EPOCH, "--seeds", "1"]  # one run per configuration
SEEDS = 2  # runs per configuration where a test trains several: the fewest with a spread
# Figures each experiment must produce, the heading of its report section and lines of it.
EXPECTED = {
    "equivariance": (["original.png", "features.png", "shift_difference.png", "rotation_difference.png"],
                     "## 1. Equivariance", []),
    "lr-sweep": (["validation_accuracy_raw.png", "validation_accuracy_normalised.png"], "## 2. Learning rate",
                 ["Network: MLP 256-256 (", "batch size 128"]),
    "depth": (["accuracy.png", "gradient_norm.png"], "## 3. Depth",
              ["| MLP 256-256 | mlp |", "| deep MLP ", "| on | 128 |"]),
    "cnn": (["accuracy.png"], "## 4. CNN", ["Kernel size solved for the budget: ", "| CNN (16,32,45) k="]),
    # the reference MLP is in the parameter table, not among the runs
    "cnn-shapes": (["accuracy.png"], "## 5. CNN shapes",
                   ["| MLP 256-256 | mlp |", "Shallow CNN channel count solved for the budget: ",
                    "trained here with batch size 256."]),
}
N_RUNS = {"equivariance": 0, "lr-sweep": 6, "depth": 2, "cnn": 2, "cnn-shapes": 3}


@pytest.fixture(scope="module")
def small_data_root(tmp_path_factory) -> Path:
    """Synthetic IDX data small enough for many CLI runs: 64 training images and a
    validation set of 200 (the test split is then empty)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("small"), n_train=64, n_test=200, seed=1)


def calibrated(**compile_min_steps):
    """The defaults as a calibration of this CPU, with these ``compile_min_steps``."""
    return DEFAULTS._replace(cpu=cpu_key(), compile_min_steps={**DEFAULTS.compile_min_steps, **compile_min_steps})


def run_cli(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_png(path: Path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01  # not a blank canvas


def result_files(out: Path):
    return sorted((out / "runs").glob("*.json"))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_subcommand_writes_figures_logs_and_section(name, fake_data_root, tmp_path, capsys):
    quick = ["--limit", "16"] if name == "equivariance" else [*ONE_EPOCH, "--seeds", SEEDS]
    rc, out, _ = run_cli([name, "--data", fake_data_root, "--out", tmp_path, *quick], capsys)
    assert rc == 0
    figures, heading, lines = EXPECTED[name]
    for filename in figures:
        assert_png(tmp_path / name / filename)
    report = (tmp_path / "report.md").read_text()
    assert heading in report
    assert all(line in report for line in lines), name
    assert f"Command: `fn-trainer {name} --data {fake_data_root}" in report
    for filename in figures:
        assert f"]({name}/{filename})" in report
    files = result_files(tmp_path)
    assert len(files) == N_RUNS[name] * SEEDS
    for f in files:
        data = json.loads(f.read_text())
        assert data["config_hash"] in f.name
        assert len(data["logs"]["validation_accuracy"]) == 2  # before training + 1 epoch
        assert len(data["logs"]["train_gradient_norm"]) == 1
        assert data["wall_time_s"] >= 0 and data["n_params"] > 0
        assert data["spec"]["name"] in out  # one summary line per finished run


def test_equivariance_json_states_the_measured_differences(small_data_root, tmp_path, capsys):
    rc, _, _ = run_cli(["equivariance", "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 0
    stats = json.loads((tmp_path / "equivariance" / "equivariance.json").read_text())["stats"]
    assert stats["shift_interior_max"] == 0.0
    assert stats["rotation_interior_max"] > 0.0
    assert "zero (to float precision) for: shift." in (tmp_path / "report.md").read_text()


def test_the_equivariance_question_trains_nothing_and_reads_no_calibration(small_data_root, tmp_path, capsys):
    (tmp_path / "calibration.json").write_text("{not json")
    rc, _, err = run_cli(["equivariance", "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 0 and err == "" and (tmp_path / "equivariance" / "equivariance.json").is_file()
    rc, _, err = run_cli(["depth", *QUICK, "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 2 and "calibration.json: not a calibration file" in err  # a command that trains does


def test_lr_sweep_table_and_best_pair(small_data_root, tmp_path, capsys):
    rc, _, _ = run_cli(["lr-sweep", "--data", small_data_root, "--out", tmp_path, "--lrs", "0.01", "0.001",
                        "--epochs", "2", "--limit", "64", "--no-progress", "--seeds", "1"], capsys)
    assert rc == 0
    section = (tmp_path / "lr-sweep" / "section.md").read_text()
    assert section.count("| lr=0.01 |") == 2 and section.count("| lr=0.001 |") == 2
    records = [load_record(p) for p in result_files(tmp_path)]
    top = max(r.best()[0] for r in records)
    named = [r for r in records if f"Best pair: lr={r.spec.lr:g}, normalisation "
             f"{'on' if r.spec.normalization else 'off'}:" in section]
    assert len(named) == 1 and named[0].best()[0] == top
    assert f"best validation accuracy {top:.4f}" in section
    assert f"above 80%: {'yes' if top > 0.8 else 'no'}." in section


def test_rerun_skips_finished_runs_and_force_reruns(small_data_root, tmp_path, capsys):
    args = ["depth", "--data", small_data_root, "--out", tmp_path, *QUICK]
    assert run_cli(args, capsys)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in result_files(tmp_path)}
    rc, out, _ = run_cli(args, capsys)
    assert rc == 0 and out.count("already done, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in result_files(tmp_path)} == stamps
    rc, out, _ = run_cli(args + ["--force"], capsys)
    assert rc == 0 and "skipped" not in out
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)


def test_force_retrains_earlier_runs_and_a_run_two_questions_share_once(small_data_root, tmp_path, monkeypatch):
    """``all --force``: what an earlier command stored is trained again, and the MLP that
    questions 3 and 4 share is trained once, then reused by the second question."""
    trained = []
    real_train_one = training.train_one
    monkeypatch.setattr(training, "train_one", lambda ctx, spec: trained.append(spec.name) or real_train_one(ctx, spec))
    settings = Settings(data=Path(small_data_root), out=tmp_path, epochs=1, limit=16, seeds=1,
                        progress=False, download=False)
    experiment("depth").run(Context(settings, echo=lambda line: None))
    earlier = sorted(trained)
    assert len(earlier) == 2

    trained.clear()
    ctx = Context(dataclasses.replace(settings, force=True), echo=lambda line: None)
    for name in ("depth", "cnn"):
        experiment(name).run(ctx)
    assert len(trained) == len(set(trained)) == 3 and set(earlier) < set(trained)


def test_changed_configuration_is_a_new_run(small_data_root, tmp_path, capsys):
    base = ["depth", "--data", small_data_root, "--out", tmp_path, *QUICK]
    assert run_cli(base, capsys)[0] == 0
    rc, out, _ = run_cli(base + ["--lr", "0.001"], capsys)
    assert rc == 0 and "skipped" not in out
    assert len(result_files(tmp_path)) == 4


def test_other_data_is_never_taken_as_done(small_data_root, tmp_path, capsys):
    args = ["depth", "--data", small_data_root, "--out", tmp_path, "--epochs", "1", "--no-progress", "--seeds", "1"]
    assert run_cli(args + ["--limit", "16"], capsys)[0] == 0
    rc, out, _ = run_cli(args + ["--limit", "17"], capsys)
    assert rc == 0 and "skipped" not in out


def test_single_experiment_keeps_other_sections(small_data_root, tmp_path, capsys):
    common = ["--data", small_data_root, "--out", tmp_path]
    assert run_cli(["equivariance", *common], capsys)[0] == 0
    assert run_cli(["cnn", *common, *QUICK], capsys)[0] == 0
    report = (tmp_path / "report.md").read_text()
    assert report.index("## 1. Equivariance") < report.index("## 4. CNN")
    assert run_cli(["equivariance", *common, "--seed", "3"], capsys)[0] == 0
    report = (tmp_path / "report.md").read_text()
    assert "## 4. CNN" in report and "--seed 3" in report and report.count("## 1. Equivariance") == 1


def test_interrupted_run_resumes_to_the_same_result(small_data_root, tmp_path, capsys, monkeypatch):
    args = ["lr-sweep", "--sequential", "--lrs", "0.01", "--data", small_data_root, "--limit", "64",
            "--batch-size", "16", "--epochs", "2", "--no-progress", "--seeds", "1"]
    assert run_cli([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    real_make_step = training.make_step
    calls = {"n": 0}

    def interrupting_make_step(*a, **k):
        step = real_make_step(*a, **k)

        def step_then_interrupt(*sa):
            calls["n"] += 1
            if calls["n"] == 6:  # second epoch of the first run
                raise KeyboardInterrupt
            time.sleep(0.1)  # the part before the interrupt takes at least 0.5 s
            return step(*sa)

        return step_then_interrupt

    monkeypatch.setattr(training, "make_step", interrupting_make_step)
    rc, _, err = run_cli([*args, "--out", tmp_path / "cut"], capsys)
    assert rc == 130 and "rerun with --resume to continue the interrupted one from its checkpoint" in err
    (checkpoint,) = (tmp_path / "cut" / "runs").glob("*.checkpoint.pt")
    assert result_files(tmp_path / "cut") == []
    monkeypatch.setattr(training, "make_step", real_make_step)
    rc, out, _ = run_cli([*args, "--out", tmp_path / "cut", "--resume"], capsys)
    assert rc == 0 and f"resuming from the checkpoint {checkpoint.name}\n" in out
    whole = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "whole")}
    cut = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "cut")}
    assert cut == whole
    assert list((tmp_path / "cut" / "runs").glob("*.checkpoint.pt")) == []
    # the resumed run's wall time counts the interrupted part's too
    resumed_record = json.loads((tmp_path / "cut" / "runs" / checkpoint.name.replace(".checkpoint.pt", ".json")).read_text())
    assert resumed_record["wall_time_s"] >= 0.5
    # without --resume the same interruption's checkpoint is trained over, and said so
    monkeypatch.setattr(training, "make_step", interrupting_make_step)
    calls["n"] = 0
    assert run_cli([*args, "--out", tmp_path / "again"], capsys)[0] == 130
    monkeypatch.setattr(training, "make_step", real_make_step)
    rc, _, err = run_cli([*args, "--out", tmp_path / "again"], capsys)
    assert rc == 0 and err == (f"fn-trainer: warning: {checkpoint.name} holds an interrupted run: it trains from the "
                               "start and replaces it (--resume would continue it)\n")


@pytest.mark.parametrize("target", ["a copy outside", "nothing"])
def test_a_link_at_a_checkpoint_is_refused_not_read_through(target, small_data_root, tmp_path, capsys, monkeypatch):
    args = ["depth", "--data", small_data_root, "--limit", "64", "--batch-size", "16", "--epochs", "2",
            "--no-progress", "--seeds", "1", "--out", tmp_path / "out"]
    real_make_step = training.make_step

    def interrupting_make_step(*a, **k):
        step, calls = real_make_step(*a, **k), []

        def step_then_interrupt(*sa):
            calls.append(1)
            if len(calls) == 6:  # in the second epoch
                raise KeyboardInterrupt
            return step(*sa)
        return step_then_interrupt

    monkeypatch.setattr(training, "make_step", interrupting_make_step)
    assert run_cli(args, capsys)[0] == 130
    monkeypatch.setattr(training, "make_step", real_make_step)
    (checkpoint,) = (tmp_path / "out" / "runs").glob("*.checkpoint.pt")
    outside = tmp_path / "outside.pt"
    checkpoint.rename(outside)
    checkpoint.symlink_to(outside if target == "a copy outside" else tmp_path / "nothing")
    rc, _, err = run_cli([*args, "--resume"], capsys)
    assert rc == 2 and err == (f"fn-trainer: error: the checkpoint '{checkpoint}' is a symbolic link: fn-trainer "
                               "reads no checkpoint through a link; remove it\n")


SIGTERM_CHILD = """
import sys, time
from fn_trainer.app import cli
from fn_trainer.app.experiments import training

real_make_step = training.make_step

def slow_make_step(*a, **k):
    step, calls = real_make_step(*a, **k), []

    def slow(*sa):
        calls.append(1)
        if len(calls) == 6:  # in the second epoch, its second step
            print("READY", flush=True)
        if len(calls) >= 6:
            time.sleep(0.2)
        return step(*sa)
    return slow

training.make_step = slow_make_step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_saves_the_position_and_says_how_to_resume(small_data_root, tmp_path):
    """A job scheduler's stop, or torchrun's when another process failed, is handled as
    Ctrl-C is: the run saves where it stands, and one line says so."""
    script, out = tmp_path / "child.py", tmp_path / "out"
    script.write_text(SIGTERM_CHILD)
    child = subprocess.Popen([sys.executable, str(script), "depth", "--data", str(small_data_root), "--out", str(out),
                              "--limit", "64", "--batch-size", "16", "--epochs", "3", "--no-progress",
                              "--seeds", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == ("fn-trainer: stopped by SIGTERM; finished runs and the current position "
                                            "are saved, rerun with --resume to continue")
    (checkpoint,) = (out / "runs").glob("*.checkpoint.pt")
    data = load_checkpoint(checkpoint)
    assert (data["epoch"], data["batch"]) in ((1, 1), (1, 2))  # where the steps stood, not the epoch's start


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without a GPU")
def test_torchs_cuda_home_warning_is_not_printed_by_a_command(small_data_root, tmp_path, capsys, monkeypatch):
    # every compile finds CUDA_HOME again and warns where CUDA's tools are and no GPU is
    from torch.utils import cpp_extension

    find = getattr(cpp_extension, "_find_cuda_home", None)
    if find is None:
        pytest.skip("this torch finds CUDA_HOME otherwise")
    assert run_cli(["depth", *QUICK, "--data", small_data_root, "--out", tmp_path / "out"], capsys)[0] == 0
    monkeypatch.setattr(cpp_extension.os.path, "exists", lambda path: True)  # as if CUDA's tools were here
    warned = []
    monkeypatch.setattr(logging.Handler, "handle", lambda self, record: warned.append(record.getMessage()))
    find()
    assert not any("No CUDA runtime is found" in message for message in warned)


def test_an_interrupt_before_any_checkpoint_does_not_offer_resume(small_data_root, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "make_step", interrupted)
    rc, _, err = run_cli(["depth", *QUICK, "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 130 and err == ("fn-trainer: interrupted before any run's first checkpoint; finished runs are saved, "
                                 "and a rerun trains the others from the start\n")
    # a checkpoint an earlier command left is still there to resume, whenever this one stops
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "mlp-earlier.checkpoint.pt").write_bytes(b"")
    rc, _, err = run_cli(["depth", *QUICK, "--data", small_data_root, "--out", tmp_path, "--resume"], capsys)
    assert rc == 130 and "rerun with --resume to continue the interrupted one from its checkpoint" in err


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_says_the_current_position_is_saved_on_sigterm(rank, tmp_path, capsys, monkeypatch):
    """In a data-parallel run only rank 0 writes the checkpoint, so another rank cannot say its
    position was saved (a population's share, which it checkpoints itself, may have been)."""
    def terminated(*a, **k):
        raise cli.Terminated

    monkeypatch.setattr(cli, "run_experiments", terminated)
    for name, value in (("RANK", rank), ("WORLD_SIZE", 2), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, str(value))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlp-earlier.checkpoint.pt").write_bytes(b"")
    assert cli.main(["depth", "--out", str(tmp_path)]) == 128 + signal.SIGTERM
    kept = ("finished runs are saved, rerun with --resume to continue from the last checkpoint" if rank
            else "finished runs and the current position are saved, rerun with --resume to continue")
    assert capsys.readouterr().err == f"fn-trainer: {'rank 1 of 2: ' if rank else ''}stopped by SIGTERM; {kept}\n"


def test_diverged_runs_are_reported_as_such(small_data_root, tmp_path, capsys):
    rc, out, _ = run_cli(["lr-sweep", "--sequential", "--lrs", "1e30", "--data", small_data_root, "--out", tmp_path,
                          "--epochs", "3", "--no-progress", "--seeds", "1"], capsys)
    assert rc == 0 and out.count("DIVERGED") == 2
    records = [load_record(p) for p in result_files(tmp_path)]
    assert all(r.diverged for r in records)
    assert all(len(r.curve("validation_accuracy")) < 4 for r in records)  # stopped, not padded
    section = (tmp_path / "lr-sweep" / "section.md").read_text()
    assert section.count("| `diverged in epoch") == 2
    assert_png(tmp_path / "lr-sweep" / "validation_accuracy_raw.png")


@pytest.mark.parametrize("args, option", [
    (["depth", "--epochs", "-1"], "--epochs"),
    (["depth", "--batch-size", "0"], "--batch-size"),
    (["cnn", "--limit", "0"], "--limit"),
    (["depth", "--limit", "1"], "--limit must be an int >= 2, got 1"),
    (["cnn", "--lr", "0"], "--lr"),
    (["cnn", "--lr", "nan"], "--lr"),
    (["lr-sweep", "--lrs", "0.1", "inf"], "--lrs"),
    # float32's range: a run of them would fail only when it starts, after the runs before it
    (["all", "--lr", "1e-50"],
     "--lr must be a normal number in torch.float32, the parameters' dtype (1.18e-38 to 3.4e+38), got 1e-50"),
    (["lr-sweep", "--sequential", "--lrs", "0.001", "1e39"], "--lrs must be a normal number in torch.float32"),
    (["lr-sweep", "--lrs", "0.01", "0.1", "1e-2"], "--lrs must name each learning rate once, got 0.01 more than once"),
    (["lr-sweep", "--lrs", "0.001", "0.0010000001"],
     "--lrs 0.001 and 0.0010000001 are both written 0.001 in run names and the report"),
    (["depth", "--seed", "-4"], "--seed"),
    (["depth", "--seed", str(2**32)], "--seed must be an integer in [0, 2**32 - 1 = 4294967295]"),
    (["equivariance", "--seed", "18446744073709551616"], "--seed must be an integer in [0, 2**32 - 1"),
    (["depth", "--device", "no-such-device"], "--device"),
    (["depth", "--device", "meta"], "--device must be 'cpu' or 'cuda'"),
    (["cnn", "--device", "mps"], "--device must be 'cpu' or 'cuda'"),
    (["cnn", "--device", "cuda:99"], "--device 'cuda:99'"),
    (["lr-sweep", "--threads", "0"], "--threads"),
    (["lr-sweep", "--threads", "40000"], f"--threads must be between 1 and {os.cpu_count()} (this machine's CPU count)"),
    (["depth", "--threads", str(os.cpu_count() + 1)], "--threads must be between 1 and"),
    (["depth", "--seeds", "0"], "--seeds must be an int >= 1, got 0"),
    (["lr-sweep", "--seeds", "-1"], "--seeds must be an int >= 1, got -1"),
    (["depth", "--seeds", "10001"], "--seeds must be at most 10,000, got 10,001"),
    (["cnn", "--rank-timeout", "1e14"], "--rank-timeout must be at most 31,536,000 seconds (a year), got 1e+14"),
    # torch's clock counts whole milliseconds: 1e-9 s was 0 ms, in which no rank joins the others
    (["cnn", "--rank-timeout", "1e-9"], "--rank-timeout must be at least 1 second, got 1e-09"),
    (["all", "--seed", str(2**32 - 2), "--seeds", "3"],
     "--seeds 3 from --seed 4294967294 reaches seed 4294967296, above the largest seed 2**32 - 1"),
])
def test_bad_option_values_fail_with_one_line(args, option, small_data_root, tmp_path, capsys):
    rc, out, err = run_cli([*args, "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"fn-trainer: error: {option}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", ["--out", "--data"])
@pytest.mark.parametrize("name", [b"o_\xff", b"caf\xe9", b"\xc3"])
def test_a_path_that_is_not_utf8_is_refused_before_training(option, name, small_data_root, tmp_path, capsys):
    bad = os.fsdecode(os.path.join(os.fsencode(tmp_path), name))  # as Python decodes argv
    paths = {"--data": str(small_data_root), "--out": str(tmp_path / "out"), option: bad}
    rc, out, err = run_cli(["depth", *QUICK, "--data", paths["--data"], "--out", paths["--out"]], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"fn-trainer: error: {option} must be a UTF-8 path")
    assert not os.path.exists(os.fsencode(bad)) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--out", "--data"])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_out_or_data_is_refused_and_nothing_is_written(option, empty, small_data_root, tmp_path, capsys,
                                                                 monkeypatch):
    # an empty --data taken as "." would download the data set into the current folder
    monkeypatch.chdir(tmp_path)
    paths = {"--data": str(small_data_root), "--out": str(tmp_path / "out"), option: empty}
    rc, _, err = run_cli(["equivariance", "--data", paths["--data"], "--out", paths["--out"]], capsys)
    assert rc == 2 and err == f"fn-trainer: error: {option} must name a folder, got an empty string\n"
    assert list(tmp_path.iterdir()) == []


def test_out_expands_a_home_folder_as_data_does(small_data_root, tmp_path, capsys, monkeypatch):
    # --out=~/x reaches no shell that would expand it: a folder named "~" is no one's intent
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["equivariance", "--data", small_data_root, "--out=~/results"], capsys)
    assert rc == 0, err
    assert (tmp_path / "home" / "results" / "report.md").is_file() and not (tmp_path / "~").exists()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a thread count other than the current one")
def test_threads_are_the_callers_again_after_a_command(small_data_root, tmp_path, capsys, monkeypatch):
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    rc, _, err = run_cli(["depth", *QUICK, "--threads", other, "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 0, err
    assert torch.get_num_threads() == before
    seen = []

    def measuring_fails(out):
        seen.append(torch.get_num_threads())
        raise ValueError("no calibration")

    monkeypatch.setattr(cli, "calibrate_into", measuring_fails)
    rc, _, err = run_cli(["calibrate", "--threads", other, "--out", tmp_path / "c"], capsys)
    assert rc == 2 and err == "fn-trainer: error: no calibration\n"
    assert seen == [other] and torch.get_num_threads() == before


def test_no_command_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and out == ""
    assert err == "fn-trainer: error: a command is required: fn-trainer COMMAND ...; fn-trainer --help lists them\n"


def test_unwritable_out_fails_with_one_line(small_data_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = run_cli(["depth", "--data", small_data_root, "--out", blocker / "out"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("fn-trainer: error: --out")


def test_missing_data_fails_with_one_line(tmp_path, capsys):
    rc, _, err = run_cli(["cnn", "--data", tmp_path / "nowhere", "--out", tmp_path / "out" / "new", "--no-download"],
                         capsys)
    assert rc == 2 and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # a command that fails makes no output folder
    assert err.startswith("fn-trainer: error: Fashion-MNIST is not available")
    assert err.count("train-images-idx3-ubyte") == 1  # each missing file named once
    assert "downloading is off (--no-download" in err


@pytest.mark.parametrize("args, message", [
    (["depth", "--seeds", "x"], "argument --seeds: invalid int value: 'x'"),
    (["cnn", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["no-such-experiment"], "argument COMMAND: invalid choice: 'no-such-experiment'"),
])
def test_unparsable_arguments_fail_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"fn-trainer: error: {message}")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["depth", "--epochs", "many"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-experiment"])
    assert e.value.code == 2


@pytest.mark.parametrize("name", [*EXPERIMENTS, "all", "export-solution"])
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"fn-trainer {name}" in out
    if name != "export-solution":
        assert "--data" in out and "--out" in out and "--seed" in out


def test_training_options_are_offered_where_they_apply(capsys):
    for name, present, absent in (("lr-sweep", ["--lrs", "--sequential"], ["--lr "]),
                                  ("depth", ["--lr ", "--epochs", "--batch-size", "--force", "--resume",
                                             "--seeds"], ["--lrs"]),
                                  ("all", ["--lrs", "--lr "], []),
                                  ("equivariance", [], ["--epochs", "--lr ", "--seeds"])):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert all(p in out for p in present) and not any(a in out for a in absent), name


@pytest.mark.parametrize("name", [*EXPERIMENTS, "all"])
def test_options_left_out_give_the_settings_defaults(name):
    settings = cli.settings_of(cli.build_parser().parse_args([name]), "the command")
    # as given: validate makes both Paths
    assert dataclasses.replace(settings, out=Path(settings.out), data=Path(settings.data)) == Settings(
        command="the command")


def test_every_option_sets_the_setting_of_its_name():
    args = cli.build_parser().parse_args([
        "all", "--data", "d", "--out", "o", "--seed", "4", "--limit", "9", "--no-download", "--epochs", "3",
        "--batch-size", "7", "--lrs", "0.1", "0.2", "--sequential", "--lr", "0.5", "--force", "--resume",
        "--device", "cuda", "--no-progress", "--seeds", "5"])
    assert cli.settings_of(args, "c") == Settings(
        data="d", out="o", epochs=3, seed=4, seeds=5, batch_size=7, limit=9, lr=0.5, lrs=(0.1, 0.2),
        force=True, resume=True, sequential=True, progress=False, download=False, device="cuda", command="c")


def test_export_solution_writes_the_file(tmp_path, capsys):
    rc, out, _ = run_cli(["export-solution", tmp_path / "solution.py"], capsys)
    assert rc == 0 and (tmp_path / "solution.py").stat().st_size > 0
    assert "solution.py" in out
    # the errors name the argument as the help shows it
    rc, _, err = run_cli(["export-solution", tmp_path / "api"], capsys)
    assert rc == 2 and err == f"fn-trainer: error: OUT must name a .py file, got '{tmp_path / 'api'}'\n"
    (tmp_path / "folder.py").mkdir()
    rc, _, err = run_cli(["export-solution", tmp_path / "folder.py"], capsys)
    assert rc == 2 and err == f"fn-trainer: error: OUT must name a file, but '{tmp_path / 'folder.py'}' is a folder\n"


def test_python_dash_m_help(monkeypatch, capsys):
    # in this process; test_grading's bundle test runs ``python -m fn_trainer`` in a fresh one
    monkeypatch.setattr(sys, "argv", ["fn_trainer", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("fn_trainer", run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in [*EXPERIMENTS, "all", "export-solution"]:
        assert name in out


@pytest.mark.realdata
def test_real_data_smoke(real_data_root, tmp_path, capsys):
    rc, out, _ = run_cli(["lr-sweep", "--data", real_data_root, "--out", tmp_path, "--lrs", "0.01",
                          "--epochs", "1", "--limit", "2000", "--no-progress", "--seeds", "1"], capsys)
    assert rc == 0
    records = {r.spec.normalization: r for r in map(load_record, result_files(tmp_path))}
    assert records[True].final() > 0.6  # one epoch on 2000 normalised images already learns
    assert_png(tmp_path / "lr-sweep" / "validation_accuracy_normalised.png")


def test_lr_sweep_trains_together_by_default_and_alone_with_sequential(small_data_root, tmp_path, capsys):
    common = ["lr-sweep", "--lrs", "0.01", "0.001", "--data", small_data_root, "--epochs", "1", "--no-progress",
              "--seeds", "1"]
    assert run_cli([*common, "--out", tmp_path / "together"], capsys)[0] == 0
    assert run_cli([*common, "--out", tmp_path / "alone", "--sequential"], capsys)[0] == 0
    together = {p.name: load_record(p) for p in result_files(tmp_path / "together")}
    alone = {p.name: load_record(p) for p in result_files(tmp_path / "alone")}
    assert together.keys() == alone.keys() and len(alone) == 4
    for name, r in together.items():
        assert r.trainer.startswith("fit_sweep") and alone[name].trainer == "fit"
        # the same runs: equal up to float32 reassociation in the batched matmuls (measured: equal here;
        # an evaluation one row short moved two of them by 4e-4)
        assert r.logs["validation_loss"] == pytest.approx(alone[name].logs["validation_loss"], rel=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_sweeps_records_say_whether_it_compiled(compiled, small_data_root, tmp_path, capsys, monkeypatch):
    asked = []

    def fit_sweep(*args, compile, compiled_apply, **kw):  # the compile itself is tested elsewhere
        asked.append(compile)
        return population.fit_sweep(*args, compile=False, **kw)

    monkeypatch.setattr(training, "worth_compiling", lambda *a: compiled)
    monkeypatch.setattr(training, "fit_sweep", fit_sweep)
    rc, _, err = run_cli(["lr-sweep", "--lrs", "0.01", *QUICK, "--data", small_data_root, "--out", tmp_path], capsys)
    assert rc == 0, err
    trainers = {load_record(p).trainer for p in result_files(tmp_path)}
    assert asked == [compiled, compiled] and trainers == {f"fit_sweep (1 learning rate together{', compiled' * compiled})"}


def test_long_runs_train_with_a_compiled_step(small_data_root, tmp_path, capsys, monkeypatch):
    # the threshold is the calibration's in the output folder, per network type
    store_calibration(tmp_path / "compiled" / CALIBRATION_FILE, calibrated(mlp=4, cnn=10 ** 6))
    ctx = Context(Settings(out=tmp_path / "compiled"))
    assert training.worth_compiling(ctx, "mlp", epochs=2, n_train=2 * 128, batch_size=128)
    assert not training.worth_compiling(ctx, "mlp", epochs=1, n_train=3 * 128, batch_size=128)
    assert not training.worth_compiling(ctx, "cnn", epochs=2, n_train=2 * 128, batch_size=128)
    common = ["lr-sweep", "--sequential", "--lrs", "0.01", "--data", small_data_root, "--epochs", "2",
              "--batch-size", "32", "--no-progress", "--seeds", "1"]
    assert run_cli([*common, "--out", tmp_path / "eager"], capsys)[0] == 0
    torch._dynamo.reset()  # no earlier test's graphs count towards the recompile limit
    # one graph per run (raw and normalised inputs; each compiled step keeps a cache of its
    # own, the second one's graph coming from Inductor's), none recompiled
    with compiles(2):
        assert run_cli([*common, "--out", tmp_path / "compiled"], capsys)[0] == 0
    eager = {p.name: load_record(p) for p in result_files(tmp_path / "eager")}
    compiled = {p.name: load_record(p) for p in result_files(tmp_path / "compiled")}
    assert eager.keys() == compiled.keys() and len(eager) == 2
    for name, r in compiled.items():
        assert r.trainer == "fit (compiled)" and eager[name].trainer == "fit"
        assert r.logs["validation_loss"] == pytest.approx(eager[name].logs["validation_loss"], rel=1e-4)


@pytest.mark.parametrize("extra, modes", [([], [True, False]), (["--keep-denormals"], [False, False])])
def test_training_flushes_subnormals_unless_kept_and_restores_the_mode(extra, modes, small_data_root, tmp_path,
                                                                       capsys, monkeypatch):
    from fn_trainer.speed import denormals

    calls = []
    real = denormals.flush_denormals
    monkeypatch.setattr(denormals, "flush_denormals", lambda enabled=True: calls.append(enabled) or real(enabled))
    rc, _, _ = run_cli(["depth", "--data", small_data_root, "--out", tmp_path, *QUICK, *extra], capsys)
    assert rc == 0
    assert calls == modes  # on (or kept off) for the runs, then back to the mode before
    assert not denormals.denormals_flushed()


def test_training_turns_tf32_convolutions_off_and_restores_the_setting(small_data_root, tmp_path, capsys,
                                                                      monkeypatch):
    seen = []
    real = cli.prepare_out
    monkeypatch.setattr(cli, "prepare_out", lambda *a: seen.append(torch.backends.cudnn.allow_tf32) or real(*a))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    assert run_cli(["depth", "--data", small_data_root, "--out", tmp_path, *QUICK], capsys)[0] == 0
    assert seen == [False] and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("extra, calls", [([], 1), (["--default-malloc"], 0)])
def test_training_fixes_the_malloc_thresholds_unless_told_not_to(extra, calls, small_data_root, tmp_path, capsys,
                                                                monkeypatch):
    from fn_trainer.speed import malloc

    fixed = []
    monkeypatch.setattr(malloc, "steady_malloc", lambda: fixed.append(1))  # the process's setting stays as it is
    assert run_cli(["depth", "--data", small_data_root, "--out", tmp_path, *QUICK, *extra], capsys)[0] == 0
    assert len(fixed) == calls


def test_every_experiment_has_a_subcommand_and_a_report_section():
    from fn_trainer.app import cli, report
    from fn_trainer.app.experiments import EXPERIMENTS

    assert set(cli.HELP) == {*EXPERIMENTS, "all"}
    assert report.ORDER == tuple(EXPERIMENTS) and set(cli.TRAINING) == {*EXPERIMENTS, "all"} - {"equivariance"}


# --- several seeds per configuration -------------------------------------------------------------

@pytest.fixture
def populations(monkeypatch):
    """The members of every population the experiments train (``fit_population`` calls)."""
    calls = []
    real = training.fit_population

    def spy(network, members, *args, **kwargs):
        calls.append(list(members))
        return real(network, members, *args, **kwargs)

    monkeypatch.setattr(training, "fit_population", spy)
    return calls


def records_by_name(out: Path):
    return {p.name: load_record(p) for p in result_files(out)}


def test_the_seeds_of_each_network_train_as_one_population(small_data_root, tmp_path, capsys, populations):
    common = ["depth", "--data", small_data_root, *ONE_EPOCH, "--lr", "0.001"]
    assert run_cli([*common, "--out", tmp_path / "pop", "--seed", "5", "--seeds", "2"], capsys)[0] == 0
    assert [[(m.seed, m.lr) for m in members] for members in populations] == [[(5, 0.001), (6, 0.001)]] * 2
    together = records_by_name(tmp_path / "pop")
    assert len(together) == 4 and all(r.trainer == "fit_population (2 runs together)" for r in together.values())
    # member k is the run of seed 5 + k: the same file name, and its logs up to float32 rounding
    assert run_cli([*common, "--out", tmp_path / "alone", "--seed", "6", "--seeds", "1"], capsys)[0] == 0
    alone = records_by_name(tmp_path / "alone")
    assert len(alone) == 2 and alone.keys() <= together.keys()
    for name, r in alone.items():
        assert r.trainer == "fit"
        for key, values in r.logs.items():
            assert together[name].logs[key] == pytest.approx(values, rel=1e-5), (name, key)


def test_more_seeds_train_only_the_runs_not_yet_stored(small_data_root, tmp_path, capsys, populations):
    args = ["cnn", "--data", small_data_root, "--out", tmp_path, *ONE_EPOCH]
    assert run_cli([*args, "--seeds", "1"], capsys)[0] == 0 and populations == []
    rc, out, _ = run_cli([*args, "--seeds", "2"], capsys)
    assert rc == 0 and out.count("already done, skipped") == 2
    assert [[m.seed for m in members] for members in populations] == [[Settings().seed + 1]] * 2
    assert len(result_files(tmp_path)) == 4


@pytest.mark.parametrize("seeds", [1, SEEDS])
def test_every_run_evaluates_with_the_evaluation_chosen_for_it(small_data_root, tmp_path, capsys, monkeypatch,
                                                               seeds):
    """A run alone (``fit``) and a population both evaluate with what ``evaluation`` chose
    for them, told the rows they evaluate."""
    from fn_trainer.core.evaluate import make_evaluate

    chosen, calls = [], []

    def spy(ctx, network, compiled, rows):
        chosen.append((network.network_type, rows))
        plain = make_evaluate(network.apply)
        return lambda *args: calls.append(network.network_type) or plain(*args)

    monkeypatch.setattr(training, "evaluation", spy)
    args = ["cnn", "--data", small_data_root, "--out", tmp_path, *ONE_EPOCH, "--seeds", seeds]
    assert run_cli(args, capsys)[0] == 0
    train, valid = Context(Settings(data=small_data_root, limit=16, download=False)).data(True)
    rows = seeds * 2 * (len(train.y) + len(valid.y))  # each member, before training and after its epoch
    assert sorted(chosen) == [("cnn", rows), ("mlp", rows)]
    # each member on both sets, twice
    assert sorted(calls) == ["cnn"] * 4 * seeds + ["mlp"] * 4 * seeds


def test_one_seed_trains_as_before_seeds(small_data_root, tmp_path, capsys, populations):
    """--seeds 1: each run alone with fit (the lr sweep: fit_sweep per normalisation), logs
    exactly those of fit from the run's seed."""
    from fn_trainer.app.experiments.context import Context
    from fn_trainer.app.experiments.records import finite_logs
    from fn_trainer.core.evaluate import make_evaluate
    from fn_trainer.core.networks import build_network
    from fn_trainer.core.optim import adam
    from fn_trainer.core.step import make_step
    from fn_trainer.training.fit import fit

    assert run_cli(["depth", "--data", small_data_root, "--out", tmp_path, *QUICK], capsys)[0] == 0
    assert run_cli(["lr-sweep", "--data", small_data_root, "--out", tmp_path, *QUICK, "--lrs", "0.01"], capsys)[0] == 0
    assert populations == []
    records = [load_record(p) for p in result_files(tmp_path)]
    assert sorted(r.trainer for r in records) == ["fit", "fit", *["fit_sweep (1 learning rate together)"] * 2]
    ctx = Context(Settings(data=small_data_root, limit=16, download=False))
    for r in records:
        if r.trainer != "fit":
            continue
        net = build_network(r.spec.network_type, r.spec.config)
        params, optimizer = net.init(r.spec.seed), adam(r.spec.lr)
        train, valid = ctx.data(r.spec.normalization)
        expected = fit(make_step(net.apply, optimizer), make_evaluate(net.apply), params, optimizer.init(params),
                       train, valid, epochs=1, batch_size=r.spec.batch_size, seed=r.spec.seed, progress=False)
        assert r.logs == finite_logs(expected.logs), r.spec.name


def test_seeds_give_mean_and_std_tables_and_differences_with_intervals(small_data_root, tmp_path, capsys,
                                                                      monkeypatch):
    import matplotlib.axes

    from fn_trainer.app.statistics import format_difference, format_spread, spread, welch_difference

    populations, bands = [], []
    monkeypatch.setattr(training, "fit_population",
                        lambda network, members, *a, **k: populations.append(members) or fake_population(
                            network, members, *a, **k))
    real_fill = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, *a, **k: bands.append(a) or real_fill(self, *a, **k))
    rc, _, err = run_cli(["lr-sweep", "--data", small_data_root, "--out", tmp_path, "--lrs", "0.01", "0.001",
                          *FAKE_EPOCHS, "--seeds", SEEDS], capsys)
    assert rc == 0 and err == ""
    # every run of the sweep in one population: 2 normalisations x 2 learning rates x 2 seeds
    (members,) = populations
    seed = Settings().seed
    assert [(m.lr, m.seed) for m in members] == [(lr, seed + k) for lr in (0.01, 0.001) for k in range(SEEDS)] * 2
    assert len(bands) == 4  # one band per configuration: 2 learning rates in each of the 2 figures
    section = (tmp_path / "lr-sweep" / "section.md").read_text()
    records = [load_record(p) for p in result_files(tmp_path)]
    assert len(records) == 8

    def runs(lr, normalization):
        return [r for r in records if r.spec.lr == lr and r.spec.normalization == normalization]

    for lr in (0.01, 0.001):
        for normalization in (False, True):
            final = spread([r.final() for r in runs(lr, normalization)])
            best = spread([r.best()[0] for r in runs(lr, normalization)])
            assert final.mean != best.mean and final.std > 0
            row = (f"| lr={lr:g} | 269,322 | {lr:g} | {'on' if normalization else 'off'} | {SEEDS} | "
                   f"{format_spread(final)} | {format_spread(best)} | 0 |")
            assert row in section
    assert "Welch's t 95% confidence interval" in section
    best_lr = max((0.01, 0.001), key=lambda lr: max(spread([r.best()[0] for r in runs(lr, n)]).mean
                                                     for n in (False, True)))
    lines = section.splitlines()
    # on against off at every learning rate, in the sweep's order: none picked on these same runs
    found = [line for line in lines if line.startswith("- normalisation on against off at lr=")]
    assert len(found) == 2
    for lr, found_line in zip((0.01, 0.001), found):
        line = f"- normalisation on against off at lr={lr:g}{' (the best pair' + chr(39) + 's)' if lr == best_lr else ''}: "
        for which, value in (("final", lambda r: r.final()), ("best", lambda r: r.best()[0])):
            difference = welch_difference([value(r) for r in runs(lr, True)], [value(r) for r in runs(lr, False)])
            assert difference.diff != 0 and difference.low is not None
            line += f"{which} {format_difference(difference)}; "
        assert found_line == line[:-2]


@pytest.mark.parametrize("name, lines", [
    ("depth", ["- deep MLP 54x64 against MLP 256-256: final "]),
    ("cnn", ["- CNN (16,32,45) k=3 against MLP 256-256: final "]),
    ("cnn-shapes", ["- deep CNN (8,16,32,64) k=1 against CNN (16,32,45) k=3: final ",
                    "- shallow CNN 41ch k=28 against CNN (16,32,45) k=3: final ",
                    "- deep CNN (8,16,32,64) k=1 against shallow CNN 41ch k=28: final "]),
])
def test_every_comparison_of_the_homework_has_its_difference(name, lines, small_data_root, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(training, "fit_population", fake_population)
    monkeypatch.setattr(training, "fit", fake_fit)
    for seeds, expected in (("1", "(one seed: no interval)"), (str(SEEDS), "seed noise")):
        out = tmp_path / seeds
        assert run_cli([name, "--data", small_data_root, "--out", out, *FAKE_EPOCHS, "--seeds", seeds], capsys)[0] == 0
        section = (out / name / "section.md").read_text()
        found = [line for line in section.splitlines() if line.startswith("- ")]
        assert [line[:len(start)] for line, start in zip(found, lines)] == lines and len(found) == len(lines)
        assert all(line.count(expected) == 2 for line in found)  # the final and the best accuracy
        assert ("mean ± sample std" in section) == (seeds != "1")
        # what the seeds vary, and what the train accuracy is measured on, for the reader of the comparisons
        assert ("a seed sets the initialisation only, every run reading the same minibatches in the same order"
                in section) == (seeds != "1")
        assert "train accuracy and loss are measured on the first 16)" in section  # --limit 16: all of them


FAKE_EPOCHS = ["--epochs", "2", "--limit", "16", "--no-progress"]  # for fake_fit and fake_population


def fake_fit(*args, **kwargs):
    """``fit``'s result without training: the logs of ``fake_logs`` for the run's seed."""
    from fn_trainer.training.fit import FitResult

    return FitResult(args[2], None, fake_logs(0.3 + 0.01 * (kwargs["seed"] % 5), kwargs["epochs"]), wall_time_s=0.0)


def fake_population(network, members, *args, **kwargs):
    """``fit_population``'s results without training: member k's logs peak at 0.5 + 0.05 k."""
    from fn_trainer.training.fit import FitResult

    params = network.init(0)
    return [FitResult(params, None, fake_logs(0.3 + 0.05 * k, kwargs["epochs"]), wall_time_s=0.0)
            for k in range(len(members))]


def fake_logs(value, epochs):
    """Accuracy 0.1 before training, ``value + 0.2`` after the first epoch, ``value`` after the others."""
    accuracy = [0.1] + [value + 0.2 if e == 1 else value for e in range(1, epochs + 1)]
    return {"train_loss": [2.3] * (epochs + 1), "validation_loss": [2.3] * (epochs + 1), "train_accuracy": accuracy,
            "validation_accuracy": accuracy, "train_gradient_norm": [1.0] * epochs}


@pytest.mark.parametrize("changed", [("--limit", "48"), ("--epochs", "3")])
def test_resume_names_the_checkpoints_that_other_options_left(changed, small_data_root, tmp_path, capsys,
                                                             monkeypatch):
    args = ["lr-sweep", "--sequential", "--lrs", "0.01", "--data", small_data_root, "--batch-size", "16",
            "--no-progress", "--seeds", "1", "--out", tmp_path]
    left_by = {"--limit": "64", "--epochs": "2"}
    real_make_step = training.make_step

    def interrupting_make_step(*a, **k):
        def interrupt(*sa):
            raise KeyboardInterrupt
        return interrupt

    def options(**changes):
        return [x for option, value in {**left_by, **changes}.items() for x in (option, value)]

    monkeypatch.setattr(training, "make_step", interrupting_make_step)
    assert run_cli([*args, *options()], capsys)[0] == 130
    (left,) = (tmp_path / "runs").glob("*.checkpoint.pt")
    monkeypatch.setattr(training, "make_step", real_make_step)
    rc, _, err = run_cli([*args, *options(**dict([changed])), "--resume"], capsys)  # another run
    assert rc == 0 and err.count("--resume: no checkpoint") == 1 and left.name in err
    assert "trains from the start" in err and left.exists()
    rc, _, err = run_cli([*args, *options(), "--resume"], capsys)  # the options it was left by
    assert rc == 0 and "--resume" not in err and not left.exists()


def test_resume_names_a_population_checkpoint_that_another_seed_count_left(small_data_root, tmp_path, capsys,
                                                                          monkeypatch):
    from fn_trainer.training import population

    args = ["depth", "--data", small_data_root, "--limit", "64", "--batch-size", "16", "--epochs", "2",
            "--no-progress", "--out", tmp_path]

    def interrupting_make_step(*a, **k):
        def interrupt(*sa):
            raise KeyboardInterrupt
        return interrupt

    monkeypatch.setattr(population, "make_step", interrupting_make_step)
    assert run_cli([*args, "--seeds", "2"], capsys)[0] == 130
    (left,) = (tmp_path / "runs").glob("*-x2-*.checkpoint.pt")
    monkeypatch.undo()
    rc, _, err = run_cli([*args, "--seeds", "1", "--resume"], capsys)  # its first member, alone
    assert rc == 0 and err.count("--resume: no checkpoint") == 1 and left.name in err, err


# with seeds, one population of 2 normalisations x 2 learning rates x 2 seeds; with one, each
# normalisation's 2 learning rates together (fit_sweep), one group after the other
@pytest.mark.parametrize("seeds, group, steps_left", [(SEEDS, "x8", 3), (1, "x2", 3 + 8)])
def test_an_interrupted_population_resumes_where_it_stopped(seeds, group, steps_left, small_data_root, tmp_path,
                                                            capsys, monkeypatch):
    from fn_trainer.training import population

    # 4 steps an epoch, 8 in all
    args = ["lr-sweep", "--lrs", "0.01", "0.001", "--data", small_data_root, "--limit", "64", "--batch-size", "16",
            "--epochs", "2", "--no-progress", "--seeds", seeds]
    assert run_cli([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    real_make_step = population.make_step
    steps = {"n": 0, "stop_at": 6}  # the second step of the second epoch

    def counting_make_step(*a, **k):
        step = real_make_step(*a, **k)

        def counted(*sa):
            steps["n"] += 1
            if steps["n"] == steps["stop_at"]:
                raise KeyboardInterrupt
            return step(*sa)

        return counted

    monkeypatch.setattr(population, "make_step", counting_make_step)
    rc, _, err = run_cli([*args, "--out", tmp_path / "cut"], capsys)
    assert rc == 130 and "rerun with --resume to continue the interrupted one from its checkpoint" in err
    (checkpoint,) = (tmp_path / "cut" / "runs").glob(f"*-{group}-*.checkpoint.pt")
    assert result_files(tmp_path / "cut") == []
    steps.update(n=0, stop_at=None)
    rc, out, _ = run_cli([*args, "--out", tmp_path / "cut", "--resume"], capsys)
    assert rc == 0 and f"resuming from the checkpoint {checkpoint.name}\n" in out
    assert steps["n"] == steps_left  # the 5 steps done before the interruption are not trained again
    whole = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "whole")}
    cut = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "cut")}
    assert len(whole) == 4 * int(seeds) and cut == whole
    assert list((tmp_path / "cut" / "runs").glob("*.checkpoint.pt")) == []


@pytest.mark.parametrize("min_steps, compiled", [(2, True), (3, False)])
def test_long_populations_train_with_a_compiled_step(min_steps, compiled, small_data_root, tmp_path, capsys,
                                                     monkeypatch):
    calls = []
    monkeypatch.setattr(training, "fit_population",
                        lambda *a, **k: calls.append(k) or fake_population(*a, **k))
    store_calibration(tmp_path / CALIBRATION_FILE, calibrated(mlp=min_steps))  # 2 epochs of one minibatch
    assert run_cli(["depth", "--data", small_data_root, "--out", tmp_path, *FAKE_EPOCHS, "--seeds", SEEDS],
                   capsys)[0] == 0
    assert [(k["compile"], k["compiled_apply"] is not None) for k in calls] == [(compiled, compiled)] * 2
    trainer = f"fit_population ({SEEDS} runs together{', compiled' if compiled else ''})"
    assert {load_record(p).trainer for p in result_files(tmp_path)} == {trainer}


def test_a_line_break_or_backtick_in_an_argument_leaves_the_command_one_line_of_the_report(small_data_root, tmp_path,
                                                                                          capsys):
    out = tmp_path / "o`ut\n\n# INJECTED HEADING\n"
    rc, _, err = run_cli(["depth", *QUICK, "--data", small_data_root, "--out", out], capsys)
    assert rc == 0, err
    report = (out / "report.md").read_text()
    assert "# INJECTED HEADING" not in report.splitlines()
    command = next(line for line in report.splitlines() if line.startswith("Command: "))
    # a code span fenced past the backtick, and the path in bash's $'...' form: the shell gets it back
    assert command == f"Command: ``fn-trainer depth {' '.join(QUICK)} --data {small_data_root} --out " \
                      f"$'{tmp_path}/o`ut\\n\\n# INJECTED HEADING\\n'``"


@pytest.mark.parametrize("argument", ["o`ut\n\n# INJECTED HEADING\n", "caf\u00e9\nx", "my\u00a0folder", "it's\\\t\x01",
                                      "plain path"])
def test_the_command_line_as_the_report_writes_it_gives_bash_back_each_argument(argument):
    line = cli.command_line(["printf", "%s", argument])
    assert "\n" not in line
    assert subprocess.run(["bash", "-c", line], capture_output=True, check=True).stdout == argument.encode()
