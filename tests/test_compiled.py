"""The compiled step equals the eager step and never recompiles after warm-up."""
import pytest
import torch
import torch._dynamo
from compiling import compiles

from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step, one_hot
from fn_trainer.speed import inductor_apply
from fn_trainer.training.compiled import (
    argument_guards,
    check_donated,
    compile_evaluate,
    compile_step,
    multi_step,
)
from fn_trainer.training.population import Member, fit_population, fit_sweep

# float32: Inductor fuses and reorders reductions (matmul epilogues, the gradient norm),
# so compiled values differ from eager ones by rounding. Metrics: relative 1e-4. Adam
# divides by sqrt(v), so an entry whose gradients are ~0 turns rounding into a visible
# step: parameters may differ by up to 1% of the largest possible move, lr * steps.
TOL = dict(rtol=1e-4, atol=1e-5)
# float64: rounding (~1e-16 of a gradient) stays far below Adam's eps (1e-8), so no step
# turns over and parameters agree to a billionth of the largest possible move (measured:
# 2e-14 of 5e-3, in the Winograd layer); gradients off by more than that fraction fail
TOL64 = dict(rtol=1e-12, atol=1e-12)


# one convolution straight into the adaptive pool: a population's forward under Inductor at
# the least compile time (every layer of a network is another few seconds of Inductor)
ONE_LAYER_CNN = NetworkConfiguration(n_channels=(4,), kernel_sizes=(3,), strides=(1,), paddings=(0,),
                                     dense_hiddens=())
# every rewrite of fn_trainer.speed in one graph: the first layer (1 input channel, pooled)
# runs as patch products with the pool folded in, the second (10 input channels, pooled) as
# Winograd products, the third (before the adaptive pool) as one patch product, and the
# first two read only the part of their input map that the output depends on
WINOGRAD_CNN = NetworkConfiguration(n_channels=(10, 6, 4), kernel_sizes=(3, 3, 3), dense_hiddens=())


def param_tol(lr, steps, fraction=0.01):
    """A ``fraction`` of Adam's largest possible move in ``steps`` steps, ``lr * steps``."""
    return dict(rtol=0.0, atol=fraction * lr * steps)


def batches(n_batches, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch_size, 1, 28, 28, generator=g) * 255,
             one_hot(torch.randint(0, 10, (batch_size,), generator=g), 10)) for _ in range(n_batches)]


def run(step, params, state, data):
    history = []
    for batch in data:
        params, state, metrics = step(params, state, batch)
        history.append(metrics)
    return params, state, {k: torch.stack([m[k] for m in history]) for k in history[0]}


@pytest.fixture(scope="module")
def mlp():
    return build_network("mlp", NetworkConfiguration(dense_hiddens=(32,)))


def test_compiled_step_equals_eager_and_does_not_recompile(mlp):
    torch._dynamo.reset()
    step = make_step(mlp.apply, adam(1e-3))
    compiled = compile_step(step)
    params = mlp.init(0)
    # batch 128: the graph of the benchmark's smoke run (same network), from the compile cache
    data = batches(6, 128) + batches(1, 20, seed=1)  # a smaller last batch runs eagerly
    with compiles(1):
        warm = run(compiled, params, adam(1e-3).init(params), data[:1])
    with compiles(0), torch._dynamo.config.patch(error_on_recompile=True):
        got = run(compiled, params, adam(1e-3).init(params), data)
        # another learning rate is another tensor value, not another graph
        other_lr = run(compiled, params, adam(5e-2).init(params), data)
    want = run(step, params, adam(1e-3).init(params), data)
    torch.testing.assert_close(got[0], want[0], **param_tol(1e-3, len(data)))
    for k, m in want[1].mu.items():  # moments: rounding relative to their largest entry
        torch.testing.assert_close(got[1].mu[k], m, rtol=0.0, atol=1e-3 * float(m.abs().max()))
    torch.testing.assert_close(got[2], want[2], **TOL)
    torch.testing.assert_close(other_lr[0], run(step, params, adam(5e-2).init(params), data)[0],
                               **param_tol(5e-2, len(data)))
    assert int(got[1].count) == len(data) and warm[2]["loss"].shape == (1,)


