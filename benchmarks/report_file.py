"""The benchmarks' ``--json`` file: checked before a run, written whole after it, or not at all
when the run is interrupted."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from fn_trainer.core.paths import ensure_writable_dir, unreplaceable_kind, write_atomically


def checked_json_path(parser: argparse.ArgumentParser, value: Optional[str]) -> Optional[Path]:
    """``--json`` as a ``Path`` (``None`` if not given), refused through ``parser.error`` now
    rather than after minutes of timing: empty, a folder (or a FIFO...) at the path, or a
    folder that cannot be written."""
    if value is None:
        return None
    if not value.strip():
        parser.error("--json must name a file, got an empty string")
    path = Path(value).expanduser()
    kind = unreplaceable_kind(path)
    if kind is not None:
        parser.error(f"--json {value}: it is {kind}, not a file")
    try:
        ensure_writable_dir(path.parent, create=False)
    except ValueError as e:
        parser.error(f"--json {value}: {e}")
    return path


def write_report(path: Path, report: Any) -> None:
    """``report`` as indented JSON at ``path``, atomically (``write_atomically``: an interrupt
    leaves the previous file whole, and a link at ``path`` is replaced, not written through)."""
    write_atomically(path, (json.dumps(report, indent=2) + "\n").encode())


def exit_status(main: Callable[[], int], prog: str) -> int:
    """``main()``'s exit status; Ctrl-C is one line (no ``--json`` is written before a run's
    end, so an earlier file at its path is untouched) and status 130."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
