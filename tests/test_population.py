"""Populations: K members with their own seeds, hyper-parameters and inputs, in one vmapped
step, each following its solo ``fit`` run; per-member divergence; exact resume."""
import copy
import math
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from fakedata import banded_tensors
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from fn_trainer import (
    Member,
    NetworkConfiguration,
    adam,
    build_network,
    fit,
    fit_population,
    fit_sweep,
    make_evaluate,
    make_step,
    normalize,
    one_hot,
)
from fn_trainer.core.trees import stack_trees, tree_index
from fn_trainer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fn_trainer.training.population import init_population, member_splits

TOL = dict(rtol=1e-4, atol=1e-5)  # float32: vmapped (batched) matmuls reassociate sums
TOL64 = dict(rtol=1e-10, atol=1e-12)  # the same reassociation in float64


@pytest.fixture(scope="module")
def data():
    return banded_tensors(200, 0), banded_tensors(64, 1)


MLP = NetworkConfiguration(dense_hiddens=(32, 16))


def solo(network, member, train, valid, *, epochs, batch_size, shuffle=False, dtype=torch.float32):
    opt = adam(member.lr, member.b1, member.b2, member.eps)
    params = network.init(member.seed, dtype)
    return fit(make_step(network.apply, opt), make_evaluate(network.apply), params, opt.init(params), train, valid,
               epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=member.seed, progress=False)


def assert_close_runs(got, want, tol):
    assert got.diverged == want.diverged
    assert set(got.logs) == set(want.logs)
    for key in want.logs:
        assert len(got.logs[key]) == len(want.logs[key]), key
        torch.testing.assert_close(torch.tensor(got.logs[key], dtype=torch.float64),
                                   torch.tensor(want.logs[key], dtype=torch.float64), **tol, msg=key)
    for name in want.params:
        torch.testing.assert_close(got.params[name], want.params[name], **tol, msg=name)
    assert int(got.opt_state.count) == int(want.opt_state.count)


def test_member_k_starts_from_network_init_of_its_seed_exactly():
    net = build_network("cnn", NetworkConfiguration((4,), (3,), (1,), (0,), (8,)))
    members = [Member(5, 1e-2), Member(0, 1e-3, b1=0.8), Member(5, 1e-4, eps=1e-6)]
    params, state = init_population(net, members)
    for k, m in enumerate(members):
        mine = tree_index(params, k)
        assert all(torch.equal(mine[n], v) for n, v in net.init(m.seed).items())
        hyper = tree_index(state, k)
        assert [hyper.lr.item(), hyper.b1.item(), hyper.b2.item(), hyper.eps.item()] == [m.lr, m.b1, m.b2, m.eps]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-5, 1e-1), st.floats(0.0, 0.99), st.floats(0.9, 0.9999),
                          st.floats(1e-10, 1e-4), st.integers(0, 50)), min_size=1, max_size=4))
