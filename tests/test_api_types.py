"""The Python API on unusual types and values: float64 training is supported; NaN pixels,
integer tensors, non-scalar functions, empty class sets and out-of-range seeds are refused
with a ValueError/TypeError naming the argument."""
import math

import numpy as np
import pytest
import torch

import fn_trainer as ft
from fn_trainer.core.data import normalize

SHAPE = (1, 6, 6)


def problem(dtype=torch.float32, n=48):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return (X, y), (X[:12], y[:12])


def train(params, data_dtype=torch.float32, **kw):
    net = ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    opt = ft.adam(1e-2)
    params = net.init(0) if params is None else params
    tr, va = problem(data_dtype)
    return ft.fit(ft.make_step(net.apply, opt), ft.make_evaluate(net.apply), params, opt.init(params),
                  tr, va, epochs=2, batch_size=16, progress=False, **kw)


def net8():
    return ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)


# --- float64 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data_dtype", [torch.float64, torch.float16])
def test_float32_network_trains_on_other_float_data_as_on_its_float32_copy(data_dtype):
    params = net8().init(0)
    other = train(params, data_dtype)
    tr, va = problem(data_dtype)
    net, opt = net8(), ft.adam(1e-2)
    same = ft.fit(ft.make_step(net.apply, opt), ft.make_evaluate(net.apply), params, opt.init(params),
                  (tr[0].float(), tr[1]), (va[0].float(), va[1]), epochs=2, batch_size=16, progress=False)
    assert other.logs == same.logs
    assert all(torch.equal(other.params[k], same.params[k]) for k in params)


@pytest.mark.parametrize("data_dtype", [torch.float32, torch.float64])
def test_float64_network_trains_in_float64(data_dtype):
    params64 = net8().init(0, dtype=torch.float64)
    result = train(params64, data_dtype)
    assert {v.dtype for v in result.params.values()} == {torch.float64}
    assert {v.dtype for v in result.opt_state.mu.values()} == {torch.float64}
    # the same run in float32 from the same (rounded) start agrees to float32 rounding
    single = train({k: v.float() for k, v in params64.items()}, data_dtype)
    for k in params64:
        assert torch.allclose(result.params[k].float(), single.params[k], rtol=0, atol=1e-5)
    assert not torch.equal(result.params["1.weight"].float(), single.params["1.weight"])
    assert result.logs["validation_loss"][-1] < result.logs["validation_loss"][0]


def test_fit_sweep_trains_float64_data():
    tr, va = problem(torch.float64)
    swept = ft.fit_sweep(net8(), [1e-2], tr, va, epochs=1, batch_size=16, progress=False)
    single = ft.fit_sweep(net8(), [1e-2], (tr[0].float(), tr[1]), (va[0].float(), va[1]), epochs=1,
                          batch_size=16, progress=False)
    assert swept[0].logs == single[0].logs


@pytest.mark.parametrize("params, match", [
    ({"1.weight": torch.zeros(8, 36), "1.bias": torch.zeros(8, dtype=torch.float64)}, "one floating dtype"),
    ({"1.weight": torch.zeros(8, 36, dtype=torch.int64)}, "floating dtype, got torch.int64"),
    ({}, "non-empty dict"),
])
def test_fit_names_params_of_mixed_or_integer_dtypes(params, match):
    with pytest.raises(TypeError, match=f"params must .*{match}"):
        train(params)


def test_float64_data_beyond_float32_range_is_named():
    tr, va = problem(torch.float64)
    tr[0][3, 0, 0, 0] = 1e300
    net, opt = net8(), ft.adam(1e-2)
    params = net.init(0)
    with pytest.raises(ValueError, match="train X has values too large for the parameters' dtype"):
        ft.fit(ft.make_step(net.apply, opt), ft.make_evaluate(net.apply), params, opt.init(params), tr, va,
               epochs=1, progress=False)


