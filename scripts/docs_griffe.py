"""A griffe extension for the reference pages (mkdocs.yml): aqueue's docstrings as written.

aqueue's docstrings are Google style with two Sphinx habits that mkdocstrings does not
read on its own:

- ``#:`` comments above an attribute document it (``Settings``, ``CallOptions``, ``Task``'s
  class defaults): they become the attribute's docstring.
- roles such as ``:class:`~aqueue.core.protocols.Broker``` and ``:meth:`wait```: each
  becomes a link when the site documents its target, and a code span otherwise (an optional
  cross-reference: an unresolved one is no warning, so ``--strict`` stays quiet).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|exc|mod|data|obj):`(?P<target>[^`]+)`")


def _target(obj: griffe.Object, written: str) -> tuple[str, str]:
    """The identifier a role names, resolved from ``obj``'s module, and the text shown."""
    short = written.startswith("~")
    name = written.lstrip("~")
    module = obj.module
    if name.startswith("."):
        # Python's relative import rules, from the module the docstring is in
        package = module.path.split(".") if module.is_init_module else module.path.split(".")[:-1]
        dots = len(name) - len(name.lstrip("."))
        package = package[: len(package) - (dots - 1)]
        shown = name.lstrip(".")
        identifier = ".".join([*package, shown])
    elif name.startswith("aqueue."):
        identifier, shown = name, name
    else:
        # a bare name: what it means where the docstring is (the object's members, its
        # class's, its module's and what the module imports), else a guess in the module
        head, _, rest = name.partition(".")
        try:
            resolved = obj.resolve(head)
        except griffe.NameResolutionError:
            scope = obj if obj.kind is griffe.Kind.CLASS else obj.parent or module
            resolved = f"{scope.path}.{head}"
        identifier, shown = ".".join(filter(None, [resolved, rest])), name
    if short:
        shown = shown.rsplit(".", 1)[-1]
    return identifier, shown


def _roles(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        identifier, shown = _target(obj, match["target"])
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>"
        )

    return _ROLE.sub(link, text)


def _comment_above(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above ``obj``'s first line, joined."""
    if obj.lineno is None or isinstance(obj.filepath, list):
        return None
    try:
        lines = obj.lines_collection[obj.filepath]
    except KeyError:
        return None
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.append(lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(reversed(found)) or None


class AqueueDocstrings(griffe.Extension):
    """``#:`` comments as attribute docstrings; Sphinx roles as optional cross-references."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is None and (comment := _comment_above(attr)):
            attr.docstring = griffe.Docstring(comment, lineno=attr.lineno, parent=attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # once the whole package is loaded, so that every name a role uses can be resolved
        for obj in _objects(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _roles(obj, obj.docstring.value)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and everything defined in it (not what it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]
