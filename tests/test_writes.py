"""Output files: every one is written by ``fn_trainer.core.paths.write_atomically``, which never
writes through a link, leaves earlier files intact on a full disk, and is safe for
concurrent runs into one folder."""
import errno
import multiprocessing
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fn_trainer.app import cli, report
from fn_trainer.app.export import export_solution
from fn_trainer.app.plots import Curve, plot_curves, plot_map
from fn_trainer.core import paths
from fn_trainer.core.paths import (
    STALE_TEMPORARY_S,
    WriteError,
    discard,
    ensure_writable_dir,
    temporaries,
    write_atomically,
    write_text,
)
from fn_trainer.training.checkpoint import load_checkpoint, save_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTSIDE = b"a file outside the output folder\n"


# --- writes that would follow links ---------------------------------------------------------

def _figure(path):
    return plot_curves([Curve("a", [0.1, 0.5, 0.7])], path, title="t", ylabel="y")


def _compat_figures(folder):
    from compat.solution import save_figures  # imported on use: importing it seeds the global RNGs

    return save_figures({"x": np.eye(4)}, folder)


WRITERS = {
    "bytes": lambda p: write_atomically(p, b"new"),
    "curves": _figure,
    "map": lambda p: plot_map(np.eye(4), p, title="t", colorbar_label="c"),
    "checkpoint": lambda p: save_checkpoint(p, {"epoch": 1, "w": torch.ones(3)}),
    "solution": lambda p: export_solution(p.with_suffix(".py")),
    "compat figures": lambda p: _compat_figures(p.parent),
}
DESTINATION = {"solution": "file.py", "compat figures": "equivariance_x.png"}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_link_at_the_destination_is_replaced_not_written_through(kind, tmp_path):
    outside, out = tmp_path / "outside.txt", tmp_path / "out"
    outside.write_bytes(OUTSIDE)
    out.mkdir()
    link = out / DESTINATION.get(kind, "file")
    link.symlink_to(outside)
    WRITERS[kind](out / "file")
    assert outside.read_bytes() == OUTSIDE
    assert not link.is_symlink() and link.stat().st_size > 0


def test_a_dangling_link_at_the_destination_creates_nothing_where_it_points(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.pt").symlink_to(tmp_path / "created-outside.pt")
    save_checkpoint(out / "c.pt", {"epoch": 1})
    assert not (tmp_path / "created-outside.pt").exists()
    assert load_checkpoint(out / "c.pt")["epoch"] == 1


def test_report_files_replace_planted_links(tmp_path):
    outside, out = tmp_path / "outside.md", tmp_path / "out"
    outside.write_bytes(OUTSIDE)
    (out / "depth").mkdir(parents=True)
    for name in ("report.md", "depth/section.md"):
        (out / name).symlink_to(outside)
    report.write_section(out, "depth", lambda: "## 3. Depth\n\ntext")
    assert outside.read_bytes() == OUTSIDE
    assert "## 3. Depth" in (out / "report.md").read_text()
    assert (out / "depth" / "section.md").read_text() == "## 3. Depth\n\ntext\n"


def test_a_link_at_the_report_lock_is_refused_with_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / report.LOCK_FILE).symlink_to(tmp_path / "lock-outside")
    with pytest.raises(OSError, match=r"report lock .*\.report\.lock"):
        report.write_section(out, "depth", lambda: "text")
    assert not (tmp_path / "lock-outside").exists()


def test_the_command_line_replaces_links_to_outside_files(tmp_path, fake_data_root, capsys):
    outside, out = tmp_path / "outside.png", tmp_path / "out"
    outside.write_bytes(OUTSIDE)
    (out / "equivariance").mkdir(parents=True)
    planted = ["equivariance/features.png", "equivariance/equivariance.json", "equivariance/section.md",
               "report.md"]
    for name in planted:
        (out / name).symlink_to(outside)
    rc = cli.main(["equivariance", "--data", str(fake_data_root), "--out", str(out), "--limit", "16"])
    assert rc == 0, capsys.readouterr().err
    assert outside.read_bytes() == OUTSIDE
    assert not any((out / name).is_symlink() for name in planted)
    assert (out / "equivariance" / "features.png").read_bytes()[:8] == PNG_MAGIC


# --- a full disk ----------------------------------------------------------------------------