@pytest.mark.parametrize("x_dtype", [torch.float64, torch.int64, torch.uint8])
def test_apply_names_x_of_another_dtype_than_the_parameters(x_dtype):
    net = net8()
    with pytest.raises(TypeError, match=f"x must have the parameters' floating dtype \\(torch.float32\\), "
                                        f"got {x_dtype}"):
        net.apply(net.init(0), torch.zeros(2, *SHAPE, dtype=x_dtype))


@pytest.mark.parametrize("edit, match", [
    (lambda p: {**p, "1.bias": p["1.bias"].double()},
     "params must share one floating dtype, got 1.weight torch.float32, 1.bias torch.float64, 3.weight torch.float32, "
     "3.bias torch.float32"),
    (lambda p: {k: v.long() for k, v in p.items()}, "params must share one floating dtype, got 1.weight torch.int64, .*"),
    (lambda p: None, "expected a dict of tensors, got NoneType"),
    # one on another device: torch's own error, 26 frames deep, named the device alone
    (lambda p: {**p, "1.bias": p["1.bias"].to("meta")},
     "params must share one device, got 1.weight cpu, 1.bias meta, 3.weight cpu, 3.bias cpu"),
])
def test_apply_names_params_of_mixed_integer_or_missing_values(edit, match):
    net = net8()
    with pytest.raises(ValueError, match=f"^params do not fit this network: {match}$"):
        net.apply(edit(net.init(0)), torch.zeros(2, *SHAPE))


def test_apply_names_x_on_another_device_than_the_parameters():
    net = net8()
    with pytest.raises(ValueError, match="^x must be on the parameters' device \\(cpu\\), got meta$"):
        net.apply(net.init(0), torch.zeros(2, *SHAPE, device="meta"))


# --- normalize -------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["train", "valid", "test"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_normalize_names_the_split_with_a_non_finite_pixel(where, value):
    splits = {name: (torch.rand(5, 3), torch.zeros(5, dtype=torch.long)) for name in ("train", "valid", "test")}
    splits[where][0][2, 1] = value
    with pytest.raises(ValueError, match=f"^{where} X contains NaN or infinite values"):
        normalize(splits["train"], splits["valid"], splits["test"])


# --- diagnostics -----------------------------------------------------------------------------

@pytest.mark.parametrize("f, got", [
    (lambda a: a * 2, r"\(3,\)"),
    (lambda a: a.reshape(3, 1) @ a.reshape(1, 3), r"\(3, 3\)"),
    (lambda a: (a.sum(), a.sum()), "tuple"),
])
def test_gradient_norm_names_a_function_that_is_not_scalar(f, got):
    with pytest.raises(ValueError, match=f"f must return a tensor of one element .*got {got}"):
        ft.gradient_norm(f, torch.ones(3))


@pytest.mark.parametrize("tensors, name, kind", [
    ((torch.ones(3, dtype=torch.long),), "tensors\\[0\\]", "floating dtype"),
    ((torch.ones(3), torch.ones(3, dtype=torch.int32)), "tensors\\[1\\]", "floating dtype"),
    ((torch.ones(3), [1.0, 2.0, 3.0]), "tensors\\[1\\]", "torch.Tensor"),
])
def test_gradient_norm_names_tensors_it_cannot_differentiate(tensors, name, kind):
    with pytest.raises(TypeError, match=f"{name} must .*{kind}"):
        ft.gradient_norm(lambda *ts: sum(t.sum() for t in ts), *tensors)


@pytest.mark.parametrize("x", [torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.bool)])
def test_jacobian_norm_names_an_integer_x(x):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        ft.jacobian_norm(torch.tanh, x)


