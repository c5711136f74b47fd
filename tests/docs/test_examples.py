"""Every ```python block of every page in docs/ runs, in the page's order.

How a page is run (the rules a docs author writes to):

- A page's blocks share one namespace and run one after the other inside a running event
  loop, compiled with top-level ``await`` allowed: ``h = await add.delay(2, 2)`` at the top
  level of a block is how a reader would type it in ``python -m asyncio``.
- A block whose first line is a comment naming a Python file (``# proj/tasks.py``) is a
  file of the reader's project: it is written there (in a fresh directory that is the
  working directory and on ``sys.path``) instead of being run, and imported when the page
  is done if nothing imported it before. Directories get an ``__init__.py``.
- Code a reader does not need to see sits in an HTML comment, which the site does not show:
  ``<!-- test-setup`` ... ``-->`` runs at that point of the page like a block (stubs for
  ``await get(url)``, a worker for the examples that follow: ``await
  stack.enter_async_context(app.worker())``, calls of the page's pytest functions). ``stack``
  is an ``AsyncExitStack`` closed when the page ends; ``tmp_path`` the page's directory.
- ``<!-- test: sync -->`` anywhere in a page runs it in a thread with no event loop (the
  blocking API refuses to run inside one); top-level ``await`` is then a syntax error.
- ``<!-- test: run-by tests/x/test_y.py -->``: the page has a test of its own, which runs
  every block (the file must exist and read the page).
- Servers: ``redis://localhost:6379/0`` (any local Redis URL) and a local ``amqp://`` URL
  are replaced by the test's own on the real servers, under a prefix no other test uses
  and that is deleted afterwards; ``memory://name`` gets a unique name. URLs of other hosts
  stay as written: an ``App`` does not connect until it is used.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aqueue.core.app import App

from ..conftest import (
    _SESSION_RABBIT_PREFIXES,
    RABBIT_HOST,
    RABBIT_PORT,
    REDIS_HOST,
    REDIS_PORT,
    delete_redis_prefix,
    rabbit_url,
    require_service,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_PIECES = re.compile(
    r"^```python\n(?P<code>.*?)^```\s*$"  # a code block
    r"|<!-- test-setup\n(?P<setup>.*?)-->"  # hidden code
    r"|<!-- test: (?P<directive>[^\n]*?) -->",
    flags=re.S | re.M,
)
_FILE = re.compile(r"#\s*(?P<path>[\w./-]+\.py)\b")
_REDIS = re.compile(
    r"redis://(?:localhost|127\.0\.0\.1)(?::6379)?(?:/(?P<db>\d+))?(?:\?(?P<query>[^\"'\s]*))?"
)
_AMQP = re.compile(
    r"amqp://guest:guest@(?:localhost|127\.0\.0\.1)(?::5672)?/(?:/|%2F)?"
    r"(?:\?(?P<query>[^\"'\s]*))?"
)
_MEMORY = re.compile(r"memory://(?P<name>[\w.-]*)")


@dataclass
class Piece:
    kind: str  # "code" | "setup" | "directive"
    text: str
    line: int


@dataclass
class Page:
    path: Path
    pieces: list[Piece]
    directives: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def run_by(self) -> str | None:
        for directive in self.directives:
            if directive.startswith("run-by "):
                return directive.removeprefix("run-by ").strip()
        return None

    @property
    def blocks(self) -> list[Piece]:
        return [piece for piece in self.pieces if piece.kind == "code"]


def read_page(path: Path) -> Page:
    text = path.read_text()
    pieces: list[Piece] = []
    for match in _PIECES.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match["code"] is not None:
            pieces.append(Piece("code", match["code"], line + 1))
        elif match["setup"] is not None:
            pieces.append(Piece("setup", match["setup"], line + 1))
        else:
            pieces.append(Piece("directive", match["directive"], line))
    return Page(path, pieces, [p.text for p in pieces if p.kind == "directive"])


def pages() -> list[Page]:
    found = [read_page(path) for path in sorted(DOCS.rglob("*.md"))]
    return [page for page in found if page.blocks]


def file_of(block: str) -> str | None:
    """The project file a block is (its first line names it), or ``None``."""
    first = block.split("\n", 1)[0].strip()
    match = _FILE.match(first)
    return match["path"] if match else None


class Servers:
    """The page's own names on the real servers, replacing the docs' local URLs."""

    def __init__(self) -> None:
        self.unique = f"aqt-doc-{uuid.uuid4().hex[:10]}"
        self.redis = False

    def rewrite(self, source: str) -> str:
        source = _REDIS.sub(self._redis, source)
        source = _AMQP.sub(self._amqp, source)
        return _MEMORY.sub(lambda m: f"memory://{m['name'] or 'docs'}-{self.unique}", source)

    def _redis(self, match: re.Match[str]) -> str:
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        self.redis = True
        query = f"prefix={self.unique}" + (f"&{match['query']}" if match["query"] else "")
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{match['db'] or 0}?{query}"

    def _amqp(self, match: re.Match[str]) -> str:
        require_service("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
        if self.unique not in _SESSION_RABBIT_PREFIXES:
            _SESSION_RABBIT_PREFIXES.append(self.unique)  # deleted when the session ends
        url = rabbit_url(self.unique)
        return url + (f"&{match['query']}" if match["query"] else "")

    def clean(self) -> None:
        if self.redis:
            delete_redis_prefix(self.unique)


def _compile(source: str, where: str, allow_await: bool) -> Any:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if allow_await else 0
    return compile(source, where, "exec", flags=flags, dont_inherit=True)


@contextlib.contextmanager
def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[App]]:
    """The page's working directory on ``sys.path``; every App it makes, to close them."""
    apps: list[App] = []
    original = App.__init__

    def recording(self: App, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        apps.append(self)

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(App, "__init__", recording)
    before = set(sys.modules)
    try:
        yield apps
    finally:
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]


