"""The submission's process, seen from the grader: start it, send requests, enforce limits.

Each ``Submission`` runs ``probe`` in a fresh interpreter (``python -I -B -u``: no user site, no .pyc files, unbuffered prints,
no environment-driven paths) in a temporary working folder holding only a copy of
``solution.py``, in its own process group, with a memory limit (``RLIMIT_AS``), a file
size limit (``RLIMIT_FSIZE``) and no core dumps where the OS allows them. Its printed
output goes to a pipe that a thread drains, keeping the first ``OUTPUT_KEPT`` bytes,
so megabytes of prints neither block it nor fill a disk. Every request waits at most
until the deadline its caller gives; a process that overruns it, dies or garbles its
answers is killed and reported, and the next ``start()`` begins a fresh one.

On Linux the grader is a child subreaper: a process the submission double-forks into a
new session (a daemon that would outlive it and overwrite ``results.json``) is
re-parented to the grader instead of to init, and every ``stop()`` kills and reaps each
descendant still running under a submission's limits (the hard ``RLIMIT_FSIZE``, which
no descendant can raise again) but the probes other threads are still grading with.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
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
from glob import glob
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from ...core.archives import archive_problem, check_tree_size
from . import probe
from .limits import (
    ANSWER_LIMIT,
    ANSWER_NODES,
    DEFAULT_MEMORY_MB,
    FILE_SIZE_MB,
    OUTPUT_KEPT,
)
from .probe import HEADER, encode

PROBE = Path(probe.__file__)  # run as a file, so that the submission's process never imports fn_trainer

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
FILE_SIZE_LIMIT = FILE_SIZE_MB << 20

# The probes this process is grading with now (pid -> Submission), across threads; the
# lock also keeps a sweep from seeing a probe between its fork and its registration.
_LIVE: Dict[int, "Submission"] = {}
_LIVE_LOCK = threading.Lock()
_subreaper: Optional[bool] = None


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

        for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT),
                             (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):  # not allowed or not supported here: run without it
                pass

    return apply


def become_subreaper() -> bool:
    """Make this process the parent of its orphaned descendants (Linux ``prctl``, once);
    False where the OS has no such thing."""
    global _subreaper
    if _subreaper is None:
        _subreaper = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                pass
    return _subreaper


def _children(pid: int) -> List[int]:
    kids: List[int] = []
    for path in glob(f"/proc/{pid}/task/*/children"):
        try:
            kids += map(int, Path(path).read_text().split())
        except (OSError, ValueError):  # the thread or process has just ended
            pass
    return kids


def _under_submission_limits(pid: int) -> bool:
    """Whether ``pid`` runs under a submission's hard file-size limit (inherited by all
    its descendants; an unprivileged process can lower a hard limit, never raise it)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max file size"):
                hard = line.split()[4]
                return hard != "unlimited" and int(hard) <= FILE_SIZE_LIMIT
    except (OSError, ValueError, IndexError):
        pass
    return False


def kill_leftovers() -> None:
    """SIGKILL and reap every descendant of this process under a submission's limits,
    but the probes still grading and their descendants. Repeats until none is left,
    since a dying process's children are re-parented to this one."""
    with _LIVE_LOCK:
        for _ in range(1000):  # a fork bomb outruns a few rounds, not its process limit
            found, stack = [], _children(os.getpid())
            while stack:
                pid = stack.pop()
                if pid not in _LIVE:
                    stack += _children(pid)
                    if _under_submission_limits(pid):
                        found.append(pid)
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in found:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:  # a grandchild: reaped once re-parented, next round
                    pass


@atexit.register
def _stop_all() -> None:
    """An interrupted grader leaves no submission process behind."""
    for submission in list(_LIVE.values()):
        submission.stop()


class Account(NamedTuple):
    """An account to run the submission's processes as (``account``)."""

    name: str
    uid: int
    gid: int