# --- one_hot ---------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, n_classes, kind, match", [
    (torch.tensor([], dtype=torch.long), 0, ValueError, "n_classes must be an int >= 1, got 0"),
    (torch.tensor([0, 1]), -2, ValueError, "n_classes must be an int >= 1, got -2"),
    (torch.tensor([0, 1]), 2.0, TypeError, "n_classes must be an int"),
    (torch.tensor([0, 1]), True, TypeError, "n_classes must be an int"),
    (torch.tensor([[0, 1]]), 2, ValueError, "labels must be 1-D"),
    (torch.tensor([0.0, 1.0]), 2, ValueError, "labels must have an integer dtype"),
])
def test_one_hot_names_the_bad_argument(labels, n_classes, kind, match):
    with pytest.raises(kind, match=match):
        ft.one_hot(labels, n_classes)


def test_one_hot_of_no_labels_is_an_empty_matrix():
    assert ft.one_hot(torch.tensor([], dtype=torch.long), 4).shape == (0, 4)


# --- seeds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seeds_outside_0_to_2_32_are_named(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32 - 1"):
        train(None, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32 - 1"):
        net8().init(seed)


def test_the_largest_seed_trains():
    assert train(None, seed=2**32 - 1, shuffle=True).diverged is None


# --- arguments that used to reach torch and fail there ------------------------------------------

_X = torch.rand(10, 1, 4, 4)
_Y = torch.randint(0, 10, (10,))


@pytest.mark.parametrize("split", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_normalize_names_a_split_with_integer_pixels(split, dtype):
    splits = [(_X, _Y)] * 3
    splits[split] = ((_X * 255).to(dtype), _Y)
    name = ("train", "valid", "test")[split]
    with pytest.raises(TypeError, match=f"{name} X must have a floating dtype, got {dtype}"):
        normalize(*splits)


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("shape", [(10, 16), (10, 1, 16, 1), (10, 2, 4, 4)])
def test_normalize_names_a_split_whose_samples_differ_from_the_training_samples(split, shape):
    splits = [(_X, _Y)] * 3
    splits[split] = (torch.rand(shape), _Y)
    name = ("train", "valid", "test")[split]
    with pytest.raises(ValueError, match=rf"{name} X must have the training samples' shape \(1, 4, 4\)"):
        normalize(*splits)


@pytest.mark.parametrize("splits, error, match", [
    (((_X, _Y), (_X, _Y)), TypeError, None),  # two splits where three go: Python's own message
    ((_X, (_X, _Y), (_X, _Y)), TypeError, r"^train must be a pair \(X, y\), got shape \(10, 1, 4, 4\)"),
    (((_X, _Y[:3]), (_X, _Y), (_X, _Y)), ValueError,
     r"^train y must hold one label \(or one-hot row\) per sample of X, 10, got shape \(3,\)"),
    (((_X, _Y), (_X, [0] * 10), (_X, _Y)), TypeError, r"^valid y must be a torch.Tensor or None, got list$"),
    (((_X, _Y), (_X, _Y), (_X, _Y, _Y)), TypeError, r"^test must be a pair \(X, y\), got tuple"),
    (((_X[:1], _Y[:1]), (_X, _Y), (_X, _Y)), ValueError, "^train X needs at least 2 samples to estimate a std, got 1$"),
])
def test_normalize_names_a_split_that_is_not_a_pair_of_samples_and_labels(splits, error, match):
    with pytest.raises(error, match=match):
        normalize(*splits)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ft.cross_entropy(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), TypeError,
     "^cross_entropy needs probs of a floating dtype, got torch.int64$"),
    (lambda: ft.cross_entropy([[0.5, 0.5]], torch.tensor([[1.0, 0.0]])), TypeError,
     r"^cross_entropy needs probs, a torch.Tensor \(N, C\), got list$"),
    (lambda: ft.cross_entropy(torch.tensor([[0.5, 0.5]]), [[1, 0]]), TypeError, "^targets must be a torch.Tensor"),
    (lambda: ft.accuracy(torch.rand(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0])), ValueError,
     "^targets of shape \\(N,\\) must be integer labels, got torch.float32$"),
    (lambda: ft.accuracy(torch.zeros(4, 0), torch.zeros(4, dtype=torch.long)), ValueError,
     r"^accuracy needs probs \(N, C\) of C >= 1 classes, got shape \(4, 0\)$"),
    (lambda: ft.accuracy(torch.rand(4, 3).long(), torch.zeros(4, dtype=torch.long)), TypeError,
     "^accuracy needs probs of a floating dtype"),
])
def test_losses_name_probs_and_targets_of_the_wrong_kind(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("probs, targets", [((4, 10), (4, 9)), ((4, 10), (5, 10)), ((4, 10), (4,)), ((4, 10), (40,))])
def test_cross_entropy_names_mismatched_shapes(probs, targets):
    with pytest.raises(ValueError, match="probs and targets must have the same shape"):
        ft.cross_entropy(torch.rand(probs), torch.rand(targets))


@pytest.mark.parametrize("targets", [(5, 10), (4, 9), (5,), (4, 10, 1)])
def test_accuracy_names_mismatched_targets(targets):
    with pytest.raises(ValueError, match=r"targets must be shaped like probs \(4, 10\) \(one-hot\) or \(4,\)"):
        ft.accuracy(torch.rand(4, 10), torch.zeros(targets))


@pytest.mark.parametrize("out", [1.0, None, [1.0]])
def test_jacobian_norm_names_a_function_that_returns_no_tensor(out):
    with pytest.raises(TypeError, match=f"f must return a torch.Tensor to have a Jacobian, got {type(out).__name__}"):
        ft.jacobian_norm(lambda a: out, torch.ones(3))


@pytest.mark.parametrize("tensors", [{}, [], {"a": 1.0}, [torch.ones(2), None]])
def test_global_norm_names_no_tensors_or_non_tensors(tensors):
    with pytest.raises(ValueError, match="tensors must hold at least one tensor and only tensors"):
        ft.global_norm(tensors)


def _bad_params(edit):
    net = ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=(1, 4, 4))
    params = net.init(0)
    first = next(iter(params))
    return net, {"missing": lambda p: {k: v for k, v in p.items() if k != first},
                 "extra": lambda p: {**p, "evil": torch.zeros(1)},
                 "renamed": lambda p: {("x" + k if k == first else k): v for k, v in p.items()},
                 "wrong shape": lambda p: {**p, first: torch.zeros(3)},
                 "transposed": lambda p: {**p, first: p[first].t().contiguous()}}[edit](params)


