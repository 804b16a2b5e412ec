"""Gradescope's ``results.json`` and the readable summary.

Top level: ``score``, ``execution_time`` (seconds), ``output``, ``tests``; each test:
``name``, ``number``, ``score``, ``max_score``, ``output``, ``visibility``
(https://gradescope-autograders.readthedocs.io/en/latest/specs/).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

from ...core.paths import ensure_writable_dir, unreplaceable_kind, write_text

MAX_OUTPUT = 8000  # characters of one output field: a submission's answer can be any size
MAX_PART_OUTPUT = 1500  # characters of one part's reason within a question's output


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters left out)"


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates, which a submission's error
    message can hold) replaced by ``?``, and cut to ``MAX_OUTPUT`` characters:
    results.json and the summary must always be written, at a size Gradescope shows."""
    return cut(text, MAX_OUTPUT).encode("utf-8", "replace").decode("utf-8")


class TestResult(NamedTuple):
    number: str
    name: str
    score: float
    max_score: float
    output: str

    def as_gradescope(self) -> Dict[str, Any]:
        return {"name": self.name, "number": self.number, "score": self.score, "max_score": self.max_score,
                "output": _encodable(self.output), "visibility": "visible"}


def results_json(tests: List[TestResult], execution_time: float, output: str) -> Dict[str, Any]:
    return {"score": sum(t.score for t in tests), "execution_time": round(execution_time, 1),
            "output": _encodable(output), "tests": [t.as_gradescope() for t in tests]}


def check_results_path(path: os.PathLike) -> None:
    """Raise naming ``path`` now, before any grading, if results could not be written there."""
    kind = unreplaceable_kind(path)
    if kind is not None:
        raise ValueError(f"results file {str(path)!r} is {kind}, not a file that can be written")
    ensure_writable_dir(Path(path).parent)


def write_results(path: os.PathLike, results: Dict[str, Any]) -> None:
    """Write ``results`` atomically: a reader never sees half a file. A FIFO, device or
    socket there was put there while the submission ran (``check_results_path`` refused
    one before): it is removed, as a file or link there is replaced."""
    kind = unreplaceable_kind(path)
    if kind is not None and kind != "a folder":
        os.unlink(path)
    write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def summary(results: Dict[str, Any]) -> str:
    """One line per test with its score, the failed parts' reasons under it, and the total.
    A part failed for the reason the part before it gave (an import error fails them all)
    says so in a few words: each test of ``results`` keeps its reason in full."""
    lines, previous = [], None
    for t in results["tests"]:
        lines.append(f"{t['number']:>3}. {t['name']:<28} {t['score']:g}/{t['max_score']:g}")
        for line in t["output"].splitlines():
            if line.startswith("PASS"):
                continue
            head, _, reason = line.partition("): ")
            same = line.startswith("FAIL") and reason and reason == previous
            lines.append(f"       {head}): the same reason as above" if same else f"       {line}")
            previous = reason if line.startswith("FAIL") else None
    total = sum(t["max_score"] for t in results["tests"])
    lines.append(f"score: {results['score']:g}/{total:g} ({results['execution_time']:g} s)")
    if results["output"]:
        lines.append(results["output"])
    return "\n".join(lines)
