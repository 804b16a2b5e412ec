"""The CPU-dependent choices: what a calibration decides from its measurements, how it is
stored per CPU, and that the training commands follow the stored one."""
import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from compiling import compiles
from hypothesis import given
from hypothesis import strategies as st

from fn_trainer import NetworkConfiguration, build_network
from fn_trainer.app import cli
from fn_trainer.app.experiments.context import CALIBRATION_FILE, Context, Settings
from fn_trainer.speed import calibration, cnn_forward
from fn_trainer.speed.calibration import (
    DEFAULTS,
    NEVER,
    Calibration,
    calibrate,
    cpu_fields,
    cpu_key,
    load_calibration,
    steps_to_repay,
    store_calibration,
    to_json,
    winograd_threshold,
)

# the smallest CNN whose second layer is a pooled 3x3 convolution: Winograd-eligible
SMALL_CNN = NetworkConfiguration(n_channels=(4, 4, 2), kernel_sizes=(3, 3, 3), dense_hiddens=())
timings = st.floats(min_value=0.01, max_value=100.0)


def measured(**changes) -> Calibration:
    values = dict(cpu=cpu_key(), winograd_min_channels=16, compile_min_steps={"mlp": 2500, "cnn": 1300},
                  layer_ms={8: (6.7, 6.8), 16: (7.6, 6.4)}, steps_ms={"mlp": (3.5, 1.3), "cnn": (13.0, 7.5)},
                  compile_s={"mlp": 5.5, "cnn": 20.6}, eval_chunk=250, eval_compile_min_rows=40_000,
                  eval_ms={125: 160.0, 250: 140.0}, eval_eager_ms=500.0, eval_compile_s=7.0)
    return Calibration(**{**values, **changes})


@given(st.dictionaries(st.integers(1, 512), st.tuples(timings, timings), min_size=1, max_size=6))
def test_winograd_from_the_fewest_channels_after_which_it_always_won(layer_ms):
    threshold = winograd_threshold(layer_ms)
    won = {c: winograd < patch for c, (patch, winograd) in layer_ms.items()}
    assert all(won[c] for c in layer_ms if c >= threshold)
    below = [c for c in layer_ms if c < threshold]
    # the next count below did not win (else the threshold would be lower); NEVER: the largest lost
    assert not below or not won[max(below)]
    assert threshold == NEVER or threshold in layer_ms


def test_winograd_threshold_examples():
    assert winograd_threshold({8: (2.0, 2.1), 16: (3.8, 2.9), 32: (7.2, 5.2)}) == 16
    assert winograd_threshold({8: (2.0, 1.9), 16: (3.8, 4.6), 32: (7.2, 5.2)}) == 32  # lost at 16
    assert winograd_threshold({8: (2.0, 1.9), 16: (3.8, 3.0), 32: (7.2, 7.3)}) == NEVER


@given(st.floats(0.0, 1000.0), timings, timings)
def test_a_compile_is_repaid_by_the_first_step_count_that_saves_its_cost(compile_s, eager_ms, compiled_ms):
    steps = steps_to_repay(compile_s, eager_ms, compiled_ms)
    saving = (eager_ms - compiled_ms) / 1e3
    if saving <= 0:
        assert steps == NEVER
    elif steps < NEVER:  # at least one step: a stored count below 1 is refused when loaded
        assert steps >= 1 and steps * saving >= compile_s * (1 - 1e-12)
        assert steps == 1 or (steps - 1) * saving < compile_s
    assert steps_to_repay(0.0, 3.0, 1.0) == 1


