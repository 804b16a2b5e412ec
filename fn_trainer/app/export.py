"""Write the homework's ``solution.py`` as one standalone file.

The file carries ``compat/solution.py`` and the sources of the ``fn_trainer`` modules
it needs (found by following their imports). The modules are served from strings by
an import hook under a private package name, ``_fn_trainer_<hash>``, so the file never
collides with an installed ``fn_trainer`` and needs nothing beyond the template's own
imports (torch, torchvision, numpy, tqdm) and the standard library.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple, Union

from ..core.paths import write_text

PACKAGE = "fn_trainer"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOLUTION_SOURCE = PACKAGE_DIR.parent / "compat" / "solution.py"
# What the exported file may import at module level, beside the standard library.
ALLOWED_IMPORTS = frozenset({"torch", "torchvision", "numpy", "tqdm"})

LOADER = '''
# ---- fn_trainer modules embedded below; served by an import hook as {package!r} ----
import importlib.abc as _importlib_abc
import importlib.util as _importlib_util
import linecache as _linecache
import sys as _sys

_EMBEDDED_PACKAGE = {package!r}
_EMBEDDED_SOURCES = {{
{sources}}}


class _EmbeddedModules(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """Finds and runs the embedded modules as submodules of ``_EMBEDDED_PACKAGE``."""

    package = _EMBEDDED_PACKAGE

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.package:
            return _importlib_util.spec_from_loader(fullname, self, is_package=True)
        if not fullname.startswith(self.package + "."):
            return None
        name = fullname[len(self.package) + 1:]
        if name in _EMBEDDED_SOURCES:
            return _importlib_util.spec_from_loader(fullname, self)
        if any(module.startswith(name + ".") for module in _EMBEDDED_SOURCES):
            return _importlib_util.spec_from_loader(fullname, self, is_package=True)  # left empty
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__[len(self.package) + 1:]
        if name not in _EMBEDDED_SOURCES:  # the package or a subpackage: nothing to run
            return
        source = _EMBEDDED_SOURCES[name]
        filename = "<solution.py: {origin}/" + name.replace(".", "/") + ".py>"
        # so that tracebacks through the embedded code show its lines
        _linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)


if not any(getattr(f, "package", None) == _EMBEDDED_PACKAGE for f in _sys.meta_path):
    _sys.meta_path.insert(0, _EmbeddedModules())
# ---- end of the embedded fn_trainer modules ----
'''


# The template's NetworkConfiguration is the file's own: a configuration pickled in one process
# names this module, which pickle imports by itself in another, not the embedded package,
# which exists only once this file has run.
# The file loaded a second time in one process (under another name) shares the embedded
# modules, and so the class, with the first load, whose name it keeps.
FOOTER = ("\n\nif NetworkConfiguration.__module__.startswith(_EMBEDDED_PACKAGE):  # unclaimed by an earlier load\n"
          "    NetworkConfiguration.__module__ = __name__  # pickles name this file, as the template's own class does\n")


def export_solution(out_path: Union[str, os.PathLike], *, name: str = "out_path") -> Path:
    """Write the standalone ``solution.py`` to ``out_path`` (a ``.py`` file; its folder
    is created if needed) and return its path; errors call the path ``name``."""
    out = Path(out_path)
    if out.suffix != ".py":
        raise ValueError(f"{name} must name a .py file, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"{name} must name a file, but {str(out)!r} is a folder")
    text = solution_text()
    # Atomic: a failed write never leaves a truncated solution.py in place of the old one.
    return write_text(out, text)


def solution_text() -> str:
    """The exported file's contents."""
    solution = SOLUTION_SOURCE.read_text(encoding="utf-8")
    sources = {name: module_path(name).read_text(encoding="utf-8") for name in needed_modules(solution)}
    check_imports("compat/solution.py", solution, "", sources)
    for name, source in sources.items():
        check_imports(f"{PACKAGE}/{name.replace('.', '/')}.py", source, name, sources)
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:12]
    package = f"_{PACKAGE}_{digest}"
    loader = LOADER.format(
        package=package,
        origin=PACKAGE,
        sources="".join(f"    {name!r}: {string_literal(source)},\n" for name, source in sources.items()),
    )
    head, body = split_preamble(rewrite_imports(solution, package))
    text = f"{head}{loader}\n{body}{FOOTER}"
    compile(text, "solution.py", "exec")  # a broken export fails here, not in the grader
    return text


