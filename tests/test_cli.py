import json
import os
import runpy
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torch._dynamo
from compiling import compiles
from fakedata import write_fashion_mnist

from fn_trainer.app import cli
from fn_trainer.app.experiments import EXPERIMENTS
from fn_trainer.app.experiments import runs as runs_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--epochs", "1", "--limit", "16", "--no-progress"]
# Figures each experiment must produce, and the heading of its report section.
EXPECTED = {
    "equivariance": (["original.png", "features.png", "shift_difference.png", "rotation_difference.png"],
                     "## 1. Equivariance"),
    "lr-sweep": (["validation_accuracy_raw.png", "validation_accuracy_normalised.png"], "## 2. Learning rate"),
    "depth": (["accuracy.png", "gradient_norm.png"], "## 3. Depth"),
    "cnn": (["accuracy.png"], "## 4. CNN"),
    "cnn-shapes": (["accuracy.png"], "## 5. CNN shapes"),
}
N_RUNS = {"equivariance": 0, "lr-sweep": 6, "depth": 2, "cnn": 2, "cnn-shapes": 3}


@pytest.fixture(scope="module")
def small_data_root(tmp_path_factory) -> Path:
    """Synthetic IDX data small enough for many CLI runs: 64 training images and a
    validation set of 200 (the test split is then empty)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("small"), n_train=64, n_test=200, seed=1)


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
    quick = ["--limit", "16"] if name == "equivariance" else QUICK
    rc, out, _ = run_cli([name, "--data", fake_data_root, "--out", tmp_path, *quick], capsys)
    assert rc == 0
    figures, heading = EXPECTED[name]
    for filename in figures:
        assert_png(tmp_path / name / filename)
    report = (tmp_path / "report.md").read_text()
    assert heading in report
    assert f"Command: `fn-trainer {name} --data {fake_data_root}" in report
    for filename in figures:
        assert f"]({name}/{filename})" in report
    files = result_files(tmp_path)
    assert len(files) == N_RUNS[name]
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


def test_lr_sweep_table_and_best_pair(small_data_root, tmp_path, capsys):
    rc, _, _ = run_cli(["lr-sweep", "--data", small_data_root, "--out", tmp_path, "--lrs", "0.01", "0.001",
                        "--epochs", "2", "--limit", "64", "--no-progress"], capsys)
    assert rc == 0
    section = (tmp_path / "lr-sweep" / "section.md").read_text()
    assert section.count("| lr=0.01 |") == 2 and section.count("| lr=0.001 |") == 2
    records = [runs_module.load_record(p) for p in result_files(tmp_path)]
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


def test_changed_configuration_is_a_new_run(small_data_root, tmp_path, capsys):
    base = ["depth", "--data", small_data_root, "--out", tmp_path, "--limit", "16", "--no-progress",
            "--epochs", "1"]
    assert run_cli(base, capsys)[0] == 0
    rc, out, _ = run_cli(base + ["--lr", "0.001"], capsys)
    assert rc == 0 and "skipped" not in out
    assert len(result_files(tmp_path)) == 4


def test_other_data_is_never_taken_as_done(small_data_root, tmp_path, capsys):
    args = ["depth", "--data", small_data_root, "--out", tmp_path, "--epochs", "1", "--no-progress"]
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
            "--batch-size", "16", "--epochs", "2", "--no-progress"]
    assert run_cli([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    real_make_step = runs_module.make_step
    calls = {"n": 0}

    def interrupting_make_step(*a, **k):
        step = real_make_step(*a, **k)

        def step_then_interrupt(*sa):
            calls["n"] += 1
            if calls["n"] == 6:  # second epoch of the first run
                raise KeyboardInterrupt
            return step(*sa)

        return step_then_interrupt

    monkeypatch.setattr(runs_module, "make_step", interrupting_make_step)
    rc, _, err = run_cli([*args, "--out", tmp_path / "cut"], capsys)
    assert rc == 130 and "--resume" in err
    assert len(list((tmp_path / "cut" / "runs").glob("*.checkpoint.pt"))) == 1
    assert result_files(tmp_path / "cut") == []
    monkeypatch.setattr(runs_module, "make_step", real_make_step)
    assert run_cli([*args, "--out", tmp_path / "cut", "--resume"], capsys)[0] == 0
    whole = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "whole")}
    cut = {p.name: json.loads(p.read_text())["logs"] for p in result_files(tmp_path / "cut")}
    assert cut == whole
    assert list((tmp_path / "cut" / "runs").glob("*.checkpoint.pt")) == []


def test_diverged_runs_are_reported_as_such(small_data_root, tmp_path, capsys):
    rc, out, _ = run_cli(["lr-sweep", "--sequential", "--lrs", "1e30", "--data", small_data_root, "--out", tmp_path,
                          "--epochs", "3", "--no-progress"], capsys)
    assert rc == 0 and out.count("DIVERGED") == 2
    records = [runs_module.load_record(p) for p in result_files(tmp_path)]
    assert all(r.diverged for r in records)
    assert all(len(r.curve("validation_accuracy")) < 4 for r in records)  # stopped, not padded
    section = (tmp_path / "lr-sweep" / "section.md").read_text()
    assert section.count("| diverged in epoch") == 2
    assert_png(tmp_path / "lr-sweep" / "validation_accuracy_raw.png")


@pytest.mark.parametrize("args, option", [
    (["depth", "--epochs", "-1"], "--epochs"),
    (["depth", "--batch-size", "0"], "--batch-size"),
    (["cnn", "--limit", "0"], "--limit"),
    (["depth", "--limit", "1"], "--limit must be an integer >= 2, got 1"),
    (["cnn", "--lr", "0"], "--lr"),
    (["cnn", "--lr", "nan"], "--lr"),
    (["lr-sweep", "--lrs", "0.1", "inf"], "--lrs"),
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


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused_and_nothing_is_written(out, small_data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["equivariance", "--data", small_data_root, "--out", out], capsys)
    assert rc == 2 and err == "fn-trainer: error: --out must name a folder, got an empty string\n"
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_fails_with_one_line(small_data_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = run_cli(["depth", "--data", small_data_root, "--out", blocker / "out"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("fn-trainer: error: --out")


def test_missing_data_fails_with_one_line(tmp_path, capsys):
    rc, _, err = run_cli(["cnn", "--data", tmp_path / "nowhere", "--out", tmp_path / "out", "--no-download"],
                         capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("fn-trainer: error: Fashion-MNIST is not available")


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
                                  ("depth", ["--lr ", "--epochs", "--batch-size", "--force", "--resume"],
                                   ["--lrs"]),
                                  ("all", ["--lrs", "--lr "], []),
                                  ("equivariance", [], ["--epochs", "--lr "])):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert all(p in out for p in present) and not any(a in out for a in absent), name


def test_export_solution_writes_the_file(tmp_path, capsys):
    rc, out, _ = run_cli(["export-solution", tmp_path / "solution.py"], capsys)
    assert rc == 0 and (tmp_path / "solution.py").stat().st_size > 0
    assert "solution.py" in out


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
                          "--epochs", "1", "--limit", "2000", "--no-progress"], capsys)
    assert rc == 0
    records = {r.spec.normalization: r for r in map(runs_module.load_record, result_files(tmp_path))}
    assert records[True].final() > 0.6  # one epoch on 2000 normalised images already learns
    assert_png(tmp_path / "lr-sweep" / "validation_accuracy_normalised.png")


def test_lr_sweep_trains_together_by_default_and_alone_with_sequential(small_data_root, tmp_path, capsys):
    common = ["lr-sweep", "--lrs", "0.01", "0.001", "--data", small_data_root, "--epochs", "1", "--no-progress"]
    assert run_cli([*common, "--out", tmp_path / "together"], capsys)[0] == 0
    assert run_cli([*common, "--out", tmp_path / "alone", "--sequential"], capsys)[0] == 0
    together = {p.name: runs_module.load_record(p) for p in result_files(tmp_path / "together")}
    alone = {p.name: runs_module.load_record(p) for p in result_files(tmp_path / "alone")}
    assert together.keys() == alone.keys() and len(alone) == 4
    for name, r in together.items():
        assert r.trainer.startswith("fit_sweep") and alone[name].trainer == "fit"
        # the same runs: equal up to float32 reassociation in the batched matmuls
        assert r.logs["validation_loss"] == pytest.approx(alone[name].logs["validation_loss"], rel=1e-3)


def test_long_runs_train_with_a_compiled_step(small_data_root, tmp_path, capsys, monkeypatch):
    assert runs_module.worth_compiling(epochs=2, n_train=500 * 128, batch_size=128)
    assert not runs_module.worth_compiling(epochs=1, n_train=999 * 128, batch_size=128)
    common = ["lr-sweep", "--sequential", "--lrs", "0.01", "--data", small_data_root, "--epochs", "2",
              "--batch-size", "32", "--no-progress"]
    assert run_cli([*common, "--out", tmp_path / "eager"], capsys)[0] == 0
    monkeypatch.setattr(runs_module, "COMPILE_MIN_STEPS", 4)  # 2 epochs of 2 steps
    torch._dynamo.reset()  # no earlier test's graphs count towards the recompile limit
    # one graph for both runs (raw and normalised inputs, same shapes: the second run's new
    # step hits the first one's cache), none recompiled
    with compiles(1):
        assert run_cli([*common, "--out", tmp_path / "compiled"], capsys)[0] == 0
    eager = {p.name: runs_module.load_record(p) for p in result_files(tmp_path / "eager")}
    compiled = {p.name: runs_module.load_record(p) for p in result_files(tmp_path / "compiled")}
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


def test_every_experiment_has_a_subcommand_and_a_report_section():
    from fn_trainer.app import cli, report
    from fn_trainer.app.experiments import EXPERIMENTS

    assert set(cli.HELP) == {*EXPERIMENTS, "all"}
    assert report.ORDER == tuple(EXPERIMENTS) and set(cli.TRAINING) == {*EXPERIMENTS, "all"} - {"equivariance"}