AMD_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
model name\t: another line of a later CPU
"""
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n\nprocessor\t: 1\n"


def test_the_cpu_key_tells_generations_sold_under_one_name_apart(monkeypatch):
    assert cpu_fields(AMD_VM) == {"processor": "0", "vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17",
                                  "model name": "AMD EPYC", "stepping": "1"}
    assert "model name" not in cpu_fields(ARM) and cpu_fields(ARM)["CPU implementer"] == "0x41"
    key = cpu_key()
    assert f"{torch.get_num_threads()} threads; torch {torch.__version__}" in key
    capability = torch.backends.cpu.get_cpu_capability()
    assert capability in key and f"{len(os.sched_getaffinity(0))} CPUs" in key
    # the same name with another family or model is another key
    real_open = open
    for text in (AMD_VM, AMD_VM.replace("model\t\t: 17", "model\t\t: 1")):
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(text) if path == "/proc/cpuinfo"
                            else real_open(path, *a, **k))
        assert cpu_key().startswith("AMD EPYC (25/17/1, " if "17" in text else "AMD EPYC (25/1/1, ")


def test_stored_per_cpu_and_loaded_back(tmp_path):
    path = tmp_path / "calibration.json"
    assert load_calibration(path) is None  # no file: nothing measured
    other = measured(cpu="another CPU; 64 CPUs; 64 threads; torch 2.14.1", winograd_min_channels=8)
    store_calibration(path, other)
    assert load_calibration(path) is None  # another CPU's figures are not this one's
    mine = measured()
    store_calibration(path, mine)
    assert load_calibration(path) == mine
    assert set(json.loads(path.read_text())) == {other.cpu, mine.cpu}  # the other CPU's entry is kept


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a calibration file"),
    ("[1, 2]", "a JSON object by CPU expected"),
    ("[" * 100_000 + "]" * 100_000, "not a calibration file"),  # too deep for the JSON parser
])
def test_a_file_that_is_not_a_calibration_is_refused_naming_it(content, message, tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        load_calibration(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value) and "delete it" in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(winograd_min_channels="ten"), "winograd_min_channels must be an int"),
    (lambda e: e.update(winograd_min_channels=0), "winograd_min_channels must be an int in"),
    (lambda e: e.update(winograd_min_channels=True), "winograd_min_channels must be an int"),
    (lambda e: e["compile_min_steps"].update(cnn=-3), "compile_min_steps\\['cnn'\\] must be an int"),
    (lambda e: e["compile_min_steps"].pop("mlp"), "compile_min_steps must name mlp, cnn"),
    (lambda e: e.pop("layer_ms"), "an entry must hold exactly"),
    (lambda e: e.update(steps_ms={"mlp": "fast"}), "must map names to finite non-negative numbers"),
    (lambda e: e.update(compile_s={"mlp": 10 ** 400, "cnn": 1.0}), "must map names to finite"),
    (lambda e: e.update(compile_s={"mlp": -1.0, "cnn": 1.0}), "must map names to finite non-negative"),
    (lambda e: e["steps_ms"].update(mlp=[float("nan"), 1.0]), "must map names to finite"),
    (lambda e: e.update(compile_min_steps=7), "compile_min_steps must map network types"),
    (lambda e: e.update(eval_chunk=True), "eval_chunk must be an int"),
    (lambda e: e.update(eval_chunk=250.0), "eval_chunk must be an int"),
    (lambda e: e.update(eval_compile_min_rows=0), "eval_compile_min_rows must be an int in"),
    (lambda e: e.update(eval_ms={"a": 1.0}), "eval_ms must map chunk sizes"),
    (lambda e: e.update(eval_ms={"0125": 1.0}), "eval_ms must map chunk sizes"),
    (lambda e: e.update(eval_ms={"250": True}), "must map names to finite non-negative numbers"),
    (lambda e: e.update(eval_eager_ms="fast"), "eval_eager_ms and eval_compile_s be such numbers"),
    (lambda e: e.pop("eval_ms"), "an entry must hold exactly"),  # not an earlier version's: it lacks one
    (lambda e: e.update(cpu="another CPU"), "says it was measured on 'another CPU'"),
])
def test_a_hand_edited_entry_is_refused_naming_the_field(edit, message, tmp_path):
    path = store_calibration(tmp_path / "calibration.json", measured())
    entries = json.loads(path.read_text())
    edit(entries[cpu_key()])
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message) as e:
        load_calibration(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_link_is_neither_read_nor_written_through(tmp_path):
    target = tmp_path / "elsewhere.json"
    store_calibration(target, measured())
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "calibration.json"
    link.symlink_to(target)
    before = target.read_bytes()
    for act in (load_calibration, lambda path: store_calibration(path, measured(winograd_min_channels=8))):
        with pytest.raises(ValueError, match="not a calibration file") as e:
            act(link)
        assert str(link) in str(e.value)
    assert target.read_bytes() == before and link.is_symlink()


class FakeChild:
    """A stand-in for the calibration's child process: its output lines and exit status."""

    def __init__(self, stdout: str, stderr: str = "", returncode: int = 0):
        self.lines, self.stderr, self.returncode = stdout.splitlines(True), stderr, returncode

    def __call__(self, argv, env, stdout, stderr, text):
        self.argv, self.cache = argv, env["TORCHINDUCTOR_CACHE_DIR"]
        stderr.write(self.stderr)
        self.stdout = iter(self.lines)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_child_process_result_is_parsed_and_its_failure_is_one_line(monkeypatch):
    # a line printed after the result (by a library, an exit handler) does not lose it
    child = FakeChild("mlp step: ...\ncnn step: ...\n" + json.dumps(calibration.to_json(measured())) + "\n"
                      "a line after the result\n{a brace that is not JSON\n")
    monkeypatch.setattr(calibration.subprocess, "Popen", child)
    logged = []
    assert calibrate(log=logged.append) == measured()
    assert logged == ["mlp step: ...", "cnn step: ...", "a line after the result"]
    # a fresh interpreter with this process's threads, its compile cache empty and gone after
    assert child.argv == [sys.executable, "-c", "from fn_trainer.speed.calibration import child_main; "
                          f"child_main({torch.get_num_threads()})"]
    assert not os.path.exists(child.cache)
    for failed in (FakeChild("mlp step: ...\n", "Traceback ...\nRuntimeError: out of memory\n", 1),
                   FakeChild("mlp step: ...\n", "RuntimeError: out of memory\n", 0)):  # no result
        monkeypatch.setattr(calibration.subprocess, "Popen", failed)
        with pytest.raises(calibration.CalibrationError,
                           match=r"^calibration failed \(status [01]\): RuntimeError: out of memory$"):
            calibrate()


