"""Checkpoints: safe loading, atomic writes, exact resume after an interrupt or a SIGKILL."""
import pickle
import runpy
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step
from fn_trainer.core.optim import AdamState
from fn_trainer.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_like,
    rng_states,
    save_checkpoint,
    set_rng_states,
    to_plain,
)
from fn_trainer.training.fit import fit

SHAPE = (1, 8, 8)




def problem(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *SHAPE, generator=g)
    return (X, torch.randint(0, 10, (n,), generator=g)), (X[:32], torch.randint(0, 10, (32,), generator=g))


def run(epochs=3, hiddens=(16,), step_hook=None, data_seed=0, **kw):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=hiddens), input_shape=SHAPE)
    opt = adam(1e-2)
    params = net.init(1)
    base = make_step(net.apply, opt)

    def step(p, s, batch):
        if step_hook is not None:
            step_hook(s)
        return base(p, s, batch)

    train, valid = problem(seed=data_seed)
    kw = {"batch_size": 16, "shuffle": True, "seed": 7, "progress": False, **kw}
    return fit(step, make_evaluate(net.apply), params, opt.init(params), train, valid, epochs=epochs, **kw)


def assert_same_run(a, b):
    assert a.logs == b.logs  # Python floats: bitwise equality
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    for x, y in zip(torch.utils._pytree.tree_leaves(a.opt_state), torch.utils._pytree.tree_leaves(b.opt_state)):
        assert torch.equal(x, y)


def interrupt_at(count):
    def hook(opt_state):
        if int(opt_state.count) == count:
            raise KeyboardInterrupt
    return hook


# --- the checkpoint file --------------------------------------------------------------------

def test_fit_writes_a_checkpoint_holding_the_final_state(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"
    result = run(checkpoint=path, config={"lr": 1e-2, "hidden": (16,)})
    data = load_checkpoint(path)
    assert (data["epoch"], data["batch"]) == (3, 0)
    assert data["logs"] == result.logs
    assert data["config"] == {"lr": 1e-2, "hidden": [16]}
    assert data["settings"]["batch_size"] == 16 and data["settings"]["seed"] == 7
    for k, v in result.params.items():
        assert torch.equal(data["params"][k], v)
    state = restore_like(result.opt_state, data["opt_state"])
    assert isinstance(state, AdamState) and int(state.count) == 18
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary files left


def test_a_checkpoint_under_the_home_folder_is_written_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    first = run(epochs=1, checkpoint="~/ckpt.pt")
    assert (tmp_path / "home" / "ckpt.pt").is_file() and not (tmp_path / "~").exists()
    assert_same_run(run(epochs=1, checkpoint="~/ckpt.pt", resume=True), first)


tensor_dicts = st.dictionaries(
    st.text("abcxyz.", min_size=1, max_size=5),
    st.tuples(st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.float64, torch.int64])),
    max_size=4,
)


@settings(max_examples=25, deadline=None)
@given(tensor_dicts, st.integers(0, 2**31))
def test_state_round_trips_exactly(tmp_path_factory, spec, seed):
    g = torch.Generator().manual_seed(seed)
    params = {k: (torch.randn(shape, generator=g) * 1e3).to(dtype) for k, (shape, dtype) in spec.items()}
    state = AdamState(torch.tensor(seed), params, {k: v.clone() for k, v in params.items()},
                      *(torch.tensor(x, dtype=torch.float64) for x in (0.1, 0.9, 0.999, 1e-8)))
    path = tmp_path_factory.mktemp("rt") / "c.pt"
    save_checkpoint(path, {"params": params, "opt_state": state, "note": ("a", 1, 2.5, None)})
    data = load_checkpoint(path)
    back = restore_like(state, data["opt_state"])
    assert type(back) is AdamState
    for x, y in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(back)):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert data["note"] == ["a", 1, 2.5, None]


