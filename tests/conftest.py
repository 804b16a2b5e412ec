import os
from pathlib import Path

import pytest

# Inductor compiles in the test process, not in a pool of its own processes: each of those
# starts by importing torch, and with one test process per core they only compete with
# the other test processes. Set before Inductor's configuration is first imported.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
from fakedata import write_fashion_mnist  # noqa: E402

REAL_DATA = Path(os.environ.get("FN_TRAINER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread: the tests' tiny operations are faster so, above all on a
    busy machine, where threads wait for each other, and results do not depend on the
    machine's core count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