def test_an_interrupted_calibration_stops_its_child(monkeypatch):
    """Ctrl-C or SIGTERM to the command alone (not its process group): the measuring child
    is stopped too, not left measuring on and writing into a cache folder already removed."""
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, argv, **kwargs):  # a child that logs a line, then measures for a minute
            super().__init__([sys.executable, "-c", "import time; print('mlp step: ...', flush=True); "
                              "time.sleep(60)"], **kwargs)
            started.append(self)

    def interrupt(line):
        raise KeyboardInterrupt
    monkeypatch.setattr(calibration.subprocess, "Popen", Recorded)
    with pytest.raises(KeyboardInterrupt):
        calibrate(log=interrupt)
    (child,) = started
    assert child.poll() == -signal.SIGKILL


def test_measure_decides_from_what_it_timed(monkeypatch):
    monkeypatch.setattr(calibration, "time_training",
                        lambda kind: {"mlp": (5.0, 3.0, 1.0), "cnn": (20.0, 13.0, 7.0)}[kind])
    monkeypatch.setattr(calibration, "time_winograd",
                        lambda channels: {8: (6.0, 6.5), 16: (7.5, 6.2), 32: (15.0, 10.5)})
    monkeypatch.setattr(calibration, "time_evaluation",
                        lambda: (420.0, {125: 150.0, 250: 120.0, 500: 131.0}, {125: 9.0, 250: 6.0, 500: 5.0}))
    got = calibration.measure()
    assert got.winograd_min_channels == 16
    assert got.eval_chunk == 250 and got.eval_ms == {125: 150.0, 250: 120.0, 500: 131.0}
    # the fastest chunk's compile, 6 s, repaid by 0.3 s saved per 2,000 rows
    assert (got.eval_eager_ms, got.eval_compile_s, got.eval_compile_min_rows) == (420.0, 6.0, 20 * 2000)
    assert got.compile_min_steps == {"mlp": 2500, "cnn": math.ceil(20.0 / 0.006)}
    assert got.cpu == cpu_key() and got.steps_ms == {"mlp": (3.0, 1.0), "cnn": (13.0, 7.0)}