def account(name: str, argument: str = "as_user") -> Account:
    """The account ``name``, checked: it exists, is not root's, and this process (root) may
    switch to it. Run as it, the submission can write nothing of the grader's (its
    installed code, its results, the script that started it) nor read its environment
    or signal it; the bundle's ``setup.sh`` makes one, and leaves the installed project
    unreadable to it."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"{argument}: there is no account named {name!r}") from None
    if entry.pw_uid == 0:
        raise ValueError(f"{argument}: {name!r} is root's account, under which the submission could change anything")
    if os.geteuid() != 0:
        raise ValueError(f"{argument} {name}: only a grader running as root can run the submission as another account")
    problem = _python_problem(entry.pw_uid, entry.pw_gid)
    if problem is not None:
        raise ValueError(f"{argument}: the account {name!r} cannot run this Python ({sys.executable}) with torch: "
                         f"{problem}")
    return Account(name, entry.pw_uid, entry.pw_gid)


@functools.lru_cache(maxsize=None)
def _python_problem(uid: int, gid: int) -> Optional[str]:
    """Why the account ``uid`` cannot run the submission's interpreter as ``Submission.start``
    does (this Python, importing torch and the limits' ``resource``), or ``None``: every
    submission would fail to start otherwise, each scored 0 for the grader's setting."""
    try:
        run = subprocess.run([sys.executable, "-I", "-c", "import resource, torch"], user=uid, group=gid,
                             extra_groups=[], cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if run.returncode != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"it exited with status {run.returncode}"
    return None


def copy_probe(folder: str) -> str:
    """``probe.py`` and its sibling modules copied into ``folder``; the copy's path. The
    submission's process runs the copy, so that it needs to read nothing of the installed
    project (which the bundle leaves unreadable to the account it runs as)."""
    for name in ("probe", *probe.SIBLINGS):
        shutil.copyfile(PROBE.with_name(f"{name}.py"), os.path.join(folder, f"{name}.py"))
    return os.path.join(folder, "probe.py")


def _hand_over(folder: str, owner: Account) -> None:
    """Make ``folder`` and everything in it ``owner``'s."""
    for path, _, files in os.walk(folder):
        for name in (path, *(os.path.join(path, f) for f in files)):
            os.chown(name, owner.uid, owner.gid)


def decode_answer(data: bytes, limit: int = ANSWER_LIMIT) -> Any:
    """``torch.load`` of an answer's bytes, refused unless each zip record is stored
    uncompressed and undamaged and the records add up to at most ``limit`` bytes (a
    deflated record expands ~1000x, past the frame-size check, into the grader's
    memory), and unless the answer unfolds into at most ``ANSWER_NODES`` values (a few
    bytes of a list holding itself twice, nested 30 deep, would print as 2**30 of them
    in the grader): :mod:`fn_trainer.core.archives`."""
    problem = archive_problem(data, limit)
    if problem is not None:
        raise ValueError(problem)
    answer = torch.load(io.BytesIO(data), weights_only=True)
    check_tree_size(answer, ANSWER_NODES, "an answer")
    return answer


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


class Submission:
    """One submission's process; ``call(request, deadline)`` returns its answer."""

    def __init__(self, source: Path, memory_mb: int = DEFAULT_MEMORY_MB, allow_reference: bool = False,
                 as_user: Optional[Account] = None) -> None:
        self.source, self.memory_mb, self.allow_reference = Path(source), memory_mb, allow_reference
        self.as_user = as_user
        self.process: Optional[subprocess.Popen] = None
        self.folder: Optional[str] = None
        self.printed = 0
        self.output = b""
        self.import_error: Optional[str] = None
        # the submission's own Trainer.__init__ ended a process: the next ones make Trainers without it
        self.init_ended = False

    def start(self, deadline: float) -> None:
        """Start a fresh process and wait until it has imported ``solution.py``."""
        self.stop()
        # one level down in a folder of its own: what it writes to "../" is deleted with it too
        # another account must reach it: in /tmp, not in a TMPDIR of the grader's own (mode 0700)
        shared = self.as_user is not None and os.path.isdir("/tmp")
        top = tempfile.mkdtemp(prefix="fn-trainer-grading-", dir="/tmp" if shared else None)
        self.folder = os.path.join(top, "submission")
        os.mkdir(self.folder)
        shutil.copyfile(self.source, Path(self.folder) / "solution.py")
        probe_file = copy_probe(top)
        if self.as_user is not None:
            _hand_over(top, self.as_user)
        switch = ({} if self.as_user is None else
                  {"user": self.as_user.uid, "group": self.as_user.gid, "extra_groups": []})
        request_r, self.request_w = os.pipe()
        self.answer_r, answer_w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.folder,
               "TMPDIR": self.folder, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MPLBACKEND": "Agg"}  # python -I ignores PYTHON* variables: -B keeps .pyc files out
        os.set_blocking(self.request_w, False)  # a write waits in select, up to the deadline
        become_subreaper()
        try:
            with _LIVE_LOCK:
                self.process = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-u", probe_file, self.folder,
                     str(request_r), str(answer_w), *(["--allow-reference"] if self.allow_reference else []),
                     *([probe.NO_OWN_INIT] if self.init_ended else [])],
                    cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, pass_fds=(request_r, answer_w), start_new_session=True,
                    preexec_fn=_limits(self.memory_mb), **switch,
                )
                _LIVE[self.process.pid] = self
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
            self._write(encode(request), deadline, what)
        except OSError:
            raise SubmissionFailed(self._ended(what)) from None
        return self._receive(deadline, what)

    def _write(self, data: bytes, deadline: float, what: str) -> None:
        view = memoryview(data)
        while view:
            # An overrun deadline still takes a pipe that is ready: only the submission's
            # delay counts, not the grader's own (a busy machine, another thread).
            left = max(0.0, deadline - time.monotonic())
            if not select.select([], [self.request_w], [], left)[1]:
                self.stop()
                raise SubmissionFailed(f"time limit reached while {what}: the submission's process "
                                       "stopped reading the grader's requests")
            try:
                view = view[os.write(self.request_w, view):]
            except BlockingIOError:  # writable, but not for this much yet
                pass

    def _read_exactly(self, size: int, deadline: float, what: str) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.answer_r], [], [], left)[0]:
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
            answer = decode_answer(data)
        except Exception:
            answer = None
        # an error is the probe's one line: anything else in its place is forged
        if (not isinstance(answer, dict) or not ({"value", "error"} & set(answer))
                or not isinstance(answer.get("error", ""), str)):
            self.stop()
            raise SubmissionFailed(f"the submission's process sent something unreadable while {what}")
        return answer

    def _ended(self, what: str) -> str:
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        if self.folder is not None and os.path.exists(os.path.join(os.path.dirname(self.folder), probe.INIT_MARKER)):
            self.init_ended = True
            what = f"Trainer.__init__ ran ({what})"
        self.stop()
        if status is None:
            return f"the submission's process stopped answering while {what}"
        if status < 0:
            hint = " (out of memory?)" if status == -signal.SIGKILL else ""
            return f"the submission's process was killed by {_signal_name(status)}{hint} while {what}"
        return (f"the submission's process exited with status {status} while {what}: "
                "does solution.py call exit(), sys.exit() or os._exit()?")

    def stop(self) -> None:
        """Kill the process group and every process it left (``kill_leftovers``), and
        remove the working folder (idempotent)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            with _LIVE_LOCK:
                _LIVE.pop(self.process.pid, None)
            kill_leftovers()
            self.drain.join(timeout=5)
            self.printed += self.drain.total
            self.output += bytes(self.drain.kept[:max(0, OUTPUT_KEPT - len(self.output))])
            for fd in (self.request_w, self.answer_r):
                os.close(fd)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(os.path.dirname(self.folder), ignore_errors=True)
            self.folder = None
