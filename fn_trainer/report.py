"""``report.md``: one section per experiment, each kept in ``<out>/<experiment>/section.md``
so that rerunning one experiment rewrites its section and keeps the others."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from .paths import safe_path, write_text

ORDER = ("equivariance", "lr-sweep", "depth", "cnn", "cnn-shapes")
SECTION_FILE = "section.md"
REPORT_FILE = "report.md"
TITLE = "# Fashion-MNIST experiments (homework 3, section 2)"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def image(experiment: str, filename: str, alt: str) -> str:
    """Markdown embedding ``<out>/<experiment>/<filename>`` relative to ``report.md``."""
    return f"![{alt}]({experiment}/{filename})"


def write_section(out: Path, experiment: str, markdown: str) -> Path:
    """Store ``markdown`` as ``experiment``'s section, rebuild ``report.md``, return its path."""
    folder = safe_path(out, experiment)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / SECTION_FILE, markdown.rstrip() + "\n")
    return assemble(out)


def assemble(out: Path) -> Path:
    """Write ``<out>/report.md`` from the sections present, in question order."""
    out = Path(out)
    parts = [TITLE, "",
             "Measured results only; every section names the command that produced it. "
             "Accuracies are fractions in [0, 1]; epoch 0 is before training."]
    for name in ORDER:
        section = out / name / SECTION_FILE
        if section.exists():
            parts += ["", section.read_text(encoding="utf-8").rstrip()]
    path = out / REPORT_FILE
    write_text(path, "\n".join(parts) + "\n")
    return path
