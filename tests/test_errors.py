"""Bad input fails early with a ValueError/TypeError that names the argument."""
import errno
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import (
    DatasetError,
    NetworkConfiguration,
    adam,
    build_network,
    compile_evaluate,
    compile_step,
    cross_entropy,
    flush_denormals,
    gradient_norm,
    jacobian_norm,
    load_fashion_mnist,
    make_evaluate,
    make_step,
    one_hot,
)
from fn_trainer.core.checks import check_int, check_positive_float, check_positive_int, shown
from fn_trainer.core.optim import scheduled_lr
from fn_trainer.core.paths import ensure_writable_dir, safe_path
from fn_trainer.training.fit import fit

SHAPE = (1, 8, 8)




def tiny(n=40, n_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def run_fit(train=None, valid=None, **kw):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    opt = adam(1e-2)
    params = net.init(0)
    train = tiny() if train is None else train
    valid = tiny(20, seed=1) if valid is None else valid
    kw = {"epochs": 1, "batch_size": 16, "progress": False, **kw}
    return fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params),
               train, valid, **kw)


# --- networks -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kw,match", [
    (ValueError, {"network_type": "transformer"}, "network_type"),
    (ValueError, {"activation_name": "gelu"}, "activation"),
    (ValueError, {"config": NetworkConfiguration(n_channels=(8, 8), kernel_sizes=(3,))}, "same length"),
    (ValueError, {"config": NetworkConfiguration(n_channels=(0, 8, 8))}, r"n_channels\[0\]"),
    (ValueError, {"config": NetworkConfiguration(kernel_sizes=(3, -1, 3))}, r"kernel_sizes\[1\]"),
    (ValueError, {"config": NetworkConfiguration(strides=(1, 1, 0))}, r"strides\[2\]"),
    (ValueError, {"config": NetworkConfiguration(paddings=(0, -1, 0))}, r"paddings\[1\]"),
    (ValueError, {"config": NetworkConfiguration(dense_hiddens=(256, 0))}, r"dense_hiddens\[1\]"),
    (TypeError, {"config": NetworkConfiguration(dense_hiddens=(2.5,))}, r"dense_hiddens\[0\]"),
    (TypeError, {"config": NetworkConfiguration(dense_hiddens=256)}, "dense_hiddens"),
    (TypeError, {"config": (1, 2)}, "net_config"),
    (ValueError, {"input_shape": (1, 28)}, "input_shape"),
    (ValueError, {"input_shape": (0, 28, 28)}, r"input_shape\[0\]"),
    (ValueError, {"n_classes": 0}, "n_classes"),
])
def test_build_network_rejects_bad_arguments(kind, kw, match):
    kw.setdefault("network_type", "cnn")
    with pytest.raises(kind, match=match):
        build_network(**kw)


@pytest.mark.parametrize("config,match", [
    (NetworkConfiguration(kernel_sizes=(3, 3, 9)), r"conv layer 2 has kernel_size 9 .* 5x5"),
    (NetworkConfiguration(kernel_sizes=(29, 3, 3)), r"conv layer 0 has kernel_size 29 .* 28x28"),
    (NetworkConfiguration(strides=(30, 1, 1)), r"conv layer 0 outputs a 1x1 feature map"),
    (NetworkConfiguration(strides=(20, 1, 1)), r"conv layer 1 has kernel_size 3 .* 1x1"),
])
def test_cnn_that_shrinks_a_feature_map_to_nothing_names_the_layer_and_sizes(config, match):
    with pytest.raises(ValueError, match=match):
        build_network("cnn", config)


@pytest.mark.parametrize("network_type", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(4, 28, 28), (4, 3, 28, 28), (4, 1, 27, 28), (4, 1, 1, 28, 28)])
def test_apply_names_the_expected_input_shape(network_type, shape):
    net = build_network(network_type, NetworkConfiguration((4,), (3,), (1,), (0,), (8,)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 28, 28\)"):
        net.apply(net.init(0), torch.zeros(shape))


@pytest.mark.parametrize("n_targets", [3, 6])
def test_evaluate_refuses_targets_of_another_length_than_x(n_targets):
    # 4 rows in chunks of 2: extra targets would be dropped without a word, too few fail deep in the loss
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    evaluate = make_evaluate(net.apply, chunk_size=2)
    with pytest.raises(ValueError, match=rf"^evaluate's targets must be one-hot \(N, C\) with N = 4 rows of X, got "
                                         rf"shape \({n_targets}, 10\) torch.float32$"):
        evaluate(net.init(0), torch.randn(4, 1, 28, 28), one_hot(torch.arange(n_targets) % 10, 10))


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
def test_init_refuses_a_dtype_that_is_not_real_floating(dtype):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    with pytest.raises(TypeError, match=rf"^dtype must be a real floating dtype such as torch.float32, got {dtype}$"):
        net.init(0, dtype=dtype)


def test_training_refuses_float16_parameters_which_give_nan_at_the_first_step():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    params, opt = net.init(0, dtype=torch.float16), adam(1e-3)
    X, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    with pytest.raises(TypeError, match=r"^params must not be float16 for training: Adam's eps \(1e-8\)"):
        fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), (X, y), (X, y),
            epochs=1, batch_size=4, progress=False)