def test_compiled_cnn_step_equals_eager_and_does_not_recompile():
    # compiled with the forward written for Inductor (fn_trainer.speed); in float64, where
    # rounding cannot turn an Adam step over, every entry must agree with the plain step
    net = build_network("cnn", WINOGRAD_CNN)
    torch._dynamo.reset()
    step = make_step(net.apply, adam(1e-3))
    compiled = compile_step(make_step(inductor_apply(net), adam(1e-3)), eager=step)
    params = net.init(0, dtype=torch.float64)
    data = [(x.double(), targets.double()) for x, targets in batches(5, 16, seed=5)]
    with compiles(1):
        run(compiled, params, adam(1e-3).init(params), data[:1])
    with compiles(0), torch._dynamo.config.patch(error_on_recompile=True):
        got = run(compiled, params, adam(1e-3).init(params), data)
    want = run(step, params, adam(1e-3).init(params), data)
    torch.testing.assert_close(got[0], want[0], **param_tol(1e-3, len(data), fraction=1e-9))
    torch.testing.assert_close(got[2], want[2], **TOL64)
    # the bound is far below the move: the step really trains
    assert max(float((want[0][k] - params[k]).abs().max()) for k in params) > 0.5 * 1e-3 * len(data)


def test_compiled_steps_of_networks_alike_in_shapes_keep_their_own_graphs(mlp):
    # guard_closures=False drops the guards on closures: each compiled step must still run
    # its own network. Same parameter shapes, another activation: served the relu graph, the tanh
    # network's step would be off by far more than rounding (float64: rounding stays tiny).
    tanh = build_network("mlp", NetworkConfiguration(dense_hiddens=(32,)), activation_name="tanh")
    torch._dynamo.reset()
    params = mlp.init(0, dtype=torch.float64)
    data = [(x.double(), targets.double()) for x, targets in batches(2, 128)]
    for net in (mlp, tanh):
        step = make_step(net.apply, adam(1e-3))
        with compiles(1):
            got = run(compile_step(step, guard_closures=False), params, adam(1e-3).init(params), data)
        want = run(step, params, adam(1e-3).init(params), data)
        torch.testing.assert_close(got[2], want[2], **TOL64)


def test_compiled_step_still_checks_its_arguments():
    # the guards on the arguments stay, not only those on tensors: a Python number in the
    # batch is a constant of the graph, and another one must give another graph, never the
    # first one's result
    torch._dynamo.reset()
    step = compile_step(lambda params, state, batch: (params, state, {"y": batch[0] * batch[1]}),
                        guard_closures=False)
    x = torch.ones(3)
    with compiles(1):
        assert torch.equal(step({}, None, (x, 2.0))[2]["y"], 2 * x)
    with compiles(1):
        assert torch.equal(step({}, None, (x, 3.0))[2]["y"], 3 * x)


class Weights(dict):
    pass


@pytest.mark.parametrize("other_shapes", ["eager", "compile"])
def test_a_bad_batch_is_refused_by_a_compiled_step_as_by_the_eager_step(mlp, other_shapes):
    step = make_step(mlp.apply, adam(1e-3))
    compiled = compile_step(step, other_shapes=other_shapes, guard_closures=False)
    params = mlp.init(0)
    state = adam(1e-3).init(params)
    (x, targets), = batches(1, 8)
    compiled(params, state, (x, targets))
    for bad in ((x.double(), targets), (x, targets[:, :5])):  # the first batch's shape, traced again
        with pytest.raises((TypeError, ValueError)) as eager_error:
            step(params, state, bad)
        with pytest.raises(eager_error.type) as compiled_error:
            compiled(params, state, bad)
        assert str(compiled_error.value) == str(eager_error.value)
        assert compiled_error.value.__context__ is None  # no Dynamo error around it


def test_a_step_dynamo_cannot_trace_still_fails_with_dynamos_error(mlp):
    step = make_step(mlp.apply, adam(1e-3))

    def breaking(params, state, batch):
        torch._dynamo.graph_break()
        return step(params, state, batch)

    params = mlp.init(0)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compile_step(breaking)(params, adam(1e-3).init(params), batches(1, 8)[0])


def test_a_refused_recompile_is_raised_without_running_the_eager_step(mlp):
    calls = []
    step = make_step(mlp.apply, adam(1e-3))
    compiled = compile_step(step, other_shapes="compile", eager=lambda *a: calls.append(a) or step(*a))
    params = mlp.init(0)
    state = adam(1e-3).init(params)
    compiled(params, state, batches(1, 8)[0])
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(torch._dynamo.exc.RecompileError):
        compiled(params, state, batches(1, 4)[0])
    assert calls == []


