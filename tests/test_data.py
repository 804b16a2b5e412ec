import shutil

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fn_trainer import DatasetError, load_fashion_mnist, normalize
from fn_trainer.core.data import IDX_FILES, raw_folder, standardizer


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


# --- whole files validated on load, the file named ------------------------------------------

def _rewrite(root, name, array):
    from fakedata import _write_idx

    _write_idx(raw_folder(root) / name, np.asarray(array))


def _read_idx(path):
    data = path.read_bytes()
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], dtype=">u4")
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


@pytest.fixture
def data_copy(tmp_path, fake_data_root):
    root = tmp_path / "copy"
    shutil.copytree(fake_data_root, root)
    return root


@pytest.mark.parametrize("name, index, value", [
    ("train-labels-idx1-ubyte", 299, 10),     # the last training label
    ("train-labels-idx1-ubyte", 0, 255),
    ("t10k-labels-idx1-ubyte", 5, 10),        # in the validation part
    ("t10k-labels-idx1-ubyte", 2099, 17),     # in the test part, never used for training
])
def test_a_label_out_of_range_anywhere_names_the_file_and_index(data_copy, name, index, value):
    labels = _read_idx(raw_folder(data_copy) / name).copy()
    labels[index] = value
    _rewrite(data_copy, name, labels)
    with pytest.raises(DatasetError, match=f"{name} has 1 labels outside \\[0, 10\\), the first at index "
                                           f"{index}: {value}"):
        load_fashion_mnist(data_copy, download=False)


@pytest.mark.parametrize("prefix", ["train", "t10k"])
@pytest.mark.parametrize("size", [(56, 14), (14, 56), (27, 29)])
def test_images_that_are_not_28x28_name_the_file(data_copy, prefix, size):
    name = f"{prefix}-images-idx3-ubyte"
    images = _read_idx(raw_folder(data_copy) / name)
    n = images.size // (size[0] * size[1])
    _rewrite(data_copy, name, images.reshape(-1)[:n * size[0] * size[1]].reshape(n, *size))
    with pytest.raises(DatasetError, match=f"{name} holds images of {size[0]}x{size[1]} pixels"):
        load_fashion_mnist(data_copy, download=False)


@pytest.mark.parametrize("prefix, images_delta, labels_delta", [
    ("train", 0, -1), ("train", -5, 0), ("t10k", 0, 3), ("t10k", -100, 0)])
def test_image_and_label_counts_that_disagree_name_both_files(data_copy, prefix, images_delta, labels_delta):
    raw = raw_folder(data_copy)
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte")
    images = images[:len(images) + images_delta]
    labels = np.concatenate([labels, labels[:labels_delta]]) if labels_delta > 0 else labels[:len(labels) + labels_delta]
    _rewrite(data_copy, f"{prefix}-images-idx3-ubyte", images)
    _rewrite(data_copy, f"{prefix}-labels-idx1-ubyte", labels)
    with pytest.raises(DatasetError, match=f"{prefix}-images-idx3-ubyte and .*{prefix}-labels-idx1-ubyte "
                                           f"disagree: {len(images)} images but {len(labels)} labels"):
        load_fashion_mnist(data_copy, download=False)


