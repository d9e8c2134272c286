"""No module of the library reads a private name of another object.

An object's private names (``_x``) are its own: code may use ``self._x`` and
``cls._x``, and a module its own module-level ``_x``, but never
``other._x``. The check walks the AST of every module in ``pollsession/`` and
``adapters/`` and reports each ``<expr>._name`` whose ``<expr>`` is not
``self``/``cls`` (dunder names such as ``__name__`` are not private).

``super()._name`` is allowed too: it is the object's own method, as its base
class defines it (the Tornado adapter's override of ``RequestHandler._log``
calls it; that override is the adapter's one documented reliance on a
Tornado private name). ``os._exit`` is public, whatever its spelling: the
standard library documents it (a forked worker of the demo ends with it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.joinpath("pollsession").rglob("*.py"), *ROOT.joinpath("adapters").rglob("*.py")])


_DOCUMENTED_PUBLIC = {("os", "_exit")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def foreign_private_reads(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each attribute access ``x._name`` where ``x`` is not ``self`` or ``cls``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            if isinstance(owner, ast.Name) and (owner.id, node.attr) in _DOCUMENTED_PUBLIC:
                continue
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_check_catches_what_it_should() -> None:
    sample = ("def f(session, self):\n    self._ok\n    session._outbox\n    x.__name__\n    type(session)._y\n"
              "    super()._log()\n    os._exit(0)\n    sys._getframe()\n")
    assert [text for _, text in foreign_private_reads(sample)] == ["session._outbox", "type(session)._y", "sys._getframe"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_reads_another_objects_private_names(path: Path) -> None:
    reads = foreign_private_reads(path.read_text(encoding="utf-8"))
    assert not reads, f"{path.relative_to(ROOT)} reads private names of other objects: {reads}"
