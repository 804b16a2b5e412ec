"""Training checkpoints: atomic writes, loads that never run code from the file.

A checkpoint is a ``dict`` of tensors and plain Python values (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``) written with ``torch.save``
and read back with ``torch.load(..., weights_only=True)``, whose unpickler refuses any
other object: a file cannot make the loader import or call anything. What that loader
trusts (compressed or damaged records, lists shared into exponential trees) is checked
around it (:mod:`fn_trainer.core.archives`).
"""
from __future__ import annotations

import io
import math
import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch import Tensor

from ..core.archives import archive_problem, check_tree_size
from ..core.checks import shown
from ..core.paths import NotAFileError, PathLike, read_regular_file, write_atomically

FORMAT = "fn-trainer-checkpoint"
VERSION = 3  # 2: the settings hold the data's digest (and a population's network); 3: also the dtype
READABLE_VERSIONS = (1, 2, 3)
PLAIN_SCALARS = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is unsafe, or does not belong to this run."""


def to_plain(tree: Any, name: str = "value", *, tensors: bool = True) -> Any:
    """``tree`` as tensors and plain containers only, so ``weights_only`` loading accepts it.

    NamedTuples become dicts of their fields, tuples become lists, paths become strings;
    tensors are detached. Anything else, and with ``tensors=False`` a tensor too (a run's
    ``config``, compared with ``==`` on resume), raises ``TypeError`` naming where it sits.
    """
    if isinstance(tree, Tensor):
        if not tensors:
            raise TypeError(f"{name} must hold plain values (str, int, float, bool, None, dicts, lists), "
                            "got a tensor")
        return tree.detach()
    if isinstance(tree, PLAIN_SCALARS):
        return tree
    if isinstance(tree, os.PathLike):
        return os.fspath(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {f: to_plain(v, f"{name}.{f}", tensors=tensors) for f, v in zip(tree._fields, tree)}
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be str, got {k!r}")
            out[k] = to_plain(v, f"{name}[{k!r}]", tensors=tensors)
        return out
    if isinstance(tree, (list, tuple)):
        return [to_plain(v, f"{name}[{i}]", tensors=tensors) for i, v in enumerate(tree)]
    raise TypeError(
        f"{name} must hold only tensors, str, int, float, bool, None, dicts, lists and "
        f"NamedTuples, got {type(tree).__name__}"
    )


def restore_like(template: Any, data: Any, name: str = "value") -> Any:
    """Rebuild ``template``'s structure (NamedTuples, dicts, tuples) from ``to_plain`` output.

    Every tensor in ``data`` must match the template's tensor in shape and dtype; it is
    moved to the template tensor's device, detached (a hand-edited tensor that requires
    gradients would chain every later step's graph to it). Raises ``CheckpointError``
    naming the first mismatch.
    """
    if isinstance(template, Tensor):
        if not isinstance(data, Tensor):
            raise CheckpointError(f"{name}: expected a tensor, found {type(data).__name__}")
        if data.shape != template.shape or data.dtype != template.dtype:
            raise CheckpointError(
                f"{name}: expected shape {tuple(template.shape)} {template.dtype}, found "
                f"{tuple(data.shape)} {data.dtype}"
            )
        return data.detach().to(template.device)
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        fields = _same_keys(template._fields, data, name)
        return type(template)(**{f: restore_like(getattr(template, f), data[f], f"{name}.{f}")
                                 for f in fields})
    if isinstance(template, Mapping):
        keys = _same_keys(template.keys(), data, name)
        return {k: restore_like(template[k], data[k], f"{name}[{k!r}]") for k in keys}
    if isinstance(template, (list, tuple)):
        if not isinstance(data, (list, tuple)) or len(data) != len(template):
            raise CheckpointError(f"{name}: expected a sequence of {len(template)} items")
        items = [restore_like(t, d, f"{name}[{i}]") for i, (t, d) in enumerate(zip(template, data))]
        return type(template)(items)
    return data


def plain_equal(found: Any, expected: Any) -> bool:
    """Whether ``found``, read from a checkpoint, is the plain tree ``expected`` (``to_plain``
    output): ``==`` on dicts, lists and scalars, except that NaN equals NaN (a run's
    ``config`` may hold one, and its own checkpoint must match it) and that a tensor, or any
    other object, equals nothing. The walk follows ``expected``, this run's own value."""
    if isinstance(expected, Mapping):
        return (isinstance(found, Mapping) and found.keys() == expected.keys()
                and all(plain_equal(found[k], expected[k]) for k in expected))
    if isinstance(expected, (list, tuple)):
        return (isinstance(found, (list, tuple)) and len(found) == len(expected)
                and all(plain_equal(f, e) for f, e in zip(found, expected)))
    if not isinstance(found, PLAIN_SCALARS):
        return False
    if isinstance(found, float) and isinstance(expected, float) and math.isnan(found) and math.isnan(expected):
        return True
    return found == expected