def test_restore_like_names_a_shape_mismatch():
    with pytest.raises(CheckpointError, match=r"params\['w'\]: expected shape \(2, 3\)"):
        restore_like({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)}, "params")
    with pytest.raises(CheckpointError, match=r"expected keys \['w'\], found \['v'\]"):
        restore_like({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, "params")


def test_to_plain_refuses_objects_that_safe_loading_would_refuse():
    with pytest.raises(TypeError, match=r"state\['f'\]"):
        to_plain({"f": object()}, "state")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_states()})
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_states(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == expected[1:]
    set_rng_states(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])


# --- atomic writes --------------------------------------------------------------------------

def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    data = load_checkpoint(path)
    assert data["epoch"] == 1 and torch.equal(data["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_an_interrupt_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    real_save = torch.save

    def interrupted_save(obj, f):
        real_save(obj, f)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# --- refusing unsafe or broken files --------------------------------------------------------

class CreatesAFile:
    """Unpickling this object creates ``target``: arbitrary code run by a pickle."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


# a plain pickle.dump uses protocol 4, about which torch's safe unpickler warns before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_loading_a_malicious_pickle_refuses_it_and_runs_nothing(tmp_path, writer):
    # The payload works: plain unpickling really creates the file.
    probe = tmp_path / "probe-created"
    pickle.loads(pickle.dumps(CreatesAFile(probe)))
    assert probe.exists()

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": "fn-trainer-checkpoint", "version": 1, "params": CreatesAFile(target)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    # torch.save's zip is unpickled by the weights-only unpickler, which refuses the object;
    # a bare pickle is no torch.save file and is not unpickled at all
    match = "refused.*could run code" if writer == "torch.save" else "cannot be read: it is not a whole file"
    with pytest.raises(CheckpointError, match=f"evil.pt.* {match}"):
        load_checkpoint(evil)
    assert not target.exists()


def test_resuming_from_a_malicious_checkpoint_refuses_it(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "c.pt"
    torch.save({"format": "fn-trainer-checkpoint", "version": 1, "x": CreatesAFile(target)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        run(checkpoint=evil, resume=True)
    assert not target.exists()


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt.* cannot be read: it is not a whole file written by torch.save"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b".", b"\x80\x02h\x05.", b"\x80\x02]q\x00(K\x01e."[:-1], b"\x00" * 8])
def test_garbled_checkpoint_is_named(tmp_path, content):
    # not a zip: torch's weights-only unpickler reads it and fails with IndexError, KeyError...
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="c.pt.* cannot be read: it is not a whole file written by torch.save "
                                              r"\(truncated, or another kind of file\)$"):
        load_checkpoint(tmp_path / "c.pt")


def _rewritten(path, compression=zipfile.ZIP_STORED):
    """``path``'s archive written again record by record (``compression``: how)."""
    with zipfile.ZipFile(path) as archive:
        records = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression) as archive:
        for info, data in records:
            archive.writestr(info.filename, data)


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    _rewritten(path)
    load_checkpoint(path)  # the same records stored as they were: read as ever
    _rewritten(path, zipfile.ZIP_DEFLATED)  # torch.load inflates these whatever they grow to
    assert torch.load(path, weights_only=True)["epoch"] == 1
    with pytest.raises(CheckpointError, match="c.pt.* cannot be read: it holds a compressed record, which "
                                              "torch.save never writes$"):
        load_checkpoint(path)


def test_a_record_whose_bytes_do_not_match_their_checksum_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    first = run(epochs=1, checkpoint=path)
    raw = bytearray(path.read_bytes())
    weights = first.params["1.weight"].numpy().tobytes()
    at = bytes(raw).find(weights[:64])
    assert at > 0
    raw[at + 3] ^= 1  # one bit of a stored weight: torch.load reads it without a word
    path.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(path, weights_only=True)["params"]["1.weight"], first.params["1.weight"])
    with pytest.raises(CheckpointError, match=r"c.pt.* cannot be read: its record '\S+/data/\d+' is damaged \(its "
                                              r"bytes do not match their CRC-32\)$"):
        run(epochs=2, checkpoint=path, resume=True)