@pytest.mark.parametrize("fault", ["label after the limit", "test label", "counts"])
def test_the_command_line_checks_whole_files_whatever_the_limit(data_copy, tmp_path, capsys, fault):
    from fn_trainer.app import cli

    raw = raw_folder(data_copy)
    if fault == "counts":
        _rewrite(data_copy, "train-labels-idx1-ubyte", _read_idx(raw / "train-labels-idx1-ubyte")[:-1])
    else:
        name = "train-labels-idx1-ubyte" if fault == "label after the limit" else "t10k-labels-idx1-ubyte"
        labels = _read_idx(raw / name).copy()
        labels[200] = 10
        _rewrite(data_copy, name, labels)
    rc = cli.main(["depth", "--data", str(data_copy), "--out", str(tmp_path / "out"), "--limit", "16",
                   "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("fn-trainer: error: data file")
    assert "-labels-idx1-ubyte" in err
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


@pytest.mark.parametrize("names", [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                   ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                                   ("train-labels-idx1-ubyte",)])
def test_a_data_file_with_no_samples_is_named(data_copy, names):
    for name in names:
        _rewrite(data_copy, name, _read_idx(raw_folder(data_copy) / name)[:0])
    with pytest.raises(DatasetError, match=f"{names[0]} holds no samples"):
        load_fashion_mnist(data_copy, download=False)


def test_torchvisions_old_processed_files_are_refused_naming_the_folder(data_copy):
    # torchvision would read them instead of the checked IDX files
    processed = data_copy / "FashionMNIST" / "processed"
    processed.mkdir()
    torch.save((["not"], ["tensors"]), processed / "training.pt")
    load_fashion_mnist(data_copy, download=False)  # one of the two: torchvision reads the IDX files
    torch.save((["not"], ["tensors"]), processed / "test.pt")
    with pytest.raises(DatasetError, match=f"{processed} holds torchvision's old training.pt and test.pt"):
        load_fashion_mnist(data_copy, download=False)


@pytest.mark.parametrize("name, index", [("train-images-idx3-ubyte", 250), ("t10k-images-idx3-ubyte", 1999),
                                         ("train-labels-idx1-ubyte", 299)])
def test_the_data_fingerprint_changes_with_any_training_or_validation_sample(data_copy, tmp_path, name, index):
    from fn_trainer.app.experiments.context import Context, Settings

    def fingerprint(root):
        return Context(Settings(data=root, out=tmp_path / "out", download=False)).fingerprint

    before = fingerprint(data_copy)
    array = _read_idx(raw_folder(data_copy) / name).copy()
    array[index] = (array[index] + 1) % 10  # an image one grey level brighter, or another label
    _rewrite(data_copy, name, array)
    assert fingerprint(data_copy) != before


def test_the_digest_is_the_one_stored_records_were_hashed_with():
    """Run records are named after a hash of the data's digest: SHA-256 over each tensor's
    shape and dtype and its values' bytes, in order, as it has been since records were kept.
    Another way of hashing would make every stored run train again."""
    import hashlib

    from fn_trainer.core.trees import tensors_digest

    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=g) * 255
    tensors = [images, torch.randint(0, 10, (6,), generator=g), images.transpose(2, 3), images.double()[:, :, ::2],
               torch.zeros(0, 3), torch.tensor(2.5), torch.tensor([True, False]), images.to(torch.uint8)]
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    assert tensors_digest(tensors, 16) == h.hexdigest()[:16]
    # a list of tensors counts as their stack, which is never made
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert tensors_digest([[a, b], a]) == tensors_digest([torch.stack([a, b]), a])
    assert tensors_digest([[a, b]]) != tensors_digest([[b, a]]) != tensors_digest([[a, a]])


def test_a_home_folder_path_is_checked_where_torchvision_reads_it(data_copy, monkeypatch):
    monkeypatch.setenv("HOME", str(data_copy.parent))
    path = raw_folder(data_copy) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        load_fashion_mnist(f"~/{data_copy.name}", download=False)


def test_a_download_that_would_write_through_a_link_is_refused(data_copy, tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    monkeypatch.setattr(utils, "download_url", lambda *a, **k: pytest.fail("downloaded"))
    folder = raw_folder(data_copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(folder / "train-labels-idx1-ubyte", outside / "train-labels-idx1-ubyte")
    (folder / "train-labels-idx1-ubyte").symlink_to(outside / "train-labels-idx1-ubyte")
    (folder / "t10k-labels-idx1-ubyte").unlink()  # missing: a download would fetch all four
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte is a symbolic link, and downloading the "
                                           "missing t10k-labels-idx1-ubyte would write through it"):
        load_fashion_mnist(data_copy, download=True)
    # an archive whose checksum fails would be downloaded again, through the link
    (folder / "train-labels-idx1-ubyte").unlink()
    shutil.move(outside / "train-labels-idx1-ubyte", folder / "train-labels-idx1-ubyte")
    (outside / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the archive")
    (folder / "t10k-labels-idx1-ubyte.gz").symlink_to(outside / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is a symbolic link"):
        load_fashion_mnist(data_copy, download=True)