def test_a_float16_population_is_refused_as_float16_not_for_its_members_eps():
    from fn_trainer import Member, fit_population

    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    X, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    with pytest.raises(TypeError, match=r"^dtype must not be float16 for training: Adam's eps \(1e-8\)"):
        fit_population(net, [Member()], (X, y), (X, y), epochs=1, dtype=torch.float16, progress=False)


def test_make_step_refuses_what_it_cannot_call_when_made():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    with pytest.raises(TypeError, match="^apply must be a function, got NoneType$"):
        make_step(None, adam())
    with pytest.raises(TypeError, match="^loss must be a function, got str$"):
        make_step(net.apply, adam(), loss="cross_entropy")
    with pytest.raises(TypeError, match=r"^optimizer must have an update\(grads, state, params\), as adam\(\) gives"):
        make_step(net.apply, None)


@pytest.mark.parametrize("loss, found", [(lambda probs, t: 3.0, "float"),
                                         (lambda probs, t: -(t * probs.log()).sum(-1), "shape (4,) torch.float32"),
                                         (lambda probs, t: (probs.argmax(-1) == t.argmax(-1)).sum(), "shape () torch.int64")])
def test_a_loss_that_is_no_one_element_floating_tensor_is_named(loss, found):
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    params, opt = net.init(0), adam()
    step = make_step(net.apply, opt, loss=loss)
    batch = (torch.rand(4, 1, 28, 28), one_hot(torch.arange(4), 10))
    with pytest.raises(ValueError, match=rf"^loss must return a floating tensor of one element \(the batch's loss\), "
                                         rf"got {re.escape(found)}$"):
        step(params, opt.init(params), batch)


def test_a_loss_of_shape_1_trains_as_its_one_element():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(4,)))
    params, opt = net.init(0), adam()
    batch = (torch.rand(4, 1, 28, 28), one_hot(torch.arange(4), 10))
    plain = make_step(net.apply, opt)(params, opt.init(params), batch)
    shaped = make_step(net.apply, opt, loss=lambda p, t: cross_entropy(p, t).reshape(1))(params, opt.init(params), batch)
    assert all(torch.equal(plain[0][k], shaped[0][k]) for k in params)


# --- optimizer ------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf, -math.inf])
def test_adam_rejects_learning_rates_that_are_not_positive_and_finite(lr):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        adam(lr)


@pytest.mark.parametrize("lr", [-1e-3, math.nan, math.inf])
def test_a_scheduled_learning_rate_is_finite_and_not_negative(lr):
    state = adam(1e-3).init({})
    assert float(scheduled_lr(state, 0.0).lr) == 0.0 and float(scheduled_lr(state, torch.tensor(0.5)).lr) == 0.5
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        scheduled_lr(state, lr)


@pytest.mark.parametrize("lr", ["0.1", None, True, torch.tensor(0.1)])
def test_adam_rejects_learning_rates_that_are_not_numbers(lr):
    with pytest.raises(TypeError, match="lr"):
        adam(lr)


# --- fit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,kind,match", [
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"batch_size": -3}, ValueError, "batch_size"),
    ({"batch_size": 16.0}, TypeError, "batch_size"),
    ({"epochs": -1}, ValueError, "epochs must be an int >= 0"),
    ({"epochs": "3"}, TypeError, "epochs"),
    ({"n_classes": 0}, ValueError, "n_classes"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"resume": True}, ValueError, "resume=True needs a checkpoint"),
])
def test_fit_rejects_bad_settings(kw, kind, match):
    with pytest.raises(kind, match=match):
        run_fit(**kw)