def _shared_lists(depth):
    """A list holding one list twice, ``depth`` deep: a few hundred bytes, 2**depth lists to walk."""
    nested: list = []
    for _ in range(depth):
        nested = [nested, nested]
    return nested


@pytest.mark.parametrize("where", ["last_grad_norm", "epoch", "version", "settings", "config"])
def test_lists_shared_into_an_exponential_tree_are_refused_at_once(tmp_path, where):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    data = load_checkpoint(path)
    if where in ("settings", "config"):
        data[where] = {**(data[where] or {}), "seed": _shared_lists(22)}
    else:
        data[where] = _shared_lists(22)
    torch.save(data, path)  # as it is: save_checkpoint's to_plain would walk the 2**22 lists
    assert path.stat().st_size < 100_000  # and 2**23 lists to walk
    with pytest.raises(CheckpointError) as e:
        run(epochs=2, checkpoint=path, resume=True)
    assert str(e.value) == (f"checkpoint {str(path)!r} cannot be read: it holds a tree of over "
                            f"{path.stat().st_size} nested values, which fn-trainer never writes (made by hand)")


def test_a_parameter_that_repeats_its_bytes_is_refused_at_once(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    data = load_checkpoint(path)
    data["opt_state"]["mu"]["1.bias"] = torch.zeros(1).expand(2**40)  # 2**40 elements in 4 bytes
    torch.save(data, path)
    with pytest.raises(CheckpointError) as e:
        run(epochs=2, checkpoint=path, resume=True)
    assert str(e.value) == (f"checkpoint {str(path)!r} cannot be read: it holds a tree with a tensor of "
                            "1099511627776 elements over 4 bytes of storage (a view repeating its bytes), which "
                            "fn-trainer never writes (made by hand)")


def test_lists_nested_past_what_a_recursive_walk_takes_are_refused(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    data = load_checkpoint(path)
    deep: list = []
    for _ in range(5000):  # few values, but repr or == of it overflows the stack
        deep = [deep]
    data["epoch"] = deep
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling it recurses
    try:
        torch.save(data, path)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=r"c.pt' cannot be read: it holds a tree of lists or dicts nested "
                                              "over 64 deep, which fn-trainer never writes"):
        run(epochs=2, checkpoint=path, resume=True)


def test_a_stored_tensor_that_requires_gradients_is_restored_detached(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    untouched = run(epochs=2, checkpoint=tmp_path / "copy.pt", resume=False)
    data = load_checkpoint(path)
    data["params"] = {k: v.requires_grad_(True) for k, v in data["params"].items()}
    torch.save(data, path)
    resumed = run(epochs=2, checkpoint=path, resume=True)
    assert_same_run(resumed, untouched)
    assert not any(p.requires_grad or p.grad_fn is not None for p in resumed.params.values())


def test_a_run_whose_config_holds_nan_resumes_from_its_own_checkpoint(tmp_path):
    config = {"weight_decay": float("nan"), "hidden": [16]}
    run(epochs=1, checkpoint=tmp_path / "c.pt", config=config)
    assert_same_run(run(epochs=2, checkpoint=tmp_path / "c.pt", resume=True, config=config), run(epochs=2))
    with pytest.raises(CheckpointError, match="different run: its config differ in weight_decay nan against this "
                                              "run's 0.5$"):
        run(epochs=2, checkpoint=tmp_path / "c.pt", resume=True, config={**config, "weight_decay": 0.5})


@pytest.mark.parametrize("content,match", [
    ({"a": 1}, "not an fn-trainer checkpoint"),
    ({"format": "fn-trainer-checkpoint", "version": 99}, "format version 99"),
])
def test_foreign_files_are_refused(tmp_path, content, match):
    torch.save(content, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "c.pt")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pt' does not exist"):
        load_checkpoint(tmp_path / "nothere.pt")


# --- resume ---------------------------------------------------------------------------------

def test_resume_without_a_checkpoint_file_starts_afresh(tmp_path):
    assert_same_run(run(checkpoint=tmp_path / "c.pt", resume=True), run())


def test_resuming_a_finished_run_returns_it(tmp_path):
    first = run(checkpoint=tmp_path / "c.pt")
    calls = []
    again = run(checkpoint=tmp_path / "c.pt", resume=True, step_hook=calls.append)
    assert calls == []
    assert_same_run(first, again)


def test_resume_extends_a_run_exactly(tmp_path):
    run(epochs=2, checkpoint=tmp_path / "c.pt")
    assert_same_run(run(epochs=4, checkpoint=tmp_path / "c.pt", resume=True), run(epochs=4))


def test_resume_refuses_a_run_already_past_the_requested_epochs(tmp_path):
    run(epochs=3, checkpoint=tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="already past epochs=2"):
        run(epochs=2, checkpoint=tmp_path / "c.pt", resume=True)


@pytest.mark.parametrize("changed,match", [
    ({"batch_size": 8}, "different run: its settings"),
    ({"seed": 8}, "different run: its settings"),
    ({"config": {"lr": 0.5}}, "different run: its config"),
    ({"data_seed": 1}, "different run: its settings differ in data '[0-9a-f]{16}' against this run's '[0-9a-f]{16}'$"),
    ({"hiddens": (12,)}, r"params\['1.weight'\]: expected shape \(12, 64\)"),
])
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, changed, match):
    run(epochs=1, checkpoint=tmp_path / "c.pt", config={"lr": 0.01})
    kw = {"epochs": 2, "checkpoint": tmp_path / "c.pt", "resume": True, "config": {"lr": 0.01}, **changed}
    with pytest.raises(CheckpointError, match=match):
        run(**kw)


@pytest.mark.parametrize("params_dtype, norm_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                                      (torch.bfloat16, torch.bfloat16)])
def test_an_interrupt_during_the_end_of_epoch_evaluation_resumes_bitwise(tmp_path, params_dtype, norm_dtype):
    """Ctrl-C while an epoch's metrics are measured leaves the checkpoint at the epoch's last
    step: the resumed run logs the gradient norm it kept, not rounded to float32 (a float64
    run's, or a step's that reports it in float64); bfloat16 data is hashed too."""
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    opt, params = adam(1e-2), net.init(0, params_dtype)
    pure, evaluate = make_step(net.apply, opt), make_evaluate(net.apply)

    def step(p, s, batch):
        p, s, metrics = pure(p, s, batch)
        # / 3: a value the norm's dtype holds and float32 may not
        return p, s, {**metrics, "grad_norm": metrics["grad_norm"].to(norm_dtype) / 3}

    calls = []

    def interrupted(p, X, T):
        calls.append(1)
        if len(calls) == 3:  # the first evaluation after epoch 1: 1 and 2 measured the start
            raise KeyboardInterrupt
        return evaluate(p, X, T)

    kw = dict(epochs=2, batch_size=32, progress=False)
    (X, y), (Xv, yv) = problem()
    data = ((X.to(params_dtype), y), (Xv.to(params_dtype), yv))
    whole = fit(step, evaluate, params, opt.init(params), *data, **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(step, interrupted, params, opt.init(params), *data, checkpoint=tmp_path / "c.pt", **kw)
    assert load_checkpoint(tmp_path / "c.pt")["batch"] == 3  # 96 rows: the epoch's last step
    resumed = fit(step, evaluate, params, opt.init(params), *data, checkpoint=tmp_path / "c.pt",
                  resume=True, **kw)
    assert_same_run(resumed, whole)


def test_a_version_1_checkpoint_without_the_data_digest_resumes_and_a_newer_one_is_refused(tmp_path, monkeypatch):
    from fn_trainer.training import checkpoint as checkpoint_format

    run(epochs=1, checkpoint=tmp_path / "c.pt")
    state = {k: v for k, v in load_checkpoint(tmp_path / "c.pt").items() if k not in ("format", "version")}
    del state["settings"]["data"]  # hand-edited out of a current checkpoint: refused
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="its settings differ in data none against this run's '[0-9a-f]{16}'$"):
        run(epochs=3, checkpoint=tmp_path / "c.pt", resume=True)
    del state["settings"]["dtype"]
    with monkeypatch.context() as m:  # as written before checkpoints held the digest
        m.setattr(checkpoint_format, "VERSION", 1)
        save_checkpoint(tmp_path / "c.pt", state)
    assert load_checkpoint(tmp_path / "c.pt")["version"] == 1
    assert_same_run(run(epochs=3, checkpoint=tmp_path / "c.pt", resume=True), run(epochs=3))
    state["settings"]["batch_size"] = 8  # a version-1 checkpoint is still checked on the rest
    with monkeypatch.context() as m:
        m.setattr(checkpoint_format, "VERSION", 1)
        save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="its settings differ in batch_size 8 against this run's 16$"):
        run(epochs=3, checkpoint=tmp_path / "c.pt", resume=True)


def test_a_version_2_checkpoint_without_the_dtype_resumes(tmp_path, monkeypatch):
    from fn_trainer.training import checkpoint as checkpoint_format

    run(epochs=1, checkpoint=tmp_path / "c.pt")
    state = {k: v for k, v in load_checkpoint(tmp_path / "c.pt").items() if k not in ("format", "version")}
    del state["settings"]["dtype"]
    with monkeypatch.context() as m:
        m.setattr(checkpoint_format, "VERSION", 2)
        save_checkpoint(tmp_path / "c.pt", state)
    assert_same_run(run(epochs=3, checkpoint=tmp_path / "c.pt", resume=True), run(epochs=3))


def test_resuming_in_another_dtype_names_the_dtype(tmp_path):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    opt = adam(1e-2)
    train, valid = problem()

    def run_in(dtype, **kw):
        params = net.init(1, dtype)
        return fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), train, valid,
                   epochs=2, batch_size=16, progress=False, checkpoint=tmp_path / "c.pt", **kw)

    run_in(torch.float32)
    with pytest.raises(CheckpointError, match="its settings differ in data .*; dtype 'torch.float32' against this "
                                              "run's 'torch.float64'$"):
        run_in(torch.float64, resume=True)