def test_the_vmapped_adam_update_is_bitwise_each_members_solo_update(hypers):
    """Where vmap allows bitwise equality: Adam is element-wise, so each member's update under
    vmap, with its own hyper-parameters and step count, equals its solo update exactly."""
    g = torch.Generator().manual_seed(len(hypers))
    shapes = {"w": (5, 3), "b": (3,)}
    params = [{n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in hypers]
    grads = [{n: torch.randn(s, generator=g) * 10.0 ** torch.randint(-6, 2, (), generator=g) for n, s in shapes.items()}
             for _ in hypers]
    states = [adam(lr, b1, b2, eps).init(p)._replace(count=torch.tensor(c)) for (lr, b1, b2, eps, c), p in zip(hypers, params)]
    update = adam().update
    new_params, new_states = vmap(update)(stack_trees(grads), stack_trees(states), stack_trees(params))
    for k in range(len(hypers)):
        want_params, want_state = update(grads[k], states[k], params[k])
        assert all(torch.equal(new_params[n][k], want_params[n]) for n in shapes)
        assert all(torch.equal(new_states.nu[n][k], want_state.nu[n]) for n in shapes)


def test_members_follow_their_solo_fit_runs_with_own_seeds_hyperparameters_and_inputs(data):
    train, valid = data
    ntrain, nvalid, _ = normalize(train, valid, valid)
    net = build_network("mlp", MLP)
    members = [Member(0, 1e-2), Member(1, 1e-3, b1=0.8, b2=0.99), Member(2, 3e-3, eps=1e-6), Member(1, 1e-3)]
    trains = [train, train, tuple(ntrain), tuple(ntrain)]
    valids = [valid, valid, tuple(nvalid), tuple(nvalid)]
    results = fit_population(net, members, trains, valids, epochs=2, batch_size=64, shuffle=True, progress=False)
    for m, tr, va, got in zip(members, trains, valids, results):
        assert_close_runs(got, solo(net, m, tr, va, epochs=2, batch_size=64, shuffle=True), TOL)
    # different seeds read the data in different orders: members 1 and 3 differ only in their inputs
    assert not torch.equal(results[1].params["1.weight"], results[3].params["1.weight"])


def test_float64_members_agree_with_solo_runs_to_float64_rounding(data):
    train, valid = data
    net = build_network("cnn", NetworkConfiguration((4,), (3,), (1,), (0,), (16,)))
    members = [Member(3, 1e-2), Member(4, 1e-3)]
    results = fit_population(net, members, train, valid, epochs=1, batch_size=64, dtype=torch.float64,
                             progress=False)
    for m, got in zip(members, results):
        assert got.params["0.weight"].dtype == torch.float64
        assert_close_runs(got, solo(net, m, train, valid, epochs=1, batch_size=64, dtype=torch.float64), TOL64)


def test_a_diverging_member_stops_where_fit_stops_it_and_the_others_go_on(data):
    train, valid = data
    net = build_network("mlp", MLP)
    members = [Member(0, 1e-3), Member(1, 1e36), Member(2, 1e-2)]
    results = fit_population(net, members, train, valid, epochs=3, batch_size=64, progress=False)
    assert results[1].diverged is not None and "epoch 1 at step" in results[1].diverged
    for m, got in zip(members, results):
        assert_close_runs(got, solo(net, m, train, valid, epochs=3, batch_size=64), TOL)
    assert len(results[0].logs["validation_accuracy"]) == 4 and len(results[1].logs["validation_accuracy"]) == 1


def test_a_member_whose_evaluation_overflows_stops_there_and_the_checkpoint_resumes(data, tmp_path):
    """lr 1e18, one step an epoch: the step stays finite, but the parameters it leaves make the
    end-of-epoch evaluation NaN. The member stops there, logged up to the epoch before (as a
    member stopped within an epoch), like its solo fit run; the checkpoint resumes."""
    train, valid = data
    net = build_network("mlp", MLP)
    members = [Member(0, 1e-3), Member(1, 1e18), Member(2, 1e-2)]
    whole = fit_population(net, members, train, valid, epochs=3, batch_size=200, progress=False)
    assert "end-of-epoch evaluation is not" in whole[1].diverged and "diverged in epoch 1" in whole[1].diverged
    assert len(whole[1].logs["validation_accuracy"]) == 1 and whole[1].logs["train_gradient_norm"] == []
    for m, got in zip(members, whole):
        assert_close_runs(got, solo(net, m, train, valid, epochs=3, batch_size=200), TOL)
    path = tmp_path / "p.pt"
    fit_population(net, members, train, valid, epochs=1, batch_size=200, progress=False, checkpoint=path)
    resumed = fit_population(net, members, train, valid, epochs=3, batch_size=200, progress=False,
                             checkpoint=path, resume=True)
    for got, want in zip(resumed, whole):
        assert got.logs == want.logs and got.diverged == want.diverged
        assert all(torch.equal(got.params[k], want.params[k]) for k in want.params)


def test_data_on_which_a_member_overflows_before_training_is_refused_before_any_step(data):
    """A log that started with a non-finite evaluation could not be resumed from (a
    checkpoint's logs hold finite values): such data is refused, naming the member, as
    fit refuses it."""
    train, (Xv, yv) = data
    net = build_network("mlp", MLP)
    overflowing = (Xv.sign() * 3.3e38, yv)
    with pytest.raises(ValueError, match=r"^members\[1\]: the evaluation before training is not finite "
                                         r"\(validation_loss=nan"):
        fit_population(net, [Member(0, 1e-2), Member(1, 1e-3)], [train, train], [(Xv, yv), overflowing],
                       epochs=1, batch_size=200, progress=False)
    opt, params = adam(1e-2), net.init(0)
    with pytest.raises(ValueError, match=r"^the evaluation before training is not finite \(validation_loss=nan"):
        fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), train, overflowing,
            epochs=1, batch_size=200, progress=False)


