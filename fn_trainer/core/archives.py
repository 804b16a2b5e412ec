"""The zip archives ``torch.save`` writes, checked before and after ``torch.load`` reads them.

``torch.load(..., weights_only=True)`` runs no code from a file, but it trusts the rest of
it: it inflates a deflated record whatever it expands to, it does not compare a record
with its CRC-32, and it rebuilds lists that a few bytes can make refer to each other, so
that ``[x, x]`` nested 40 deep is 2**40 values to anything that walks it. An archive that
``torch.save`` wrote has none of these: every record stored as it is, each with its
checksum, and no list or dict reached twice. :func:`archive_problem` looks at the bytes
before they are loaded, :func:`check_tree_size` at what was loaded, so that nothing after
the load walks more values than the file has bytes. What ``torch.load`` does while loading
is out of reach here: a crafted file that makes shared tuples dict keys or set members
costs it a hash of every path through them (seconds for a file of 1.4 kB nested 28 deep,
doubling with each level), which only a file written by hand holds.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any, Optional

import torch

NOT_AN_ARCHIVE = "it is not a whole file written by torch.save (truncated, or another kind of file)"


def archive_problem(raw: bytes, limit: Optional[int] = None) -> Optional[str]:
    """What keeps ``raw`` from being a whole archive as ``torch.save`` writes it, or ``None``.

    Refused: anything that is not a zip archive (a truncated one included); a compressed
    record (a deflated one can expand a thousandfold in ``torch.load``); with ``limit``,
    records that add up to more than ``limit`` bytes; a record whose bytes do not match
    its CRC-32 (``torch.load`` itself never checks).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            records = archive.infolist()
            if any(r.compress_type != zipfile.ZIP_STORED for r in records):
                return "it holds a compressed record, which torch.save never writes"
            if limit is not None and sum(r.file_size for r in records) > limit:
                return f"its records add up to over {limit} bytes"
            damaged = archive.testzip()  # reads every record and compares it with its CRC-32
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, ValueError,
            NotImplementedError):
        return NOT_AN_ARCHIVE
    if damaged is not None:
        return f"its record {damaged!r} is damaged (its bytes do not match their CRC-32)"
    return None


CONTAINERS = (dict, list, tuple, set, frozenset)  # what torch.load(weights_only=True) rebuilds around values
MAX_DEPTH = 64  # lists within lists: a file of ours nests a few deep; a recursive walk of ~1000 overflows


def check_tree_size(tree: Any, limit: int, what: str) -> None:
    """Raise ``ValueError`` when ``tree`` unfolds into more than ``limit`` lists, tuples,
    dicts, sets and values, counting an object each time it is reached, holds a tensor of
    more elements than its storage's bytes hold (or a sparse one), or nests them more than
    ``MAX_DEPTH`` deep, past which ``repr`` or ``==`` of it overflows the stack (``what``:
    the message's subject). A tree that ``torch.save`` wrote without shared lists holds
    no more values than the bytes of its pickle, each value taking one byte or more."""
    pending, seen = [(tree, 0)], 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > limit:
            raise ValueError(f"{what} of over {limit} nested values")
        if isinstance(item, CONTAINERS) and depth >= MAX_DEPTH:
            raise ValueError(f"{what} of lists or dicts nested over {MAX_DEPTH} deep")
        if isinstance(item, dict):
            pending.extend((k, depth + 1) for k in item.keys())
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, CONTAINERS):
            pending.extend((v, depth + 1) for v in item)
        elif isinstance(item, torch.Tensor):
            if item.layout != torch.strided:  # a sparse one has no storage of its own to measure
                raise ValueError(f"{what} with a tensor of layout {item.layout}")
            stored = item.untyped_storage().nbytes()
            # a view that repeats its bytes (stride 0): a few bytes of storage, as many elements as
            # the shape says to whatever reads it (2**40 of them: hours of torch.any)
            if item.numel() * item.element_size() > stored:
                raise ValueError(f"{what} with a tensor of {item.numel()} elements over {stored} bytes of "
                                 "storage (a view repeating its bytes)")
