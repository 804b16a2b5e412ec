"""The homework's ``solution.py`` interface (``compat/solution.py``).

Runs against ``compat.solution``, or against the file named by ``FN_TRAINER_SOLUTION``
(an exported single-file solution). This module never imports ``fn_trainer`` itself, so
the same suite also runs where only the exported file is available.
"""
import copy
import importlib
import importlib.util
import inspect
import math
import os
import pickle
import random
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from template_spec import read_spec
from torch import nn

SOLUTION_ENV = "FN_TRAINER_SOLUTION"
SEED = 197331
HYPOTHESIS = settings(max_examples=20, deadline=None)


def load_solution(name: str = "solution", path=None):
    """``compat.solution``, or the solution file ``path`` / ``$FN_TRAINER_SOLUTION``
    executed afresh as module ``name``."""
    path = path or os.environ.get(SOLUTION_ENV)
    if path is None:
        return importlib.import_module("compat.solution")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


S = load_solution()


@pytest.fixture
def make_trainer(fake_data_root):
    def make(**kwargs):
        return S.Trainer(datapath=str(fake_data_root), **kwargs)

    return make


def labels_only(n_classes: int):
    """A Trainer carrying only ``n_classes``: enough for ``one_hot``."""
    trainer = S.Trainer.__new__(S.Trainer)
    trainer.n_classes = n_classes
    return trainer


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def reference_loss(probs, targets, eps=1e-9):
    """The template's loss, written independently: NLL of the clipped log-probabilities."""
    return nn.functional.nll_loss(probs.clamp(eps, 1 - eps).log(), targets.argmax(1))


# ---------------------------------------------------------------- interface

def declared_functions():
    """``name -> Expected`` from the template's written interface (skipped without it)."""
    return read_spec()


SPEC_NAMES = ["gradient_norm", "jacobian_norm", *(f"Trainer.{m}" for m in (
    "__init__", "load_dataset", "create_mlp", "create_cnn", "create_activation_function", "one_hot",
    "compute_loss_and_accuracy", "compute_gradient_norm", "training_step", "log_metrics", "train_loop",
    "evaluate", "normalize", "test_equivariance"))]


