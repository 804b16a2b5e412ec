"""The CNN forward written for Inductor (``fn_trainer.speed``) computes the module's function,
with the same parameter gradients; ``Network.apply`` stays the plain module, compiled or not."""
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad

from fn_trainer import NetworkConfiguration, build_network
from fn_trainer.speed import inductor_apply
from fn_trainer.speed.calibration import DEFAULTS
from fn_trainer.speed.cnn_forward import _extents_read, sequential_forward
from fn_trainer.speed.patches import conv_max_pool, patch_conv
from fn_trainer.speed.winograd import winograd_conv_max_pool


@settings(max_examples=40, deadline=None)
@given(c_in=st.integers(1, 3), c_out=st.integers(1, 5), k=st.integers(1, 5), s=st.integers(1, 3),
       p=st.integers(0, 2), size=st.integers(6, 17), seed=st.integers(0, 2**31 - 1))
def test_conv_max_pool_equals_conv_then_pool(c_in, c_out, k, s, p, size, seed):
    g = torch.Generator().manual_seed(seed)
    out = (size + 2 * p - k) // s + 1
    if k > size + 2 * p or out < 2:
        return  # the builders refuse these (nothing to pool)
    x = torch.randn(2, c_in, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
    want = F.max_pool2d(F.conv2d(x, w, stride=s, padding=p), 2)
    got = conv_max_pool(x, w, s, p)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(c_in=st.integers(1, 3), c_out=st.integers(1, 5), k=st.integers(1, 5), s=st.integers(1, 3),
       p=st.integers(0, 2), size=st.integers(5, 17), seed=st.integers(0, 2**31 - 1))
def test_patch_conv_equals_conv2d(c_in, c_out, k, s, p, size, seed):
    g = torch.Generator().manual_seed(seed)
    if k > size + 2 * p:
        return
    x = torch.randn(2, c_in, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
    want = F.conv2d(x, w, stride=s, padding=p)
    got = patch_conv(x, w, s, p)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_conv_max_pool_shares_the_gradient_at_ties():
    # a constant image makes all four candidates of every window equal
    x = torch.ones(1, 1, 6, 6)
    w = torch.ones(1, 1, 3, 3)
    g = grad(lambda w: conv_max_pool(x, w, 1, 0).sum())(w)
    # 4 pooled outputs, each with gradient 1 shared over 4 patches of ones: 4 per weight
    torch.testing.assert_close(g, torch.full_like(w, 4.0))


@settings(max_examples=30, deadline=None)
@given(c_in=st.integers(1, 12), c_out=st.integers(1, 6), p=st.integers(0, 2), h=st.integers(4, 15),
       w=st.integers(4, 15), seed=st.integers(0, 2**31 - 1), for_vmap=st.booleans())
def test_winograd_conv_max_pool_equals_conv_then_pool(c_in, c_out, p, h, w, seed, for_vmap):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    reference = lambda weight, x: F.max_pool2d(F.conv2d(x, weight, padding=p), 2)  # noqa: E731
    winograd = lambda weight, x: winograd_conv_max_pool(x, weight, p, for_vmap=for_vmap)  # noqa: E731
    got, want = winograd(weight, x), reference(weight, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # gradients for the kernel and the input (random values: no ties)
    cotangent = torch.randn(want.shape, generator=g, dtype=torch.float64)
    g_want = grad(lambda *a: (reference(*a) * cotangent).sum(), argnums=(0, 1))(weight, x)
    g_got = grad(lambda *a: (winograd(*a) * cotangent).sum(), argnums=(0, 1))(weight, x)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_winograd_pool_gives_the_gradient_to_the_first_maximum_like_max_pool2d():
    # a constant image ties the four outputs of every window
    x, w = torch.ones(1, 2, 6, 6, dtype=torch.float64), torch.ones(1, 2, 3, 3, dtype=torch.float64)
    g_want = grad(lambda w, x: F.max_pool2d(F.conv2d(x, w), 2).sum(), argnums=(0, 1))(w, x)
    g_got = grad(lambda w, x: winograd_conv_max_pool(x, w, 0).sum(), argnums=(0, 1))(w, x)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("for_vmap", [False, True])
def test_winograd_conv_max_pool_under_vmap_over_kernels(for_vmap):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 9, generator=g, dtype=torch.float64)
    kernels = torch.randn(5, 6, 4, 3, 3, generator=g, dtype=torch.float64)
    cotangent = torch.randn(5, 3, 6, 4, 4, generator=g, dtype=torch.float64)
    got = torch.func.vmap(lambda w: winograd_conv_max_pool(x, w, 1, for_vmap=for_vmap))(kernels)
    want = torch.stack([F.max_pool2d(F.conv2d(x, w, padding=1), 2) for w in kernels])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # per-member kernel gradients, as a population's step takes them
    g_got = torch.func.vmap(torch.func.grad(lambda w, c: (winograd_conv_max_pool(x, w, 1, for_vmap=for_vmap) * c).sum()))(
        kernels, cotangent)
    g_want = torch.func.vmap(torch.func.grad(lambda w, c: (F.max_pool2d(F.conv2d(x, w, padding=1), 2) * c).sum()))(
        kernels, cotangent)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-11)


def assert_rewrite_matches_module(net, params, x):
    """Values and parameter gradients (of the summed log-probabilities) as functional_call's."""
    reference = lambda p: functional_call(net.module, p, (x,))  # noqa: E731
    rewritten = lambda p: sequential_forward(net.module, p, x)  # noqa: E731
    torch.testing.assert_close(rewritten(params), reference(params), rtol=1e-10, atol=1e-12)
    g_want = grad(lambda p: reference(p).log().sum())(params)
    g_got = grad(lambda p: rewritten(p).log().sum())(params)
    for k in g_want:
        torch.testing.assert_close(g_got[k], g_want[k], rtol=1e-8, atol=1e-10, msg=k)


CONFIGS = [
    NetworkConfiguration(n_channels=(16, 32, 45)),
    NetworkConfiguration(n_channels=(8, 16, 32, 64), kernel_sizes=(1, 1, 1, 1), strides=(1, 1, 1, 1),
                         paddings=(0, 0, 0, 0)),
    NetworkConfiguration(n_channels=(41,), kernel_sizes=(28,), strides=(1,), paddings=(0,)),
    NetworkConfiguration(n_channels=(6, 7), kernel_sizes=(5, 3), strides=(2, 1), paddings=(2, 1),
                         dense_hiddens=(12,)),
    NetworkConfiguration(n_channels=(6, 7), kernel_sizes=(4, 3), strides=(3, 2), paddings=(1, 0),
                         dense_hiddens=()),
    # Winograd for the second layer, padded, on an even map (14x14)
    NetworkConfiguration(n_channels=(12, 10, 6), kernel_sizes=(3, 3, 3), paddings=(1, 1, 0), dense_hiddens=(9,)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.n_channels}-k{c.kernel_sizes}")
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_sequential_forward_equals_module(config, act):
    net = build_network("cnn", config, activation_name=act)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 255
    assert_rewrite_matches_module(net, net.init(3, dtype=torch.float64), x)


@settings(max_examples=25, deadline=None)
@given(n_layers=st.integers(1, 3), data=st.data(), size=st.integers(8, 30), seed=st.integers(0, 2**31 - 1))
def test_sequential_forward_equals_module_on_random_configs(n_layers, data, size, seed):
    # random kernels, strides and paddings crop, rewrite and Winograd in every combination
    layer = st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2))
    layers = data.draw(st.lists(layer, min_size=n_layers, max_size=n_layers))
    config = NetworkConfiguration(n_channels=tuple(c for c, *_ in layers), kernel_sizes=tuple(k for _, k, _, _ in layers),
                                  strides=tuple(s for _, _, s, _ in layers), paddings=tuple(p for *_, p in layers),
                                  dense_hiddens=(7,))
    try:
        net = build_network("cnn", config, input_shape=(2, size, size + 3))
    except ValueError:
        return  # a configuration the builder refuses (a feature map shrinks away)
    x = torch.rand(3, 2, size, size + 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert_rewrite_matches_module(net, net.init(seed, dtype=torch.float64), x)


@pytest.mark.parametrize("config", [
    NetworkConfiguration(n_channels=(16, 32, 45), kernel_sizes=(3, 3, 3)),  # Winograd in its second layer
    NetworkConfiguration(n_channels=(41,), kernel_sizes=(28,), strides=(1,), paddings=(0,), dense_hiddens=(256,)),
])
@pytest.mark.parametrize("vmapped", [False, True])
def test_an_empty_batch_gives_an_empty_output_as_the_module_does(config, vmapped):
    net = build_network("cnn", config)
    params, x = net.init(0), torch.zeros(0, 1, 28, 28)
    assert net.apply(params, x).shape == inductor_apply(net, vmapped=vmapped)(params, x).shape == (0, 10)


def test_extents_read_of_the_benchmark_cnn():
    # 28x28 -> conv 26 -> pool 13 -> conv 11 -> pool 5 -> conv 3 -> adaptive 4: the pooled 5x5
    # uses 10 of the 11 second-layer outputs, which read 12 of the 13 rows, which come from 24
    # first-layer outputs, which read 26 input rows
    net = build_network("cnn", NetworkConfiguration(n_channels=(16, 32, 45)))
    reads = _extents_read(list(net.module._modules.values()), (28, 28))
    assert [reads[i] for i in (0, 3, 6)] == [(26, 26), (12, 12), None]


def test_mlp_layers_pass_through_unchanged():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)))
    params, x = net.init(0), torch.randn(3, 1, 28, 28)
    assert torch.equal(sequential_forward(net.module, params, x), functional_call(net.module, params, (x,)))


