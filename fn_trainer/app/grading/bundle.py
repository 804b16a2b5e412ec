"""Gradescope's autograder bundle: a zip with ``setup.sh``, ``run_autograder`` and this
project's source.

Gradescope unpacks the zip into ``/autograder/source`` and runs ``setup.sh`` once when
building the image; for each submission it runs ``run_autograder``, which grades
``/autograder/submission/solution.py`` into ``/autograder/results/results.json``. The
project is installed into a virtual environment, ``/autograder/venv``: the Python of
newer images refuses system-wide installs (PEP 668). ``AUTOGRADER_ROOT`` and
``AUTOGRADER_PYTHON`` override ``/autograder`` and that environment's ``python`` (for
trying the bundle outside Gradescope).
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path
from typing import Iterator, Union

from ...core.paths import write_atomically

PROJECT = Path(__file__).resolve().parents[3]
SOURCES = ("pyproject.toml", "README.md")
PACKAGES = ("fn_trainer",)  # not compat: the homework's answer has no place on the grading image
ACCOUNT = "fn-grading"  # the account setup.sh makes on Gradescope's image, that submissions run as

SETUP = """#!/usr/bin/env bash
# Runs once on Gradescope's image: install this project with the grader's extras into a
# virtual environment (newer images' Python refuses system-wide installs, PEP 668).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="${AUTOGRADER_ROOT:-/autograder}"
if ! command -v python3 >/dev/null || ! python3 -m venv --clear "$ROOT/venv" >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-venv python3-pip
    python3 -m venv --clear "$ROOT/venv"
fi
"$ROOT/venv/bin/python" -m pip install --no-cache-dir "./fn-trainer[grade]"
if [ -z "${AUTOGRADER_ROOT:-}" ]; then
    # On Gradescope's image (not where AUTOGRADER_ROOT points elsewhere, to try the bundle): an
    # account for the submission, which can run the environment's Python but can read none of
    # this project and write nothing of the grader's (run_autograder grades as root with it)
    id -u @ACCOUNT@ >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin @ACCOUNT@
    chmod o+x "$ROOT"
    chmod -R go-rwx "$PWD" "$("$ROOT/venv/bin/python" -c 'import fn_trainer, os; print(os.path.dirname(fn_trainer.__file__))')"
    # here, once, rather than in every grading: the account must be able to run it
    runuser -u @ACCOUNT@ -- "$ROOT/venv/bin/python" -I -c "import torch" ||
        { echo "setup.sh: the account @ACCOUNT@ cannot run $ROOT/venv/bin/python" >&2; exit 1; }
fi
"""

RUN = """#!/usr/bin/env bash
# Grades the submission into results.json; a missing solution.py scores 0 with the reason.
# One block, read whole before it runs: bash reads a script as it goes, and what a submission
# wrote into this file past that point would run after the grader.
{
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
mkdir -p "$ROOT/results"
SOLUTION="$ROOT/submission/solution.py"
if [ ! -f "$SOLUTION" ]; then
    # uploaded inside a folder (a zip of it): the one solution.py below is graded; with none,
    # or several, the score is 0 and the output lists what was uploaded
    SOLUTION=$("$PYTHON" -c 'import json, os, sys
root, results = sys.argv[1], sys.argv[2]
found = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)
solutions = [p for p in found if os.path.basename(p) == "solution.py" and os.path.isfile(os.path.join(root, p))]
if len(solutions) == 1:
    sys.stdout.buffer.write(os.fsencode(os.path.join(root, solutions[0])))
else:
    listed = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") if found else "no files"
    why = "Several files named solution.py were found" if solutions else "No solution.py was found"
    with open(results, "w") as f:
        json.dump({"score": 0, "execution_time": 0, "tests": [], "output": why + " in the submission (it "
                   "holds: " + listed + "): upload one file named solution.py."}, f)' \\
        "$ROOT/submission" "$ROOT/results/results.json") || SOLUTION=""
    if [ -z "$SOLUTION" ]; then
        [ -s "$ROOT/results/results.json" ] ||
            printf '%s\\n' '{"score": 0, "execution_time": 0, "output": "No solution.py was found in the submission: upload the file named solution.py.", "tests": []}' > "$ROOT/results/results.json"
        exit 0
    fi
fi
AS_USER=()
if [ "$(id -u)" = 0 ] && id -u @ACCOUNT@ >/dev/null 2>&1; then
    AS_USER=(--as-user @ACCOUNT@)  # setup.sh's account: the submission changes nothing of the grader's
fi
"$PYTHON" -m fn_trainer grade "$SOLUTION" --results "$ROOT/results/results.json" ${AS_USER[@]+"${AS_USER[@]}"}
status=$?
if [ "$status" -ne 0 ]; then
    # The grader was killed or failed before writing its results: whatever results.json holds
    # now (the submission runs as the same user, and could have written it) is not its work.
    # Written beside it and renamed over it: a link or folder put there is replaced, not followed.
    printf '{"score": 0, "execution_time": 0, "output": "The autograder stopped before it finished grading (exit status %s), so nothing was graded. Please tell the course staff.", "tests": []}\n' "$status" > "$ROOT/results/.results.json.$$"
    rm -rf "$ROOT/results/results.json"
    mv -f "$ROOT/results/.results.json.$$" "$ROOT/results/results.json"
fi
exit 0
}
"""


def project_files() -> Iterator[Path]:
    """The files ``pip install`` needs, relative to the project root."""
    for name in SOURCES:
        yield Path(name)
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            yield path.relative_to(PROJECT)


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # same bytes on every build
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
    archive.writestr(info, data)


def write_bundle(zip_path: Union[str, os.PathLike]) -> Path:
    """Write the autograder zip to ``zip_path`` and return its path."""
    out = Path(zip_path)
    if out.suffix != ".zip":
        raise ValueError(f"--bundle must name a .zip file, got {str(out)!r}")
    if not (PROJECT / "pyproject.toml").is_file():
        raise ValueError(f"the bundle is built from the project's source tree, but {PROJECT} has no "
                         "pyproject.toml (install fn-trainer from its source folder)")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "setup.sh", SETUP.replace("@ACCOUNT@", ACCOUNT).encode(), executable=True)
        _add(archive, "run_autograder", RUN.replace("@ACCOUNT@", ACCOUNT).encode(), executable=True)
        for rel in project_files():
            _add(archive, f"fn-trainer/{rel.as_posix()}", (PROJECT / rel).read_bytes())
    return write_atomically(out, buffer.getvalue())
