"""A grader for the homework's ``solution.py``, in Gradescope's format.

``grade(path)`` runs the submission in its own process and scores section 1's eleven
questions (35 points) against ``fn_trainer``; ``write_bundle(zip_path)`` builds the
Gradescope autograder that does the same on Gradescope's machines.

Modules: ``interface`` (the template's names and signatures), ``functions`` and
``layers`` (shared by both processes), ``probe`` (the submission's process),
``runner`` (starting and limiting it), ``questions`` (the checks), ``results``
(``results.json``), ``grader`` (putting them together), ``bundle`` (the zip).
"""
from importlib import import_module

# Imported on first use: the submission's process runs ``probe`` from this package and
# must not pay for (or be able to reach) the grader's own modules.
_EXPORTS = {"DEFAULT_TIMEOUT": "limits", "grade": "grader", "grade_to_file": "grader",
            "QUESTIONS": "questions", "TOTAL_POINTS": "questions", "summary": "results",
            "write_bundle": "bundle"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