def test_compiled_step_checks_tensors_inside_dict_subclasses():
    # Dynamo names the items of a dict subclass "dict.__getitem__(args[0], ...)": their
    # guards come from the arguments too, and a float64 weight must not get the float32 graph
    torch._dynamo.reset()
    step = compile_step(lambda params, state, batch: (params, state, {"y": params["w"] * batch[0]}),
                        guard_closures=False)
    x = torch.ones(3, dtype=torch.float64)
    with compiles(1):
        step(Weights(w=torch.full((3,), 2.0)), None, (x,))
    with compiles(1):
        y = step(Weights(w=torch.full((3,), 3.0, dtype=torch.float64)), None, (x,))[2]["y"]
    assert y.dtype == torch.float64 and torch.equal(y, 3 * x)


def test_compiled_step_checks_its_closures_unless_told_not_to():
    scale = [2.0]
    x = torch.ones(3)
    for guard_closures, second in ((True, 3 * x), (False, 2 * x)):
        torch._dynamo.reset()
        scale[0] = 2.0
        step = compile_step(lambda params, state, batch: (params, state, {"y": batch[0] * scale[0]}),
                            guard_closures=guard_closures)
        step({}, None, (x,))
        scale[0] = 3.0  # by default the closure's new value compiles again; the fast path keeps the graph
        assert torch.equal(step({}, None, (x,))[2]["y"], second)


def test_compile_step_passes_a_mode_as_its_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    compile_step(lambda *a: a, mode="max-autotune-no-cudagraphs", guard_closures=False)
    assert "mode" not in seen and seen["options"]["max_autotune"] is True
    assert seen["options"]["guard_filter_fn"] is argument_guards
    compile_step(lambda *a: a)  # every guard checked: no filter
    assert seen["options"] is None


def test_multi_step_equals_consecutive_steps(mlp):
    step = make_step(mlp.apply, adam(1e-2))
    params = mlp.init(1)
    data = batches(3, 16, seed=2)
    xs = torch.stack([x for x, _ in data]), torch.stack([t for _, t in data])
    got = multi_step(step, 3)(params, adam(1e-2).init(params), xs)  # eager: same ops, same order
    want = run(step, params, adam(1e-2).init(params), data)
    for k in want[0]:
        assert torch.equal(got[0][k], want[0][k])
    for k in want[2]:
        assert torch.equal(got[2][k], want[2][k])
    with pytest.raises(ValueError, match="n_steps"):
        multi_step(step, 0)
    for n in (2, 4):  # a third minibatch left over, or a fourth missing
        with pytest.raises(ValueError, match=rf"^multi_step needs {n} stacked minibatches, got inputs \(3, 16, "):
            multi_step(step, n)(params, adam(1e-2).init(params), xs)


@pytest.mark.parametrize("batch_shape", [(8,), (-1, 1, 28, 28), (), 8, "128", (8, 0), (8.0, 784), (True, 784)])
def test_a_batch_shape_no_minibatch_can_have_is_refused(batch_shape):
    with pytest.raises(ValueError, match=r"^batch_shape must be a full minibatch's input shape \(B, \.\.\.\), "):
        compile_step(lambda *a: a, batch_shape=batch_shape)


@pytest.mark.parametrize("network_type", ["mlp", "cnn"])
def test_compiled_sweep_equals_eager_sweep(network_type, mlp):
    net = mlp if network_type == "mlp" else build_network("cnn", ONE_LAYER_CNN)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    train = (torch.rand(80, 1, 28, 28, generator=g) * 255, torch.randint(0, 10, (80,), generator=g))
    valid = (torch.rand(30, 1, 28, 28, generator=g) * 255, torch.randint(0, 10, (30,), generator=g))
    lrs = [1e-2, 1e-3, 1e-4]
    eager = fit_sweep(net, lrs, train, valid, epochs=2, batch_size=32, progress=False)
    with compiles(1), torch._dynamo.config.patch(error_on_recompile=True):
        compiled = fit_sweep(net, lrs, train, valid, epochs=2, batch_size=32, progress=False, compile=True)
    start = net.init(0)
    for lr, a, b in zip(lrs, compiled, eager):
        for key in a.logs:
            torch.testing.assert_close(torch.tensor(a.logs[key]), torch.tensor(b.logs[key]), **TOL)
        # each model against its own learning rate's move (6 steps: 3 minibatches, 2 epochs)
        tol = param_tol(lr, 2 * 3)
        torch.testing.assert_close(a.params, b.params, **tol)
        moved = max(float((b.params[k] - start[k]).abs().max()) for k in start)
        assert tol["atol"] < 0.02 * moved, lr


