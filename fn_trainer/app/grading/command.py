"""``fn-trainer grade``: the grader's command line (wired into ``fn_trainer.app.cli``)."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from ...core.checks import check_positive_float
from .limits import DEFAULT_BUDGET, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT

HELP = "Grade a student's solution.py (section 1, 35 points) into Gradescope's results.json."


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("grade", help=HELP, description=HELP + " With --bundle, build Gradescope's "
                       "autograder zip instead.")
    p.add_argument("submission", nargs="?", type=Path, metavar="SUBMISSION.py", help="the file to grade")
    p.add_argument("--results", type=Path, default=Path("results.json"), metavar="FILE",
                   help="where to write Gradescope's results (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help="seconds spent waiting for the submission's answers in each question (the "
                        "grader's own work between them not counted), and for importing the file "
                        "(plus 20 s to start Python and torch; default: %(default)s)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="S",
                   help="time limit in seconds for the whole grading: questions left when it is spent score 0 "
                        "as not graded, and results.json is still written (default: %(default)s)")
    p.add_argument("--allow-reference", action="store_true",
                   help="let the submission import fn_trainer and compat (refused to students): "
                        "for grading this project's own compat/solution.py")
    p.add_argument("--as-user", default=None, metavar="ACCOUNT",
                   help="run the submission as this account, so that it can change nothing of the grader's "
                        "(the grader must run as root; the bundle's run_autograder does so)")
    p.add_argument("--bundle", type=Path, default=None, metavar="ZIP",
                   help="write Gradescope's autograder bundle (setup.sh, run_autograder) to ZIP")
    return p


def run(args: argparse.Namespace) -> int:
    """Grade, or build the bundle; bad arguments raise ``ValueError`` naming them."""
    if (args.submission is None) == (args.bundle is None):
        raise ValueError("grade needs either SUBMISSION.py or --bundle ZIP (one of them)")
    if args.bundle is not None:
        from .bundle import write_bundle

        print(write_bundle(args.bundle))
        return 0
    check_positive_float("--timeout", args.timeout)
    check_positive_float("--budget", args.budget)
    if not args.submission.is_file():
        raise ValueError(f"SUBMISSION.py: {str(args.submission)!r} is not a file")
    if args.results.exists() and args.results.resolve() == args.submission.resolve():
        # the results replace whatever is at --results: here, the student's work
        raise ValueError(f"--results {str(args.results)!r} is the submission itself: give the results another path")
    if args.as_user is not None:
        from .runner import account

        account(args.as_user, "--as-user")  # refused now, naming the option
    try:
        from .grader import grade_to_file
    except ImportError as e:  # hypothesis is an extra: pip install 'fn-trainer[grade]'
        if e.name != "hypothesis":
            raise
        raise ValueError(f"grading needs {e.name}: install it with pip install 'fn-trainer[grade]'") from None
    from .results import summary

    print(summary(_stopping_on_sigterm(grade_to_file, args.submission, args.results, args.timeout,
                                       DEFAULT_MEMORY_MB, args.allow_reference, args.budget, args.as_user)))
    print(f"results: {args.results}")
    return 0


def _stopping_on_sigterm(grade_to_file, *args):
    """``grade_to_file(*args)``, with SIGTERM raising ``SystemExit`` meanwhile, so that the
    grader's ``finally`` kills the submission's processes instead of leaving them running."""
    if threading.current_thread() is not threading.main_thread():
        return grade_to_file(*args)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return grade_to_file(*args)
    finally:
        signal.signal(signal.SIGTERM, previous)