@pytest.fixture(params=["tmpfs", "failing writes"])
def small_disk(request, tmp_path, monkeypatch):
    """``(folder, fill)``: a folder and a function that makes its disk full.

    "tmpfs" (root only): a 2 MiB tmpfs that ``fill`` fills with a file; skipped where it
    cannot be mounted. "failing writes": ``fill`` makes every later write fail with ENOSPC
    after writing part of its bytes, as a real full disk does.
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "failing writes":
        real = paths._write_all

        def partial_then_full(fd, data):
            real(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        yield folder, lambda: monkeypatch.setattr(paths, "_write_all", partial_then_full)
        return
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root and a system that permits it")

    def fill():
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)

    try:
        yield folder, fill
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _only_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != "filler")


@pytest.mark.parametrize("kind", ["bytes", "curves", "checkpoint", "solution"])
def test_a_full_disk_names_the_file_and_keeps_the_earlier_one(kind, small_disk):
    folder, fill = small_disk
    path = folder / "file"
    WRITERS[kind](path)
    path = path.with_suffix(".py") if kind == "solution" else path
    before = path.read_bytes()
    fill()
    with pytest.raises(WriteError) as e:
        WRITERS[kind](folder / "file")
    message = str(e.value)
    assert str(path) in message and "disk is full" in message and "\n" not in message
    assert path.read_bytes() == before
    assert _only_files(folder) == [path.name]  # no temporary file left behind


def test_a_full_disk_during_a_run_is_one_line_and_exit_status_2(small_disk, fake_data_root, capsys):
    folder, fill = small_disk
    args = ["equivariance", "--data", str(fake_data_root), "--out", str(folder), "--limit", "16"]
    assert cli.main(args) == 0
    before = {name: (folder / name).read_bytes() for name in _only_files(folder)}
    capsys.readouterr()
    fill()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fn-trainer: error: cannot write ")
    assert "disk is full" in err
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert _only_files(folder) == sorted(before)


# --- a writer killed mid-write --------------------------------------------------------------

def _killed_while_writing(path):
    """In a child process: write ``path``, killed (SIGKILL) halfway through the bytes."""
    real = paths._write_all

    def half_then_killed(fd, data):
        real(fd, data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    paths._write_all = half_then_killed
    write_atomically(path, b"new" * 1000)


def test_a_killed_writers_temporary_file_is_discarded_with_its_file_and_no_other(tmp_path):
    path, neighbour = tmp_path / "run.checkpoint.pt", tmp_path / "run.checkpoint.pt.json"
    for p in (path, neighbour):
        write_atomically(p, b"old")
        child = multiprocessing.get_context("fork").Process(target=_killed_while_writing, args=(p,))
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL
    assert path.read_bytes() == neighbour.read_bytes() == b"old"  # a kill leaves the earlier file
    (left,), (other,) = temporaries(path), temporaries(neighbour)  # and its write's temporary file
    assert len(left.read_bytes()) == 1500 and left != other
    discard(path)  # the temporary file is as young as a write in progress in another process: kept
    assert sorted(tmp_path.iterdir()) == sorted([neighbour, left, other])
    age = time.time() - STALE_TEMPORARY_S - 1
    for file in (left, other):
        os.utime(file, (age, age))
    discard(path)
    assert sorted(tmp_path.iterdir()) == sorted([neighbour, other])
    discard(path)  # nothing left to discard


def test_discard_keeps_a_write_in_progress_in_another_process(tmp_path):
    path = tmp_path / "run.checkpoint.pt"
    real = paths._write_all

    def discarded_meanwhile(fd, data):  # the other process finishes the same run and discards it
        real(fd, data)
        discard(path)

    paths._write_all = discarded_meanwhile
    try:
        write_atomically(path, b"new")
    finally:
        paths._write_all = real
    assert path.read_bytes() == b"new" and not temporaries(path)


# --- concurrent runs into one folder --------------------------------------------------------

def _write_sections(out, experiment, start, rounds):
    """In a child process: write ``experiment``'s section ``rounds`` times, every file write
    delayed by a random 0-30 ms (a slow, uneven disk: without a lock, a rebuild of
    ``report.md`` from a listing read before another process's section can then land
    after that process's own rebuild)."""
    real, delays = paths.write_atomically, random.Random(os.getpid())

    def slow(path, data):
        time.sleep(delays.uniform(0, 0.03))
        return real(path, data)

    paths.write_atomically = slow
    report.write_text = lambda path, text: slow(path, text.encode())
    while time.time() < start:
        time.sleep(0.001)
    for i in range(rounds):
        report.write_section(Path(out), experiment, lambda: f"## {experiment} round {i}")


@pytest.mark.parametrize("rounds", [1, 3])
def test_concurrent_writers_keep_every_section(rounds, tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(4):  # each trial is a fresh race: one lost section fails the test
        out = tmp_path / str(trial)
        start = time.time() + 0.2
        writers = [context.Process(target=_write_sections, args=(out, name, start, rounds))
                   for name in report.ORDER]
        for w in writers:
            w.start()
        for w in writers:
            w.join(60)
        assert [w.exitcode for w in writers] == [0] * len(writers)
        text = (out / "report.md").read_text()
        assert [f"## {name} round {rounds - 1}" in text for name in report.ORDER] == [True] * len(report.ORDER)


def test_a_file_where_a_folder_goes_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(WriteError, match=r"cannot write '.*afile/x.txt': '.*afile' is a file, not a folder"):
        write_text(tmp_path / "afile" / "x.txt", "text")
    with pytest.raises(ValueError, match=r"output folder '.*afile/out' cannot be written: '.*afile' is a file, not a"):
        ensure_writable_dir(tmp_path / "afile" / "out")
    with pytest.raises(ValueError, match=r"output folder '.*afile' cannot be written: '.*afile' is a file, not a"):
        ensure_writable_dir(tmp_path / "afile")


def test_a_name_too_long_is_a_write_error_naming_it(tmp_path):
    path = tmp_path / ("a" * 300)
    with pytest.raises(WriteError, match="cannot write .*aaaa'") as e:
        write_atomically(path, b"x")
    assert "\n" not in str(e.value)


# --- what the command line writes into, checked before it trains ----------------------------

BLOCKED_OUTPUTS = {  # (what is planted where, the error's words)
    "a link at an experiment's folder": ("depth", lambda p: p.symlink_to(p.parent.parent / "elsewhere"),
                                         r"'.*out/depth' is a symbolic link, where fn-trainer writes an "
                                         r"experiment's figures and report section: report.md would leave them out"),
    "a link to nothing at an experiment's folder": ("depth", lambda p: p.symlink_to(p.parent / "nothing"),
                                                    r"'.*out/depth' is a symbolic link"),
    "a link to nothing at the runs folder": ("runs", lambda p: p.symlink_to(p.parent / "nothing"),
                                             r"output folder '.*out/runs' cannot be written: '.*out/runs' is a "
                                             r"symbolic link to nothing"),
    "a file at the runs folder": ("runs", lambda p: p.write_text(""),
                                  r"output folder '.*out/runs' cannot be written: '.*out/runs' is a file, not a fold"),
    "a folder at the section": ("depth/section.md", lambda p: p.mkdir(parents=True),
                                r"cannot write '.*out/depth/section.md': it is a folder"),
}


@pytest.mark.parametrize("case", list(BLOCKED_OUTPUTS))
def test_what_the_command_cannot_write_into_is_named_before_any_training(case, tmp_path, fake_data_root, capsys,
                                                                        monkeypatch):
    from fn_trainer.app.experiments import training

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")
    monkeypatch.setattr(training, "fit", no_training)
    monkeypatch.setattr(training, "fit_population", no_training)
    where, plant, words = BLOCKED_OUTPUTS[case]
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    plant(out / where)
    rc = cli.main(["depth", "--data", str(fake_data_root), "--out", str(out), "--epochs", "1", "--limit", "16",
                   "--seeds", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and re.search(words, err), err
    assert list(elsewhere.iterdir()) == []  # nothing written where a link points


def test_runs_may_be_a_link_to_a_folder_elsewhere(tmp_path, fake_data_root, capsys):
    """``runs/`` on another disk: its records are read and written through the link."""
    out, disk = tmp_path / "out", tmp_path / "disk"
    out.mkdir()
    (disk / "runs").mkdir(parents=True)
    (out / "runs").symlink_to(disk / "runs")
    args = ["depth", "--data", str(fake_data_root), "--out", str(out), "--epochs", "1", "--limit", "16", "--seeds",
            "1", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert len(list((disk / "runs").glob("*.json"))) == 2
    assert cli.main(args) == 0 and capsys.readouterr().out.count("already done, skipped") == 2


def test_out_as_a_link_to_nothing_is_named(tmp_path, fake_data_root, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "nothing")
    rc = cli.main(["equivariance", "--data", str(fake_data_root), "--out", str(tmp_path / "out"), "--limit", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert re.search(r"--out: output folder '.*out' cannot be written: '.*out' is a symbolic link to nothing", err)
    assert not (tmp_path / "nothing").exists()


def test_a_sections_figures_are_drawn_under_the_report_lock(tmp_path, fake_data_root, capsys, monkeypatch):
    """Two commands writing one experiment into one folder at once: each section is drawn
    with its own figures, never beside the other command's."""
    import fcntl

    from fn_trainer.app import plots
    from fn_trainer.app.experiments import comparison

    out, drawn = tmp_path / "out", []

    def locked(draw):
        def checked(*args, **kwargs):
            fd = os.open(out / report.LOCK_FILE, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):  # another process would wait here
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            drawn.append(draw.__name__)
            return draw(*args, **kwargs)
        return checked
    monkeypatch.setattr(comparison, "accuracy_figure", locked(comparison.accuracy_figure))
    monkeypatch.setattr(plots, "plot_map", locked(plots.plot_map))
    for args in (["depth", "--epochs", "1", "--seeds", "1", "--no-progress"], ["equivariance"]):
        rc = cli.main([*args, "--data", str(fake_data_root), "--out", str(out), "--limit", "16"])
        assert rc == 0, capsys.readouterr().err
    assert drawn == ["accuracy_figure"] + ["plot_map"] * 4


def test_a_section_that_cannot_be_written_leaves_its_figures_as_they_were(tmp_path, fake_data_root, monkeypatch):
    out = tmp_path / "out"
    args = ["equivariance", "--data", str(fake_data_root), "--out", str(out), "--limit", "16"]
    assert cli.main(args) == 0
    before = {p.name: p.read_bytes() for p in (out / "equivariance").iterdir()}
    assert any(name.endswith(".png") for name in before)
    write_all = paths._write_all

    def full_disk_at_the_section(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".section.md."):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, b"changed " + data)  # every figure's bytes differ from the first run's

    monkeypatch.setattr(paths, "_write_all", full_disk_at_the_section)
    assert cli.main(args) == 2
    assert {p.name: p.read_bytes() for p in (out / "equivariance").iterdir()} == before  # no temporaries either


def test_files_written_together_replace_their_paths_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    paths.write_text(a, "old a")
    with pytest.raises(KeyboardInterrupt):
        with paths.written_together():
            paths.write_text(a, "new a")
            paths.write_text(b, "new b")
            assert a.read_text() == "old a" and not b.exists()  # written, not yet in place
            raise KeyboardInterrupt
    assert a.read_text() == "old a" and not b.exists() and not paths.temporaries(a) and not paths.temporaries(b)
    with paths.written_together():
        paths.write_text(a, "new a")
        with paths.written_together():  # an inner block's files wait for the outer one
            paths.write_text(b, "new b")
        assert not b.exists()
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert not paths.temporaries(a) and not paths.temporaries(b)
    with pytest.raises(paths.WriteError, match="b.txt' cannot be replaced|it is a folder"):
        with paths.written_together():
            paths.write_text(a, "newer a")
            paths.write_text(b, "newer b")
            b.unlink()
            b.mkdir()  # a folder put at a path before the block ends: nothing is replaced
    assert a.read_text() == "new a" and b.is_dir() and not paths.temporaries(a) and not paths.temporaries(b)


def test_a_command_deletes_the_stale_temporaries_of_killed_writers_of_its_figures_and_the_report(
        tmp_path, fake_data_root):
    out = tmp_path / "out"
    (out / "equivariance").mkdir(parents=True)
    (out / "depth").mkdir()
    figure = out / "equivariance" / ".shift.png.0123456789ab.tmp"
    report = out / ".report.md.ba9876543210.tmp"
    other_section = out / "depth" / ".section.md.00112233aabb.tmp"  # another command's section: kept
    young = out / "equivariance" / ".section.md.aabbccddeeff.tmp"  # a write that may be in progress
    for file in (figure, report, other_section, young):
        file.write_bytes(b"x" * 100)
    age = time.time() - STALE_TEMPORARY_S - 1
    for file in (figure, report, other_section):
        os.utime(file, (age, age))
    assert cli.main(["equivariance", "--data", str(fake_data_root), "--out", str(out), "--limit", "16"]) == 0
    assert not figure.exists() and not report.exists()
    assert other_section.exists() and young.exists()


def test_a_command_deletes_the_stale_temporaries_of_killed_writers_among_the_runs(tmp_path, fake_data_root):
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    stale, young = runs / ".a.checkpoint.pt.0123456789ab.tmp", runs / ".b.json.ba9876543210.tmp"
    other = runs / ".notes.tmp"  # not a name write_atomically gives
    folder = runs / ".c.json.00112233aabb.tmp"  # such a name, but no file write_atomically left
    for file in (stale, young, other):
        file.write_bytes(b"x" * 100)
    folder.mkdir()
    age = time.time() - STALE_TEMPORARY_S - 1
    for file in (stale, other, folder):
        os.utime(file, (age, age))
    assert cli.main(["equivariance", "--data", str(fake_data_root), "--out", str(tmp_path / "out"),
                     "--limit", "16"]) == 0
    assert sorted(runs.iterdir()) == sorted([young, other, folder])
