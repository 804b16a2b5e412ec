"""fit_sweep: K models in one vmapped step behave as K solo ``fit`` runs."""
import math

import pytest
import torch
from fakedata import banded_tensors
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import NetworkConfiguration, adam, build_network, fit, make_evaluate, make_step, normalize
from fn_trainer.core.trees import finite_per_member, stack_trees, tree_index
from fn_trainer.training.loop import LOG_KEYS
from fn_trainer.training.population import fit_sweep

TOL = dict(rtol=1e-4, atol=1e-5)  # float32: vmapped (batched) matmuls reassociate sums


@pytest.fixture(scope="module")
def data():
    return banded_tensors(200, 0), banded_tensors(64, 1)


def solo(network, lr, train, valid, epochs, batch_size, seed=0):
    step = make_step(network.apply, adam(lr))
    params = network.init(seed)
    return fit(step, make_evaluate(network.apply), params, adam(lr).init(params), train, valid,
               epochs=epochs, batch_size=batch_size, seed=seed, progress=False)


def assert_same_run(a, b, params_tol=TOL):
    assert set(a.logs) == set(LOG_KEYS)
    for key in LOG_KEYS:
        assert len(a.logs[key]) == len(b.logs[key]), key
        torch.testing.assert_close(torch.tensor(a.logs[key]), torch.tensor(b.logs[key]), **TOL, msg=key)
    for k in b.params:
        torch.testing.assert_close(a.params[k], b.params[k], **params_tol)
    assert a.diverged == b.diverged


def test_sweep_equals_solo_runs_with_raw_and_normalised_inputs(data):
    """Three learning rates x raw/normalised inputs, as in the homework's sweep."""
    (train, valid) = data
    ntrain, nvalid, _ = normalize(train, valid, valid)
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(32, 16)))
    lrs = [1e-2, 1e-3, 1e-4] * 2
    trains = [train] * 3 + [tuple(ntrain)] * 3
    valids = [valid] * 3 + [tuple(nvalid)] * 3
    results = fit_sweep(net, lrs, trains, valids, epochs=2, batch_size=64, progress=False)
    assert len(results) == 6
    for lr, tr, va, got in zip(lrs, trains, valids, results):
        assert_same_run(got, solo(net, lr, tr, va, epochs=2, batch_size=64))
    assert results[0].opt_state.lr.item() == 1e-2 and int(results[0].opt_state.count) == 2 * 4


def test_sweep_cnn_shared_data_equals_solo(data):
    train, valid = data
    net = build_network("cnn", NetworkConfiguration(n_channels=(4, 6), kernel_sizes=(3, 3), strides=(1, 1),
                                                    paddings=(0, 0), dense_hiddens=(16,)))
    lrs = [3e-3, 1e-3]
    results = fit_sweep(net, lrs, train, valid, epochs=1, batch_size=96, seed=3, progress=False)
    for lr, got in zip(lrs, results):
        assert_same_run(got, solo(net, lr, train, valid, epochs=1, batch_size=96, seed=3))


def test_diverging_model_stops_like_fit_while_the_others_continue(data):
    train, valid = data
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)))
    lrs = [1e-3, 1e30]  # an lr of 1e30 overflows the parameters after the first update
    results = fit_sweep(net, lrs, train, valid, epochs=2, batch_size=50, progress=False)
    good, bad = results
    assert good.diverged is None and len(good.logs["validation_accuracy"]) == 3
    reference = solo(net, 1e30, train, valid, epochs=2, batch_size=50)
    assert reference.diverged is not None and "epoch 1 at step" in reference.diverged
    # Adam's move is lr * m / (sqrt(v) + eps): where a gradient is ~0, rounding in the
    # batched matmuls changes that ratio visibly, so parameters agree to 1% of one move
    assert_same_run(bad, reference, params_tol=dict(rtol=1e-4, atol=0.01 * lrs[1]))
    assert all(torch.isfinite(v).all() for v in bad.params.values())
    assert_same_run(good, solo(net, 1e-3, train, valid, epochs=2, batch_size=50))


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 4), shape=st.lists(st.integers(1, 3), min_size=0, max_size=3), seed=st.integers(0, 99))
def test_stack_then_index_round_trips(k, shape, seed):
    g = torch.Generator().manual_seed(seed)
    trees = [{"a": torch.randn(tuple(shape), generator=g), "b": (torch.randn(2, generator=g), torch.tensor(i))}
             for i in range(k)]
    stacked = stack_trees(trees)
    assert stacked["a"].shape == (k, *shape)
    for i in range(k):
        back = tree_index(stacked, i)
        assert torch.equal(back["a"], trees[i]["a"]) and torch.equal(back["b"][0], trees[i]["b"][0])
    bad = torch.randint(0, k, ()).item()
    stacked["b"][0][bad, 0] = math.nan
    assert finite_per_member(stacked, k).tolist() == [i != bad for i in range(k)]


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(lrs=[]), ValueError, "lrs"),
    (dict(lrs=[1e-3, -1.0]), ValueError, "lrs[1]"),
    (dict(lrs="0.1"), ValueError, "lrs"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_bad_arguments_are_named(data, kwargs, error, words):
    train, valid = data
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)))
    args = dict(lrs=[1e-3], epochs=1) | kwargs
    lrs = args.pop("lrs")
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        fit_sweep(net, lrs, train, valid, progress=False, **args)


def test_per_model_data_must_match_the_number_of_models(data):
    train, valid = data
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)))
    with pytest.raises(ValueError, match="list of 3 pairs"):
        fit_sweep(net, [1e-3] * 3, [train, train], valid, epochs=1, progress=False)