@pytest.mark.parametrize("edit", ["missing", "extra", "renamed", "wrong shape", "transposed"])
def test_fit_names_params_that_do_not_fit_the_network(edit):
    net, params = _bad_params(edit)
    opt = ft.adam(1e-3)
    with pytest.raises(ValueError, match="params do not fit this network: "):
        ft.fit(ft.make_step(net.apply, opt), ft.make_evaluate(net.apply), params, opt.init(params), (_X, _Y),
               (_X, _Y), epochs=1, progress=False)


@pytest.mark.parametrize("edit, match", [
    (lambda s, p: s._replace(mu={k: v.double() for k, v in s.mu.items()}),
     r"opt_state.mu\['1.weight'\] must be like params\['1.weight'\], \(8, 36\) torch.float32 on cpu, got "
     r"\(8, 36\) torch.float64 on cpu"),
    (lambda s, p: s._replace(nu={k: v for k, v in s.nu.items() if k != "1.bias"}),
     r"opt_state.nu must have the parameters' names \['1.bias', '1.weight', '3.bias', '3.weight'\], got "
     r"\['1.weight', '3.bias', '3.weight'\]"),
    (lambda s, p: ft.adam(1e-2).init(ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(4,)),
                                                      input_shape=SHAPE).init(0)),
     r"opt_state.mu\['1.weight'\] must be like params\['1.weight'\], \(8, 36\) .*, got \(4, 36\) .*"),
])
def test_fit_names_an_adam_state_made_for_other_parameters(edit, match):
    net = ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    opt = ft.adam(1e-2)
    params = net.init(0)
    steps = []

    def step(p, s, batch):
        steps.append(1)
        return ft.make_step(net.apply, opt)(p, s, batch)

    tr, va = problem()
    with pytest.raises(ValueError, match=f"^{match}: make the state with the optimizer's init\\(params\\)$"):
        ft.fit(step, ft.make_evaluate(net.apply), params, edit(opt.init(params), params), tr, va, epochs=1,
               progress=False)
    assert not steps


