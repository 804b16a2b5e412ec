"""Grade one ``solution.py``: run every question's checks against the submission's
process and collect the results.

This process imports no code of the submission: it only reads the answers the
submission's own process sends (``runner``), and writes ``results.json`` after that
process has ended, to a path it is never told.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from hypothesis import configuration as hypothesis_configuration

from ...core.checks import check_positive_float
from .limits import DEFAULT_BUDGET, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, START_ALLOWANCE
from .probe import encode
from .questions import QUESTIONS, Mismatch, interface_report, run_part
from .results import MAX_PART_OUTPUT, TestResult, check_results_path, cut, results_json, write_results
from .runner import Submission, SubmissionFailed, account


class Session:
    """The submission's process across questions: restarted for a question when an
    earlier one killed it, never again after its import failed."""

    budget_spent = "not graded: the grading's time budget ran out during this question"

    def __init__(self, submission: Submission, timeout: float, budget_end: float = float("inf")) -> None:
        self.submission, self.timeout, self.budget_end = submission, timeout, budget_end
        self.used = 0.0  # seconds spent waiting for the submission's answers in this question
        self.fatal: Optional[str] = None  # the import failed: nothing can be checked
        self.broken: Optional[str] = None  # this question's process died or overran
        self.answers: Dict[bytes, dict] = {}  # parts of a question often draw the same inputs
        self.note: Optional[str] = None  # why this question's Trainer was not a whole one (probe.init_notes)
        self.started = False  # whether the submission's process was ever started

    def begin(self) -> None:
        self.used = 0.0
        self.broken = self.note = None
        self.answers.clear()  # a question's answers may depend on state an earlier one left
        if self.fatal is None and not self.submission.running:
            first, self.started = not self.started, True
            try:  # the import has its own time, not the question's, within the budget
                self.submission.start(min(self._deadline() + START_ALLOWANCE, self.budget_end))
            except SubmissionFailed as e:
                # a restart cut short by the budget is not the import's fault; the first
                # import's is: no question has spent the budget before it
                if self.out_of_time() and not first:
                    self.broken = self.budget_spent
                else:
                    self.fatal = str(e)

    def _deadline(self) -> float:
        """The rest of the question's ``timeout``, from now: only the time spent waiting for
        the submission's answers counts, not the grader's work between its calls (the
        reference's answers, Hypothesis drawing examples), which a slower grading machine
        makes longer. Never past the end of the whole grading's budget."""
        return min(time.monotonic() + self.timeout - self.used, self.budget_end)

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.budget_end

    def _call(self, request: dict, what: str) -> dict:
        """The submission's answer to ``request``. When its own ``Trainer.__init__`` ended the
        process (``Submission.init_ended``), the request is asked once more, of a fresh
        process whose ``Trainer``s are made without that ``__init__``: so that, as when it
        raises or runs too long, a builder it calls costs its own question only."""
        ended_before = self.submission.init_ended
        try:
            return self.submission.call(request, self._deadline(), what)
        except SubmissionFailed:
            if ended_before or not self.submission.init_ended or self.out_of_time():
                raise
        self.submission.start(min(self._deadline() + START_ALLOWANCE, self.budget_end))
        return self.submission.call(request, self._deadline(), what)

    def ask(self, op: str, what: str, **inputs) -> Any:
        reason = self.fatal or self.broken
        if reason:
            raise SubmissionFailed(reason)
        request = {"op": op, **inputs}
        key = hashlib.sha256(encode(request)).digest()
        if key not in self.answers:
            called = time.monotonic()
            try:
                self.answers[key] = self._call(request, what)
            except SubmissionFailed as e:
                self.broken = self.budget_spent if self.out_of_time() else str(e)
                raise
            finally:
                self.used += time.monotonic() - called
        answer = self.answers[key]
        note = answer.get("note")  # the submission's process sent it: any value, any size
        if isinstance(note, str) and note:
            self.note = cut(note, MAX_PART_OUTPUT)
        if "error" in answer:
            raise Mismatch(f"{what} raised {answer['error']}")
        return answer["value"]


def not_graded(question, budget: float) -> TestResult:
    return TestResult(question.number, f"Question {question.number}: {question.title}", 0, question.points,
                      f"not graded: the grading's time budget of {budget:g} s was spent on the questions "
                      "before it (each of them slow or stopped at its time limit)")


def grade_question(question, session: Session) -> TestResult:
    session.begin()
    score, lines = 0, []
    for part in question.parts:
        try:
            failure = run_part(part, session.ask)
        except SubmissionFailed:
            failure = session.fatal or session.broken
        except Exception as e:  # a grader fault must not cost the other questions
            failure = session.fatal or session.broken or f"the check could not run ({type(e).__name__}: {e})"
        if failure is None:
            score += part.points
            lines.append(f"PASS {part.title} ({part.points}/{part.points})")
        else:  # cut: a submission's answer can be any size, and every part's line must show
            lines.append(f"FAIL {part.title} (0/{part.points}): {cut(failure, MAX_PART_OUTPUT)}")
            if session.note is not None and session.note not in lines:
                lines.append(session.note)
    return TestResult(question.number, f"Question {question.number}: {question.title}", score,
                      question.points, "\n".join(lines))


def grade_interface(session: Session) -> TestResult:
    session.begin()
    try:
        output = interface_report(session.ask)
    except (SubmissionFailed, Mismatch) as e:
        output = f"The interface could not be read: {session.fatal or session.broken or e}"
    except Exception as e:  # a grader fault must not cost the questions
        reason = session.fatal or session.broken or f"the check could not run ({type(e).__name__}: {e})"
        output = f"The interface could not be read: {reason}"
    return TestResult("0", "Interface (names, signatures, defaults, static methods)", 0, 0, output)


def grade(submission: os.PathLike, timeout: float = DEFAULT_TIMEOUT,
          memory_mb: int = DEFAULT_MEMORY_MB, allow_reference: bool = False,
          budget: float = DEFAULT_BUDGET, as_user: Optional[str] = None) -> Dict[str, Any]:
    """Grade ``submission`` (a ``solution.py``); return Gradescope's results as a dict.

    ``timeout`` seconds spent waiting for the submission's answers in each question (the
    grader's own work between its calls not counted), and ``budget`` for the whole grading: a
    question that would start after it is spent scores 0 as not graded, so that results
    are written before the platform's own limit stops the grader (eleven questions that
    each run into their time limit would take about 11 × ``timeout``, plus the grader's own
    work and the restarts).
    ``allow_reference=True`` lets the submission import ``fn_trainer`` and ``compat``
    (refused to students): for grading the project's own ``compat/solution.py``.
    ``as_user``: the account the submission's processes run as (``runner.account``; the
    grader must run as root), so that it can change nothing of the grader's.
    """
    path = Path(submission)
    if not path.is_file():
        raise ValueError(f"submission {str(path)!r} is not a file")
    timeout = check_positive_float("timeout", timeout)
    budget = check_positive_float("budget", budget)
    owner = None if as_user is None else account(as_user)
    start = time.monotonic()
    process = Submission(path, memory_mb, allow_reference, owner)
    session = Session(process, timeout, start + budget)
    try:
        with hypothesis_storage_elsewhere():
            tests = [grade_interface(session)]
            for q in QUESTIONS:  # a failed import is every question's reason, the budget's end or not
                spent = session.out_of_time() and not session.fatal
                tests.append(not_graded(q, budget) if spent else grade_question(q, session))
    finally:
        process.stop()
    notes = []
    if session.fatal:
        notes.append(f"solution.py could not be graded: {session.fatal}")
    if process.printed:
        shown = process.output.decode("utf-8", "replace")
        notes.append(f"solution.py printed {process.printed} bytes; the first {len(shown)}:\n{shown}")
    return results_json(tests, time.monotonic() - start, "\n".join(notes))


@contextlib.contextmanager
def hypothesis_storage_elsewhere() -> Iterator[None]:
    """Hypothesis's storage (its cache of the constants in the code under test) in a temporary
    folder, removed after: it would be ``.hypothesis/`` in the folder the grader runs in. The
    examples themselves are derandomised and kept nowhere (``database=None``)."""
    home_key = "__hypothesis_home_directory"  # the module's own global, set by set_hypothesis_home_dir
    previous = vars(hypothesis_configuration).get(home_key)
    with tempfile.TemporaryDirectory(prefix="fn-trainer-grade-") as home:
        hypothesis_configuration.set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            hypothesis_configuration.set_hypothesis_home_dir(previous)


def grade_to_file(submission: os.PathLike, results_path: os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                  memory_mb: int = DEFAULT_MEMORY_MB, allow_reference: bool = False,
                  budget: float = DEFAULT_BUDGET, as_user: Optional[str] = None) -> Dict[str, Any]:
    """``grade`` and write ``results.json`` to ``results_path`` once the submission's
    process has ended; a path where that cannot be is refused first."""
    check_results_path(results_path)
    results = grade(submission, timeout, memory_mb, allow_reference, budget, as_user)
    write_results(results_path, results)
    return results