def test_a_population_resumes_on_the_same_data_however_its_tensors_are_shared(data, tmp_path):
    """The checkpoint identifies the members' data sets by their values, not by which tensor
    objects hold them: an input read by two members through one tensor, then through a copy."""
    (X, y), valid = data
    net, members = build_network("mlp", MLP), [Member(0, 1e-3), Member(1, 1e-2)]
    labels = [y, torch.roll(y, 1)]
    path = tmp_path / "p.pt"
    fit_population(net, members, [(X, labels[0]), (X, labels[1])], valid, epochs=1, batch_size=100,
                   progress=False, checkpoint=path)
    resumed = fit_population(net, members, [(X.clone(), labels[0]), (X, labels[1])], valid, epochs=2,
                             batch_size=100, progress=False, checkpoint=path, resume=True)
    whole = fit_population(net, members, [(X, labels[0]), (X, labels[1])], valid, epochs=2, batch_size=100,
                           progress=False)
    for got, want in zip(resumed, whole):
        assert got.logs == want.logs and all(torch.equal(got.params[k], want.params[k]) for k in want.params)


def test_a_hand_edited_stopped_member_is_refused(data, tmp_path):
    """A stopped member's stored state is checked as a running member's is: its
    hyper-parameters, a step counter within the epoch it stopped in, and an epoch that the
    population has begun (a healthy member made 'stopped' by an edit is refused)."""
    train, valid = data
    net, members = build_network("mlp", MLP), [Member(0, 1e-3), Member(1, 1e30)]
    path = tmp_path / "p.pt"
    fit_population(net, members, train, valid, epochs=1, batch_size=100, progress=False, checkpoint=path)
    state = {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "version")}
    assert list(state["stopped"]) == ["1"]

    def refused(edit, match):
        edited = copy.deepcopy(state)
        edit(edited)
        save_checkpoint(path, edited)
        with pytest.raises(CheckpointError, match=match):
            fit_population(net, members, train, valid, epochs=2, batch_size=100, progress=False, checkpoint=path,
                           resume=True)

    refused(lambda d: d["stopped"]["1"]["opt_state"]["lr"].fill_(0.5),
            r"inconsistent: member 1: stopped: its optimizer state has lr=0\.5, this run's optimizer has lr=1e\+30$")
    refused(lambda d: d["stopped"]["1"]["opt_state"]["count"].fill_(123),
            r"member 1: stopped: its optimizer state has taken 123 steps \(count\), but its logs end after 0 "
            r"epochs of 2 steps, so it stopped within steps 0 to 2$")
    refused(lambda d: d["stopped"].update({"0": d["stopped"]["1"]}),
            r"member 0: it stopped in epoch 2, which the population, at epoch 1 step 0, has not begun$")


def test_numpy_numbers_are_taken_as_plain_ones(data, tmp_path):
    np = pytest.importorskip("numpy")
    train, valid = data
    net = build_network("mlp", MLP)
    members = [Member(np.int64(s), np.float32(1e-3), np.float64(0.9)) for s in range(2)]
    got = fit_population(net, members, train, valid, epochs=np.int64(1), batch_size=np.int64(64), shuffle=True,
                         progress=False, checkpoint=tmp_path / "p.pt")
    want = fit_population(net, [Member(s, float(np.float32(1e-3))) for s in range(2)], train, valid, epochs=1,
                          batch_size=64, shuffle=True, progress=False)
    assert [r.logs for r in got] == [r.logs for r in want]
    solo_run = solo(net, Member(np.int64(1)), train, valid, epochs=1, batch_size=64, shuffle=True)
    assert solo_run.logs == solo(net, Member(1), train, valid, epochs=1, batch_size=64, shuffle=True).logs


def test_shared_data_is_never_copied_per_member(data):
    (X, y), _ = data
    shared = member_splits("train", (X, y), 8, 10, torch.float32)
    assert shared.shared and shared.X.data_ptr() == X.data_ptr()
    repeated = member_splits("train", [(X, y)] * 8, 8, 10, torch.float32)
    assert repeated.shared and repeated.X.data_ptr() == X.data_ptr()
    Xb, Tb = repeated.rows(torch.stack([torch.arange(4), torch.arange(4, 8)]))
    assert Xb.shape == (2, 4, 1, 28, 28)  # per-member orders gather minibatches only