@pytest.mark.parametrize("config, n_products, n_winograd, n_convs", [
    # both convolutions (one pooled, one before the adaptive pool) run as patch products
    (NetworkConfiguration(n_channels=(4, 8), kernel_sizes=(3, 3), strides=(1, 1), paddings=(0, 0),
                          dense_hiddens=(8,)), 2, 0, 0),
    # the pooled 3x3 layer with enough input channels runs as Winograd products
    (NetworkConfiguration(n_channels=(DEFAULTS.winograd_min_channels, 8, 4), kernel_sizes=(3, 3, 3), strides=(1, 1, 1),
                          paddings=(0, 1, 0), dense_hiddens=(8,)), 2, 1, 0),
    # a 28x28 kernel of stride 1 would take 784 slices: it stays a conv
    (NetworkConfiguration(n_channels=(5,), kernel_sizes=(28,), strides=(1,), paddings=(0,), dense_hiddens=(8,)),
     0, 0, 1),
], ids=["small", "winograd", "large-kernel"])
def test_compiled_inductor_apply_uses_the_rewritten_forward(config, n_products, n_winograd, n_convs):
    net = build_network("cnn", config)
    params, x = net.init(0), torch.rand(4, 1, 28, 28)
    compiled, calls = compile_recording(inductor_apply(net), params, x)
    assert calls.count(operator.matmul) == n_products
    assert calls.count(torch.bmm) == n_winograd
    assert sum(calls.count(f) for f in {torch.conv2d, F.conv2d}) == n_convs
    torch.testing.assert_close(compiled, net.apply(params, x), rtol=1e-5, atol=1e-6)


