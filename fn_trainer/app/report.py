"""``report.md``: one section per experiment, each kept in ``<out>/<experiment>/section.md``
so that rerunning one experiment rewrites its section and keeps the others.

Processes that write into the same output folder at once take turns: a section and the
``report.md`` rebuilt from it are written under an exclusive lock (``fcntl.flock`` on
``<out>/.report.lock``), so no process rebuilds the report from a listing that misses
a section another process has just written. ``fn-trainer calibrate`` stores its
``calibration.json``, which holds an entry per CPU, under the same lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ..core.paths import (
    check_replaceable,
    file_kind,
    open_regular_file,
    safe_path,
    write_text,
    written_together,
)
from .experiments import EXPERIMENTS

ORDER = tuple(EXPERIMENTS)  # report sections in the homework's question order
SECTION_FILE = "section.md"
REPORT_FILE = "report.md"
LOCK_FILE = ".report.lock"
TITLE = "# Fashion-MNIST experiments (homework 3, section 2)"


def print_warning(line: str) -> None:
    """The default ``warn``: one ``warning: ...`` line on stderr."""
    print(f"warning: {line}", file=sys.stderr, flush=True)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``, a ``|`` in one
    escaped (a divergence message read back from a run record may hold one)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def image(experiment: str, filename: str, alt: str) -> str:
    """Markdown embedding ``<out>/<experiment>/<filename>`` relative to ``report.md``."""
    return f"![{alt}]({experiment}/{filename})"


def write_section(out: Path, experiment: str, compose: Callable[[], str],
                  warn: Callable[[str], None] = print_warning) -> Path:
    """Store the markdown ``compose()`` returns as ``experiment``'s section, rebuild
    ``report.md``, return its path; ``warn`` is told of sections left out (see
    ``_read_section``).

    ``compose`` draws the section's figures: it runs under the report's lock, once the
    section's path is known to be writable, and the figures and the section replace their
    files together (``written_together``), so that a section and its figures are always
    one command's, even when two commands write the same experiment into ``out`` at once
    or the section cannot be written.
    """
    with report_lock(out):
        section = check_section(out, experiment)
        with written_together():
            write_text(section, compose().rstrip() + "\n")
        return _assemble(out, warn)


def check_section(out: Path, experiment: str) -> Path:
    """The path of ``experiment``'s section in ``out``; ``WriteError`` naming it if a folder,
    FIFO or the like is there (checked before the training whose section it would hold)."""
    return check_replaceable(safe_path(out, experiment) / SECTION_FILE)


def assemble(out: Path, warn: Callable[[str], None] = print_warning) -> Path:
    """Write ``<out>/report.md`` from the sections present, in question order."""
    with report_lock(out):
        return _assemble(out, warn)


def check_report_lock(out: Path) -> None:
    """``OSError`` naming the report's lock file if anything but a file is at its name: a
    link, which ``report_lock`` refuses, a folder, a FIFO. Checked before any training,
    where the lock is first taken only once a section is written."""
    path = Path(out) / LOCK_FILE
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OSError(f"cannot open the report lock {str(path)!r}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else file_kind(mode)
        raise OSError(f"cannot open the report lock {str(path)!r}: it is {kind}, not a file")


@contextlib.contextmanager
def report_lock(out: Path):
    """Hold the exclusive lock on ``out``'s report (blocking until other processes release it).

    ``O_NOFOLLOW``: a link planted at the lock file's name is refused rather than followed,
    so the lock never creates a file outside ``out``.
    """
    path = Path(out) / LOCK_FILE
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        raise OSError(f"cannot open the report lock {str(path)!r}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_section(out: Path, name: str, warn: Callable[[str], None]) -> Optional[str]:
    """The text of ``<out>/<name>/section.md``, or ``None`` if it is absent or unusable.

    Sections are written by ``write_text``, never as links: a link planted at the folder
    or the file (``O_NOFOLLOW`` on both) or anything but a regular file (a FIFO would block
    the report, and its lock, forever) is ignored with a warning, so no text from
    outside ``out`` lands in the report.
    """
    folder, section = out / name, out / name / SECTION_FILE
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        reason = "it is a symbolic link or not a folder" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        warn(f"ignoring the report section {section}: {reason}")
        return None
    try:
        with open_regular_file(SECTION_FILE, follow_links=False, dir_fd=dir_fd) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        warn(f"ignoring the report section {section}: {' '.join(str(e).split())}")
        return None
    finally:
        os.close(dir_fd)


def _assemble(out: Path, warn: Callable[[str], None] = print_warning) -> Path:
    out = Path(out)
    parts = [TITLE, "",
             "Measured results only; every section names the command that produced it. "
             "Accuracies are fractions in [0, 1]; epoch 0 is before training."]
    for name in ORDER:
        text = _read_section(out, name, warn)
        if text is not None:
            parts += ["", text.rstrip()]
    path = out / REPORT_FILE
    write_text(path, "\n".join(parts) + "\n")
    return path
