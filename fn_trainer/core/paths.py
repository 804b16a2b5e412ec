"""Output locations: names that cannot escape their folder, folders known to be writable,
files replaced atomically, and discarded with what killed writes left beside them."""
from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import os
import re
import secrets
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]
# no write in progress is this old: its bytes are in memory and go out in one pass, or wait for
# the rest of a written_together block (a report section's figures: seconds)
STALE_TEMPORARY_S = 600
TOKEN_BYTES = 6  # of the random part of a temporary file's name: ``.<name>.<12 hex digits>.tmp``
# (temporary, path) of the writes of a ``written_together`` block, renamed when it ends
_PENDING: contextvars.ContextVar[Optional[List[Tuple[Path, Path]]]] = contextvars.ContextVar(
    "pending_renames", default=None)


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


def ensure_writable_dir(path: PathLike, *, create: bool = True) -> Path:
    """Create folder ``path`` (with parents) if needed and check that files can be written in it.

    ``create=False`` checks a missing folder without making it: its nearest existing
    ancestor must be a folder that can be written (where the first write will create it).
    Raises ``ValueError`` naming the folder when it cannot be created or written.
    """
    folder = Path(path)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        # a link to nothing counts as there: mkdir fails on it, and _reason names it
        existing = folder if create else next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
        if not existing.is_dir():  # a file where a folder goes: _reason names it
            raise FileExistsError(errno.EEXIST, "File exists")
        # os.access is unreliable (root, network mounts, read-only mounts): really write.
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"output folder {str(folder)!r} cannot be written: {_reason(folder, e)}") from None
    return folder


class NotAFileError(OSError):
    """A path to be read is not a regular file (a FIFO, a device, a folder, or a link
    where links are refused); the message names it."""


