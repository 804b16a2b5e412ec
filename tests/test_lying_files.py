"""Files that load but lie: hand-edited checkpoints are refused naming the file and what is
wrong; an invalid stored run record is ignored with a warning and the run retrained."""
import errno
import json
import os
import shutil

import pytest
import torch

from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step
from fn_trainer.app import cli
from fn_trainer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fn_trainer.training.fit import fit

SHAPE = (1, 6, 6)


def run(path, lr=1e-2, epochs=2, resume=False):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    opt = adam(lr)
    params = net.init(1)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(48, *SHAPE, generator=g), torch.randint(0, 10, (48,), generator=g)
    return fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), (X, y),
               (X[:8], y[:8]), epochs=epochs, batch_size=16, progress=False, checkpoint=path, resume=resume)


def _set(data, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[int(key) if isinstance(data, list) else key]
    data[int(last) if isinstance(data, list) else last] = value


def _append(key):
    return lambda data: data["logs"][key].append(0.5)


EDITS = {
    "negative epoch": (lambda d: _set(d, "epoch", -3), "epoch must be an integer >= 0, found -3"),
    "epoch as text": (lambda d: _set(d, "epoch", "1"), "epoch must be an integer >= 0, found '1'"),
    "step past the epoch": (lambda d: _set(d, "batch", 99), r"step within the epoch must be an integer in \[0, 3\]"),
    "logs too long": (_append("validation_accuracy"), r"logs\['validation_accuracy'\] must be a list of 2 numbers"),
    "gradient norms too long": (_append("train_gradient_norm"), r"logs\['train_gradient_norm'\] must be a list of 1"),
    "log entry as text": (lambda d: _set(d, "logs.train_loss.0", "low"), r"logs\['train_loss'\] .* non-numbers"),
    "log key missing": (lambda d: d["logs"].pop("train_loss"), "logs must have the keys"),
    "torch rng of the wrong size": (lambda d: _set(d, "rng.torch", torch.zeros(10, dtype=torch.uint8)),
                                    r"rng\['torch'\]: expected shape \(5056,\)"),
    "numpy rng of the wrong size": (lambda d: _set(d, "rng.numpy.1", torch.zeros(3, dtype=torch.int64)),
                                    r"rng\['numpy'\]\[1\]: expected shape \(624,\)"),
    "python rng of the wrong length": (lambda d: _set(d, "rng.python.1", [1, 2, 3]),
                                       r"rng\['python'\]\[1\]: expected a sequence of 625"),
    "learning rate": (lambda d: _set(d, "opt_state.lr", torch.tensor(0.5, dtype=torch.float64)),
                      "optimizer state has lr=0.5, this run's optimizer has lr=0.01"),
    "beta": (lambda d: _set(d, "opt_state.b2", torch.tensor(0.9, dtype=torch.float64)), "b2=0.9"),
    "step count behind": (lambda d: _set(d, "opt_state.count", torch.tensor(0)), "taken 0 steps .* count must be 3"),
    "step count ahead": (lambda d: _set(d, "opt_state.count", torch.tensor(1000)), "taken 1000 steps"),
    "negative step count": (lambda d: _set(d, "opt_state.count", torch.tensor(-5)), "taken -5 steps"),
    "NaN parameter": (lambda d: d["params"][next(iter(d["params"]))].view(-1).__setitem__(0, float("nan")),
                      "parameters or optimizer state hold NaN or infinite values"),
    "infinite first moment": (lambda d: next(iter(d["opt_state"]["mu"].values())).view(-1).__setitem__(0, float("inf")),
                              "NaN or infinite"),
    "NaN second moment": (lambda d: next(iter(d["opt_state"]["nu"].values())).view(-1).__setitem__(0, float("nan")),
                          "NaN or infinite"),
    "negative second moment": (lambda d: next(iter(d["opt_state"]["nu"].values())).view(-1).__setitem__(0, -1.0),
                               r"negative second moments \(nu\)"),
    "NaN in logs": (lambda d: _set(d, "logs.validation_loss.1", float("nan")), "non-finite"),
    "accuracy 7 in logs": (lambda d: _set(d, "logs.validation_accuracy.1", 7.0),
                           r"logs\['validation_accuracy'\] must hold accuracies in \[0, 1\], found 7.0"),
    "negative accuracy in logs": (lambda d: _set(d, "logs.train_accuracy.0", -0.5), "found -0.5"),
    "last gradient norm -inf": (lambda d: _set(d, "last_grad_norm", float("-inf")), "last_grad_norm must be a finite"),
    # an int beyond the float range, which math.isfinite cannot take
    "huge integer in logs": (lambda d: _set(d, "logs.train_loss.0", 2**1100), r"logs\['train_loss'\] .* non-numbers"),
    "huge last gradient norm": (lambda d: _set(d, "last_grad_norm", 2**1100), "last_grad_norm must be a finite"),
    "no last gradient norm within the epoch": (lambda d: (_set(d, "batch", 3), _set(d, "last_grad_norm", None)),
                                               "last_grad_norm must be a number after step 3 of the epoch"),
    "python rng holding text": (lambda d: _set(d, "rng.python.1", ["x"] * 625),
                                "unusable random generator states: an integer is required"),
    "tensor in the settings": (lambda d: _set(d, "settings.batch_size", torch.tensor([16, 16])),
                               r"different run: its settings differ in batch_size tensor\(\[16, 16\]\) against "
                               "this run's 16$"),
    # equal to the setting, but no number: a checkpoint's settings are plain values
    "0-dim tensor in the settings": (lambda d: _set(d, "settings.batch_size", torch.tensor(16)),
                                     r"its settings differ in batch_size tensor\(16\) against this run's 16$"),
    "long text as the epoch": (lambda d: _set(d, "epoch", "x" * 100_000),
                               "epoch must be an integer >= 0, found 'x+\\.\\.\\.x+'$"),
    "long list as the last gradient norm": (lambda d: _set(d, "last_grad_norm", list(range(100_000))),
                                            r"found \[0, 1, 2, 3, \.\.\.\]$"),
    "negative seconds": (lambda d: _set(d, "seconds", -2.0), "seconds must be a finite number >= 0, got -2.0"),
    "seconds as text": (lambda d: _set(d, "seconds", "10"), "seconds must be a finite number >= 0, got '10'"),
    "infinite seconds": (lambda d: _set(d, "seconds", float("inf")), "seconds must be .*, got inf"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_hand_edited_checkpoint_is_refused_naming_the_file(edit, tmp_path):
    path = tmp_path / "c.pt"
    run(path, epochs=1)
    data = load_checkpoint(path)
    change, match = EDITS[edit]
    change(data)
    save_checkpoint(path, {k: v for k, v in data.items() if k not in ("format", "version")})
    torch.rand(1)  # the generator moves on from the state the checkpoint holds
    state = torch.get_rng_state()
    with pytest.raises(CheckpointError, match=match) as e:
        run(path, resume=True)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert len(str(e.value)) < len(str(path)) + 300  # the value read is cut short, whatever its size
    assert torch.equal(torch.get_rng_state(), state)  # refused before any generator was changed


def test_an_untouched_checkpoint_resumes(tmp_path):
    run(tmp_path / "c.pt", epochs=1)
    assert run(tmp_path / "c.pt", resume=True).logs == run(None).logs


# --- stored run records ---------------------------------------------------------------------

QUICK = ["--epochs", "1", "--limit", "16", "--no-progress"]


def depth_args(data_root, out) -> list:
    return ["depth", "--data", str(data_root), "--out", str(out), *QUICK]


@pytest.fixture(scope="module")
def finished_depth(fake_data_root, tmp_path_factory):
    """An output folder where the quick ``depth`` command has finished (each test edits a copy)."""
    out = tmp_path_factory.mktemp("depth")
    assert cli.main(depth_args(fake_data_root, out)) == 0
    return out


@pytest.fixture
def depth_done(finished_depth, fake_data_root, tmp_path) -> list:
    """The quick ``depth`` command's arguments with ``--out tmp_path``, a copy of ``finished_depth``."""
    shutil.copytree(finished_depth, tmp_path, dirs_exist_ok=True)
    return depth_args(fake_data_root, tmp_path)

@pytest.mark.parametrize("resume", [True, False])
def test_a_population_stopped_between_its_records_resumes_from_its_checkpoint(resume, finished_depth, fake_data_root,
                                                                              tmp_path, monkeypatch, capsys):
    from fn_trainer.app.experiments import training
    from fn_trainer.core.paths import _write_error

    args = depth_args(fake_data_root, tmp_path)
    write, writes = training.write_json, []

    def second_fails(path, data):  # the disk fills up after the population's first record
        writes.append(path)
        if len(writes) == 2:
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return write(path, data)

    monkeypatch.setattr(training, "write_json", second_fails)
    assert cli.main(args) != 0
    monkeypatch.setattr(training, "write_json", write)
    left = {path: path.read_bytes() for path in (tmp_path / "runs").glob("*.checkpoint.pt")}
    assert len(left) == 1
    populations, fit_population = [], training.fit_population
    monkeypatch.setattr(training, "fit_population", lambda net, members, *a, **k: populations.append(len(members))
                        or fit_population(net, members, *a, **k))
    capsys.readouterr()
    assert cli.main([*args, "--resume"] if resume else args) == 0
    told = f"{next(iter(left)).name} holds the population of these runs, stopped after 1 of its 3 records"
    assert (told in capsys.readouterr().err) is not resume  # without --resume, what it would have continued
    # resumed: the first population whole, from its checkpoint, not its two missing runs, and
    # either way no checkpoint is left once every record is written
    assert populations == ([3, 3] if resume else [2, 3])
    assert not list((tmp_path / "runs").glob("*.checkpoint.pt"))
    (path, data), = left.items()
    earliest = min(record.stat().st_mtime_ns for record in (tmp_path / "runs").glob("*.json"))
    path.write_bytes(data)
    os.utime(path, ns=(earliest - 10**9,) * 2)  # as if stopped after its last record, before deleting it
    assert cli.main([*args, "--resume"]) == 0 and populations == ([3, 3] if resume else [2, 3])
    assert not path.exists()
    path.write_bytes(data)  # newer than the records: a --force command's, stopped early, for --force --resume
    assert cli.main([*args, "--resume"]) == 0 and path.exists()
    for done in (finished_depth / "runs").glob("*.json"):  # as if it had never stopped
        assert json.loads((tmp_path / "runs" / done.name).read_text())["logs"] == json.loads(done.read_text())["logs"]


RECORD_EDITS = {
    "logs null": lambda d: d.update(logs=None),
    "accuracy as text": lambda d: d["logs"]["validation_accuracy"].__setitem__(1, "high"),
    # a missing value after training began only where the run is marked diverged (else it would
    # drop out of the seeds' mean silently)
    "null without divergence": lambda d: d["logs"]["validation_accuracy"].__setitem__(-1, None),
    "logs too long": lambda d: d["logs"]["train_accuracy"].append(0.5),
    "log key missing": lambda d: d["logs"].pop("validation_loss"),
    "n_params as text": lambda d: d.update(n_params="many"),
    "n_params of another network": lambda d: d.update(n_params=12),
    "spec missing": lambda d: d.pop("spec"),
    "config not a dict": lambda d: d["spec"].update(config=[1, 2]),
    "not an object": lambda d: d.clear() or d.update(x=1),
}


@pytest.mark.parametrize("edit", list(RECORD_EDITS))
def test_an_invalid_run_record_is_ignored_with_a_warning_and_retrained(edit, depth_done, tmp_path, capsys):
    args = depth_done
    records = sorted((tmp_path / "runs").glob("*.json"))
    good = records[0].read_text()
    data = json.loads(good)
    RECORD_EDITS[edit](data)
    records[0].write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"fn-trainer: warning: ignoring the run record {records[0]}")
    assert "it is trained again" in err
    assert out.count("already done, skipped") == len(records) - 1
    assert json.loads(records[0].read_text())["logs"] == json.loads(good)["logs"]  # retrained, same result


def test_a_record_copied_into_another_runs_file_is_ignored_with_a_warning(depth_done, tmp_path, capsys):
    first, second = sorted((tmp_path / "runs").glob("*.json"))[:2]
    kept = second.read_text()
    copied = json.loads(first.read_text())
    copied["config_hash"] = json.loads(kept)["config_hash"]  # the hash its new file name carries
    second.write_text(json.dumps(copied))
    capsys.readouterr()
    assert cli.main(depth_done) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"ignoring the run record {second}: it holds another run's configuration" in err
    assert json.loads(second.read_text())["logs"] == json.loads(kept)["logs"]  # retrained, its own result


def test_an_unreadable_run_record_is_ignored_with_a_warning(depth_done, tmp_path, capsys):
    args = depth_done
    record = sorted((tmp_path / "runs").glob("*.json"))[0]
    record.write_bytes(b'{"spec": ')
    capsys.readouterr()
    assert cli.main(args) == 0
    assert f"ignoring the run record {record}" in capsys.readouterr().err


def _record():
    """A valid stored record of a 2-epoch run, as JSON data."""
    from fn_trainer.app.experiments.records import RunRecord, RunSpec

    spec = RunSpec("mlp", "MLP", "mlp", NetworkConfiguration(dense_hiddens=(8,)), 1e-3, True, 16, 2, 0)
    logs = {"train_accuracy": [0.1, 0.5, 0.6], "validation_accuracy": [0.1, 0.4, 0.5],
            "train_loss": [2.3, 1.2, 1.0], "validation_loss": [2.3, 1.3, 1.1], "train_gradient_norm": [0.9, 0.7]}
    return RunRecord(spec, "0123456789ab", 100, logs, None, 1.5).to_json()


def _put(dotted, value):
    return lambda d: _set(d, dotted, value)


# Each edit must make load_record return None with one warning naming the file and the field.
LYING_RECORDS = {
    "unknown spec field": (lambda d: d["spec"].update(evil=1), "unknown fields ['evil']"),
    "unknown record field": (lambda d: d.update(evil=1), "unknown fields ['evil']"),
    "spec field missing": (lambda d: d["spec"].pop("seed"), "has no 'seed'"),
    "NaN accuracy": (_put("logs.validation_accuracy.1", float("nan")), "'validation_accuracy'] holds nan"),
    "infinite loss": (_put("logs.train_loss.2", float("inf")), "'train_loss'] holds inf"),
    "accuracy 7": (_put("logs.train_accuracy.1", 7.0), "'train_accuracy'] holds 7.0"),
    "negative accuracy": (_put("logs.validation_accuracy.0", -0.1), "holds -0.1"),
    "negative gradient norm": (_put("logs.train_gradient_norm.0", -1.0), "'train_gradient_norm'] holds -1.0"),
    "negative wall time": (_put("wall_time_s", -5), "wall_time_s is -5"),
    "NaN wall time": (_put("wall_time_s", float("nan")), "wall_time_s is nan"),
    "negative n_params": (_put("n_params", -1), "n_params is -1"),
    "n_params beyond the float range": (_put("n_params", 10**400), "expected an integer >= 0 within the float range"),
    "zero batch size": (_put("spec.batch_size", 0), "batch_size is 0"),
    "negative lr": (_put("spec.lr", -0.1), "lr is -0.1"),
    # ints beyond the float range, which math.isfinite cannot take
    "huge lr": (_put("spec.lr", 10**400), "lr is 1000"),
    "huge wall time": (_put("wall_time_s", 10**400), "wall_time_s is 1000"),
    "huge log value": (_put("logs.train_loss.1", 10**400), "'train_loss'] holds 1000"),
    # texts the report and the console print as they are: a line break would add a heading
    "diverged over lines": (_put("diverged", "boom\n\n## FAKE SECTION"), "its diverged is 'boom\\n\\n## FAKE"),
    "trainer with a carriage return": (_put("trainer", "fit\rX"), "its trainer is 'fit\\rX', expected one line"),
    "label with an escape": (_put("spec.label", "MLP\x1b[2J"), "its spec's label is"),
}


@pytest.mark.parametrize("edit", list(LYING_RECORDS))
def test_a_record_with_unknown_fields_or_lying_values_is_invalid(edit, tmp_path):
    from fn_trainer.app.experiments.records import load_record

    path = tmp_path / "r.json"
    data = _record()
    path.write_text(json.dumps(data))
    assert load_record(path).logs == data["logs"]  # the untouched record loads
    change, match = LYING_RECORDS[edit]
    change(data)
    path.write_text(json.dumps(data))  # NaN and Infinity are written as Python's json writes them
    warnings = []
    assert load_record(path, warnings.append) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and match in warnings[0], warnings


def test_a_record_that_breaks_the_record_class_is_invalid_not_fatal(tmp_path, monkeypatch):
    """Whatever record_problem misses, building the record must not end the command."""
    from fn_trainer.app.experiments import records

    monkeypatch.setattr(records, "record_problem", lambda data: None)
    path = tmp_path / "r.json"
    data = _record()
    data["spec"]["evil"] = 1
    path.write_text(json.dumps(data))
    warnings = []
    assert records.load_record(path, warnings.append) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and "evil" in warnings[0]


def test_a_record_with_an_unknown_spec_field_is_retrained_by_the_command(depth_done, tmp_path, capsys):
    args = depth_done
    record = sorted((tmp_path / "runs").glob("*.json"))[0]
    data = json.loads(record.read_text())
    data["spec"]["evil"] = 1
    record.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"fn-trainer: warning: ignoring the run record {record}") and "evil" in err
    assert "evil" not in record.read_text()  # retrained and rewritten


def test_a_folder_where_a_run_record_goes_is_refused_before_training(depth_done, tmp_path, capsys, monkeypatch):
    record = sorted((tmp_path / "runs").glob("*.json"))[0]
    record.unlink()
    record.mkdir()
    assert f"the run record {record} is a folder" in refused_untrained(depth_done, capsys, monkeypatch)


def refused_untrained(argv, capsys, monkeypatch) -> str:
    """The one error line of the command ``argv``, which must exit with 2 before training anything."""
    from fn_trainer.app.experiments import training

    trained = []
    monkeypatch.setattr(training, "train_one", lambda *a: trained.append(a))
    monkeypatch.setattr(training, "train_population", lambda *a: trained.append(a))
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not trained, err
    return err


@pytest.mark.parametrize("kind", ["a symbolic link", "a folder"])
def test_anything_but_a_file_at_the_report_lock_is_refused_before_training(kind, depth_done, tmp_path, capsys,
                                                                          monkeypatch):
    from fn_trainer.app import report

    for record in (tmp_path / "runs").glob("*.json"):
        record.unlink()  # so that the command would train
    lock = tmp_path / report.LOCK_FILE
    lock.unlink()
    if kind == "a folder":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "outside-lock")
    err = refused_untrained(depth_done, capsys, monkeypatch)
    assert f"the report lock {str(lock)!r}: it is {kind}, not a file" in err
    assert not (tmp_path / "outside-lock").exists()


@pytest.mark.parametrize("where", ["folder", "link to a folder", "working folder"])
def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(where, tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    folder.mkdir()
    path = {"folder": folder, "link to a folder": tmp_path / "link", "working folder": "."}[where]
    if where == "link to a folder":
        path.symlink_to(folder)
    monkeypatch.chdir(folder)
    import fn_trainer.training.fit as train

    steps = []
    monkeypatch.setattr(train, "train_epochs", lambda *a, **k: steps.append(1))  # no epoch may start
    with pytest.raises(ValueError, match="checkpoint must be a file path, got .*, a folder$") as e:
        run(path)
    assert str(path) in str(e.value) and not steps and os.listdir(folder) == []
