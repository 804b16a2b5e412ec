import json

import pytest
import torch

from fn_trainer import (
    NetworkConfiguration,
    adam,
    build_network,
    fit,
    load_fashion_mnist,
    make_evaluate,
    make_step,
    normalize,
    one_hot,
)
from fn_trainer.training.loop import LOG_KEYS


def _tiny(seed=0):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(32,)))
    opt = adam(1e-3)
    params = net.init(seed)
    return net, opt, params, make_step(net.apply, opt), make_evaluate(net.apply)


def test_fit_logs_like_train_loop_and_learns(fake_data_root):
    splits = load_fashion_mnist(fake_data_root, download=False)
    train, valid, _ = normalize(splits.train, splits.valid, splits.test)
    net, opt, params, step, evaluate = _tiny()
    result = fit(step, evaluate, params, opt.init(params), train, valid, epochs=3, batch_size=64,
                 progress=False)
    logs = result.logs
    assert set(logs) == set(LOG_KEYS)
    assert all(len(logs[k]) == 4 for k in LOG_KEYS if k != "train_gradient_norm")
    assert len(logs["train_gradient_norm"]) == 3
    assert logs["validation_accuracy"][-1] > 0.9 > logs["validation_accuracy"][0]
    assert json.loads(json.dumps(logs)) == logs
    assert result.diverged is None


def test_fit_walks_minibatches_in_order():
    torch.manual_seed(0)
    X, y = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
    net, opt, params, step, evaluate = _tiny()
    result = fit(step, evaluate, params, opt.init(params), (X, y), (X[:10], y[:10]), epochs=2,
                 batch_size=32, progress=False)
    p, s = params, opt.init(params)
    T = one_hot(y, 10)
    for _ in range(2):
        for i in range(0, 100, 32):  # 4 batches, the last of 4 samples
            p, s, metrics = step(p, s, (X[i:i + 32], T[i:i + 32]))
    assert all(torch.equal(result.params[k], p[k]) for k in p)
    assert result.logs["train_gradient_norm"][-1] == float(metrics["grad_norm"])
    loss, acc = evaluate(p, X[:10], T[:10])
    assert result.logs["validation_loss"][-1] == loss and result.logs["validation_accuracy"][-1] == acc


def test_shuffle_is_seeded_and_changes_the_trajectory():
    torch.manual_seed(1)
    X, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net, opt, params, step, evaluate = _tiny()

    def run(**kw):
        return fit(step, evaluate, params, opt.init(params), (X, y), (X, y), epochs=2, batch_size=16,
                   progress=False, **kw).params["1.weight"]

    a, b = run(shuffle=True, seed=3), run(shuffle=True, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(shuffle=True, seed=4))
    assert not torch.equal(a, run())


def test_zero_epochs_logs_the_initial_state_only():
    X, y = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))
    net, opt, params, step, evaluate = _tiny()
    result = fit(step, evaluate, params, opt.init(params), (X, y), (X, y), epochs=0, progress=False)
    assert [len(result.logs[k]) for k in LOG_KEYS] == [1, 1, 1, 1, 0]
    assert result.params is params


def test_train_metrics_are_those_of_the_first_n_train_eval_samples():
    """Before training and after each epoch, the train loss and accuracy are the evaluation of
    the first ``N_TRAIN_EVAL`` training samples, for one run and for a population's members."""
    from fn_trainer import Member, fit_population
    from fn_trainer.training.loop import N_TRAIN_EVAL

    torch.manual_seed(2)
    X, y = torch.randn(N_TRAIN_EVAL + 100, 1, 28, 28), torch.randint(0, 10, (N_TRAIN_EVAL + 100,))
    X[N_TRAIN_EVAL:] *= 50  # rows past the cap that would change both metrics if they were counted
    T = one_hot(y, 10)
    net, opt, params, step, evaluate = _tiny()
    first, everything = evaluate(params, X[:N_TRAIN_EVAL], T[:N_TRAIN_EVAL]), evaluate(params, X, T)
    assert first != everything
    result = fit(step, evaluate, params, opt.init(params), (X, y), (X[:10], y[:10]), epochs=1,
                 batch_size=700, progress=False)
    assert (result.logs["train_loss"][0], result.logs["train_accuracy"][0]) == first
    assert (result.logs["train_loss"][1], result.logs["train_accuracy"][1]) == evaluate(
        result.params, X[:N_TRAIN_EVAL], T[:N_TRAIN_EVAL])
    (member,) = fit_population(net, [Member(seed=0, lr=1e-3)], (X, y), (X[:10], y[:10]), epochs=1,
                               batch_size=700, progress=False)
    assert (member.logs["train_loss"][0], member.logs["train_accuracy"][0]) == first


def test_params_that_require_grad_train_as_plain_tensors():
    """A module's parameters (``dict(model.named_parameters())``) would chain every step's
    autograd graph onto the last: the run detaches them, and trains as it would on plain ones."""
    import warnings

    torch.manual_seed(3)
    X, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net, opt, params, step, evaluate = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a scalar taken from a tensor with a graph
        tracked = fit(step, evaluate, {k: v.clone().requires_grad_() for k, v in params.items()},
                      opt.init(params), (X, y), (X[:10], y[:10]), epochs=2, batch_size=16, progress=False)
    plain = fit(step, evaluate, params, opt.init(params), (X, y), (X[:10], y[:10]), epochs=2, batch_size=16,
                progress=False)
    assert all(v.grad_fn is None and not v.requires_grad for v in tracked.params.values())
    assert all(torch.equal(tracked.params[k], plain.params[k]) for k in params) and tracked.logs == plain.logs


def test_an_evaluate_that_returns_percentages_is_refused_before_training():
    """Its logs would be checkpointed, and the checkpoint then refused on resume as inconsistent."""
    torch.manual_seed(4)
    X, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    net, opt, params, step, evaluate = _tiny()
    steps = []

    def percent(p, X, T):
        loss, accuracy = evaluate(p, X, T)
        return loss, 100 * accuracy

    def counted(*a):
        steps.append(1)
        return step(*a)

    with pytest.raises(ValueError, match=r"^evaluate must return \(loss, accuracy\) with the accuracy a fraction in "
                                         r"\[0, 1\], got [0-9.]+ on the train samples$"):
        fit(counted, percent, params, opt.init(params), (X, y), (X[:10], y[:10]), epochs=1, progress=False)
    assert not steps