def test_each_evaluation_chunk_timed_is_a_graph_of_its_own():
    torch._dynamo.reset()
    with compiles(2):  # the two chunk sizes; 4 rows in chunks of 2 or 4 leave no eager remainder
        eager_ms, times, compile_s = calibration.time_evaluation((2, 4), rows=4, reps=1, config=SMALL_CNN)
    assert eager_ms > 0 and set(times) == set(compile_s) == {2, 4}
    assert all(ms > 0 for ms in times.values()) and all(s > 0 for s in compile_s.values())


def test_the_two_forms_timed_are_two_graphs_of_the_same_training(monkeypatch):
    # what time_winograd times: CNN steps with the pooled 3x3 layer as a patch product and
    # with Winograd products (the threshold reaches the forward), each compiled (two
    # graphs), training alike (float32 rounding)
    thresholds = []
    real = cnn_forward.inductor_apply
    monkeypatch.setattr(cnn_forward, "inductor_apply",
                        lambda net, **kw: thresholds.append(kw["winograd_min_channels"]) or real(net, **kw))
    torch._dynamo.reset()
    with compiles(2):
        runs = {form: calibration.compiled_steps("cnn", SMALL_CNN, threshold, batch=8, steps=3)
                for form, threshold in (("patch", NEVER), ("winograd", 4))}
    assert thresholds == [NEVER, 4]
    assert all(compile_s > 0 for compile_s, _, _ in runs.values())
    eager = runs["patch"][2]()
    assert runs["patch"][1]() == pytest.approx(eager, rel=1e-4)
    assert runs["winograd"][1]() == pytest.approx(eager, rel=1e-4)


def test_training_commands_follow_the_calibration_in_the_output_folder(tmp_path, monkeypatch):
    net = build_network("cnn", SMALL_CNN)
    used = []
    real = cnn_forward.winograd_conv_max_pool
    monkeypatch.setattr(cnn_forward, "winograd_conv_max_pool",
                        lambda *a, **k: used.append(a[0].shape[1]) or real(*a, **k))
    x = torch.rand(2, 1, 28, 28)
    for threshold, layers in ((4, [4]), (5, [])):
        out = tmp_path / str(threshold)
        store_calibration(out / CALIBRATION_FILE, measured(winograd_min_channels=threshold))
        ctx = Context(Settings(out=out))
        assert ctx.calibration == measured(winograd_min_channels=threshold)
        used.clear()
        ctx.fast_apply(net)(net.init(0), x)
        assert used == layers  # the second layer's 4 input channels: Winograd from 4, not from 5
    assert Context(Settings(out=tmp_path / "none")).calibration == DEFAULTS


def test_a_compiled_cnn_run_evaluates_compiled_in_the_calibrations_chunks_once_that_pays(tmp_path,
                                                                                           monkeypatch):
    from fn_trainer.app.experiments import training

    chunks = []
    real = training.compile_evaluate
    monkeypatch.setattr(training, "compile_evaluate", lambda *a, **k: chunks.append(k["chunk_size"]) or real(*a, **k))
    store_calibration(tmp_path / CALIBRATION_FILE, measured(eval_chunk=125, eval_compile_min_rows=1000))
    ctx = Context(Settings(out=tmp_path))
    cnn, mlp = build_network("cnn", SMALL_CNN), build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)))
    for network, compiled, rows in ((cnn, False, 10 ** 6), (cnn, True, 999), (mlp, True, 10 ** 6)):
        training.evaluation(ctx, network, compiled, rows)
    assert chunks == []  # eager: a run whose step is eager, too few rows to repay, an MLP
    training.evaluation(ctx, cnn, True, 1000)
    assert chunks == [125]