def test_a_reader_resumes_from_the_checkpoint_but_never_writes_it(tmp_path):
    # the ranks of a data-parallel run other than 0: they resume with rank 0 and leave the file to it
    folder = tmp_path / "absent"
    run(checkpoint=folder / "c.pt", write_checkpoint=False)
    assert not folder.exists()
    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=path, step_hook=interrupt_at(7))
    written = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):  # an interrupt saves nothing either
        run(checkpoint=path, resume=True, write_checkpoint=False, step_hook=interrupt_at(9))
    calls = []
    resumed = run(checkpoint=path, resume=True, write_checkpoint=False, step_hook=calls.append)
    assert len(calls) == 18 - 7  # from where the first interrupt left it, not the second
    assert_same_run(resumed, run())
    assert path.read_bytes() == written


@pytest.mark.parametrize("count", [4, 6, 7, 12])  # mid-epoch, at an epoch's last step, at a boundary
def test_keyboard_interrupt_saves_and_resume_is_exact(tmp_path, count):
    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=path, step_hook=interrupt_at(count))
    data = load_checkpoint(path)
    assert data["epoch"] * 6 + data["batch"] == count  # 96 samples / 16 = 6 steps per epoch
    calls = []
    resumed = run(checkpoint=path, resume=True, step_hook=calls.append)
    assert len(calls) == 18 - count
    assert_same_run(resumed, run())