@pytest.mark.parametrize("edit, match", [
    (lambda s: s._replace(b1=torch.tensor(1.0, dtype=torch.float64)), r"^opt_state.b1 must lie in \[0, 1\), got 1.0$"),
    (lambda s: s._replace(b2=torch.tensor(1.5, dtype=torch.float64)), r"^opt_state.b2 must lie in \[0, 1\), got 1.5$"),
    (lambda s: s._replace(count=torch.tensor(0.5)), r"^opt_state.count must be an integer >= 0, got 0.5 \(torch.float32\)$"),
    (lambda s: s._replace(count=torch.tensor(-1)), r"^opt_state.count must be an integer >= 0, got -1 \(torch.int64\)$"),
    (lambda s: s._replace(lr=torch.tensor([0.1, 0.2])), r"^opt_state.lr must be a 0-dim tensor, got shape \(2,\) "),
    (lambda s: s._replace(nu={k: -torch.ones_like(v) for k, v in s.nu.items()}),
     r"^opt_state.nu\['1.weight'\] holds negative values: second moments are averages of squared gradients$"),
])
def test_fit_names_an_adam_state_whose_hyperparameters_or_moments_no_adam_makes(edit, match):
    """Before training: such a state's first update would go non-finite and be reported as the
    run's divergence."""
    net = ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    params = net.init(0)
    with pytest.raises(ValueError, match=match):
        ft.fit(ft.make_step(net.apply, ft.adam()), ft.make_evaluate(net.apply), params,
               edit(ft.adam().init(params)), *problem(), epochs=1, progress=False)


@pytest.mark.parametrize("lr, eps, match", [
    (1e39, 1e-8, r"opt_state.lr must be a normal number in torch.float32, the parameters' dtype \(1.18e-38 to "
                 r"3.4e\+38 or 0\), got 1e\+39$"),
    (1e-3, 1e-46, r"opt_state.eps must be a normal number in torch.float32, .*, got 1e-46$"),
    (1e-3, 1e-40, r"opt_state.eps must be .*, got 1e-40$"),  # subnormal: 0 where subnormals are flushed
])
def test_fit_refuses_hyperparameters_that_are_not_numbers_in_the_parameters_dtype(lr, eps, match):
    net = ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    params, tr_va = net.init(0), problem()
    with pytest.raises(ValueError, match=match):
        ft.fit(ft.make_step(net.apply, ft.adam()), ft.make_evaluate(net.apply), params,
               ft.adam(lr, eps=eps).init(params), *tr_va, epochs=1, progress=False)
    params = {k: v.double() for k, v in params.items()}  # float64 holds them all
    result = ft.fit(ft.make_step(net.apply, ft.adam()), ft.make_evaluate(net.apply), params,
                    ft.adam(1e-3, eps=eps).init(params), *tr_va, epochs=1, progress=False)
    assert result.diverged is None


def _net():
    return ft.build_network("mlp", ft.NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)