def test_inputs_shared_by_members_with_their_own_labels_are_stored_once(data):
    """Members that read one image set with labels of their own (a label-noise study) share
    the images, a view of the same memory too; only the targets are stacked per member."""
    (X, y), valid = data
    labels = [y, torch.roll(y, 1), torch.roll(y, 2)]
    split = member_splits("train", [(X, labels[0]), (X.view(X.shape), labels[1]), (X, labels[2])], 3, 10,
                          torch.float32)
    assert split.x_shared and split.X.data_ptr() == X.data_ptr() and split.T.shape == (3, len(y), 10)
    assert all(torch.equal(split.member(k)[1], one_hot(labels[k], 10)) for k in range(3))
    z = torch.complex(torch.zeros_like(X), X)  # z.conj().imag views X's memory as -X, lazily
    apart = member_splits("train", [(z.imag, y), (z.conj().imag, y)], 2, 10, torch.float32)
    assert not apart.x_shared and torch.equal(apart.member(1)[0], -X)
    net, members = build_network("mlp", MLP), [Member(0, 1e-3), Member(1, 1e-2), Member(2, 3e-3)]
    for shuffle in (False, True):  # one order for all (images unbatched), one order per seed
        results = fit_population(net, members, [(X, labels[k]) for k in range(3)], valid, epochs=2, batch_size=64,
                                 shuffle=shuffle, progress=False)
        for k, got in enumerate(results):
            assert_close_runs(got, solo(net, members[k], (X, labels[k]), valid, epochs=2, batch_size=64,
                                        shuffle=shuffle), TOL)