def test_fit_refuses_parameters_without_values():
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)), input_shape=SHAPE)
    opt = adam(1e-2)
    params = {k: v.to("meta") for k, v in net.init(0).items()}
    with pytest.raises(ValueError, match=r"^params\['1.weight'\] is on the meta device, which holds no values"):
        fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), tiny(), tiny(20, seed=1),
            epochs=1, batch_size=16, progress=False)


def _labels(y):
    return tiny()[0], y


@pytest.mark.parametrize("train,kind,match", [
    (_labels(torch.full((40,), 10)), ValueError, r"train y must lie in \[0, 10\), got values in \[10, 10\]"),
    (_labels(torch.full((40,), -1)), ValueError, r"train y must lie in \[0, 10\)"),
    (_labels(torch.zeros(40)), ValueError, "train y must have an integer dtype"),
    (_labels(torch.zeros(39, dtype=torch.long)), ValueError, "train y must have one entry per sample"),
    (_labels(torch.zeros(40, 3)), ValueError, r"train y must be \(N,\) integer labels or \(N, 10\)"),
    ((torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long)), ValueError, "N >= 1"),
    ((torch.zeros(40, *SHAPE, dtype=torch.long), tiny()[1]), TypeError, "train X must have a floating dtype"),
    ([tiny()[0]], TypeError, r"train must be a pair \(X, y\)"),
    ((tiny()[0].numpy(), tiny()[1]), TypeError, "train X must be a torch.Tensor"),
    ((tiny()[0].to("meta"), tiny()[1]), ValueError, "^train X is on the meta device, which holds no values"),
    ((tiny()[0], tiny()[1].to("meta")), ValueError, "^train y is on the meta device, which holds no values"),
])
def test_fit_rejects_bad_training_data(train, kind, match):
    with pytest.raises(kind, match=match):
        run_fit(train=train)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["train", "valid"])
def test_fit_rejects_non_finite_inputs(value, which):
    X, y = tiny()
    X[3, 0, 2, 5] = value
    with pytest.raises(ValueError, match=f"{which} X contains NaN or infinite values"):
        run_fit(**{which: (X, y)})


def test_fit_rejects_empty_validation_data():
    with pytest.raises(ValueError, match="valid X must be"):
        run_fit(valid=(torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long)))


@pytest.mark.parametrize("shape", [(20, 2, 8, 8), (20, 1, 8, 9)])
def test_fit_rejects_validation_data_shaped_unlike_training_data(shape):
    with pytest.raises(ValueError, match="same sample shape"):
        run_fit(valid=(torch.zeros(shape), torch.zeros(20, dtype=torch.long)))


def test_fit_names_the_network_input_shape_for_inputs_of_the_wrong_channel_count():
    X = torch.zeros(40, 3, 8, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\).*got \(\d+, 3, 8, 8\)"):
        run_fit(train=(X, tiny()[1]), valid=(X[:20], tiny()[1][:20]))


def test_fit_names_an_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="output folder .*file.* cannot be written"):
        run_fit(checkpoint=blocker / "run" / "ckpt.pt")


def test_fit_rejects_a_config_that_cannot_be_stored_safely(tmp_path):
    with pytest.raises(TypeError, match=r"config\['fn'\]"):
        run_fit(checkpoint=tmp_path / "c.pt", config={"fn": print})


def test_one_hot_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        one_hot(torch.tensor([0, 3]), 3)


# --- data -----------------------------------------------------------------------------------

RAW = ("FashionMNIST", "raw")


@pytest.fixture
def data_copy(fake_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fake_data_root, root)
    return root


def test_missing_idx_file_is_named(data_copy):
    (data_copy.joinpath(*RAW) / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte") as e:
        load_fashion_mnist(data_copy, download=False)
    assert isinstance(e.value, ValueError)


def test_truncated_idx_file_is_named(data_copy):
    path = data_copy.joinpath(*RAW) / "train-images-idx3-ubyte"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(DatasetError, match=f"{path}.* truncated or corrupt: {size - 100} bytes"):
        load_fashion_mnist(data_copy, download=False)


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"])
def test_corrupt_idx_header_is_named(data_copy, name):
    path = data_copy.joinpath(*RAW) / name
    data = bytearray(path.read_bytes())
    data[:4] = b"\x89PNG"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"{name} is not an IDX file"):
        load_fashion_mnist(data_copy, download=True)  # present but corrupt: never downloaded over


def test_empty_idx_file_is_named(data_copy):
    path = data_copy.joinpath(*RAW) / "train-labels-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        load_fashion_mnist(data_copy, download=False)