def _pair_loss(params, x, y):
    return ft.cross_entropy(_net().apply(params, x), y)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ft.build_network("mlp", input_shape=28), ValueError, r"input_shape must be \(C, H, W\), got 28"),
    (lambda: ft.make_evaluate(_net().apply)(_net().init(0), torch.zeros(3, *SHAPE), [1, 2, 3]), ValueError,
     r"evaluate's targets must be one-hot \(N, C\) with N = 3 rows of X, got list"),
    (lambda: ft.make_evaluate(_net().apply)(_net().init(0), [0.0], torch.zeros(1, 10)), ValueError,
     "evaluate needs X, a tensor of at least one sample, got list"),
    (lambda: ft.per_example_grad_norms(_pair_loss, _net().init(0), torch.zeros(0, *SHAPE), torch.zeros(0, 10)),
     ValueError, r"x must be a tensor of at least one example, got shape \(0, 1, 6, 6\) torch.float32"),
    (lambda: ft.per_example_grad_norms(_pair_loss, _net().init(0), torch.zeros(2, *SHAPE), torch.zeros(3, 10)),
     ValueError, r"y must be a tensor of one target per example of x \(2\), got shape \(3, 10\) torch.float32"),
    (lambda: ft.compile_step(lambda p, s, b: (p, s, {}), mode="bogus"), ValueError, "mode: Unrecognized mode=bogus"),
    (lambda: ft.fit_population(_net(), [ft.Member(0, 1e-3, b1=1.0)], *problem(), epochs=1, progress=False),
     ValueError, r"members\[0\].b1 must lie in \[0, 1\), got 1.0"),
])
def test_misused_entry_points_name_their_argument(call, error, match):
    with pytest.raises(error, match=f"^{match}"):
        call()


@pytest.mark.parametrize("lrs", [np.array([1e-2, 1e-3]), torch.tensor([1e-2, 1e-3], dtype=torch.float64)])
def test_fit_sweep_takes_a_1d_array_of_learning_rates_as_their_list(lrs):
    tr, va = problem()
    given = ft.fit_sweep(_net(), lrs, tr, va, epochs=1, batch_size=16, progress=False)
    listed = ft.fit_sweep(_net(), [1e-2, 1e-3], tr, va, epochs=1, batch_size=16, progress=False)
    assert [r.logs for r in given] == [r.logs for r in listed]


# --- flags and functions -----------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: train(None, shuffle="no"), r"^shuffle must be a bool \(True or False\), got 'no' \(str\)$"),
    (lambda: train(None, write_checkpoint=1), r"^write_checkpoint must be a bool \(True or False\), got 1 \(int\)$"),
    (lambda: train(None, resume=None), r"^resume must be a bool"),
    (lambda: ft.fit_sweep(net8(), [1e-2], *problem(), epochs=1, compile="False"), r"^compile must be a bool"),
    (lambda: ft.fit_population(net8(), [ft.Member(0, 1e-2)], *problem(), epochs=1, shuffle=np.int64(1)),
     r"^shuffle must be a bool"),
    (lambda: ft.load_fashion_mnist("/nonexistent", download="no"), r"^download must be a bool"),
    (lambda: ft.flush_denormals("yes"), r"^enabled must be a bool"),
])
def test_a_flag_that_is_not_a_bool_is_named(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_numpys_bools_are_flags_too(tmp_path):
    plain = train(None, shuffle=True, checkpoint=tmp_path / "plain.pt")
    assert train(None, shuffle=np.bool_(True), checkpoint=tmp_path / "numpy.pt").logs == plain.logs
    # a checkpoint's settings hold plain bools: the run resumes from either
    assert train(None, shuffle=True, checkpoint=tmp_path / "numpy.pt", resume=True).logs == plain.logs


def test_fit_names_a_step_or_evaluate_that_is_not_a_function():
    net, opt = net8(), ft.adam(1e-2)
    params = net.init(0)
    step, evaluate = ft.make_step(net.apply, opt), ft.make_evaluate(net.apply)
    for name, functions in (("step", (None, evaluate)), ("evaluate", (step, "evaluate"))):
        with pytest.raises(TypeError, match=f"^{name} must be a function, got"):
            ft.fit(*functions, params, opt.init(params), *problem(), epochs=1, progress=False)


def test_fit_sweep_names_a_learning_rate_beyond_the_dtype_as_lrs():
    with pytest.raises(ValueError, match=r"^lrs\[1\] must be a normal number in torch.float32"):
        ft.fit_sweep(net8(), [1e-2, 1e39], *problem(), epochs=1, progress=False)
