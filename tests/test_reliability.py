"""Divergence: a non-finite loss, gradient or update stops the run at that step, without raising."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step
from fn_trainer.core.trees import tree_finite
from fn_trainer.training.checkpoint import load_checkpoint
from fn_trainer.training.fit import fit
from fn_trainer.training.loop import Members

SHAPE = (1, 8, 8)
N, BATCH = 80, 16  # 5 steps per epoch




def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, *SHAPE, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    return (X, y), (X[:20], y[:20])


def run(lr=1e-2, epochs=3, corrupt=None, **kw):
    """Train a tiny MLP. ``corrupt(count, metrics) -> metrics`` may alter a step's metrics.

    Every step's input parameters are recorded by optimizer step count in ``.seen``.
    """
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)
    opt = adam(lr)
    params = net.init(2)
    base = make_step(net.apply, opt)
    seen = {}

    def step(p, s, batch):
        seen[int(s.count)] = p
        new_p, new_s, m = base(p, s, batch)
        return new_p, new_s, (m if corrupt is None else corrupt(int(s.count), m))

    train, valid = problem()
    result = fit(step, make_evaluate(net.apply), params, opt.init(params), train, valid, epochs=epochs,
                 batch_size=BATCH, shuffle=True, seed=3, progress=False, **kw)
    return result, seen


def set_metric(at, key, value):
    def corrupt(count, metrics):
        return {**metrics, key: torch.tensor(value)} if count == at else metrics
    return corrupt


def assert_params_equal(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lr", [1e20, 1e30])
def test_a_real_divergence_stops_the_run_and_returns_the_last_finite_parameters(lr):
    result, seen = run(lr=lr)
    assert result.diverged is not None
    assert "diverged in epoch 1 at step 2 of 5" in result.diverged and "loss=nan" in result.diverged
    assert tree_finite(result.params, result.opt_state)
    assert int(result.opt_state.count) == 1
    assert_params_equal(result.params, seen[1])
    assert [len(v) for v in result.logs.values()] == [1, 1, 1, 1, 0]  # only the logs before training


def test_an_update_that_overflows_the_parameters_is_named():
    result, _ = run(lr=1e38)
    assert "at step 1 of 5: its update made the parameters or optimizer state non-finite" in result.diverged
    assert int(result.opt_state.count) == 0 and tree_finite(result.params)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 3 * N // BATCH - 1), st.sampled_from(["loss", "grad_norm"]),
       st.sampled_from([math.nan, math.inf, -math.inf]))
def test_divergence_is_reported_at_the_step_where_it_happens(at, key, value):
    result, seen = run(corrupt=set_metric(at, key, value))
    epoch, step = divmod(at, N // BATCH)
    assert f"diverged in epoch {epoch + 1} at step {step + 1} of 5" in result.diverged
    assert f"{key}={value}" in result.diverged
    assert int(result.opt_state.count) == at
    assert_params_equal(result.params, seen[at])
    assert len(result.logs["validation_loss"]) == epoch + 1  # every completed epoch, and no more
    assert len(result.logs["train_gradient_norm"]) == epoch
    clean, _ = run(epochs=epoch)
    assert result.logs == clean.logs


def test_divergence_keeps_the_last_good_checkpoint_and_resuming_meets_it_again(tmp_path):
    path = tmp_path / "c.pt"
    result, _ = run(corrupt=set_metric(12, "loss", math.nan), checkpoint=path)
    assert "epoch 3 at step 3" in result.diverged
    data = load_checkpoint(path)
    assert (data["epoch"], data["batch"]) == (2, 0)
    assert data["logs"] == result.logs
    again, _ = run(corrupt=set_metric(12, "loss", math.nan), checkpoint=path, resume=True)
    assert again.diverged == result.diverged and again.logs == result.logs
    assert_params_equal(again.params, result.params)


def test_a_divergence_that_does_not_recur_on_replay_returns_the_epoch_start():
    fired = []

    def once(count, metrics):
        if count == 7 and not fired:
            fired.append(count)
            return {**metrics, "loss": torch.tensor(math.nan)}
        return metrics

    result, seen = run(corrupt=once)
    assert "did not recur" in result.diverged and "epoch 2" in result.diverged
    assert int(result.opt_state.count) == 5
    assert_params_equal(result.params, seen[5])


def test_a_finite_run_reports_no_divergence():
    result, _ = run()
    assert result.diverged is None and len(result.logs["train_gradient_norm"]) == 3


def test_metrics_finite_checks_every_value():
    ok = [torch.tensor(1.0), torch.tensor(2.0)]
    one = Members()
    assert one.finite_metrics(ok, ok).tolist() == [True] and one.finite_metrics([], []).tolist() == [True]
    assert one.finite_metrics(ok, [torch.tensor(1.0), torch.tensor(math.inf)]).tolist() == [False]
    assert one.finite_metrics([torch.tensor(math.nan), torch.tensor(1.0)], ok).tolist() == [False]
    three = Members(3, stacked=True)  # member 1 has a NaN loss at the second step, member 2 an infinite norm
    losses, norms = [torch.ones(3), torch.tensor([1.0, math.nan, 1.0])], [torch.ones(3), torch.tensor([1, 1, math.inf])]
    assert three.finite_metrics(losses, norms).tolist() == [True, False, False]


def test_tree_finite_looks_inside_containers():
    assert tree_finite({"a": [torch.ones(2)], "b": (torch.zeros(1, dtype=torch.long),)})
    assert not tree_finite({"a": [torch.ones(2), {"c": torch.tensor([1.0, math.nan])}]})
