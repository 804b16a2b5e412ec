"""Output locations: names that cannot escape their folder, folders known to be writable."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

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
