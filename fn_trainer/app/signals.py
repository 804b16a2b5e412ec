"""SIGTERM's handling while a block runs: set in one place, and given back after it."""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator


@contextlib.contextmanager
def on_sigterm(action: Any) -> Iterator[None]:
    """``action`` (a handler, or ``signal.SIG_DFL``) for SIGTERM while the block runs, the
    previous one after it. Only the main thread can set a handler: elsewhere nothing changes."""
    try:
        previous = signal.signal(signal.SIGTERM, action)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
