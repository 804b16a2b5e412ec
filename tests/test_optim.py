import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import AdamState, adam
from fn_trainer.core.optim import adam_update


def _problem(seed: int, dtype: torch.dtype = torch.float64):
    """A random least-squares-with-tanh problem with two parameter tensors."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(20, 5, generator=g, dtype=dtype)
    b = torch.randn(20, generator=g, dtype=dtype)
    params = {"w": torch.randn(5, generator=g, dtype=dtype),
              "c": torch.randn((), generator=g, dtype=dtype)}

    def loss(p):
        return (torch.tanh(A @ p["w"] + p["c"]) - b).square().mean() + 0.1 * p["w"].pow(4).sum()

    return params, loss


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 10_000), st.sampled_from([1e-3, 1e-2, 0.1]),
       st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]), st.sampled_from([1e-8, 1e-3]))
def test_adam_matches_torch_optim_adam_in_float64(seed, lr, betas, eps):
    params, loss = _problem(seed)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch_opt = torch.optim.Adam(ref.values(), lr=lr, betas=betas, eps=eps)
    opt = adam(lr, *betas, eps=eps)
    state = opt.init(params)
    for _ in range(200):
        torch_opt.zero_grad()
        loss(ref).backward()
        torch_opt.step()
        grads = torch.func.grad(loss)(params)
        params, state = opt.update(grads, state, params)
    for k in params:
        assert torch.allclose(params[k], ref[k].detach(), rtol=0, atol=1e-12), k
    assert int(state.count) == 200


def test_update_mutates_nothing():
    params, loss = _problem(0)
    opt = adam(0.1)
    state = opt.init(params)
    grads = torch.func.grad(loss)(params)
    snapshot = [t.clone() for t in (*params.values(), *grads.values(), *state.mu.values(),
                                    *state.nu.values(), state.count, state.lr)]
    new_params, new_state = opt.update(grads, state, params)
    after = [*params.values(), *grads.values(), *state.mu.values(), *state.nu.values(),
             state.count, state.lr]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after))
    assert int(new_state.count) == 1 and int(state.count) == 0
    assert not torch.equal(new_params["w"], params["w"])


def test_state_is_immutable_and_holds_hyperparameters_as_tensors():
    state = adam(3e-4, 0.8, 0.95, 1e-6).init({"w": torch.zeros(2)})
    assert isinstance(state, AdamState)
    with pytest.raises(AttributeError):
        state.lr = torch.tensor(1.0)
    for name, value in (("lr", 3e-4), ("b1", 0.8), ("b2", 0.95), ("eps", 1e-6)):
        t = getattr(state, name)
        assert isinstance(t, torch.Tensor) and t.dim() == 0 and t.item() == value


def test_learning_rate_read_from_state_so_it_can_be_swapped():
    params, loss = _problem(1)
    opt = adam(1e-3)
    grads = torch.func.grad(loss)(params)
    a, _ = opt.update(grads, opt.init(params), params)
    b, _ = adam(1e-1).update(grads, opt.init(params)._replace(lr=torch.tensor(1e-1, dtype=torch.float64)), params)
    c, _ = adam(1e-1).update(grads, adam(1e-1).init(params), params)
    assert torch.equal(b["w"], c["w"]) and not torch.equal(a["w"], b["w"])


@pytest.mark.parametrize("kwargs,match", [({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"),
                                          ({"lr": -1e-3}, "lr"), ({"b1": 1.0}, "b1"),
                                          ({"b2": -0.1}, "b2"), ({"eps": 0.0}, "eps")])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adam(**kwargs)


def _like(params, **changed):
    return {**{k: torch.zeros_like(v) for k, v in params.items()}, **changed}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("grads_of,match", [
    (lambda p: {}, r"grads must have the parameters' names \['c', 'w'\], got \[\]"),
    (lambda p: [0.0], "grads must have the parameters' names .* got list"),
    (lambda p: _like(p, x=torch.zeros(1)), r"names .* got \['c', 'w', 'x'\]"),
    (lambda p: _like(p, w=torch.zeros(4, 1, dtype=torch.float64)),
     r"grads\['w'\] must be like params\['w'\], \(5,\) torch.float64, got \(4, 1\) torch.float64"),
    (lambda p: _like(p, w=torch.zeros(5)), r"grads\['w'\] .* got \(5,\) torch.float32"),
    (lambda p: _like(p, c=None), r"grads\['c'\] must be like params\['c'\], \(\) torch.float64, got NoneType"),
])
def test_gradients_unlike_the_parameters_are_named(grads_of, match, inplace):
    params, _ = _problem(0)
    before = {k: v.clone() for k, v in params.items()}
    with pytest.raises(ValueError, match=match):
        adam_update(grads_of(params), adam().init(params), params, inplace=inplace)
    assert all(torch.equal(params[k], before[k]) for k in params)  # refused before any write


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("state_of,error,match", [
    (lambda s, p: None, TypeError, "^opt_state must be an AdamState, got NoneType: make the state with"),
    (lambda s, p: tuple(s), TypeError, "^opt_state must be an AdamState, got tuple"),
    (lambda s, p: adam().init({k: v.float() for k, v in p.items()}), ValueError,
     r"^opt_state.mu\['w'\] must be like params\['w'\], \(5,\) torch.float64 on cpu, got \(5,\) torch.float32 on cpu"),
    (lambda s, p: s._replace(nu={"w": s.nu["w"]}), ValueError,
     r"^opt_state.nu must have the parameters' names \['c', 'w'\], got \['w'\]"),
    (lambda s, p: s._replace(lr=1e-3), ValueError, "^opt_state.lr must be a 0-dim tensor, got float"),
])
def test_a_state_not_made_for_the_parameters_is_named(state_of, error, match, inplace):
    params, loss = _problem(0)
    before = {k: v.clone() for k, v in params.items()}
    state = state_of(adam().init(params), params)
    with pytest.raises(error, match=match):
        adam_update(torch.func.grad(loss)(params), state, params, inplace=inplace)
    assert all(torch.equal(params[k], before[k]) for k in params)  # refused before any write


def test_adam_refuses_a_power_that_is_not_a_function_and_parameters_that_are_not_a_dict():
    with pytest.raises(TypeError, match="^power must be a function, got NoneType$"):
        adam(power=None)
    with pytest.raises(TypeError, match="^params must be a dict of parameter name -> tensor, got list"):
        adam().init([torch.zeros(2)])
    with pytest.raises(TypeError, match=r"^params\['w'\] must be a tensor, got int"):
        adam().init({"w": 3})


@settings(deadline=None, max_examples=5)
@given(st.integers(0, 10_000), st.sampled_from([1e-4, 1e-3, 1e-2]))
def test_adam_is_bitwise_torch_optim_adam_in_float32(seed, lr):
    """Same operation order as torch.optim.Adam, so float32 agrees bit for bit too."""
    params, loss = _problem(seed, torch.float32)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch_opt = torch.optim.Adam(ref.values(), lr=lr)
    opt = adam(lr)
    state = opt.init(params)
    for _ in range(100):
        torch_opt.zero_grad()
        loss(ref).backward()
        torch_opt.step()
        params, state = opt.update(torch.func.grad(loss)(params), state, params)
    for k in params:
        assert torch.equal(params[k], ref[k].detach()), k


def test_non_numeric_beta_is_named():
    with pytest.raises(TypeError, match="b2"):
        adam(b2="0.9")


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from([1e-4, 1e-2]), st.sampled_from([(0.9, 0.999), (0.5, 0.9)]), st.sampled_from([1e-8, 1e-3]))
def test_update_in_place_equals_the_pure_update_bit_for_bit(seed, dtype, lr, betas, eps):
    """The in-place form writes into the old tensors and returns them, with the pure
    form's values to the last bit (gradients spanning 1e-12 to 10, 50 steps)."""
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(37, 33, generator=g, dtype=dtype), "c": torch.randn((), generator=g, dtype=dtype)}
    opt = adam(lr, *betas, eps=eps)
    pure, pure_state = params, opt.init(params)
    inplace = {k: v.clone() for k, v in params.items()}
    inplace_state = opt.init(inplace)
    for _ in range(50):
        grads = {k: torch.randn(v.shape, generator=g, dtype=dtype)
                 * 10.0 ** torch.randint(-12, 2, v.shape, generator=g) for k, v in params.items()}
        pure, pure_state = adam_update(grads, pure_state, pure)
        held = dict(inplace), dict(inplace_state.mu)
        inplace, inplace_state = adam_update(grads, inplace_state, inplace, inplace=True)
        assert all(inplace[k] is held[0][k] and inplace_state.mu[k] is held[1][k] for k in params)
    for k in params:
        assert torch.equal(inplace[k], pure[k]), k
        assert torch.equal(inplace_state.mu[k], pure_state.mu[k]) and torch.equal(inplace_state.nu[k], pure_state.nu[k])
    assert int(inplace_state.count) == int(pure_state.count) == 50


@settings(max_examples=25, deadline=None)
@given(st.floats(0.5, 0.99999), st.integers(1, 10**6))
def test_exp_log_power_equals_tensor_power_to_float64_rounding(base, exponent):
    from fn_trainer.core.optim import exp_log_power, tensor_power

    b = torch.tensor(base, dtype=torch.float64)
    exact, other = float(tensor_power(b, float(exponent))), float(exp_log_power(b, float(exponent)))
    # exp(t log b) carries the rounding of t log b, relative eps * |t log b|, into the power
    assert other == pytest.approx(exact, rel=4e-16 * (1 + abs(exponent * math.log(base))), abs=1e-300)


def test_the_power_is_asked_for_and_the_default_is_torch_adams():
    from fn_trainer.core.optim import adam_update, exp_log_power

    assert adam(1e-3).update is adam_update  # the reference arithmetic unless a caller asks otherwise
    params = {"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(0))}
    grads = {"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(1))}
    state = adam(1e-3).init(params)._replace(count=torch.tensor(999))
    plain, _ = adam(1e-3).update(grads, state, params)
    asked, _ = adam(1e-3, power=exp_log_power).update(grads, state, params)
    torch.testing.assert_close(asked["w"], plain["w"], rtol=2e-7, atol=0)