class InterruptsOnDeletion:
    """Ctrl-C arriving while a finaliser runs, as torch's tensor finalisers often do."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("count", [4, 6])  # mid-epoch, and at an epoch's last step (during its end)
def test_an_interrupt_that_cpython_drops_in_a_finaliser_still_stops_the_run_and_saves(tmp_path, count):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "c.pt"

    def dropped_interrupt(opt_state):
        if int(opt_state.count) == count:
            InterruptsOnDeletion()  # its KeyboardInterrupt is "ignored" by CPython, the run goes on
    try:
        with pytest.raises(KeyboardInterrupt):
            run(checkpoint=path, step_hook=dropped_interrupt)
    finally:
        signal.signal(signal.SIGINT, previous)
    data = load_checkpoint(path)
    assert data["epoch"] * 6 + data["batch"] == count + 1  # stopped after the step it arrived in
    assert_same_run(run(checkpoint=path, resume=True), run())


def test_an_interrupt_dropped_while_a_divergence_is_replayed_stops_the_run_it_ends(tmp_path):
    """The run ends early (its only member diverged), with the interrupt dropped in the
    replay that located the divergence: it is raised as the loop returns, and the checkpoint
    is the last good epoch's, from which a resumed run diverges alike."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    opt = adam(1e-2)
    params = net.init(1)
    base = make_step(net.apply, opt)
    visits = []

    def step(p, s, batch):
        p, s, m = base(p, s, batch)
        if int(s.count) == 9:  # epoch 2's third step: seen at its end, then replayed
            visits.append(1)
            if len(visits) == 2:
                InterruptsOnDeletion()
            m = {**m, "loss": torch.tensor(float("nan"))}
        return p, s, m

    train, valid = problem()
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(step, make_evaluate(net.apply), params, opt.init(params), train, valid, epochs=3,
                batch_size=16, progress=False, checkpoint=tmp_path / "c.pt")
    finally:
        signal.signal(signal.SIGINT, previous)
    data = load_checkpoint(tmp_path / "c.pt")
    assert (data["epoch"], data["batch"]) == (1, 0)


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # torch.load's own, before ours
def test_a_sparse_tensor_in_a_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "c.pt"
    run(epochs=1, checkpoint=path)
    data = load_checkpoint(path)
    data["opt_state"]["mu"]["1.bias"] = data["opt_state"]["mu"]["1.bias"].to_sparse()
    torch.save(data, path)
    with pytest.raises(CheckpointError) as e:
        run(epochs=2, checkpoint=path, resume=True)
    assert str(e.value) == (f"checkpoint {str(path)!r} cannot be read: it holds a tree with a tensor of layout "
                            "torch.sparse_coo, which fn-trainer never writes (made by hand)")