# --- paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "../escape", "/etc/passwd", "a\\b", "x\0y"])
def test_safe_path_rejects_names_that_are_not_a_single_component(tmp_path, name):
    with pytest.raises(ValueError, match="name must be a single file or folder name"):
        safe_path(tmp_path, name)


def test_safe_path_rejects_non_strings(tmp_path):
    with pytest.raises(TypeError, match="name must be a str"):
        safe_path(tmp_path, Path("x"))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=12))
def test_safe_path_never_leaves_its_root(name):
    root = Path("/tmp/fn-root")
    try:
        path = safe_path(root, name)
    except ValueError:
        return
    assert path.parent == root
    assert Path(os.path.normpath(path)).parent == root


def test_ensure_writable_dir_creates_nested_folders(tmp_path):
    folder = ensure_writable_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_ensure_writable_dir_names_a_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"output folder '.*file/sub' cannot be written"):
        ensure_writable_dir(tmp_path / "file" / "sub")


def test_ensure_writable_dir_names_a_read_only_folder(tmp_path, monkeypatch):
    # the failed write simulated at the system call: a real read-only folder stops no one
    # running as root, which is how CI runs
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if Path(path).parent == tmp_path and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(ValueError) as err:
        ensure_writable_dir(tmp_path)
    assert str(err.value) == f"output folder {str(tmp_path)!r} cannot be written: Permission denied"
    assert list(tmp_path.iterdir()) == []


# --- argument checks ------------------------------------------------------------------------

@given(st.integers(-10**6, 10**6), st.integers(-5, 5))
def test_check_positive_int_accepts_exactly_ints_at_or_above_minimum(value, minimum):
    if value >= minimum:
        assert check_positive_int("k", value, minimum=minimum) == value
    else:
        with pytest.raises(ValueError, match=f"k must be an int >= {minimum}"):
            check_positive_int("k", value, minimum=minimum)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_positive_float_accepts_exactly_positive_finite_numbers(value):
    if math.isfinite(value) and value > 0:
        assert check_positive_float("lr", value) == value
    else:
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            check_positive_float("lr", value)


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_integer_checks_reject_non_integers(value):
    with pytest.raises(TypeError, match="k must be an int"):
        check_int("k", value)
    with pytest.raises(TypeError, match="k must be an int"):
        check_positive_int("k", value)


def test_integer_checks_accept_numpy_integers():
    import numpy as np
    assert check_positive_int("k", np.int64(3)) == 3 and type(check_int("k", np.int32(-2))) is int


@pytest.mark.parametrize("make", [lambda size: make_evaluate(lambda p, x: x, chunk_size=size),
                                  lambda size: compile_evaluate(lambda p, x: x, chunk_size=size)])
def test_an_evaluation_chunk_of_no_rows_is_refused_naming_it(make):
    with pytest.raises(ValueError, match="^chunk_size must be"):
        make(0)


@pytest.mark.parametrize("make, match", [
    (lambda: make_evaluate(None), "^apply must be a function, got NoneType$"),
    (lambda: make_evaluate(lambda p, x: x, loss=None), "^loss must be a function, got NoneType$"),
    (lambda: gradient_norm(3, torch.ones(2)), "^f must be a function, got int$"),
    (lambda: jacobian_norm(None, torch.ones(2)), "^f must be a function, got NoneType$"),
    (lambda: compile_step("step"), "^step must be a function, got str$"),
    (lambda: compile_evaluate(None), "^apply must be a function, got NoneType$"),
    (lambda: compile_evaluate(lambda p, x: x, eager=1), "^eager must be a function, got int$"),
])
def test_what_is_called_later_is_named_when_it_cannot_be_called(make, match):
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize("value, text", [
    (torch.tensor(3.0), "tensor(3.)"),  # one value: its repr
    (np.float64(2.5), "np.float64(2.5)"),
    (torch.zeros(3, 4), "shape (3, 4) torch.float32"),  # several: the shape, not lines of values
    (np.zeros((2, 3)), "shape (2, 3) float64"),
    (torch.Tensor, "<class 'torch.Tensor'>"),  # the class: its .shape is no shape
    ("3   ", "'3   '"),  # a string as it is
    (list(range(10)), "[0, 1, 2, 3, ...]"),
])
def test_a_value_in_a_message_is_shown_on_one_short_line(value, text):
    assert shown(value) == text


def test_numpys_bools_set_the_flush_of_subnormals():
    assert flush_denormals(np.bool_(False)) in (True, False)  # off, as every process starts
