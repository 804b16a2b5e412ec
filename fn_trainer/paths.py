"""Output locations: names that cannot escape their folder, folders known to be writable,
files replaced atomically."""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, os.PathLike]


def safe_path(root: PathLike, name: str) -> Path:
    """``root / name`` for a plain file or folder name.

    ``name`` must be a single, non-empty path component: no separators, not ``.`` or
    ``..``, not absolute, no NUL byte. Raises ``ValueError`` naming ``name`` otherwise,
    so that nothing written under a run name can land outside ``root``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (a single file or folder name), got {type(name).__name__}")
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    problem = None
    if not name.strip():
        problem = "it is empty"
    elif name in (".", ".."):
        problem = "it refers to a folder itself, not a name inside it"
    elif "\0" in name:
        problem = "it contains a NUL byte"
    elif any(s in name for s in separators) or os.path.isabs(name) or Path(name).drive:
        problem = "it contains a path separator or is absolute"
    if problem:
        raise ValueError(
            f"name must be a single file or folder name inside {str(root)!r}, got {name!r}: {problem}"
        )
    return Path(root) / name


def ensure_writable_dir(path: PathLike) -> Path:
    """Create folder ``path`` (with parents) if needed and check that files can be written in it.

    Raises ``ValueError`` naming the folder when it cannot be created or written.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # os.access is unreliable (root, network mounts, read-only mounts): really write.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(f"output folder {str(folder)!r} cannot be written: {reason}") from None
    return folder


def replace_atomically(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Replace file ``path`` with what ``write(f)`` writes to a binary file ``f``.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the
    file is renamed over ``path`` (``os.replace``): a crash at any moment leaves either
    the previous file or the new one, never a partial file, and no temporary file is
    left behind. Returns ``path``.
    """
    path = Path(path)
    folder = ensure_writable_dir(path.parent)
    # Not mkstemp: its files are private (0600); this one gets the usual umask-based mode.
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave a stray temp file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