def test_a_resumed_run_counts_the_seconds_of_the_process_it_was_interrupted_in(tmp_path):
    """A run's wall time is its whole training's: the checkpoint carries the seconds of the
    part before an interrupt, and the resumed run adds its own to them."""
    path = tmp_path / "c.pt"

    def slow_then_interrupt(opt_state):
        time.sleep(0.05)  # 8 steps before the interrupt at the 8th: at least 0.4 s
        interrupt_at(7)(opt_state)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=path, step_hook=slow_then_interrupt)
    stored = load_checkpoint(path)["seconds"]
    assert stored >= 0.4
    start = time.perf_counter()
    resumed = run(checkpoint=path, resume=True)
    assert stored <= resumed.wall_time_s <= stored + time.perf_counter() - start
    # the resumed run's own checkpoint carries both parts on, for a second interrupt
    assert stored <= load_checkpoint(path)["seconds"] <= resumed.wall_time_s


def test_keyboard_interrupt_after_divergence_keeps_the_last_good_checkpoint(tmp_path):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    opt = adam(1e-2)
    params = net.init(1)
    base = make_step(net.apply, opt)

    def step(p, s, batch):
        if int(s.count) == 8:
            raise KeyboardInterrupt
        p, s, m = base(p, s, batch)
        if int(s.count) >= 7:  # a non-finite loss at the epoch's first step, seen only at epoch end
            m = {**m, "loss": torch.tensor(float("nan"))}
        return p, s, m

    train, valid = problem()
    with pytest.raises(KeyboardInterrupt):
        fit(step, make_evaluate(net.apply), params, opt.init(params), train, valid, epochs=3,
            batch_size=16, progress=False, checkpoint=tmp_path / "c.pt")
    data = load_checkpoint(tmp_path / "c.pt")
    assert (data["epoch"], data["batch"]) == (1, 0)