def test_compile_step_rejects_bad_arguments():
    with pytest.raises(TypeError, match="step"):
        compile_step(42)
    with pytest.raises(ValueError, match="other_shapes"):
        compile_step(lambda *a: a, other_shapes="sometimes")


def test_compile_step_leaves_other_shapes_to_the_eager_step(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the dispatch, not Inductor, is tested
    calls = []

    def fast(params, state, batch):
        calls.append(("fast", tuple(batch[0].shape)))
        return params, state, {}

    def plain(params, state, batch):
        calls.append(("plain", tuple(batch[0].shape)))
        return params, state, {}

    step = compile_step(fast, eager=plain)
    for n in (4, 4, 3, 4):
        step({}, None, (torch.zeros(n, 2), torch.zeros(n, 2)))
    assert calls == [("fast", (4, 2)), ("fast", (4, 2)), ("plain", (3, 2)), ("fast", (4, 2))]
    with pytest.raises(TypeError, match="eager"):
        compile_step(fast, eager="plain")


def test_a_compiled_step_is_made_for_the_full_minibatch_even_if_a_short_one_comes_first():
    # a run resumed at an epoch's short last minibatch sees that one first
    torch._dynamo.reset()
    eager_shapes = []

    def eager(params, state, batch):
        eager_shapes.append(tuple(batch[0].shape))
        return params, state, {"y": batch[0] * 2}

    step = compile_step(lambda params, state, batch: (params, state, {"y": batch[0] * 2}), eager=eager,
                        guard_closures=False, batch_shape=(4, 3))
    with compiles(0):
        step({}, None, (torch.ones(2, 3),))
    with compiles(1):
        assert torch.equal(step({}, None, (torch.ones(4, 3),))[2]["y"], torch.full((4, 3), 2.0))
    assert eager_shapes == [(2, 3)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_population_compiles_for_its_full_minibatches(shuffle, monkeypatch):
    from fn_trainer.training import population

    made_for, seen = [], set()

    def recording(step, *, eager, guard_closures, batch_shape, donate=False):
        assert donate  # the population's compiled step overwrites the state the loop gives it
        made_for.append(batch_shape)

        def run(params, state, batch):
            seen.add(tuple(batch[0].shape))
            return eager(params, state, batch)

        return run

    monkeypatch.setattr(population, "compile_step", recording)
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    X, y = torch.randn(10, 1, 28, 28), torch.arange(10) % 10
    members = [population.Member(seed=s) for s in (0, 1)]
    population.fit_population(net, members, (X, y), (X, y), epochs=1, batch_size=4, shuffle=shuffle,
                              compile=True, progress=False)
    full = (2, 4, 1, 28, 28) if shuffle else (4, 1, 28, 28)  # two seeds shuffle in two orders
    assert made_for == [full] and full in seen and len(seen) == 2  # and the short last minibatch


def test_a_donating_compiled_step_writes_the_eager_steps_values_into_what_it_is_given(mlp):
    # float64, as above: the values must be the plain step's to a billionth of Adam's move
    torch._dynamo.reset()
    step = make_step(mlp.apply, adam(1e-3))
    donating = compile_step(step, donate=True)
    params = mlp.init(0, dtype=torch.float64)
    data = [(x.double(), targets.double()) for x, targets in batches(4, 128)]
    given = {k: v.clone() for k, v in params.items()}
    state = adam(1e-3).init(given)
    with compiles(1), torch._dynamo.config.patch(error_on_recompile=True):
        got = run(donating.in_place, given, state, data)
        pure = run(donating, params, adam(1e-3).init(params), data)  # called as a function: on copies
    assert all(torch.equal(params[k], v) for k, v in mlp.init(0, dtype=torch.float64).items())
    torch.testing.assert_close(pure[0], got[0], rtol=0.0, atol=0.0)
    assert got[0] is given and all(got[0][k] is given[k] for k in given) and got[1].mu is state.mu
    want = run(step, params, adam(1e-3).init(params), data)
    torch.testing.assert_close(got[0], want[0], **param_tol(1e-3, len(data), fraction=1e-9))
    torch.testing.assert_close(got[1].nu, want[1].nu, **TOL64)
    torch.testing.assert_close(got[2], want[2], **TOL64)
    assert int(state.count) == len(data)


def test_a_donating_step_refuses_tensors_it_cannot_overwrite(mlp):
    donating = compile_step(make_step(mlp.apply, adam(1e-3)), donate=True)
    params = mlp.init(0)
    batch = batches(1, 8)[0]
    with pytest.raises(ValueError, match="must not require grad"):
        donating.in_place({k: v.requires_grad_() for k, v in mlp.init(0).items()}, adam().init(params), batch)
    state = adam().init(params)
    state.nu.update(state.mu)  # one tensor for both moments: a write to one would change the other
    with pytest.raises(ValueError, match="share memory"):
        donating.in_place(params, state, batch)
    halves = torch.zeros(2, 4)  # two parameters side by side in one buffer: each its own memory
    check_donated({"a": halves[0], "b": halves[1], "empty": halves[:0]}, None)
    with pytest.raises(ValueError, match="share memory"):
        check_donated({"a": halves[0], "b": halves.reshape(-1)[2:6]}, None)
    with pytest.raises(ValueError, match="overlaps itself"):
        check_donated({"a": torch.zeros(1).expand(4)}, None)
    with pytest.raises(ValueError, match="overlaps itself"):
        check_donated({"a": torch.zeros(3, 1).expand(3, 4)[:, :2]}, None)  # broadcast, and not dense either
    check_donated({"columns": torch.zeros(4, 6)[:, :3]}, None)  # not dense, overlapping nothing
    with pytest.raises(TypeError, match="donate must be"):
        compile_step(make_step(mlp.apply, adam(1e-3)), donate="yes")


def test_a_compiled_evaluation_equals_the_eager_one_and_compiles_only_its_full_chunks():
    net = build_network("cnn", WINOGRAD_CNN)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(10, 1, 28, 28, generator=g) * 255
    targets = one_hot(torch.randint(0, 10, (10,), generator=g), 10)
    evaluate = compile_evaluate(inductor_apply(net), chunk_size=4, eager=net.apply)
    torch._dynamo.reset()
    with compiles(1):  # chunks of 4, 4 and 2 rows: the short last one runs eagerly
        first = evaluate(net.init(0), X, targets)
    with compiles(0):  # other parameters, the same graph
        second = evaluate(net.init(1), X, targets)
    for params, got in ((net.init(0), first), (net.init(1), second)):
        want = make_evaluate(net.apply)(params, X, targets)
        assert got[0] == pytest.approx(want[0], rel=1e-5) and got[1] == want[1]


def test_a_compiled_population_evaluates_every_member_with_one_compiled_graph():
    # members' parameters come out of the compiled vmapped step: no member's, no epoch's
    # evaluation compiles again, and the values are the eager evaluation's
    net = build_network("cnn", ONE_LAYER_CNN)
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(40, 1, 28, 28, generator=g) * 255, torch.randint(0, 10, (40,), generator=g)
    members, data = [Member(seed) for seed in range(3)], ((X, y), (X[:16], y[:16]))
    options = dict(epochs=2, batch_size=8, compile=True, compiled_apply=inductor_apply(net, vmapped=True),
                   progress=False)
    torch._dynamo.reset()
    with compiles(2):  # the step's graph and the evaluation's (chunks of 8 of 40 and of 16 rows)
        got = fit_population(net, members, *data, **options,
                             evaluate=compile_evaluate(inductor_apply(net), chunk_size=8, eager=net.apply))
    want = fit_population(net, members, *data, **options)
    for g_, w in zip(got, want):
        for key in ("train_loss", "validation_loss"):
            torch.testing.assert_close(torch.tensor(g_.logs[key]), torch.tensor(w.logs[key]), rtol=1e-5, atol=0)
        assert g_.logs["validation_accuracy"] == w.logs["validation_accuracy"]
