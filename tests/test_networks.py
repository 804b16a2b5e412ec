import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fn_trainer import NetworkConfiguration, build_network, count_parameters
from fn_trainer.core.networks import activation, cnn, feature_map_sizes, init_params, mlp, params_of


def test_default_mlp_has_the_homework_parameter_count():
    net = build_network("mlp")
    assert net.n_params == 269_322
    assert sum(p.numel() for p in net.init(0).values()) == 269_322
    assert count_parameters("mlp") == 269_322


def test_mlp_layer_order():
    net = mlp(784, NetworkConfiguration(dense_hiddens=(32, 16)), 10, nn.Tanh())
    kinds = [type(m) for m in net]
    assert kinds == [nn.Flatten, nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear, nn.Softmax]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [32, 16, 10]


def test_cnn_layer_order():
    net = cnn(1, NetworkConfiguration(), 10, nn.ReLU())
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
                     "AdaptiveMaxPool2d", "Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear",
                     "Softmax"]
    pool = net[8]
    assert pool.output_size == (4, 4)
    assert all(m.kernel_size == 2 for m in net if isinstance(m, nn.MaxPool2d))


@pytest.mark.parametrize("name,cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)])
def test_activation(name, cls):
    assert isinstance(activation(name), cls)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="relu.*sigmoid.*tanh"):
        activation("gelu")


small_cnn_configs = st.integers(1, 3).flatmap(lambda n: st.builds(
    NetworkConfiguration,
    n_channels=st.tuples(*[st.integers(1, 6)] * n),
    kernel_sizes=st.tuples(*[st.integers(1, 3)] * n),
    strides=st.tuples(*[st.integers(1, 2)] * n),
    paddings=st.tuples(*[st.integers(0, 1)] * n),
    dense_hiddens=st.lists(st.integers(1, 8), max_size=3).map(tuple),
))


@settings(deadline=None, max_examples=40)
@given(small_cnn_configs, st.integers(1, 3), st.integers(2, 5))
def test_count_parameters_equals_built_cnn(config, channels, n_classes):
    shape = (channels, 28, 28)
    try:
        net = build_network("cnn", config, input_shape=shape, n_classes=n_classes)
    except ValueError as err:  # a feature map shrank to nothing: both must refuse it alike
        with pytest.raises(ValueError, match="conv layer"):
            count_parameters("cnn", config, shape, n_classes)
        assert "conv layer" in str(err)
        return
    assert count_parameters("cnn", config, shape, n_classes) == net.n_params


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(1, 50), max_size=4).map(tuple), st.integers(1, 4), st.integers(2, 12))
def test_count_parameters_equals_built_mlp(hiddens, channels, side):
    config = NetworkConfiguration(dense_hiddens=hiddens)
    net = build_network("mlp", config, input_shape=(channels, side, side))
    assert count_parameters("mlp", config, (channels, side, side)) == net.n_params


def _fits_28x28(config) -> bool:
    try:
        feature_map_sizes(config, (28, 28))
    except ValueError:
        return False
    return True


@settings(deadline=None, max_examples=25)
@given(small_cnn_configs.filter(_fits_28x28), st.integers(0, 2**31 - 1))
def test_apply_equals_module_forward(config, seed):
    """functional_call on the meta skeleton computes what a real module with the same weights does."""
    net = build_network("cnn", config, input_shape=(1, 28, 28))
    params = net.init(seed)
    real = cnn(1, config, 10, nn.ReLU())
    real.load_state_dict(params)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    out = net.apply(params, x)
    assert out.shape == (3, 10)
    assert torch.allclose(out, real(x), atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)


def test_init_is_seeded():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(64,)))
    a, b, c = net.init(1), net.init(1), net.init(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["1.weight"], c["1.weight"])
    assert list(a) == [n for n, _ in net.module.named_parameters()]


def _fan_in(layer: nn.Module) -> int:
    """PyTorch's fan-in, from the layer's own attributes: inputs times the kernel's area."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]


@pytest.mark.parametrize("network_type,config", [
    ("mlp", NetworkConfiguration()),
    ("cnn", NetworkConfiguration()),
    ("cnn", NetworkConfiguration(n_channels=(41,), kernel_sizes=(28,), strides=(1,), paddings=(0,))),
])
def test_init_follows_torch_default_bounds_for_every_weight_and_bias(network_type, config):
    net = build_network(network_type, config)
    params = net.init(0)
    for name, p in params.items():
        bound = 1 / math.sqrt(_fan_in(net.module.get_submodule(name.rsplit(".", 1)[0])))
        # U(-bound, bound): never beyond it, and near it: n draws all stay below (1 - c) bound
        # with probability (1 - c)^n, under 1e-3 for c = min(0.5, 12 / n)
        assert p.abs().max() <= bound, name
        assert p.abs().max() > (1 - min(0.5, 12 / p.numel())) * bound, name
        if p.numel() >= 10_000:  # the standard deviation of U(-b, b) is b / sqrt(3)
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02), name


def test_init_does_not_touch_global_rng():
    state = torch.get_rng_state()
    build_network("cnn").init(torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())


def test_params_of_copies():
    module = mlp(4, NetworkConfiguration(dense_hiddens=(3,)), 2, nn.ReLU())
    p = params_of(module)
    p["1.weight"].add_(1.0)
    assert not torch.equal(p["1.weight"], module[1].weight)


def test_init_params_float64():
    p = init_params(build_network("mlp").module, 0, dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in p.values())


@pytest.mark.parametrize("config,match", [
    (NetworkConfiguration(n_channels=(16, 32), kernel_sizes=(3,)), "same length"),
    (NetworkConfiguration(kernel_sizes=(3, 3, 30)), "conv layer 2 has kernel_size 30"),
    (NetworkConfiguration(n_channels=(0, 32, 48)), r"n_channels\[0\]"),
    (NetworkConfiguration(strides=(1, -1, 1)), r"strides\[1\]"),
    (NetworkConfiguration(dense_hiddens=(256, 0)), r"dense_hiddens\[1\]"),
])
def test_bad_cnn_config_is_named(config, match):
    with pytest.raises(ValueError, match=match):
        build_network("cnn", config)


def test_unknown_network_type():
    with pytest.raises(ValueError, match="network_type"):
        build_network("rnn")


@pytest.mark.parametrize("option, match", [
    ({"n_classes": 1}, "^n_classes must be an int >= 2, got 1$"),  # a softmax over one class learns nothing
    ({"n_classes": -5}, "^n_classes must be an int >= 2, got -5$"),
    ({"input_shape": (-1, 28, 28)}, r"^input_shape\[0\] must be an int >= 1, got -1$"),
    ({"input_shape": (28, 28)}, r"^input_shape must be \(C, H, W\), got \(28, 28\)$"),
])
def test_count_parameters_refuses_what_build_network_refuses(option, match):
    for count in (count_parameters, build_network):
        with pytest.raises(ValueError, match=match):
            count("mlp", **option)


def test_count_parameters_refuses_a_cnn_without_conv_layers_as_build_network_does():
    config = NetworkConfiguration(n_channels=(), kernel_sizes=(), strides=(), paddings=())
    for count in (count_parameters, build_network):
        with pytest.raises(ValueError, match="^net_config.n_channels must name at least one conv layer for a CNN$"):
            count("cnn", config)
