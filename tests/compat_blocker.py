"""Run pytest where ``fn_trainer`` and ``compat`` cannot be imported.

``python tests/compat_blocker.py <pytest arguments>``: how the compat suite checks an
exported ``solution.py`` (named by ``FN_TRAINER_SOLUTION``) stands on its own, as on a
grader's machine where only the template's libraries are installed.
"""
import importlib.abc
import sys

BLOCKED = ("fn_trainer", "compat")


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses every module under ``BLOCKED``, wherever it is installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{fullname} is blocked for this run", name=fullname)
        return None


def main(argv) -> int:
    sys.meta_path.insert(0, Blocker())
    import pytest

    return pytest.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