def compile_recording(fn, *args):
    """``torch.compile(fn)(*args)`` with a backend that only reads the graph; returns the
    result and the functions the graph calls."""
    calls = []

    def recorder(gm, example_inputs):
        calls.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(fn, backend=recorder, fullgraph=True)(*args), calls


def test_compiled_network_apply_is_the_plain_module():
    """No hidden switch: under torch.compile, ``Network.apply`` still runs the convolutions
    and pools of the homework's module; only ``inductor_apply`` asks for the rewrite."""
    net = build_network("cnn", NetworkConfiguration(n_channels=(DEFAULTS.winograd_min_channels, 8), kernel_sizes=(3, 3),
                                                     strides=(1, 1), paddings=(0, 0), dense_hiddens=(8,)))
    params, x = net.init(0), torch.rand(4, 1, 28, 28)
    _, calls = compile_recording(net.apply, params, x)
    assert sum(calls.count(f) for f in {torch.conv2d, F.conv2d}) == 2
    assert calls.count(torch.bmm) == calls.count(operator.matmul) == 0


@pytest.mark.parametrize("input_shape, config", [
    ((3, 30, 26), NetworkConfiguration(n_channels=(5, 7), kernel_sizes=(3, 2), strides=(1, 2), paddings=(1, 0),
                                       dense_hiddens=(9,))),
    ((2, 17, 23), NetworkConfiguration(n_channels=(4, 6, 8), kernel_sizes=(3, 3, 3), strides=(1, 1, 1),
                                       paddings=(0, 1, 1), dense_hiddens=())),
], ids=["3x30x26", "2x17x23"])
def test_sequential_forward_on_non_square_multichannel_inputs(input_shape, config):
    # the phase view splits height and width separately; odd sizes need its padding or cropping
    net = build_network("cnn", config, input_shape=input_shape)
    x = torch.rand(5, *input_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_rewrite_matches_module(net, net.init(1, dtype=torch.float64), x)


def test_the_forward_for_populations_compiles_under_vmap():
    """Dynamo cannot trace ``vmap`` over the Winograd rewrite's ``autograd.Function``s: a
    population's compiled step (K stacked models, one vmapped step) applies
    ``inductor_apply(net, vmapped=True)``, whose Winograd layers leave the backward to
    autograd, still the module's function."""
    from torch.func import vmap

    from fn_trainer.core.losses import one_hot
    from fn_trainer.core.optim import adam
    from fn_trainer.core.step import make_step
    from fn_trainer.training.population import Member, init_population

    # the second layer is a Winograd one for a single model (see the "winograd" case above)
    net = build_network("cnn", NetworkConfiguration(n_channels=(DEFAULTS.winograd_min_channels, 8, 4), kernel_sizes=(3, 3, 3),
                                                     strides=(1, 1, 1), paddings=(0, 1, 0), dense_hiddens=(8,)))
    # float64: Adam's first update is about lr * sign(gradient), which float32 rounding flips
    # for gradients near zero
    params, state = init_population(net, [Member(0, 1e-3), Member(1, 1e-2)], torch.float64)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64),
             one_hot(torch.randint(0, 10, (4,), generator=g), 10).double())
    in_dims = (0, 0, (None, None))
    compiled, calls = compile_recording(vmap(make_step(inductor_apply(net, vmapped=True), adam()), in_dims=in_dims),
                                        params, state, batch)
    assert calls.count(torch.bmm) >= 1  # traced into a graph, the Winograd layer with it
    eager = vmap(make_step(net.apply, adam()), in_dims=in_dims)(params, state, batch)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-9, atol=1e-12)  # the members' new parameters