# --- SIGKILL ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import signal, sys, time
    import torch
    torch.set_num_threads(1)
    from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step
    from fn_trainer.training.fit import fit

    mode, out, *ckpts = sys.argv[1:]
    if mode == "stop":  # a shell starts background jobs with SIGINT ignored, and Python keeps it so
        signal.signal(signal.SIGINT, signal.default_int_handler)
    net = build_network("cnn", NetworkConfiguration((4,), (3,), (1,), (1,), (16,)), input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(160, 1, 8, 8, generator=g), torch.randint(0, 10, (160,), generator=g)
    opt = adam(3e-3)
    base = make_step(net.apply, opt)
    calls = []

    def step(p, s, batch):
        calls.append(1)
        if mode == "stop" and int(s.count) == 2 * 5 + 3:  # in the middle of epoch 3
            print("READY", flush=True)
            time.sleep(300)
        return base(p, s, batch)

    def train(path, resume):
        params = net.init(3)
        calls.clear()
        r = fit(step, make_evaluate(net.apply), params, opt.init(params), (X, y), (X[:40], y[:40]),
                epochs=4, batch_size=32, shuffle=True, seed=11, progress=False, checkpoint=path,
                resume=resume, config={"lr": 3e-3})
        return {"params": r.params, "logs": r.logs, "calls": len(calls)}

    if mode == "stop":
        try:
            train(ckpts[0], resume=False)
        except KeyboardInterrupt:
            sys.exit(130)
    else:
        results = {"fresh": train(out + ".fresh.pt", resume=False)}
        results.update({c: train(c, resume=True) for c in ckpts})
        torch.save(results, out)
""")


STOPS = {  # signal: (checkpoint position afterwards, exit status)
    signal.SIGKILL: ((2, 0), -signal.SIGKILL),  # nothing runs: the last epoch's checkpoint remains
    signal.SIGINT: ((2, 3), 130),  # KeyboardInterrupt: the state before the interrupted step is saved
}


def test_killed_or_interrupted_mid_epoch_then_resumed_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out.pt"
    ckpts = {sig: tmp_path / f"{sig.name}.pt" for sig in STOPS}
    children = {sig: subprocess.Popen([sys.executable, str(script), "stop", str(out), str(ckpts[sig])],
                                      stdout=subprocess.PIPE, text=True) for sig in STOPS}
    try:
        for sig, child in children.items():
            assert child.stdout.readline().strip() == "READY"
            data = load_checkpoint(ckpts[sig])
            assert (data["epoch"], data["batch"]) == (2, 0)  # the last completed epoch
            child.send_signal(sig)
            assert child.wait(timeout=60) == STOPS[sig][1]
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    for sig, ckpt in ckpts.items():
        data = load_checkpoint(ckpt)
        assert (data["epoch"], data["batch"]) == STOPS[sig][0], sig.name
    # the resumes need no process of their own: the stopped runs' processes are gone
    monkeypatch.setattr(sys, "argv", [str(script), "resume", str(out), *map(str, ckpts.values())])
    runpy.run_path(str(script), run_name="__main__")
    results = torch.load(out, weights_only=True)
    fresh = results["fresh"]
    assert fresh["calls"] == 4 * 5 and len(fresh["logs"]["validation_loss"]) == 5
    for sig, ckpt in ckpts.items():
        resumed = results[str(ckpt)]
        epoch, batch = STOPS[sig][0]
        assert resumed["calls"] == 4 * 5 - (epoch * 5 + batch), sig.name  # it resumed, not restarted
        assert resumed["logs"] == fresh["logs"], sig.name
        for k, v in fresh["params"].items():
            assert torch.equal(resumed["params"][k], v), (sig.name, k)


def test_a_config_holding_a_tensor_is_refused_before_training(tmp_path):
    # a tensor in config compares ambiguously on resume: refused when the run starts, not when it resumes
    steps = []
    with pytest.raises(TypeError, match=r"^config\['w'\] must hold plain values .*, got a tensor$"):
        run(checkpoint=tmp_path / "c.pt", config={"w": torch.ones(3)}, step_hook=steps.append)
    assert not steps and not (tmp_path / "c.pt").exists()