def test_the_calibration_is_stored_under_the_output_folders_lock(tmp_path, monkeypatch):
    import fcntl

    from fn_trainer.app.report import LOCK_FILE

    def held() -> bool:  # another open file description cannot take it while the store runs
        with open(tmp_path / LOCK_FILE, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    seen = []
    store = calibration.store_calibration
    monkeypatch.setattr(calibration, "calibrate", lambda log: measured())
    monkeypatch.setattr(calibration, "store_calibration", lambda *a: seen.append(held()) or store(*a))
    assert cli.main(["calibrate", "--out", str(tmp_path)]) == 0
    assert seen == [True] and not held() and load_calibration(tmp_path / CALIBRATION_FILE) == measured()


def test_calibrate_command_stores_and_all_measures_first_only_without_one(tmp_path, capsys, monkeypatch):
    from fakedata import write_fashion_mnist

    from fn_trainer.app import experiments

    runs = []
    monkeypatch.setattr(calibration, "calibrate", lambda log: runs.append(1) or log("mlp step: ...") or measured())
    assert cli.main(["calibrate", "--out", str(tmp_path / "out")]) == 0
    assert load_calibration(tmp_path / "out" / CALIBRATION_FILE) == measured() and runs == [1]
    assert "calibration: mlp step: ..." in capsys.readouterr().err
    # `all` checks the data, then measures when the folder has none for this CPU and a run
    # is long enough to compile under the defaults (1,000 steps: 1,000 epochs of one
    # minibatch), then trains (stopped here)
    data = write_fashion_mnist(tmp_path / "data", n_train=8, n_test=8, seed=1)
    monkeypatch.setattr(experiments, "experiment", lambda name: (_ for _ in ()).throw(ValueError("stopped")))
    for out, folder, epochs, expected, error in (
            ("out", data, 1000, [1], "stopped"), ("new", tmp_path / "no-data", 1000, [1], "no-data"),
            ("short", data, 999, [1], "stopped"), ("new", data, 1000, [1, 1], "stopped"),
            ("new", data, 1000, [1, 1], "stopped")):
        args = ["all", "--out", str(tmp_path / out), "--data", str(folder), "--no-download", "--epochs", str(epochs)]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "fn-trainer: error: " in err and error in err.split("error: ")[-1] and runs == expected
    assert load_calibration(tmp_path / "new" / CALIBRATION_FILE) == measured()
    assert not (tmp_path / "short" / CALIBRATION_FILE).exists()
    monkeypatch.setattr(calibration, "calibrate", lambda log: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["all", "--out", str(tmp_path / "ctrl-c"), "--data", str(data), "--epochs", "1000"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == ("fn-trainer: interrupted while measuring this CPU, before any "
                                                        "training; nothing was stored")
    monkeypatch.setattr(calibration, "calibrate", lambda log: (_ for _ in ()).throw(cli.Terminated))
    assert cli.main(["all", "--out", str(tmp_path / "term"), "--data", str(data), "--epochs", "1000"]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == ("fn-trainer: stopped by SIGTERM; finished runs are saved, and "
                                                        "a rerun trains the others from the start")
    assert cli.main(["calibrate", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert capsys.readouterr().err.startswith("fn-trainer: error: --threads must be between 1 and")


def _calibration_children(tmpdir: str):
    """The pids of the calibration children whose TMPDIR is ``tmpdir``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"child_main(" in cmdline and f"TMPDIR={tmpdir}".encode() in environ:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the child in /proc")
def test_sigterm_to_calibrate_stops_its_child_and_says_so(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    command = subprocess.Popen([sys.executable, "-m", "fn_trainer", "calibrate", "--out", str(tmp_path / "out")],
                               env={**os.environ, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline, children = time.monotonic() + 60, []
        while not children and time.monotonic() < deadline and command.poll() is None:
            children = _calibration_children(str(tmpdir))
            time.sleep(0.05)
        (child,) = children
        command.send_signal(signal.SIGTERM)
        _, err = command.communicate(timeout=30)
    finally:
        command.kill()
        command.wait()
    assert command.returncode == 143
    assert err.strip().splitlines()[-1] == "fn-trainer: stopped by SIGTERM; nothing was stored"
    assert not os.path.exists(f"/proc/{child}") and not list(tmpdir.glob("fn-trainer-calibration-*"))


def test_a_failed_calibration_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(calibration.subprocess, "Popen", FakeChild("", "MemoryError\n", 1))
    assert cli.main(["calibrate", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "fn-trainer: error: calibration failed (status 1): MemoryError\n"
    assert not (tmp_path / CALIBRATION_FILE).exists()
    (tmp_path / CALIBRATION_FILE).write_text("{")  # refused before minutes of measuring
    monkeypatch.setattr(calibration, "calibrate", lambda log: pytest.fail("measured"))
    assert cli.main(["calibrate", "--out", str(tmp_path)]) == 2
    assert "not a calibration file" in capsys.readouterr().err


def test_calibrate_replaces_a_bad_entry_for_this_cpu_and_keeps_the_others(tmp_path, monkeypatch):
    path = store_calibration(tmp_path / CALIBRATION_FILE, measured(cpu="another CPU"))
    entries = json.loads(path.read_text())
    entries[cpu_key()] = {**to_json(measured()), "winograd_min_channels": 0}
    path.write_text(json.dumps(entries))
    monkeypatch.setattr(calibration, "calibrate", lambda log: measured())
    assert cli.main(["calibrate", "--out", str(tmp_path)]) == 0
    assert load_calibration(path) == measured()
    assert set(json.loads(path.read_text())) == {"another CPU", cpu_key()}


def test_an_output_folder_calibrated_only_for_other_cpus_says_the_defaults_apply(tmp_path):
    for stored, expected, n_warnings in (([], DEFAULTS, 0), (["another CPU"], DEFAULTS, 1),
                                         (["another CPU", cpu_key()], measured(), 0)):
        out = tmp_path / str(len(stored)) / str(n_warnings)
        for cpu in stored:
            store_calibration(out / CALIBRATION_FILE, measured(cpu=cpu))
        warnings = []
        assert Context(Settings(out=out), warn=warnings.append).calibration == expected
        assert len(warnings) == n_warnings
        if warnings:
            assert str(out / CALIBRATION_FILE) in warnings[0] and "'another CPU'" in warnings[0]
            assert f"calibrate --out {out} --threads {torch.get_num_threads()} measures this one" in warnings[0]


def test_an_earlier_versions_entry_keeps_its_measurements_and_takes_the_evaluations_defaults(tmp_path):
    path = store_calibration(tmp_path / CALIBRATION_FILE, measured())
    entries = json.loads(path.read_text())
    for field in calibration.ADDED_FIELDS:  # what an earlier fn-trainer did not measure
        del entries[cpu_key()][field]
    path.write_text(json.dumps(entries))
    evaluation = {field: getattr(DEFAULTS, field) for field in calibration.ADDED_FIELDS}
    assert load_calibration(path) == measured(**evaluation)
    warnings = []
    assert Context(Settings(out=tmp_path), warn=warnings.append).calibration == measured(**evaluation)
    (line,) = warnings
    assert "an earlier fn-trainer's calibration" in line and "calibrate --out" in line


def test_a_folder_calibrated_for_many_other_cpus_names_a_few_in_one_short_line(tmp_path):
    others = {f"CPU {i}" + "x" * 1000 * (i == 0): measured(cpu=f"CPU {i}" + "x" * 1000 * (i == 0))._asdict()
              for i in range(5000)}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(others))
    warnings = []
    assert Context(Settings(out=tmp_path), warn=warnings.append).calibration == DEFAULTS
    (line,) = warnings
    assert "'CPU 0xxx" in line and "'CPU 1'" in line and "and 4997 more:" in line and len(line) < 600, line
