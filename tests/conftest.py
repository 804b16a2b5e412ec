import os
from pathlib import Path

import pytest

from fakedata import write_fashion_mnist

REAL_DATA = Path(os.environ.get("FN_TRAINER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """A torchvision-layout root holding tiny synthetic Fashion-MNIST IDX files
    (300 training images, 2100 test images: 2000 validation + 100 test)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real Fashion-MNIST root; the test is skipped when it is absent."""
    if not (REAL_DATA / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real Fashion-MNIST not found at {REAL_DATA} (set FN_TRAINER_DATA)")
    return REAL_DATA