def module_path(name: str) -> Path:
    """The file of the ``fn_trainer`` module ``name`` (dotted, relative to the package)."""
    return PACKAGE_DIR.joinpath(*name.split(".")).with_suffix(".py")


def imported_modules(node: ast.AST, module: str = "") -> List[str]:
    """Absolute names of the modules an import ``node`` loads (none for other nodes);
    relative imports are resolved from ``module``, the importing ``fn_trainer`` module
    (dotted, relative to the package; ``""`` for a file outside it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level:
        return [node.module]
    parts = [PACKAGE, *module.split(".")][:-node.level] if module else [PACKAGE]
    if node.module:
        return [".".join([*parts, node.module])]
    return [".".join([*parts, alias.name]) for alias in node.names]  # from . import a, b


def string_literal(text: str) -> str:
    """A Python literal for ``text``: a readable raw triple-quoted string when that
    spells ``text`` exactly, else ``repr``."""
    literal = f"r'''{text}'''"
    if "'''" not in text and not text.endswith("\\"):
        try:
            if ast.literal_eval(literal) == text:
                return literal
        except (SyntaxError, ValueError):
            pass
    return repr(text)


def module_imports(source: str, module: str = "") -> Iterator[Tuple[ast.AST, str]]:
    """``(node, absolute module name)`` for every import anywhere in ``source``, the
    text of ``fn_trainer`` module ``module`` (see ``imported_modules``)."""
    for node in ast.walk(ast.parse(source)):
        for imported in imported_modules(node, module):
            yield node, imported


def needed_modules(solution: str) -> List[str]:
    """Names of the ``fn_trainer`` submodules ``solution`` needs, with their own needs,
    in a stable order."""
    needed: Set[str] = set()
    todo = [(solution, "")]
    while todo:
        for node, module in module_imports(*todo.pop()):
            root, _, name = module.partition(".")
            if root != PACKAGE:
                continue
            if not name or not module_path(name).is_file():
                raise ValueError(
                    f"line {node.lineno}: import the {PACKAGE} module that defines a name "
                    f"(from {PACKAGE}.core.losses import ...), not {module!r}: only single-file "
                    "modules are embedded, and a package's __init__ imports modules the exported "
                    "file does not need"
                )
            if name not in needed:
                needed.add(name)
                todo.append((module_path(name).read_text(encoding="utf-8"), name))
    return sorted(needed)


def check_imports(origin: str, source: str, module: str, embedded: Dict[str, str]) -> None:
    """Raise ``ValueError`` if ``source`` imports, when it is loaded, anything beyond the
    standard library, ``ALLOWED_IMPORTS`` and the embedded modules.

    Imports inside functions run only when called (matplotlib for figures), so they
    are not restricted.
    """
    allowed = set(sys.stdlib_module_names) | ALLOWED_IMPORTS | {"__future__"}
    for node in load_time_nodes(ast.parse(source)):
        for imported in imported_modules(node, module):
            root, _, rest = imported.partition(".")
            if root == PACKAGE and rest in embedded:
                continue
            if root not in allowed:
                raise ValueError(
                    f"{origin} line {node.lineno} imports {imported!r} when loaded; the exported "
                    f"solution may only import the standard library and {sorted(ALLOWED_IMPORTS)} "
                    "at module level (import other packages inside the function that needs them)"
                )


def load_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``tree`` that run when the module is loaded (not function bodies)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield child
        yield from load_time_nodes(child)


def rewrite_imports(source: str, package: str) -> str:
    """``source`` with its ``fn_trainer`` imports pointed at ``package``."""
    lines = source.splitlines(keepends=True)
    pattern = re.compile(rf"\b{PACKAGE}\b")
    for node, module in module_imports(source):
        if module.split(".")[0] == PACKAGE:
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = pattern.sub(package, lines[i])
    return "".join(lines)


def split_preamble(source: str) -> Tuple[str, str]:
    """``(docstring and __future__ imports, the rest)``: what must stay first in a file."""
    tree = ast.parse(source)
    end = 0
    for node in tree.body:
        is_docstring = (node is tree.body[0] and isinstance(node, ast.Expr)
                        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (is_docstring or is_future):
            break
        end = node.end_lineno
    lines = source.splitlines(keepends=True)
    return "".join(lines[:end]), "".join(lines[end:])