def _write(tmp_path: Path, relative: str, source: str) -> str:
    target = tmp_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    for parent in target.relative_to(tmp_path).parents:
        if parent != Path(".") and not (tmp_path / parent / "__init__.py").exists():
            (tmp_path / parent / "__init__.py").write_text("")
    target.write_text(source)
    return relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


async def _run_page(page: Page, tmp_path: Path, servers: Servers) -> None:
    is_sync = "sync" in page.directives
    namespace: dict[str, Any] = {"__name__": "__docs__", "tmp_path": tmp_path}
    files: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        namespace["stack"] = stack
        for piece in page.pieces:
            if piece.kind == "directive":
                continue
            source = servers.rewrite(piece.text)
            relative = file_of(source) if piece.kind == "code" else None
            if relative is not None:
                files.append(_write(tmp_path, relative, source))
                continue
            code = _compile("\n" * (piece.line - 1) + source, str(page.path), not is_sync)
            if is_sync:
                await asyncio.to_thread(exec, code, namespace)
                continue
            result = eval(code, namespace)  # the page's own code
            if inspect.isawaitable(result):
                await result
        for module in files:
            if module not in sys.modules:
                if is_sync:
                    await asyncio.to_thread(importlib.import_module, module)
                else:
                    importlib.import_module(module)


def _ids(page: Page) -> str:
    return page.name


@pytest.mark.parametrize("page", [p for p in pages() if p.run_by is None], ids=_ids)
async def test_docs_page_examples_run(
    page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = Servers()
    monkeypatch.setenv("AQUEUE_DOCS_TEST", "1")
    try:
        with _project(tmp_path, monkeypatch) as apps:
            try:
                await _run_page(page, tmp_path, servers)
            finally:
                for app in reversed(apps):
                    await app.close()
    finally:
        servers.clean()


@pytest.mark.parametrize("page", [p for p in pages() if p.run_by is not None], ids=_ids)
def test_pages_with_their_own_test_name_it(page: Page) -> None:
    """A page run by a test of its own names that test, and the test reads the page."""
    assert page.run_by is not None
    test = ROOT / page.run_by
    assert test.is_file(), f"{page.name}: run-by {page.run_by} does not exist"
    assert page.path.name in test.read_text(), f"{page.run_by} does not read {page.name}"


def test_the_runner_finds_the_blocks_and_the_hidden_code() -> None:
    page = read_page(DOCS / "workflows.md")
    assert len(page.blocks) >= 7
    assert file_of("# proj/tasks.py\nfrom aqueue import App") == "proj/tasks.py"
    assert file_of("# settings.py: Django's") == "settings.py"
    assert file_of("import os\n# proj/tasks.py") is None
    servers = Servers()
    servers.redis = True  # nothing to delete: rewrite only
    rewritten = servers.rewrite('App("p", broker="redis://localhost:6379/0?x=1")')
    assert f"prefix={servers.unique}&x=1" in rewritten and "localhost" not in rewritten
    assert servers.rewrite('"memory://bulk-docs"') == f'"memory://bulk-docs-{servers.unique}"'
    assert servers.rewrite('"redis://redis.example.com:6380/0"') == (
        '"redis://redis.example.com:6380/0"'
    )