def test_the_specification_declares_every_function_checked():
    assert sorted(declared_functions()) == sorted(SPEC_NAMES)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_signature_matches_the_specification(name):
    """Parameter names and order, nothing extra, the same defaults, static-ness."""
    expected = declared_functions()[name]
    owner, _, attribute = name.rpartition(".")
    holder = S.Trainer if owner else S
    assert isinstance(inspect.getattr_static(holder, attribute), staticmethod) == expected.static
    got = inspect.signature(getattr(holder, attribute)).parameters.values()
    plain = [p.name for p in got if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    star = [p.name for p in got if p.kind is inspect.Parameter.VAR_POSITIONAL]
    assert plain == expected.params and star == ([expected.star] if expected.star else [])
    assert len(plain) + len(star) == len(got), f"{name} has parameters the template does not: {list(got)}"
    defaults = {p.name: p.default for p in got if p.default is not inspect.Parameter.empty}
    assert defaults == {k: eval(text, vars(S)) for k, text in expected.defaults.items()}


def test_module_level_imports_match_the_spec():
    import torchvision
    import tqdm
    assert (S.random, S.np, S.torch, S.torchvision, S.tqdm) == (random, np, torch, torchvision, tqdm)
    for name in ("Tuple", "Callable", "List", "NamedTuple"):
        assert hasattr(S, name)
    # the template has no __all__: `from solution import *` gives its imports and its own names
    star = {}
    exec(f"from {S.__name__} import *", star)
    template_names = {"random", "np", "torch", "torchvision", "tqdm", "Tuple", "Callable", "List", "NamedTuple",
                      "NetworkConfiguration", "gradient_norm", "jacobian_norm", "Trainer"}
    assert template_names <= set(star), template_names - set(star)
    assert all(star[name] is getattr(S, name) for name in template_names)


def test_network_configuration_fields_and_defaults():
    assert issubclass(S.NetworkConfiguration, tuple)
    assert S.NetworkConfiguration._fields == ("n_channels", "kernel_sizes", "strides", "paddings",
                                              "dense_hiddens")
    assert tuple(S.NetworkConfiguration()) == ((16, 32, 48), (3, 3, 3), (1, 1, 1), (0, 0, 0), (256, 256))


def test_import_seeds_every_generator_with_197331():
    torch.manual_seed(SEED), np.random.seed(SEED), random.seed(SEED)
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    load_solution("solution_reseeded", S.__file__)
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_trainer_attributes(make_trainer, fake_data_root):
    t = make_trainer(lr=0.001, batch_size=64)
    assert (t.datapath, t.n_classes, t.lr, t.batch_size, t.epsilon) == (str(fake_data_root), 10, 0.001, 64, 1e-9)
    assert t.network_type == "mlp"
    assert t.train_logs == {"train_accuracy": [], "validation_accuracy": [], "train_loss": [],
                            "validation_loss": [], "train_gradient_norm": []}
    assert isinstance(t.network, nn.Module)
    assert isinstance(t.optimizer, torch.optim.Adam)
    assert [p for g in t.optimizer.param_groups for p in g["params"]] == list(t.network.parameters())
    assert t.optimizer.param_groups[0]["lr"] == 0.001
    assert [len(s[0]) for s in (t.train, t.valid, t.test)] == [300, 2000, 100]


# ---------------------------------------------------------------- data

def test_load_dataset_reads_the_idx_files(fake_data_root):
    train, valid, test = S.Trainer.load_dataset(str(fake_data_root))
    raw = fake_data_root / "FashionMNIST" / "raw"
    test_images = read_idx(raw / "t10k-images-idx3-ubyte")
    test_labels = read_idx(raw / "t10k-labels-idx1-ubyte")
    assert train[0].shape == (300, 1, 28, 28) and train[0].dtype == torch.float32
    assert train[1].dtype == torch.int64
    assert np.array_equal(train[0][:, 0].numpy(), read_idx(raw / "train-images-idx3-ubyte"))
    assert np.array_equal(valid[0][:, 0].numpy(), test_images[:2000])
    assert np.array_equal(test[0][:, 0].numpy(), test_images[2000:])
    assert np.array_equal(valid[1].numpy(), test_labels[:2000])
    assert np.array_equal(test[1].numpy(), test_labels[2000:])


@HYPOTHESIS
@given(n=st.integers(2, 20), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_normalize_uses_the_training_statistics(n, d, seed):
    # float64: in float32, two nearly equal training samples leave a std of a few ulps of
    # their mean, and the normalised mean is then off by rounding alone
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 100 + 1
    splits = [(torch.randn(m, d, generator=g, dtype=torch.float64) * scale + 50, torch.arange(m)) for m in (n, 3, 4)]
    train, valid, test = S.Trainer.normalize(*splits)
    assert torch.allclose(train[0].mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(train[0].std(0), torch.ones(d, dtype=torch.float64), atol=1e-9)
    mean, std = splits[0][0].mean(0), splits[0][0].std(0)
    for (X, y), (X_raw, y_raw) in zip((valid, test), splits[1:]):
        assert torch.allclose(X * std + mean, X_raw, rtol=1e-9, atol=1e-9)
        assert torch.equal(y, y_raw)


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("name,cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)])
def test_create_activation_function(name, cls):
    assert isinstance(S.Trainer.create_activation_function(name), cls)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        S.Trainer.create_activation_function("gelu")
    assert all(n in str(e.value) for n in ("relu", "tanh", "sigmoid", "gelu"))


def test_default_mlp_layers_and_size():
    net = S.Trainer.create_mlp(784, S.NetworkConfiguration(), 10, nn.ReLU())
    assert [type(m) for m in net] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear,
                                      nn.Softmax]
    assert sum(p.numel() for p in net.parameters()) == 269_322
    probs = net(torch.rand(5, 1, 28, 28))  # un-flattened images go in
    assert probs.shape == (5, 10)
    assert torch.allclose(probs.sum(1), torch.ones(5))


@HYPOTHESIS
@given(hiddens=st.lists(st.integers(1, 16), max_size=4), n_classes=st.integers(2, 12),
       act=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]))
def test_mlp_has_one_linear_per_hidden_layer_plus_output(hiddens, n_classes, act):
    config = S.NetworkConfiguration(dense_hiddens=tuple(hiddens))
    net = S.Trainer.create_mlp(12, config, n_classes, act())
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    widths = [12, *hiddens, n_classes]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(widths, widths[1:]))
    assert sum(isinstance(m, act) for m in net) == len(hiddens)
    assert isinstance(list(net)[-1], nn.Softmax)
    assert net(torch.rand(2, 3, 2, 2)).shape == (2, n_classes)


def test_default_cnn_layers():
    net = S.Trainer.create_cnn(1, S.NetworkConfiguration(), 10, nn.ReLU())
    assert [type(m) for m in net] == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU,
        nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Softmax]
    pools = [m for m in net if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d))]
    assert [p.kernel_size for p in pools[:2]] == [2, 2] and pools[2].output_size == (4, 4)
    assert net[10].in_features == 48 * 4 * 4
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@HYPOTHESIS
@given(layers=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(1, 2),
                                 st.integers(0, 1)), min_size=1, max_size=2),
       hiddens=st.lists(st.integers(1, 8), max_size=2))
