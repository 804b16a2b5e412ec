"""The course template's interface, read from its written specification.

``../shared/spec/template-interface.md`` states every module-level function and
``Trainer`` method with its signature; this module turns that text into
:class:`Expected` records (parameter names in order, defaults, static-ness) so that
a test can hold a ``solution.py`` against the document itself, not against a copy.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest

SPEC = Path(os.environ.get("FN_TRAINER_SPEC",
                           Path(__file__).resolve().parents[1] / ".." / "shared" / "spec" / "template-interface.md"))


class Expected(NamedTuple):
    """One function as the template declares it. ``defaults`` hold source text
    (``"'mlp'"``, ``"NetworkConfiguration()"``); ``star`` names a ``*args`` parameter."""

    params: List[str]
    defaults: Dict[str, str]
    static: bool
    star: Optional[str] = None


def _parse_signature(name: str, signature: str, static: bool) -> Expected:
    """``(a: int, b=1) -> T`` as written in the spec, read with Python's own parser."""
    tree = ast.parse(f"def {name}{signature}: pass").body[0]
    args = tree.args
    params = [a.arg for a in args.args]
    defaults = {a.arg: ast.unparse(d) for a, d in zip(args.args[len(args.args) - len(args.defaults):], args.defaults)}
    return Expected(params, defaults, static, args.vararg.arg if args.vararg else None)


def read_spec(path: Path = SPEC) -> Dict[str, Expected]:
    """Every function the spec declares: the module-level ones by name, the methods as
    ``Trainer.<name>``. Skips the calling test when the file is absent (it lives beside the
    repository, not in it); raises ``ValueError`` naming the file if a part is missing."""
    if not path.is_file():
        pytest.skip(f"the template's interface specification is not at {path} (set FN_TRAINER_SPEC)")
    text = path.read_text()
    found: Dict[str, Expected] = {}
    for name in ("gradient_norm", "jacobian_norm"):  # "- `name(...) -> float` — ..."
        m = re.search(rf"^- `{name}(\(.*?\)) -> [^`]*`", text, re.MULTILINE)
        if m is None:
            raise ValueError(f"{path}: no signature for {name}")
        found[name] = _parse_signature(name, m.group(1), static=False)
    m = re.search(r"^`__init__(\(self.*?\))`$", text, re.MULTILINE)
    if m is None:
        raise ValueError(f"{path}: no signature for Trainer.__init__")
    found["Trainer.__init__"] = _parse_signature("__init__", m.group(1), static=False)
    # method table rows: | `name` (S, given) | `(signature) -> result` | notes |
    for name, marks, signature in re.findall(r"^\| `(\w+)`( \([^)]*\))? \| `(\(.*?\))(?: -> [^`]*)?` \|",
                                             text, re.MULTILINE):
        found[f"Trainer.{name}"] = _parse_signature(name, signature, static=re.match(r" \(S\b", marks) is not None)
    if len(found) < 3 + 13:
        raise ValueError(f"{path}: expected 13 Trainer methods in the table, found {len(found) - 3}")
    return found