@pytest.mark.parametrize("bad, match", [
    ([], "members must be a non-empty"), ([(0, 1e-3)], r"members\[0\] must be a Member"),
    ([Member(-1)], r"members\[0\].seed"), ([Member(0, 0.0)], r"members\[0\].lr"), ([Member(0, 1e-3, b1=1.0)], "b1"),
    ([Member(0), Member(1, 1e39)], r"^members\[1\].lr must be a normal number in torch.float32"),
    ([Member(0, eps=1e-46)], r"^members\[0\].eps must be a normal number in torch.float32"),
])
def test_bad_members_are_named(data, bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fit_population(build_network("mlp", MLP), bad, *data, epochs=1, progress=False)


@pytest.mark.parametrize("option, match", [
    ({"dtype": torch.int32}, "^dtype must be a real floating dtype such as torch.float32, got torch.int32$"),
    ({"dtype": "float32"}, "^dtype must be a real floating dtype"),
    ({"n_classes": 5}, "^n_classes must be the network's 10, got 5$"),
    ({"evaluate": "not a function"}, "^evaluate must be a function, got str$"),
])
def test_bad_options_are_named_before_any_member_is_made(data, option, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fit_population(build_network("mlp", MLP), [Member(0)], *data, epochs=1, progress=False, **option)


def test_every_member_is_evaluated_with_the_evaluation_it_is_given(data):
    net = build_network("mlp", MLP)
    members, plain, rows = [Member(0), Member(1, lr=3e-3)], make_evaluate(net.apply), []

    def shifted(params, X, targets):  # the plain evaluation, its loss one higher
        rows.append(X.shape[0])
        loss, accuracy = plain(params, X, targets)
        return loss + 1.0, accuracy

    got = fit_population(net, members, *data, epochs=2, batch_size=50, progress=False, evaluate=shifted)
    want = fit_population(net, members, *data, epochs=2, batch_size=50, progress=False)
    assert rows == [200, 200, 64, 64] * 3  # both members on each set, before training and after each epoch
    for g, w in zip(got, want):
        for split in ("train", "validation"):
            assert g.logs[f"{split}_loss"] == [v + 1.0 for v in w.logs[f"{split}_loss"]]
            assert g.logs[f"{split}_accuracy"] == w.logs[f"{split}_accuracy"]


@pytest.mark.parametrize("compile", [False, True])
def test_a_compiled_apply_that_is_not_callable_is_refused_compiled_or_not(data, compile):
    with pytest.raises(TypeError, match="^compiled_apply must be a function, got str$"):
        fit_population(build_network("mlp", MLP), [Member(0)], *data, epochs=1, progress=False, compile=compile,
                       compiled_apply="not a function")


def test_a_population_checkpoint_of_another_population_is_refused(data, tmp_path):
    net = build_network("mlp", MLP)
    path = tmp_path / "p.pt"
    fit_population(net, [Member(0, 1e-3), Member(1, 1e-3)], *data, epochs=1, batch_size=100, progress=False,
                   checkpoint=path)
    with pytest.raises(CheckpointError, match="different run"):
        fit_population(net, [Member(0, 1e-3), Member(2, 1e-3)], *data, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)
    # one member fewer on the same data: the members differ, and only they are named
    with pytest.raises(CheckpointError, match=r"different run: its settings differ in members \[\[0, 0.001, 0.9, "
                                              r"0.999, 1e-08\], \[1, .*\]\] against this run's \[\[0, .*\]\]$"):
        fit_population(net, [Member(0, 1e-3)], *data, epochs=2, batch_size=100, progress=False, checkpoint=path,
                       resume=True)
    tanh = build_network("mlp", MLP, activation_name="tanh")  # the same parameter shapes
    with pytest.raises(CheckpointError, match="its settings differ in network$"):
        fit_population(tanh, [Member(0, 1e-3), Member(1, 1e-3)], *data, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)
    other = [(X.flip(0), y.flip(0)) for X, y in data]  # the same shapes
    with pytest.raises(CheckpointError, match="its settings differ in data"):
        fit_population(net, [Member(0, 1e-3), Member(1, 1e-3)], *other, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)
    state = load_checkpoint(path)
    state["logs"][1]["validation_accuracy"].append(0.5)  # a hand-edited member log
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="member 1"):
        fit_population(net, [Member(0, 1e-3), Member(1, 1e-3)], *data, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)
    state["logs"][1]["validation_accuracy"].pop()
    state["batch"], state["last_grad_norm"] = 1, None  # within an epoch, whose log needs the last norm
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="member 0: last_grad_norm must be a number after step 1 "):
        fit_population(net, [Member(0, 1e-3), Member(1, 1e-3)], *data, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)
    state["epoch"] = 1.0
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="is inconsistent: member 0: epoch must be an integer >= 0, found 1.0$"):
        fit_population(net, [Member(0, 1e-3), Member(1, 1e-3)], *data, epochs=2, batch_size=100, progress=False,
                       checkpoint=path, resume=True)


def test_a_resumed_population_counts_the_seconds_its_checkpoint_holds(data, tmp_path):
    net, members = build_network("mlp", MLP), [Member(0, 1e-3), Member(1, 1e-2)]
    path = tmp_path / "p.pt"
    first = fit_population(net, members, *data, epochs=1, batch_size=100, progress=False, checkpoint=path)
    state = load_checkpoint(path)
    assert 0 < state["seconds"] <= first[0].wall_time_s == first[1].wall_time_s
    state["seconds"] = 1000.0  # as if the first epoch had taken that long
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    start = time.perf_counter()
    resumed = fit_population(net, members, *data, epochs=2, batch_size=100, progress=False, checkpoint=path,
                             resume=True)
    assert all(1000 <= r.wall_time_s <= 1000 + time.perf_counter() - start for r in resumed)
    # the resumed run's own checkpoint carries both parts on, for a second interrupt
    assert 1000 <= load_checkpoint(path)["seconds"] <= resumed[0].wall_time_s


CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import fn_trainer.training.population as population
    from fn_trainer import Member, NetworkConfiguration, build_network, fit_population

    mode, out, ckpt = sys.argv[1:]
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(160, 1, 8, 8, generator=g), torch.randint(0, 10, (160,), generator=g)
    members = [Member(0, 3e-3), Member(1, 1e-2), Member(2, 1e36), Member(3, 1e-3, b1=0.8)]
    make = population.make_population_step

    def pausing_step(*args, **kwargs):
        step = make(*args, **kwargs)

        def paused(p, s, batch):
            if mode == "stop" and int(s.count[0]) == 2 * 5 + 3:  # in the middle of epoch 3
                print("READY", flush=True)
                time.sleep(300)
            return step(p, s, batch)
        return paused

    population.make_population_step = pausing_step

    def train(path, resume):
        rs = fit_population(net, members, (X, y), (X[:40], y[:40]), epochs=4, batch_size=32, shuffle=True,
                            progress=False, checkpoint=path, resume=resume, config={"what": "test"})
        return [{"params": r.params, "opt_state": list(r.opt_state), "logs": r.logs, "diverged": r.diverged}
                for r in rs]

    if mode == "stop":
        train(ckpt, resume=False)
    else:
        torch.save({"fresh": train(out + ".fresh.pt", resume=False), "resumed": train(ckpt, resume=True)}, out)