def test_cnn_convolutions_follow_the_configuration(layers, hiddens):
    channels, kernels, strides, paddings = map(tuple, zip(*layers))
    config = S.NetworkConfiguration(channels, kernels, strides, paddings, tuple(hiddens))
    net = S.Trainer.create_cnn(2, config, 3, nn.Tanh())
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == list(zip((2,) + channels, channels))
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [
        ((k, k), (s, s), (p, p)) for k, s, p in zip(kernels, strides, paddings)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == len(layers) - 1
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [*hiddens, 3]
    assert net(torch.rand(2, 2, 28, 28)).shape == (2, 3)


# ---------------------------------------------------------------- bad input

def test_unknown_network_type_is_refused_before_loading_data(tmp_path):
    with pytest.raises(ValueError, match="^Network type not supported$"):
        S.Trainer("rnn", datapath=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("argument, value, error", [
    ("batch_size", 0, ValueError), ("batch_size", -1, ValueError), ("batch_size", 2.5, TypeError),
    ("lr", -1e-3, ValueError), ("lr", float("nan"), ValueError), ("lr", "fast", TypeError),
    ("n_classes", 0, ValueError), ("n_classes", "10", TypeError),
])
def test_bad_hyper_parameters_are_refused_before_loading_data(tmp_path, argument, value, error):
    with pytest.raises(error, match=f"^{argument} must be"):
        S.Trainer(datapath=str(tmp_path / "nowhere"), **{argument: value})
    assert not (tmp_path / "nowhere").exists()


def test_a_learning_rate_of_0_is_taken_as_torch_optim_adam_takes_it(make_trainer):
    t = make_trainer(lr=0, batch_size=64)
    before = {k: v.detach().clone() for k, v in t.network.named_parameters()}
    logs = t.train_loop(1)
    assert t.lr == 0.0 and t.optimizer.param_groups[0]["lr"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in t.network.named_parameters())  # the moments move, not the weights
    assert logs["train_loss"][0] == logs["train_loss"][1]


def test_an_mlp_ignores_the_conv_fields_of_its_configuration(make_trainer):
    """The homework: for an MLP only dense_hiddens is read."""
    config = S.NetworkConfiguration(n_channels=(1, 2), kernel_sizes=(0, 0, 0), dense_hiddens=(32,))
    t = make_trainer(network_type="mlp", net_config=config)
    assert [m.out_features for m in t.network if isinstance(m, torch.nn.Linear)] == [32, 10]


def test_a_bad_activation_names_its_argument(make_trainer):
    with pytest.raises(ValueError, match=r"^activation_str must be one of \['relu', 'sigmoid', 'tanh'\], got 'elu'$"):
        S.Trainer.create_activation_function("elu")


def test_mismatched_configuration_lengths(make_trainer):
    config = S.NetworkConfiguration(n_channels=(8, 8), kernel_sizes=(3,), strides=(1, 1), paddings=(0, 0))
    with pytest.raises(ValueError, match="same length"):
        make_trainer(network_type="cnn", net_config=config)


@pytest.mark.parametrize("kernels,layer,size", [((29,), 0, "28x28"), ((3, 3, 9), 2, "5x5")])
def test_kernel_larger_than_its_feature_map(make_trainer, kernels, layer, size):
    n = len(kernels)
    config = S.NetworkConfiguration((4,) * n, kernels, (1,) * n, (0,) * n, (8,))
    with pytest.raises(ValueError) as e:
        make_trainer(network_type="cnn", net_config=config)
    message = str(e.value)
    assert f"layer {layer}" in message and size in message and str(kernels[-1]) in message


def test_labels_outside_the_classes_are_refused(make_trainer):
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        labels_only(5).one_hot(torch.tensor([0, 5]))
    t = make_trainer()
    X = t.valid[0][:2]
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        t.evaluate(X, torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="one entry per sample"):
        t.training_step(X, t.one_hot(torch.tensor([1, 2, 3])))
    with pytest.raises(ValueError, match=r"same shape \(N, C\), got \(2, 10\) and \(2, 7\)"):
        t.compute_loss_and_accuracy(X, torch.ones(2, 7))  # one-hot rows of another width than the network's


# ---------------------------------------------------------------- maths through the adapter

def test_one_hot_matches_the_homework_example():
    expected = torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    assert torch.equal(labels_only(5).one_hot(torch.tensor([1, 0, 3, 4])), expected.float())


@HYPOTHESIS
@given(n_classes=st.integers(1, 12), data=st.data())
def test_one_hot_rows_pick_their_label(n_classes, data):
    labels = torch.tensor(data.draw(st.lists(st.integers(0, n_classes - 1), max_size=30)), dtype=torch.int64)
    encoded = labels_only(n_classes).one_hot(labels)
    assert encoded.shape == (len(labels), n_classes)
    assert torch.equal(encoded.sum(1), torch.ones(len(labels)))
    assert torch.equal(encoded.argmax(1) if len(labels) else labels, labels)


@HYPOTHESIS
@given(shapes=st.lists(st.lists(st.integers(1, 4), max_size=3), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_gradient_norm_of_half_squared_norm_is_the_norm(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(tuple(s), generator=g, dtype=torch.float64) for s in shapes]
    value = S.gradient_norm(lambda *ts: sum(0.5 * (t ** 2).sum() for t in ts), *tensors)
    assert isinstance(value, float)
    assert value == pytest.approx(math.sqrt(sum(float((t ** 2).sum()) for t in tensors)), rel=1e-9)


def test_gradient_norm_of_a_product():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -4.0])  # grad of sum(a*b) is (b, a)
    assert S.gradient_norm(lambda x, y: (x * y).sum(), a, b) == pytest.approx(math.sqrt(30.0))


@pytest.mark.filterwarnings("error")  # float() of a tensor with a graph warns
def test_gradient_norm_takes_inputs_that_require_grad_and_one_element_outputs():
    a, b = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0, -4.0], requires_grad=True)
    assert S.gradient_norm(lambda x, y: (x * y).sum(), a, b) == pytest.approx(math.sqrt(30.0))
    # a (1,) output, which torch.autograd.grad takes as well
    assert S.gradient_norm(lambda x, y: (x * y).sum().reshape(1), a, b) == pytest.approx(math.sqrt(30.0))
    assert S.jacobian_norm(lambda x: 2 * x, a) == pytest.approx(math.sqrt(8.0))