def _same_keys(expected, data: Any, name: str):
    expected = list(expected)
    if not isinstance(data, Mapping) or set(data) != set(expected):
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(f"{name}: expected keys {sorted(expected)}, found {found}")
    return expected


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (see ``to_plain``) to ``path`` atomically
    (``fn_trainer.core.paths.write_atomically``): a crash at any moment leaves either the
    previous checkpoint or the new one, never a partial file. The file is serialised in
    memory first, so only ``write_atomically`` touches the disk (a full disk is one
    ``WriteError`` naming the file, not a torch error)."""
    payload = {"format": FORMAT, "version": VERSION, **to_plain(dict(state), "state")}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomically(path, buffer.getvalue())


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; tensors land on the CPU.

    Uses ``torch.load(path, weights_only=True)``: a file holding any other Python
    object (a pickle that would run code) is refused with ``CheckpointError`` before
    anything in it is executed. Missing, truncated, damaged or foreign files also raise
    ``CheckpointError`` naming ``path``, as do archives that ``torch.save`` does not
    write (a compressed record, lists that unfold into more values than the file has
    bytes or nest deeper than ``MAX_DEPTH``): :mod:`fn_trainer.core.archives`.
    """
    path = Path(path)
    try:
        # Read first, as a regular file: torch.load on a FIFO would wait forever.
        raw = read_regular_file(path)
        problem = archive_problem(raw)  # every torch.save since torch 1.6 writes a zip archive
        if problem is not None:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {problem}")
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except NotAFileError as e:
        raise CheckpointError(f"checkpoint cannot be read: {e}") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than tensors and "
            f"plain Python values, and loading it could run code ({_first_line(e)})"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # torch's weights-only unpickler raises IndexError, KeyError... on garbage
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint): "
            f"{_first_line(e)}"
        ) from None
    try:
        check_tree_size(data, len(raw), "a tree")  # a value takes a byte or more of a pickle
    except ValueError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: it holds {e}, which fn-trainer never "
                              "writes (made by hand)") from None
    if not isinstance(data, dict) or not isinstance(data.get("format"), str) or data["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an fn-trainer checkpoint")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {shown(version)}; this "
            f"fn-trainer reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def rng_states() -> Dict[str, Any]:
    """The global generators' states (torch CPU and CUDA, ``random``, ``numpy.random``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what ``rng_states`` returned (after a ``load_checkpoint`` round trip).

    ``states`` is first checked against this process's own states (``restore_like``:
    the same keys, lengths, tensor shapes and dtypes), so a hand-edited state raises
    ``CheckpointError`` before any generator is changed.
    """
    template = rng_states()
    restore_like(template, {k: v for k, v in states.items() if k in template}, "rng")
    version, internal, gauss = states["python"]
    python = (version, tuple(internal), gauss)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    numpy = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    # each state is tried on a generator of its own first: one the others refuse changes nothing
    random.Random().setstate(python)
    np.random.RandomState().set_state(numpy)
    torch.Generator().set_state(states["torch"])
    torch.set_rng_state(states["torch"])
    random.setstate(python)
    np.random.set_state(numpy)
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)