def open_regular_file(path: PathLike, *, follow_links: bool = True, dir_fd: Optional[int] = None) -> BinaryIO:
    """Regular file ``path`` opened for binary reading; ``NotAFileError`` naming it if it is
    anything else.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` before any read: a FIFO or a
    device never blocks the reader (a FIFO with no writer would wait forever, holding
    whatever lock the reader holds). With ``follow_links=False`` the open adds
    ``O_NOFOLLOW``, so a link planted at ``path`` is refused, never read through.
    ``dir_fd``: ``path`` is relative to that open folder. Other ``OSError``
    (``FileNotFoundError`` above all) propagate unchanged.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise NotAFileError(f"{str(path)!r} is a symbolic link, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFileError(f"{str(path)!r} is {file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)  # a regular file: plain reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What an ``st_mode`` describes, in words: "a regular file", "a FIFO", "a folder"..."""
    return {stat.S_IFREG: "a regular file", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
            stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a file")


def unreplaceable_kind(path: PathLike, *, follow_links: bool = False) -> Optional[str]:
    """What is at ``path`` if ``write_atomically`` must not replace it ("a folder", "a FIFO",
    "a character device"...: never a file of this tool's), ``None`` for a regular file, a
    symbolic link (replaced, never written through) or nothing. ``follow_links=True``
    judges what a link points to instead, for a path that is also to be read."""
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
    except OSError:  # nothing there, or a name the write itself will fail on (and name)
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else file_kind(mode)


def read_regular_file(path: PathLike, *, follow_links: bool = True) -> bytes:
    """The bytes of regular file ``path`` (see ``open_regular_file``)."""
    with open_regular_file(path, follow_links=follow_links) as f:
        return f.read()


class WriteError(OSError):
    """A file of the output could not be written; the message names it and, for a full
    disk, says so. The previous file at that path, if any, is unchanged."""


DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def check_replaceable(path: PathLike) -> Path:
    """``path`` as a ``Path`` if ``write_atomically`` may replace what is there (a regular
    file, a link or nothing), else the ``WriteError`` it would raise: checked before the
    work whose result is to be written there."""
    path = Path(path)
    kind = unreplaceable_kind(path)
    if kind is not None:
        error = WriteError(f"cannot write {str(path)!r}: it is {kind}, not a regular file, and is left as it is")
        error.path = path
        raise error
    return path


def write_atomically(path: PathLike, data: bytes) -> Path:
    """Replace file ``path`` with ``data``; the one way every output file is written.

    The bytes go to a new temporary file in the same folder (``O_EXCL``: never an existing
    file or link), are flushed to disk, and the temporary file is renamed onto ``path``
    (``os.replace``). A crash at any moment leaves either the previous file or the new
    one, never a partial file; an exception (``KeyboardInterrupt`` too) leaves no
    temporary file behind, a killed process may (``discard`` removes it). A symbolic link at
    ``path`` is replaced by the file, never written through, so nothing lands where the
    link points; a folder, FIFO, device or socket there is left as it is (``WriteError``).
    Any ``OSError`` (a full disk above all) becomes a one-line ``WriteError`` naming
    ``path``. Returns ``path``.
    """
    path = check_replaceable(path)
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(TOKEN_BYTES)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: its files are private (0600); this one gets the usual umask-based mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        pending = _PENDING.get()
        if pending is not None:
            pending.append((tmp, path))
            return path
        os.replace(tmp, path)
    except BaseException as e:  # also KeyboardInterrupt: never leave a stray temp file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    _fsync_dir(folder)
    return path


@contextlib.contextmanager
def written_together() -> Iterator[None]:
    """Files ``write_atomically`` writes in the block (in this thread: a thread started in it
    writes at once) replace their paths at its end, or none of them does.

    Each file's bytes go to its temporary file as they are written; only when the block
    ends without an exception, and every path can still be replaced (``check_replaceable``:
    no folder or FIFO put there meanwhile), are the temporaries renamed onto their paths,
    one rename after another (no data left to write, so a full disk cannot stop them half
    way; only a folder made at a path in the instant between the check and its rename
    could). An exception in the block (a full disk at the last file, ``KeyboardInterrupt``)
    or a path that can no longer be replaced deletes every temporary and leaves every path
    as it was: a report section and its figures stay one command's.
    """
    if _PENDING.get() is not None:  # nested: the outer block renames
        yield
        return
    pending: List[Tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        _discard_temporaries(pending)
        raise
    finally:
        _PENDING.reset(token)
    try:
        for _, path in pending:
            check_replaceable(path)
    except BaseException:
        _discard_temporaries(pending)
        raise
    for k, (tmp, path) in enumerate(pending):
        try:
            os.replace(tmp, path)
        except BaseException as e:
            _discard_temporaries(pending[k:])
            if isinstance(e, OSError):
                raise _write_error(path, e) from None
            raise
    for folder in dict.fromkeys(path.parent for _, path in pending):
        _fsync_dir(folder)


def _discard_temporaries(pending: List[Tuple[Path, Path]]) -> None:
    for tmp, _ in pending:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def temporaries(path: PathLike) -> List[Path]:
    """The temporary files of ``write_atomically`` beside ``path``: a write in progress, or
    one whose process was killed (SIGKILL, a power cut) before it could rename or remove it."""
    path = Path(path)
    return _temporaries_in(path.parent, re.escape(path.name))


def _temporaries_in(folder: Path, name_pattern: str) -> List[Path]:
    """The ``write_atomically`` temporaries in ``folder`` of the files whose names match ``name_pattern``."""
    name = re.compile(r"\." + name_pattern + r"\." + f"[0-9a-f]{{{2 * TOKEN_BYTES}}}" + re.escape(".tmp"))
    try:
        return sorted(entry for entry in folder.iterdir() if name.fullmatch(entry.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def discard(path: PathLike) -> None:
    """Delete file ``path`` if it exists, and the ``temporaries`` killed writers left beside
    it (a checkpoint's can be as large as the checkpoint): those untouched for
    ``STALE_TEMPORARY_S``. A younger one may be another process's write in progress (two
    commands training the same run into one folder), whose rename would fail without it."""
    Path(path).unlink(missing_ok=True)
    _discard_stale(temporaries(path))


def discard_stale_temporaries(folder: PathLike) -> None:
    """Delete every ``write_atomically`` temporary in ``folder`` untouched for
    ``STALE_TEMPORARY_S``: those of writers killed while their file's own ``discard`` was
    not yet due (a run killed, resumed and recorded within minutes leaves its checkpoint's)."""
    _discard_stale(_temporaries_in(Path(folder), ".+"))


def _discard_stale(files: List[Path]) -> None:
    now = time.time()
    for file in files:
        try:
            status = file.lstat()
            # write_atomically leaves files; a folder or FIFO of such a name is someone else's
            if stat.S_ISREG(status.st_mode) and now - status.st_mtime > STALE_TEMPORARY_S:
                file.unlink()
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            pass


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (it may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _file_in_the_way(folder: Path) -> Optional[Path]:
    """The first of ``folder``'s ancestors, or ``folder`` itself, that exists and is not a
    folder, or is a link to nothing: why creating ``folder`` fails with "File exists" or
    "Not a directory"."""
    try:
        for part in (*reversed(folder.parents), folder):
            if not part.exists():
                return part if part.is_symlink() else None  # a link to nothing is in the way too
            if not part.is_dir():
                return part
    except OSError:  # an ancestor that cannot be looked into: the OS's own reason then
        pass
    return None


def _reason(folder: Path, e: OSError) -> str:
    """Why writing in ``folder`` failed, in words."""
    if e.errno in DISK_FULL:
        return "the disk is full (no space left on device)"
    blocking = _file_in_the_way(folder) if e.errno in (errno.EEXIST, errno.ENOTDIR) else None
    if blocking is not None:
        what = "a symbolic link to nothing" if not blocking.exists() else "a file, not a folder"
        return f"{str(blocking)!r} is {what}"
    return e.strerror or str(e) or type(e).__name__


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = _reason(path.parent, e)
    error = WriteError(f"cannot write {str(path)!r}: {reason}; any earlier version of it is unchanged")
    error.errno = e.errno  # not .filename: OSError would then print itself as "[Errno ..."
    error.path = path
    return error


def write_figure(path: PathLike, figure, **savefig_kwargs) -> Path:
    """Render matplotlib ``figure`` to PNG in memory, then ``write_atomically`` to ``path``.

    Rendering first means a failed or interrupted render never touches ``path``, and
    ``savefig`` never opens ``path`` itself (which would follow a link there).
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig_kwargs)
    return write_atomically(path, buffer.getvalue())


def write_text(path: PathLike, text: str) -> Path:
    """``write_atomically`` of ``text`` as UTF-8."""
    return write_atomically(path, text.encode("utf-8"))


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