def test_splits_are_the_templates_plain_tuples(make_trainer, tmp_path):
    t = make_trainer(normalization=True)
    for split in (t.train, t.valid, t.test, *S.Trainer.load_dataset(t.datapath)):
        assert type(split) is tuple and len(split) == 2
    torch.save(t.valid, tmp_path / "valid.pt")  # loads anywhere, with torch.load's weights_only default
    X, y = torch.load(tmp_path / "valid.pt")
    assert torch.equal(X, t.valid[0]) and torch.equal(y, t.valid[1])


@HYPOTHESIS
@given(m=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_jacobian_norm_of_a_linear_map_is_its_frobenius_norm(m, n, seed):
    g = torch.Generator().manual_seed(seed)
    A, x = torch.randn(m, n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    value = S.jacobian_norm(lambda v: A @ v, x)
    assert isinstance(value, float)
    assert value == pytest.approx(float(A.square().sum().sqrt()), rel=1e-9)
    assert S.jacobian_norm(lambda v: v ** 2, x) == pytest.approx(2 * float(x.norm()), rel=1e-9)


def test_loss_and_accuracy_on_the_network(make_trainer):
    t = make_trainer()
    X, y = t.valid[0][:64], t.valid[1][:64]
    loss, acc = t.compute_loss_and_accuracy(X, t.one_hot(y))
    assert isinstance(acc, float) and loss.dim() == 0 and loss.requires_grad
    with torch.no_grad():
        probs = t.network(X)
    assert float(loss.detach()) == pytest.approx(float(reference_loss(probs, t.one_hot(y))), rel=1e-6)
    assert acc == pytest.approx(float((probs.argmax(1) == y).double().mean()))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.network.parameters())


class FixedProbabilities(nn.Module):
    def __init__(self, probs):
        super().__init__()
        self.probs = probs
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, X):
        return self.probs + 0 * self.weight


def test_loss_clips_probabilities_to_epsilon(make_trainer):
    t = make_trainer(n_classes=2)
    t.network = FixedProbabilities(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    loss, acc = t.compute_loss_and_accuracy(torch.zeros(2, 1), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    loss = float(loss.detach())
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(1e-9) / 2, rel=1e-5)
    assert acc == 0.5


def test_compute_gradient_norm_reads_the_grad_buffers(make_trainer):
    t = make_trainer()
    with pytest.raises(ValueError, match="no gradients"):
        S.Trainer.compute_gradient_norm(t.network)
    loss, _ = t.compute_loss_and_accuracy(t.train[0][:32], t.one_hot(t.train[1][:32]))
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in t.network.parameters()]).norm()
    assert S.Trainer.compute_gradient_norm(t.network) == pytest.approx(float(expected), rel=1e-5)  # float32 sums


