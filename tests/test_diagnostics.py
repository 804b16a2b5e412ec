import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import global_norm, gradient_norm, jacobian_norm, per_example_grad_norms

seeds = st.integers(0, 2**31 - 1)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_jacobian_norm_of_linear_map_is_frobenius_norm(seed, m, n):
    A = _randn(seed, m, n)
    x = _randn(seed + 1, n)
    assert torch.allclose(jacobian_norm(lambda v: A @ v, x), torch.linalg.norm(A, "fro"), rtol=1e-12)


@settings(deadline=None)
@given(seeds, st.integers(1, 20))
def test_jacobian_norm_of_elementwise_map_is_norm_of_derivative(seed, n):
    x = _randn(seed, n)
    expected = torch.linalg.norm(torch.cos(x ** 3) * 3 * x.square())  # d/dx sin(x^3), elementwise
    assert torch.allclose(jacobian_norm(lambda v: torch.sin(v ** 3), x), expected, rtol=1e-12)


@settings(deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 5), st.floats(-5, 5))
def test_jacobian_norm_agrees_with_autograd_and_scales(seed, m, n, c):
    W, b = _randn(seed, m, n), _randn(seed + 1, m)
    x = _randn(seed + 2, n)

    def f(v):
        return torch.tanh(W @ v + b) * torch.exp(-v.sum() / n)

    reference = torch.autograd.functional.jacobian(f, x).norm()
    assert torch.allclose(jacobian_norm(f, x), reference, rtol=1e-10, atol=1e-14)
    scaled = jacobian_norm(lambda v: c * f(v), x)
    assert torch.allclose(scaled, abs(c) * reference, rtol=1e-10, atol=1e-14)


@settings(deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_gradient_norm_of_quadratic_forms(seed, n, k):
    """f(x, y) = x^T A x + b^T y has gradient ((A + A^T) x, b)."""
    A, x = _randn(seed, n, n), _randn(seed + 1, n)
    b, y = _randn(seed + 2, k), _randn(seed + 3, k)
    expected = torch.sqrt(((A + A.T) @ x).square().sum() + b.square().sum())
    got = gradient_norm(lambda u, v: u @ A @ u + b @ v, x, y)
    assert torch.allclose(got, expected, rtol=1e-12)


def test_gradient_norm_needs_a_tensor():
    with pytest.raises(ValueError, match="at least one tensor"):
        gradient_norm(lambda: torch.tensor(1.0))


def test_global_norm_of_dict_and_list():
    tensors = {"a": torch.tensor([3.0]), "b": torch.tensor([[4.0, 12.0]])}
    assert global_norm(tensors).item() == 13.0
    assert global_norm(list(tensors.values())).item() == 13.0


@settings(deadline=None, max_examples=20)
@given(seeds, st.integers(1, 6))
def test_per_example_grad_norms_match_a_loop(seed, n):
    params = {"w": _randn(seed, 3, 4), "b": _randn(seed + 1, 3)}
    x, y = _randn(seed + 2, n, 4), _randn(seed + 3, n, 3)

    def loss(p, xb, yb):
        return (torch.tanh(xb @ p["w"].T + p["b"]) - yb).square().mean()

    got = per_example_grad_norms(loss, params, x, y)
    expected = torch.stack([global_norm(torch.func.grad(loss)(params, x[i:i + 1], y[i:i + 1]))
                            for i in range(n)])
    assert got.shape == (n,)
    assert torch.allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_global_norm_of_low_precision_tensors_sums_their_squares_in_float32(dtype):
    # 300**2 is past float16's largest number (65504), a norm of 600 is not
    x = torch.full((4,), 300.0, dtype=dtype)
    norm = global_norm([x])
    assert norm.dtype == dtype and float(norm) == 600.0
    assert float(gradient_norm(lambda t: (t * t).sum() / 2, x)) == 600.0


def test_the_global_norm_of_float32_tensors_is_the_plain_formula_to_the_bit():
    tensors = [torch.randn(100, generator=torch.Generator().manual_seed(0)), torch.randn(30, 3)]
    assert torch.equal(global_norm(tensors), torch.sqrt(sum(t.square().sum() for t in tensors)))


@pytest.mark.parametrize("tensor, dtype", [(torch.tensor([3 + 4j]), "torch.complex64"),
                                           (torch.tensor([50000, 0], dtype=torch.int32), "torch.int32")])
def test_the_global_norm_refuses_tensors_that_are_not_real_floating(tensor, dtype):
    # t.square() of 3+4j is complex, and of 50000 overflows int32
    with pytest.raises(ValueError, match=f"^tensors must all be real floating tensors, got one of {dtype}$"):
        global_norm([torch.ones(2), tensor])


def test_a_function_of_integer_output_has_no_gradient_norm():
    with pytest.raises(ValueError, match="^f must return a floating tensor to have a gradient, got torch.int64$"):
        gradient_norm(lambda t: t.argmax(), torch.randn(3))


@pytest.mark.parametrize("f", [lambda t: torch.tensor(t.sum().item()), lambda t: t.detach().sum()])
def test_a_function_that_cuts_the_graph_has_no_gradient_norm_rather_than_zero(f):
    with pytest.raises(ValueError, match="^f's output does not depend on the tensors through differentiable operations: a .detach"):
        gradient_norm(f, torch.randn(3))
