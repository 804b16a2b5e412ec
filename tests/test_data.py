import shutil

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from fn_trainer import DatasetError, load_fashion_mnist, normalize, standardizer
from fn_trainer.data import IDX_FILES, raw_folder


def test_loads_the_homework_splits(fake_data_root):
    splits = load_fashion_mnist(fake_data_root, download=False)
    assert splits.train.X.shape == (300, 1, 28, 28)
    assert splits.valid.X.shape == (2000, 1, 28, 28)
    assert splits.test.X.shape == (100, 1, 28, 28)
    for s in splits:
        assert s.X.dtype == torch.float32 and s.y.dtype == torch.int64
        assert 0 <= s.X.min() and s.X.max() <= 255 and s.X.max() > 1
    # validation is the first 2000 test images, test the rest, in file order
    from torchvision.datasets import FashionMNIST
    test = FashionMNIST(str(fake_data_root), train=False)
    assert torch.equal(splits.valid.y, test.targets[:2000])
    assert torch.equal(splits.test.X, test.data[2000:].view(-1, 1, 28, 28).float())


def test_missing_files_name_the_folder_and_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(tmp_path, download=False)
    message = str(err.value)
    assert str(raw_folder(tmp_path)) in message
    assert all(name in message for name in IDX_FILES)


def test_truncated_file_is_named(tmp_path, fake_data_root):
    root = tmp_path / "copy"
    shutil.copytree(fake_data_root, root)
    path = raw_folder(root) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        load_fashion_mnist(root, download=False)


@pytest.mark.realdata
def test_real_data_set(real_data_root):
    splits = load_fashion_mnist(real_data_root, download=False)
    assert [len(s.y) for s in splits] == [60000, 2000, 8000]
    assert splits.train.X.mean().item() == pytest.approx(72.94, abs=0.01)


features = arrays(np.float64, st.tuples(st.integers(3, 30), st.integers(1, 6)),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))


def _split(a: np.ndarray):
    return torch.from_numpy(a), torch.zeros(a.shape[0], dtype=torch.int64)


@settings(deadline=None)
@given(features)
def test_training_features_get_mean_0_std_1(X):
    train, _, _ = normalize(_split(X), _split(X[:2]), _split(X[:1]))
    Z = train[0]
    varying = torch.from_numpy(X.std(0, ddof=1) > 1e-6 * (1 + np.abs(X).max(0)))
    assert torch.isfinite(Z).all()
    assert torch.allclose(Z.mean(0), torch.zeros(X.shape[1], dtype=Z.dtype), atol=1e-9)
    assert torch.allclose(Z.std(0)[varying], torch.ones(int(varying.sum()), dtype=Z.dtype), atol=1e-9)


# every element drawn (no fill value): columns that vary, rarely a constant one
varying_features = arrays(np.float64, st.tuples(st.integers(3, 30), st.integers(1, 6)),
                          elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), fill=st.nothing())


@settings(deadline=None)
@given(varying_features, st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_normalisation_is_invariant_to_affine_rescaling(X, a, b):
    # a (nearly) constant column is only centred, and on other data keeps a scale of a: not invariant
    assume((X.std(0, ddof=1) > 1e-3 * (1 + np.abs(X).max(0))).all())
    X_valid = X[::-1].copy() + 1.0
    plain = normalize(_split(X), _split(X_valid), _split(X))
    scaled = normalize(_split(a * X + b), _split(a * X_valid + b), _split(a * X + b))
    for p, s in zip(plain, scaled):
        assert torch.allclose(p[0], s[0], atol=1e-6, rtol=1e-6)


def test_validation_and_test_use_training_statistics():
    X_train = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    X_other = torch.tensor([[2.0, 20.0], [6.0, 40.0]])
    _, valid, test = normalize(_split(X_train.numpy()), _split(X_other.numpy()), _split(X_other.numpy()))
    assert torch.allclose(valid[0], torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert torch.equal(valid[0], test[0])


def test_constant_features_are_centred_not_divided_by_zero():
    X = torch.tensor([[5.0, 1.0], [5.0, 3.0], [5.0, 2.0]])
    mean, scale = standardizer(X)
    assert scale[0] == 1.0 and mean[0] == 5.0
    train, valid, _ = normalize((X, None), (torch.tensor([[7.0, 2.0]]), None), (X, None))
    assert torch.isfinite(train[0]).all() and (train[0][:, 0] == 0).all()
    assert valid[0][0, 0] == 2.0


def test_normalize_keeps_labels():
    y = torch.arange(3)
    X = torch.randn(3, 2)
    assert all(s[1] is y for s in normalize((X, y), (X, y), (X, y)))