# ---------------------------------------------------------------- training

def test_training_step_leaves_the_batch_gradient_and_updates(make_trainer):
    t = make_trainer(lr=1e-3)
    X, Y = t.train[0][:64], t.one_hot(t.train[1][:64])
    reference = copy.deepcopy(t.network)
    reference_loss(reference(X), Y).backward()
    before = [p.detach().clone() for p in t.network.parameters()]
    norm = t.training_step(X, Y)
    assert isinstance(norm, float)
    assert norm == pytest.approx(S.Trainer.compute_gradient_norm(t.network), rel=1e-6)
    for p, r, b in zip(t.network.parameters(), reference.parameters(), before):
        assert torch.allclose(p.grad, r.grad, rtol=1e-5, atol=1e-7)
        assert not torch.equal(p.detach(), b)
    assert all(int(s["step"]) == 1 for s in t.optimizer.state.values())


def template_training_step(network, optimizer, X, Y):
    """The homework's training step, written the template's way with torch.optim.Adam."""
    optimizer.zero_grad()
    reference_loss(network(X), Y).backward()
    optimizer.step()
    return float(torch.cat([p.grad.flatten() for p in network.parameters()]).norm())


@torch.no_grad()
def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("network_type,config", [
    ("mlp", S.NetworkConfiguration(dense_hiddens=(64, 32))),
    ("cnn", S.NetworkConfiguration((4, 8), (3, 3), (1, 1), (1, 0), (16,))),
])
def test_training_steps_track_torch_adam(make_trainer, network_type, config):
    t = make_trainer(network_type=network_type, net_config=config, lr=1e-3)
    reference = copy.deepcopy(t.network)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    X, Y = t.train[0], t.one_hot(t.train[1])
    for step in range(100):
        batch = slice((step * 32) % 288, (step * 32) % 288 + 32)
        norm = t.training_step(X[batch], Y[batch])
        reference_norm = template_training_step(reference, optimizer, X[batch], Y[batch])
        assert norm == pytest.approx(reference_norm, rel=1e-4, abs=1e-6)
        assert max_difference(t.network, reference) <= 1e-6, f"step {step}"


def test_optimizer_step_after_backward_shares_state_with_training_step(make_trainer):
    t = make_trainer(lr=1e-3)
    reference = copy.deepcopy(t.network)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    X, Y = t.train[0][:64], t.one_hot(t.train[1][:64])
    t.training_step(X, Y)
    template_training_step(reference, optimizer, X, Y)
    for group in (*t.optimizer.param_groups, *optimizer.param_groups):
        group["lr"] = 3e-3  # a schedule changing the rate must be honoured
    for _ in range(2):  # the way code outside the Trainer trains
        t.optimizer.zero_grad()
        loss, _ = t.compute_loss_and_accuracy(X, Y)
        loss.backward()
        t.optimizer.step()
        template_training_step(reference, optimizer, X, Y)
    assert all(int(s["step"]) == 3 for s in t.optimizer.state.values())
    assert max_difference(t.network, reference) <= 1e-6


