"""Fashion-MNIST loading (through torchvision) and feature-wise normalisation."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor

from .checks import check_bool, described
from .paths import NotAFileError, open_regular_file

N_VALID = 2000  # the validation set is the first 2000 test images; test is the rest
N_CLASSES = 10
IMAGE_SIZE = (28, 28)
IDX_FILES = {
    "train-images-idx3-ubyte": (0x0803, 3),
    "train-labels-idx1-ubyte": (0x0801, 1),
    "t10k-images-idx3-ubyte": (0x0803, 3),
    "t10k-labels-idx1-ubyte": (0x0801, 1),
}
LEGACY_FILES = ("training.pt", "test.pt")  # what older torchvision versions cached in FashionMNIST/processed


class DatasetError(ValueError):
    """The data set cannot be read: files missing, truncated or corrupt."""


class Split(NamedTuple):
    """``X: (N, 1, 28, 28) float32`` raw pixel values 0-255; ``y: (N,) int64`` labels."""

    X: Tensor
    y: Tensor


class Splits(NamedTuple):
    train: Split
    valid: Split
    test: Split


def raw_folder(root: str | os.PathLike) -> Path:
    """Where torchvision keeps the IDX files under ``root``."""
    return Path(root) / "FashionMNIST" / "raw"


def check_idx_file(path: Path) -> List[int]:
    """The dimensions in IDX file ``path``'s header; raises ``DatasetError`` naming ``path``
    unless it is a complete IDX file of the kind its name says."""
    magic, ndim = IDX_FILES[path.name]
    try:
        with open_regular_file(path) as f:  # a FIFO there would block the loader forever
            header = f.read(4 + 4 * ndim)
            size = os.fstat(f.fileno()).st_size
    except NotAFileError as e:
        raise DatasetError(f"cannot read data file: {e}") from None
    except OSError as e:
        raise DatasetError(f"cannot read data file {path}: {e.strerror}") from None
    if len(header) < 4 + 4 * ndim or int.from_bytes(header[:4], "big") != magic:
        raise DatasetError(f"data file {path} is not an IDX file of the expected kind (bad header)")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] == 0:
        raise DatasetError(f"data file {path} holds no samples (its header says 0)")
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise DatasetError(
            f"data file {path} is truncated or corrupt: {size} bytes, expected {expected} "
            f"for dimensions {dims}"
        )
    return dims


def check_split_files(images: Path, labels: Path, X: Tensor, y: Tensor) -> None:
    """Raise ``DatasetError`` naming the file unless ``X: (N, 28, 28)`` read from ``images``
    and ``y: (N,)`` read from ``labels`` form a valid split.

    The whole of both files is checked, in one vectorised pass over the labels: a bad
    label anywhere is found, whatever part of the data is used later.
    """
    if tuple(X.shape[1:]) != IMAGE_SIZE:
        raise DatasetError(
            f"data file {images} holds images of {'x'.join(map(str, X.shape[1:]))} pixels; "
            f"Fashion-MNIST images are {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
        )
    if y.shape[0] != X.shape[0]:
        raise DatasetError(
            f"data files {images} and {labels} disagree: {X.shape[0]} images but {y.shape[0]} labels"
        )
    bad = (y < 0) | (y >= N_CLASSES)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise DatasetError(
            f"data file {labels} has {int(bad.sum())} labels outside [0, {N_CLASSES}), the first "
            f"at index {first}: {int(y[first])}"
        )


def load_fashion_mnist(root: str | os.PathLike = "./data", download: bool = True) -> Splits:
    """Train (60000), validation (first 2000 test images) and test (other 8000) splits.

    Uses ``torchvision.datasets.FashionMNIST(root, download=download)``: with the four
    IDX files in ``root/FashionMNIST/raw`` it reads them offline; otherwise it
    downloads them when allowed and reachable. Any failure raises ``DatasetError``
    naming the folder and the expected files, or the file at fault: images that are not
    28x28, image and label counts that disagree, labels outside ``[0, 10)`` anywhere in
    either label file, torchvision's old ``processed`` copies beside the IDX files
    (torchvision would read them instead), or a file missing beside a symbolic link that
    the download would write through. ``~`` in ``root`` is expanded, as torchvision does.
    """
    download = check_bool("download", download)
    root = os.path.expanduser(os.fspath(root))  # as torchvision expands it: the checks must read its files
    folder = raw_folder(root)
    legacy = [folder.parent / "processed" / name for name in LEGACY_FILES]
    if all(path.is_file() for path in legacy):  # torchvision's own test
        # torchvision would read these instead of the IDX files, unchecked
        raise DatasetError(f"{legacy[0].parent} holds torchvision's old {' and '.join(LEGACY_FILES)}, which would "
                           f"be read instead of the IDX files in {folder}; move that folder away")
    present = [folder / name for name in IDX_FILES if (folder / name).exists()]
    for path in present:
        check_idx_file(path)
    missing = [name for name in IDX_FILES if folder / name not in present]
    if missing and not download:
        raise DatasetError(f"Fashion-MNIST is not available in {folder} and downloading is off (--no-download, "
                           f"download=False): missing {', '.join(missing)}, uncompressed IDX files; put them "
                           "there, or allow the download")
    try:
        from torchvision.datasets import FashionMNIST
        from torchvision.datasets.utils import check_integrity
    except Exception as e:  # a broken install fails here, often not with ImportError
        raise DatasetError(
            f"torchvision could not be imported ({type(e).__name__}: {e}); it is needed to read "
            f"{folder}. Reinstall torch and torchvision together so their versions match."
        ) from None
    if missing:
        # torchvision then extracts all four IDX files, and downloads each archive whose checksum
        # fails, with open(..., "wb"): a symbolic link there would be written through
        archives = {Path(name).name: md5 for name, md5 in FashionMNIST.resources}
        linked = [folder / name for name in IDX_FILES if (folder / name).is_symlink()]
        linked += [folder / archive for archive, md5 in archives.items()
                   if (folder / archive).is_symlink() and not check_integrity(str(folder / archive), md5)]
        if linked:
            raise DatasetError(f"{linked[0]} is a symbolic link, and downloading the missing {', '.join(missing)} "
                               f"would write through it: put all four IDX files in {folder}, or remove the link")
    try:
        train = FashionMNIST(root=str(root), train=True, download=download)
        test = FashionMNIST(root=str(root), train=False, download=download)
    except Exception as e:
        raise DatasetError(_missing_message(folder, f"{type(e).__name__}: {e}")) from None
    for prefix, ds in (("train", train), ("t10k", test)):
        check_split_files(folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte",
                          ds.data, ds.targets)
    X_train, y_train = _tensors(train)
    X_test, y_test = _tensors(test)
    return Splits(
        Split(X_train, y_train),
        Split(X_test[:N_VALID], y_test[:N_VALID]),
        Split(X_test[N_VALID:], y_test[N_VALID:]),
    )


def _missing_message(folder: Path, reason: str) -> str:
    return (
        f"Fashion-MNIST is not available in {folder} and could not be downloaded ({reason}); put its "
        f"uncompressed IDX files {', '.join(IDX_FILES)} there, or give network access"
    )


def _tensors(ds) -> Tuple[Tensor, Tensor]:
    return ds.data.view(-1, 1, 28, 28).float(), ds.targets.long()


def standardizer(X_train: Tensor, name: str = "X_train") -> Tuple[Tensor, Tensor]:
    """Feature-wise ``(mean, scale)`` of ``X_train: (N, ...)``, each shaped ``X_train[0]``.

    ``scale`` is the (unbiased) standard deviation. A feature constant over the training
    set gets its value as mean and scale 1, so it normalises to exactly 0 on the training
    set, and elsewhere to its offset from that value: never a division by zero. ``name``:
    what a message calls ``X_train``.
    """
    if X_train.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a std, got {X_train.shape[0]}")
    # Exact equality, not std == 0: the rounded mean of equal values can miss them by an ulp.
    constant = X_train.amax(0) == X_train.amin(0)
    mean = torch.where(constant, X_train[0], X_train.mean(0))
    std = X_train.std(0)
    return mean, torch.where(constant | (std == 0), torch.ones_like(std), std)


def normalize(train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor],
              test: Tuple[Tensor, Tensor]) -> Tuple[Split, Split, Split]:
    """``X <- (X - mean) / scale`` with the training set's statistics (see ``standardizer``).

    Each split is a pair ``(X, y)``; ``y`` (one label or one-hot row per sample, or ``None``)
    is passed through unchanged.

    Every ``X`` must be finite: one NaN pixel in the training set would make its feature's
    mean, and so that feature of all three splits, NaN.
    """
    for name, split in (("train", train), ("valid", valid), ("test", test)):
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise TypeError(f"{name} must be a pair (X, y), got {described(split)}")
        X, y = split
        if not isinstance(X, Tensor) or X.dim() == 0:
            raise TypeError(f"{name} X must be a torch.Tensor of samples (N, ...), got {described(X)}")
        if y is not None and not isinstance(y, Tensor):
            raise TypeError(f"{name} y must be a torch.Tensor or None, got {type(y).__name__}")
        if y is not None and (y.dim() == 0 or len(y) != len(X)):
            raise ValueError(f"{name} y must hold one label (or one-hot row) per sample of X, {len(X)}, got "
                             f"{described(y)}")
        if not X.dtype.is_floating_point:  # integer pixels would normalise in integer arithmetic
            raise TypeError(f"{name} X must have a floating dtype, got {X.dtype}; convert with X.float()")
        if X.shape[1:] != train[0].shape[1:]:
            raise ValueError(f"{name} X must have the training samples' shape {tuple(train[0].shape[1:])}, "
                             f"got {tuple(X.shape[1:])}")
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"{name} X contains NaN or infinite values; normalize needs finite pixels")
    mean, scale = standardizer(train[0], "train X")
    return tuple(Split((X - mean) / scale, y) for X, y in (train, valid, test))
