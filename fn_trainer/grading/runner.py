"""The submission's process, seen from the grader: start it, send requests, enforce limits.

Each ``Submission`` runs ``probe`` in a fresh interpreter (``python -I``: no user site,
no environment-driven paths) in a temporary working folder holding only a copy of
``solution.py``, in its own process group, with a memory limit (``RLIMIT_AS``), a file
size limit (``RLIMIT_FSIZE``) and no core dumps where the OS allows them. Its printed
output goes to a pipe that a thread drains, keeping the first ``OUTPUT_KEPT`` bytes,
so megabytes of prints neither block it nor fill a disk. Every request waits at most
until the deadline its caller gives; a process that overruns it, dies or garbles its
answers is killed and reported, and the next ``start()`` begins a fresh one.
"""
from __future__ import annotations

import io
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .limits import ANSWER_LIMIT, DEFAULT_MEMORY_MB, FILE_SIZE_MB, OUTPUT_KEPT
from .probe import HEADER, encode



class SubmissionFailed(Exception):
    """The submission's process timed out, died, or broke the protocol; the message says
    which, in words for the student."""


class OutputDrain(threading.Thread):
    """Reads a pipe to its end, keeping the first ``OUTPUT_KEPT`` bytes and counting the rest."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.kept, self.total = stream, bytearray(), 0

    def run(self) -> None:
        while chunk := self.stream.read1(1 << 16):
            self.total += len(chunk)
            if len(self.kept) < OUTPUT_KEPT:
                self.kept += chunk[:OUTPUT_KEPT - len(self.kept)]


def _limits(memory_mb: int):
    def apply() -> None:
        import resource

        for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_FSIZE, FILE_SIZE_MB << 20),
                             (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):  # not allowed or not supported here: run without it
                pass

    return apply


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


class Submission:
    """One submission's process; ``call(request, deadline)`` returns its answer."""

    def __init__(self, source: Path, memory_mb: int = DEFAULT_MEMORY_MB) -> None:
        self.source, self.memory_mb = Path(source), memory_mb
        self.process: Optional[subprocess.Popen] = None
        self.folder: Optional[str] = None
        self.printed = 0
        self.output = b""
        self.import_error: Optional[str] = None

    def start(self, deadline: float) -> None:
        """Start a fresh process and wait until it has imported ``solution.py``."""
        self.stop()
        self.folder = tempfile.mkdtemp(prefix="fn-trainer-grading-")
        shutil.copyfile(self.source, Path(self.folder) / "solution.py")
        request_r, self.request_w = os.pipe()
        self.answer_r, answer_w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.folder,
               "TMPDIR": self.folder, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-m", "fn_trainer.grading.probe", self.folder,
                 str(request_r), str(answer_w)],
                cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, pass_fds=(request_r, answer_w), start_new_session=True,
                preexec_fn=_limits(self.memory_mb),
            )
        finally:
            os.close(request_r)
            os.close(answer_w)
        self.drain = OutputDrain(self.process.stdout)
        self.drain.start()
        answer = self._receive(deadline, "importing solution.py")
        if "error" in answer:
            self.import_error = answer["error"]
            self.stop()
            raise SubmissionFailed(self.import_error)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def call(self, request: dict, deadline: float, what: str) -> dict:
        """Send ``request``; return ``{"value": ...}`` or ``{"error": ...}`` (the
        submission's code raised). Raises ``SubmissionFailed`` for anything worse."""
        if not self.running:
            raise SubmissionFailed("the submission's process is not running")
        try:
            self._write(encode(request))
        except OSError:
            raise SubmissionFailed(self._ended(what)) from None
        return self._receive(deadline, what)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.request_w, view):]

    def _read_exactly(self, size: int, deadline: float, what: str) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.answer_r], [], [], left)[0]:
                self.stop()
                raise SubmissionFailed(f"time limit reached while {what}: is there an endless loop?")
            chunk = os.read(self.answer_r, min(size - len(chunks), 1 << 20))
            if not chunk:
                raise SubmissionFailed(self._ended(what))
            chunks += chunk
        return bytes(chunks)

    def _receive(self, deadline: float, what: str) -> dict:
        (size,) = HEADER.unpack(self._read_exactly(HEADER.size, deadline, what))
        if size > ANSWER_LIMIT:
            self.stop()
            raise SubmissionFailed(f"the answer while {what} was {size} bytes, over the limit")
        data = self._read_exactly(size, deadline, what)
        try:
            answer = torch.load(io.BytesIO(data), weights_only=True)
        except Exception:
            answer = None
        if not isinstance(answer, dict) or not ({"value", "error"} & set(answer)):
            self.stop()
            raise SubmissionFailed(f"the submission's process sent something unreadable while {what}")
        return answer

    def _ended(self, what: str) -> str:
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        self.stop()
        if status is None:
            return f"the submission's process stopped answering while {what}"
        if status < 0:
            hint = " (out of memory?)" if status == -signal.SIGKILL else ""
            return f"the submission's process was killed by {_signal_name(status)}{hint} while {what}"
        return (f"the submission's process exited with status {status} while {what}: "
                "does solution.py call exit(), sys.exit() or os._exit()?")

    def stop(self) -> None:
        """Kill the process group and remove the working folder (idempotent)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            self.drain.join(timeout=5)
            self.printed += self.drain.total
            self.output += bytes(self.drain.kept[:max(0, OUTPUT_KEPT - len(self.output))])
            for fd in (self.request_w, self.answer_r):
                os.close(fd)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