""")


def test_a_population_killed_mid_epoch_resumes_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    script, out, ckpt = tmp_path / "child.py", tmp_path / "out.pt", tmp_path / "pop.pt"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), "stop", str(out), str(ckpt)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    data = load_checkpoint(ckpt)
    assert (data["epoch"], data["batch"]) == (2, 0) and list(data["stopped"]) == ["2"]
    subprocess.run([sys.executable, str(script), "resume", str(out), str(ckpt)], check=True, timeout=120)
    results = torch.load(out, weights_only=False)
    fresh, resumed = results["fresh"], results["resumed"]
    assert fresh[2]["diverged"] is not None and all(fresh[k]["diverged"] is None for k in (0, 1, 3))
    for a, b in zip(fresh, resumed):
        assert a["logs"] == b["logs"] and a["diverged"] == b["diverged"]
        assert all(torch.equal(a["params"][n], b["params"][n]) for n in a["params"])
        assert all(torch.equal(x, y) for x, y in zip(a["opt_state"][:1], b["opt_state"][:1]))
    assert len(fresh[0]["logs"]["validation_accuracy"]) == 5 and not math.isnan(fresh[0]["logs"]["train_loss"][-1])


def test_a_population_larger_than_the_machines_memory_is_refused_before_any_member_is_made(data, monkeypatch):
    import fn_trainer.training.population as population

    network = build_network("mlp", MLP)
    n_params = sum(p.numel() for p in network.module.parameters())
    need = 3 * n_params * population.STATE_COPIES * 4  # float32
    made = []
    monkeypatch.setattr(population, "init_population", lambda *a: made.append(a))
    monkeypatch.setattr(population, "physical_memory", lambda: need - 1)
    with pytest.raises(ValueError, match=f"a population of 3 members of {n_params:,} parameters needs about"):
        fit_population(network, [Member(s) for s in range(3)], *data, epochs=1, progress=False)
    assert not made
    monkeypatch.setattr(population, "physical_memory", lambda: need)  # exactly enough: it goes on
    with pytest.raises(TypeError):  # to init_population, here a stand-in that returns nothing
        fit_population(network, [Member(s) for s in range(3)], *data, epochs=1, progress=False)
    assert len(made) == 1


@pytest.mark.parametrize("call, error, match", [
    (lambda net, data: fit_population(net, Member(0), *data, epochs=1), TypeError,
     r"^members must be a list of Member, got a single Member: pass \[Member\(\.\.\.\)\]$"),
    (lambda net, data: fit_population(net, torch.zeros(3, 3), *data, epochs=1), ValueError,
     r"^members must be a non-empty sequence of Member, got shape \(3, 3\) torch.float32$"),
    (lambda net, data: fit_sweep(net, np.full((2, 3), 1e-3), *data, epochs=1), ValueError,
     r"^lrs must be a non-empty list of learning rates, got shape \(2, 3\) float64$"),
    (lambda net, data: fit_population(net, [Member(0)], (data[0][0].numpy(), data[0][1].numpy()), data[1],
                                      epochs=1), TypeError, "^train X must be a torch.Tensor"),
    (lambda net, data: fit_population(net, [Member(0)], data[0], (data[1][0][:, :, :20, :20], data[1][1]),
                                      epochs=1), ValueError,
     r"^valid X must have samples of the network's input_shape \(1, 28, 28\), got \(1, 20, 20\)$"),
])
def test_members_and_data_of_the_wrong_kind_are_named_in_one_line(data, call, error, match):
    with pytest.raises(error, match=match) as e:
        call(build_network("mlp", MLP), data)
    assert "\n" not in str(e.value)
