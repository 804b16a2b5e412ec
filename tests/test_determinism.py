"""Same seed, same configuration, same thread count -> the same logs and parameters, bit for bit (CPU)."""
import pytest
import torch

from fn_trainer import (
    NetworkConfiguration,
    adam,
    build_network,
    load_fashion_mnist,
    make_evaluate,
    make_step,
    normalize,
)
from fn_trainer.training.fit import fit


@pytest.fixture(scope="module")
def data(fake_data_root):
    splits = load_fashion_mnist(fake_data_root, download=False)
    train, valid, _ = normalize(*splits)
    return (train.X[:128], train.y[:128]), (valid.X[:64], valid.y[:64])


CONFIGS = {
    "mlp": NetworkConfiguration(dense_hiddens=(32,)),
    "cnn": NetworkConfiguration((4, 8), (3, 3), (1, 1), (0, 0), (16,)),
}


def train(data, network_type, seed, *, shuffle=True, activation_name="relu"):
    net = build_network(network_type, CONFIGS[network_type], activation_name=activation_name)
    opt = adam(2e-3)
    params = net.init(seed)
    return fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), *data,
               epochs=2, batch_size=32, shuffle=shuffle, seed=seed, progress=False)


@pytest.mark.parametrize("network_type,shuffle,activation_name", [
    ("mlp", True, "relu"), ("mlp", False, "sigmoid"), ("cnn", True, "tanh"),
])
def test_same_seed_gives_bitwise_identical_runs(data, network_type, shuffle, activation_name):
    a = train(data, network_type, 5, shuffle=shuffle, activation_name=activation_name)
    b = train(data, network_type, 5, shuffle=shuffle, activation_name=activation_name)
    assert a.logs == b.logs
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert len(a.logs["train_loss"]) == 3


@pytest.mark.parametrize("network_type", ["mlp", "cnn"])
def test_another_seed_gives_another_run(data, network_type):
    assert train(data, network_type, 5).logs != train(data, network_type, 6).logs


def test_global_generators_do_not_affect_a_run(data):
    torch.manual_seed(0)
    a = train(data, "mlp", 5)
    torch.manual_seed(12345)
    torch.rand(10)
    assert train(data, "mlp", 5).logs == a.logs
