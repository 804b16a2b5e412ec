"""Paths that are not regular files where a file is read (FIFOs, folders, devices, links
where links are refused): one line naming the path, or a warning and the file ignored,
never a reader blocked forever or text read through a planted link."""
import os
import shutil
import signal

import pytest
import torch

from fn_trainer import adam, build_network, make_evaluate, make_step
from fn_trainer.app import report
from fn_trainer.app.experiments.records import load_record
from fn_trainer.core.data import DatasetError, load_fashion_mnist, raw_folder
from fn_trainer.core.paths import NotAFileError, WriteError, read_regular_file, write_atomically
from fn_trainer.training.checkpoint import CheckpointError, load_checkpoint
from fn_trainer.training.fit import fit


class Blocked(BaseException):
    """Not an OSError: no handler under test may take a blocked read for an unreadable file."""


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (a FIFO opened without O_NONBLOCK) fails the test instead of hanging it."""
    def alarm(signum, frame):
        raise Blocked("the read blocked")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _plant(path, kind, outside):
    """Put a ``kind`` of non-file at ``path``; ``outside`` is a regular file a link points to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "link":
        path.symlink_to(outside)


KINDS = ["fifo", "folder", "link"]
WORDS = {"fifo": "a FIFO", "folder": "a folder", "link": "a symbolic link"}


@pytest.mark.parametrize("kind", KINDS)
def test_read_regular_file_refuses_what_is_not_a_regular_file(kind, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    path = tmp_path / "x"
    _plant(path, kind, outside)
    with pytest.raises(NotAFileError, match=WORDS[kind]) as e:
        read_regular_file(path, follow_links=False)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_regular_file_refuses_a_device_and_follows_links_when_asked(tmp_path):
    with pytest.raises(NotAFileError, match="a character device"):
        read_regular_file("/dev/null")
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "l").symlink_to(tmp_path / "f")
    assert read_regular_file(tmp_path / "l") == b"abc"


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_record_that_is_not_a_regular_file_is_ignored_with_a_warning(kind, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    path = tmp_path / "runs" / "mlp-0123456789ab.json"
    _plant(path, kind, outside)
    warnings = []
    assert load_record(path, warnings.append) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and WORDS[kind] in warnings[0], warnings


@pytest.mark.parametrize("kind", [*KINDS, "linked folder"])
def test_a_section_that_is_not_a_regular_file_is_left_out_of_the_report(kind, tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "victim" / report.SECTION_FILE
    outside.parent.mkdir()
    outside.write_text("## outside text\n")
    report.write_section(out, "depth", lambda: "## depth section")
    if kind == "linked folder":
        (out / "cnn").symlink_to(outside.parent)
    else:
        _plant(out / "cnn" / report.SECTION_FILE, kind, outside)
    warnings = []
    path = report.write_section(out, "lr-sweep", lambda: "## lr section", warnings.append)
    text = path.read_text()
    assert "## depth section" in text and "## lr section" in text and "outside text" not in text
    assert len(warnings) == 1 and str(out / "cnn" / report.SECTION_FILE) in warnings[0], warnings


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_data_file_that_is_not_a_regular_file_is_one_line_naming_it(kind, fake_data_root, tmp_path):
    shutil.copytree(fake_data_root, tmp_path / "data")
    path = raw_folder(tmp_path / "data") / "t10k-labels-idx1-ubyte"
    _plant(path, kind, None)
    with pytest.raises(DatasetError, match=WORDS[kind]) as e:
        load_fashion_mnist(tmp_path / "data", download=False)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_naming_it(kind, tmp_path):
    path = tmp_path / "c.pt"
    _plant(path, kind, None)
    with pytest.raises(CheckpointError, match=WORDS[kind]) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_resuming_from_a_fifo_is_refused_naming_it(tmp_path):
    path = tmp_path / "c.pt"
    os.mkfifo(path)
    with pytest.raises(CheckpointError, match="a FIFO") as e:
        _fit_into(path, resume=True)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_write_never_replaces_what_is_not_a_file_or_a_link(kind, tmp_path):
    path = tmp_path / "x"
    _plant(path, kind, None)
    with pytest.raises(WriteError, match=f"it is {WORDS[kind]}, not a regular file, and is left as it is") as e:
        write_atomically(path, b"data")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert (path.is_fifo() if kind == "fifo" else path.is_dir()) and os.listdir(tmp_path) == ["x"]


def _fit_into(checkpoint, resume=False):
    net = build_network("mlp", input_shape=(1, 4, 4))
    opt = adam(1e-3)
    params = net.init(0)
    X, y = torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    return fit(make_step(net.apply, opt), make_evaluate(net.apply), params, opt.init(params), (X, y), (X, y),
               epochs=1, progress=False, checkpoint=checkpoint, resume=resume)


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo"])
def test_a_checkpoint_path_that_is_a_fifo_is_refused_before_training(kind, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = fifo if kind == "fifo" else tmp_path / "c.pt"
    if kind == "link to a fifo":
        path.symlink_to(fifo)
    with pytest.raises(ValueError, match=f"^checkpoint must be a file path, got '{path}', a FIFO$"):
        _fit_into(path)
    assert fifo.is_fifo()


def test_a_checkpoint_path_of_another_type_is_named():
    with pytest.raises(TypeError, match="^checkpoint must be a file path \\(str or os.PathLike\\), got int$"):
        _fit_into(5)
