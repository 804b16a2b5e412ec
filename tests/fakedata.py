"""Tiny synthetic Fashion-MNIST written as real IDX files, for tests that must not need the real data."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # type 0x08 (unsigned byte), then the number of dimensions
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def make_images(n: int, rng: np.random.Generator, n_classes: int = 10):
    """``n`` learnable 28x28 uint8 images: each class lights its own horizontal band, plus noise."""
    labels = rng.integers(0, n_classes, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for c in range(n_classes):
        rows = slice(2 * c + 4, 2 * c + 7)
        images[labels == c, rows, 4:24] += 150
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_fashion_mnist(root: Path, n_train: int = 300, n_test: int = 2100, seed: int = 0) -> Path:
    """Write the four FashionMNIST IDX files under ``root/FashionMNIST/raw``; return ``root``."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make_images(n, rng)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def banded_tensors(n: int, seed: int):
    """``(X, y)`` tensors: ``n`` float images (1, 28, 28) in [0, 210] where each class
    lights its own row band over noise, and their labels; for tests that train in memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    X = torch.rand(n, 1, 28, 28, generator=g) * 60
    X[torch.arange(n), 0, 2 * y + 4, 4:24] += 150
    return X, y