def test_optimizer_steps_parameters_that_missed_a_gradient_like_torch_adam(make_trainer):
    t = make_trainer(lr=1e-3, net_config=S.NetworkConfiguration(dense_hiddens=(16,)))
    reference = copy.deepcopy(t.network)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    X, Y = t.train[0][:64], t.one_hot(t.train[1][:64])
    for step in range(3):
        for network, opt in ((t.network, t.optimizer), (reference, optimizer)):
            opt.zero_grad()
            reference_loss(network(X), Y).backward()
            if step == 0:
                list(network.parameters())[-1].grad = None  # the output bias skips a step
            opt.step()
    assert [int(t.optimizer.state[p]["step"]) for p in t.network.parameters()] == [3, 3, 3, 2]
    assert max_difference(t.network, reference) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimizer_steps_equal_torch_adam_bit_for_bit(make_trainer, dtype):
    """The same gradients into both optimizers give the same parameters and moments,
    to the last bit, through learning-rate changes (to 0, where a schedule may end, too)
    and a parameter that misses a step."""
    t = make_trainer(network_type="cnn", net_config=S.NetworkConfiguration((4, 8), (3, 3), (1, 1), (1, 0), (16,)))
    network = t.network.to(dtype)
    reference = copy.deepcopy(network)
    ours = S.FunctionalAdam(network.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    theirs = torch.optim.Adam(reference.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        if step in (20, 30, 35):
            for group in (*ours.param_groups, *theirs.param_groups):
                group["lr"] = {20: 1e-4, 30: 0.0, 35: 2e-4}[step]
        for p, q in zip(network.parameters(), reference.parameters()):
            # gradients from 1e-12 to 1: Adam's moments span many binades
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype) * 10.0 ** -torch.randint(0, 13, p.shape, generator=g)
            q.grad = p.grad.clone()
        if step == 3:  # the output bias misses a step: its step count falls behind the others'
            list(network.parameters())[-1].grad = list(reference.parameters())[-1].grad = None
        ours.step()
        theirs.step()
        for p, q in zip(network.parameters(), reference.parameters()):
            assert torch.equal(p, q), f"step {step}"
            assert torch.equal(ours.state[p]["exp_avg_sq"], theirs.state[q]["exp_avg_sq"]), f"step {step}"
    assert [int(ours.state[p]["step"]) for p in network.parameters()][-1] == 39


def test_network_configuration_annotations_are_types_as_in_the_template():
    assert S.NetworkConfiguration.__annotations__ == {field: Tuple[int, ...] for field in S.NetworkConfiguration._fields}


def test_the_optimizer_takes_the_learning_rates_torch_adam_takes():
    params = [torch.nn.Parameter(torch.ones(3))]
    for lr in (0.0, torch.tensor(1e-3)):
        torch.optim.Adam(params, lr=lr)
        S.FunctionalAdam(params, lr=lr)
    for lr in (-1e-3, math.nan):
        with pytest.raises(ValueError):
            torch.optim.Adam(params, lr=lr)
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            S.FunctionalAdam(params, lr=lr)


def test_a_copied_or_pickled_optimizer_keeps_stepping(make_trainer):
    t = make_trainer(lr=1e-3)
    X, Y = t.train[0][:32], t.one_hot(t.train[1][:32])
    t.training_step(X, Y)
    for clone in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        clone.training_step(X, Y)
        assert all(int(s["step"]) == 2 for s in clone.optimizer.state.values())
    t.training_step(X, Y)
    assert max_difference(t.network, clone.network) == 0.0


def test_training_step_refuses_a_batch_with_nan_and_leaves_the_parameters(make_trainer):
    t = make_trainer(lr=1e-3)
    X, Y = t.train[0][:32].clone(), t.one_hot(t.train[1][:32])
    X[3, 0, 5, 5] = float("nan")
    before = [p.detach().clone() for p in t.network.parameters()]
    with pytest.raises(ValueError, match="^training_step batch X contains NaN"):
        t.training_step(X, Y)
    assert all(torch.equal(p, b) for p, b in zip(t.network.parameters(), before))
    assert not t.optimizer.state


def test_optimizer_refuses_adam_options_it_does_not_implement(make_trainer):
    t = make_trainer()
    t.optimizer.param_groups[0]["weight_decay"] = 0.1
    loss, _ = t.compute_loss_and_accuracy(t.train[0][:8], t.one_hot(t.train[1][:8]))
    loss.backward()
    with pytest.raises(ValueError, match="weight_decay=0"):
        t.optimizer.step()


def test_optimizer_state_dicts_are_interchangeable_with_torch_adam(make_trainer):
    t = make_trainer(lr=1e-3)
    reference = copy.deepcopy(t.network)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    X, Y = t.train[0][:64], t.one_hot(t.train[1][:64])
    for _ in range(3):
        template_training_step(reference, optimizer, X, Y)
    t.network.load_state_dict(reference.state_dict())
    # a copy: like torch.optim.Adam's, the loaded state is updated in place, not duplicated
    t.optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    t.training_step(X, Y)
    template_training_step(reference, optimizer, X, Y)
    assert max_difference(t.network, reference) <= 1e-6


def test_evaluate_accepts_labels_or_one_hot(make_trainer):
    t = make_trainer()
    X, y = t.valid
    loss, acc = t.evaluate(X, y)
    loss_oh, acc_oh = t.evaluate(X, t.one_hot(y))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert isinstance(acc, float)
    assert (float(loss), acc) == (float(loss_oh), acc_oh)
    loss_int, acc_int = t.evaluate(X, nn.functional.one_hot(y, 10))  # integer one-hot rows
    assert (float(loss_int), acc_int) == (float(loss), acc)
    with torch.no_grad():
        probs = t.network(X)
    assert float(loss) == pytest.approx(float(reference_loss(probs, t.one_hot(y))), rel=1e-5)
    assert acc == pytest.approx(float((probs.argmax(1) == y).double().mean()))
    assert loss.dtype == torch.float32
    # the loss comes in the dtype the template's computed one has: the network's and the targets'
    for dtype, expected_dtype in ((torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        t.network.to(dtype)
        loss_in, _ = t.evaluate(X.to(dtype), y)
        expected, _ = t.compute_loss_and_accuracy(X.to(dtype), t.one_hot(y).to(expected_dtype))
        assert loss_in.dtype == expected.dtype == expected_dtype
        assert float(loss_in) == pytest.approx(float(expected.detach()), rel=1e-12 if dtype == torch.float64 else 1e-6)
    t.network = nn.Sequential(nn.Flatten(), nn.Softmax(dim=1))  # no parameters: a float32 loss all the same
    loss_bare, _ = t.evaluate(X[:, :, 0, :10].reshape(len(X), 1, 1, 10), y)
    assert loss_bare.dtype == torch.float32


def test_train_loop_logs_and_walks_the_minibatches_in_order(make_trainer, capsys):
    t = make_trainer(lr=1e-3, batch_size=128)
    X_train = t.train[0]
    seen, norms = [], []
    training_step = t.training_step

    def recording_step(X_batch, y_batch):
        seen.append(X_batch)
        norms.append(training_step(X_batch, y_batch))
        return norms[-1]

    t.training_step = recording_step
    initial = t.evaluate(*t.valid)
    logs = t.train_loop(4)
    assert logs is t.train_logs
    assert {k: len(v) for k, v in logs.items()} == {
        "train_accuracy": 5, "validation_accuracy": 5, "train_loss": 5, "validation_loss": 5,
        "train_gradient_norm": 4}
    assert [len(b) for b in seen] == [128, 128, 44] * 4
    assert torch.equal(torch.cat(seen[:3]), X_train)
    assert logs["train_gradient_norm"] == norms[2::3]
    assert logs["validation_loss"][0] == pytest.approx(float(initial[0]), rel=1e-5)
    assert logs["validation_accuracy"][0] == pytest.approx(initial[1])
    assert all(isinstance(v, float) for values in logs.values() for v in values)
    assert logs["validation_accuracy"][-1] >= 0.8 > logs["validation_accuracy"][0]
    assert "4/4" in capsys.readouterr().err  # the tqdm bar


def test_cnn_trains(make_trainer):
    config = S.NetworkConfiguration((4, 8), (3, 3), (1, 1), (0, 0), (32,))
    t = make_trainer(network_type="cnn", net_config=config, lr=3e-3, batch_size=32)
    logs = t.train_loop(3)
    assert logs["validation_loss"][-1] < logs["validation_loss"][0]


# ---------------------------------------------------------------- equivariance

def test_equivariance_figures(make_trainer, tmp_path, monkeypatch):
    t = make_trainer(network_type="cnn", normalization=False)
    torch.manual_seed(3)  # the small conv net draws its weights from the global generator
    monkeypatch.setattr(S, "FIGURES_DIR", tmp_path / "figures")
    arrays = t.test_equivariance()
    assert list(arrays) == ["original", "features", "shift_difference", "rotation_difference"]
    assert [a.shape for a in arrays.values()] == [(28, 28), (24, 24), (24, 24), (24, 24)]
    assert np.array_equal(arrays["original"], (t.train[0][0][0] / 255.).numpy())
    assert arrays["features"].max() > 0, "a dead feature map would make the checks below vacuous"
    assert (arrays["shift_difference"] >= 0).all() and (arrays["rotation_difference"] >= 0).all()
    # convolution commutes with shifts: only the border the shift brings in differs
    assert np.abs(arrays["shift_difference"][5:, 5:]).max() < 1e-6
    for name in arrays:
        assert (tmp_path / "figures" / f"equivariance_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    t.test_equivariance()  # by default: the current folder
    assert len(list(tmp_path.glob("equivariance_*.png"))) == 4


# ---------------------------------------------------------------- standalone and real data

@pytest.mark.skipif(SOLUTION_ENV not in os.environ, reason="only when testing an exported solution file")
def test_exported_solution_runs_without_fn_trainer():
    assert Path(S.__file__).resolve() == Path(os.environ[SOLUTION_ENV]).resolve()
    for name in ("fn_trainer", "compat"):
        with pytest.raises(ImportError):
            importlib.import_module(name)
        assert name not in sys.modules


@pytest.mark.realdata
def test_default_mlp_reaches_80_percent_in_one_epoch(real_data_root):
    t = S.Trainer(datapath=str(real_data_root))
    logs = t.train_loop(1)
    assert logs["validation_accuracy"][-1] >= 0.80


def _penalty(trainer) -> torch.Tensor:
    return 100.0 * sum((p ** 2).sum() for p in trainer.network.parameters())


@pytest.mark.parametrize("how", ["subclass", "instance", "class patch"])
def test_training_step_and_evaluate_use_an_overriding_compute_loss_and_accuracy(make_trainer, how, monkeypatch):
    """The homework's methods build on each other: a penalty added there is trained and evaluated."""
    torch.manual_seed(0)
    plain = make_trainer(lr=1e-3)
    start = copy.deepcopy(plain.network)
    X, Y = plain.train[0][:32], plain.one_hot(plain.train[1][:32])
    plain_loss = float(plain.evaluate(X, Y)[0])
    plain.training_step(X, Y)  # before a patch of the class, which every trainer would see
    torch.manual_seed(0)
    if how == "subclass":
        class Penalised(S.Trainer):
            def compute_loss_and_accuracy(self, X, y):
                loss, acc = super().compute_loss_and_accuracy(X, y)
                return loss + _penalty(self), acc
        penalised = Penalised(datapath=plain.datapath, lr=1e-3)
    elif how == "instance":
        penalised = make_trainer(lr=1e-3)
        template = penalised.compute_loss_and_accuracy
        penalised.compute_loss_and_accuracy = lambda X, y: (template(X, y)[0] + _penalty(penalised), template(X, y)[1])
    else:  # unittest.mock.patch.object's way, or a notebook's
        penalised = make_trainer(lr=1e-3)
        template = S.Trainer.compute_loss_and_accuracy

        def patched(self, X, y):
            loss, acc = template(self, X, y)
            return loss + _penalty(self), acc
        monkeypatch.setattr(S.Trainer, "compute_loss_and_accuracy", patched)
    assert max_difference(start, penalised.network) == 0.0
    with torch.no_grad():
        penalty = float(_penalty(penalised))
    loss, _ = penalised.evaluate(X, Y)
    assert float(loss) == pytest.approx(plain_loss + penalty, rel=1e-6)
    penalised.training_step(X, Y)
    # the penalty's gradient 200 p moves every weight; Adam's first step is lr in size either way,
    # its sign the gradient's: the penalty flips the signs where it dominates
    assert max_difference(plain.network, penalised.network) > 1e-4


def test_a_subclass_create_cnn_decides_for_itself_whether_its_kernels_fit(make_trainer):
    """The template's __init__ only calls create_cnn: its own size check is for its own layers."""
    config = S.NetworkConfiguration((4, 4, 4), (9, 9, 9), (1, 1, 1), (0, 0, 0), ())
    with pytest.raises(ValueError, match="conv layer 2 has kernel_size 9"):
        make_trainer(network_type="cnn", net_config=config)

    class SameSize(S.Trainer):
        @staticmethod
        def create_cnn(in_channels, net_config, n_classes, activation):
            layers, channels = [], in_channels
            for out, k in zip(net_config.n_channels, net_config.kernel_sizes):  # padded to keep the map's size
                layers += [nn.Conv2d(channels, out, k, padding=k // 2), activation, nn.MaxPool2d(2)]
                channels = out
            return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 3 * 3, n_classes), nn.Softmax(dim=1))

    trainer = SameSize(network_type="cnn", net_config=config, datapath=make_trainer().datapath)
    assert trainer.network(trainer.train[0][:2]).shape == (2, 10)
    with pytest.MonkeyPatch.context() as m:  # the class patched rather than subclassed
        m.setattr(S.Trainer, "create_cnn", staticmethod(SameSize.create_cnn))
        assert make_trainer(network_type="cnn", net_config=config).network(trainer.train[0][:2]).shape == (2, 10)


@pytest.mark.parametrize("method", ["compute_loss_and_accuracy", "training_step", "evaluate"])
def test_one_hot_targets_are_taken_at_their_width_as_the_template_takes_them(make_trainer, method):
    """A grader's own tiny network of 3 classes on a bare Trainer: no n_classes is read."""
    torch.manual_seed(0)
    trainer = S.Trainer.__new__(S.Trainer)
    trainer.network = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Softmax(dim=1))
    trainer.optimizer, trainer.epsilon = S.FunctionalAdam(trainer.network.parameters(), lr=1e-3), S.EPSILON
    X, y = torch.randn(8, 1, 3, 4), nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    result = getattr(trainer, method)(X, y)
    probs = trainer.network(X) if method != "training_step" else None
    if method == "compute_loss_and_accuracy":
        expected = -(y * probs.clamp(S.EPSILON, 1 - S.EPSILON).log()).sum(1).mean()
        assert float(result[0].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    elif method == "training_step":
        assert math.isfinite(result) and result > 0
    else:
        assert float(result[0]) == pytest.approx(float(trainer.compute_loss_and_accuracy(X, y)[0].detach()), rel=1e-6)
