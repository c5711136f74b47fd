"""The documentation site (mkdocs.yml) builds with ``mkdocs build --strict``: no broken link
or anchor, no page left out of the nav, no docstring that mkdocstrings or griffe cannot read;
and the reference pages document the public API under the names the guides use."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: reference page -> ids (mkdocstrings' anchors) it must have: the names the guides teach
REFERENCE = {
    "app": ["aqueue.App", "aqueue.App.send_task", "aqueue.App.worker", "aqueue.App.conf"],
    "tasks": ["aqueue.Task.delay", "aqueue.Task.apply_async", "aqueue.Task.retry"],
    "results": ["aqueue.AsyncResult.wait", "aqueue.AsyncResult.revoke", "aqueue.GroupResult"],
    "canvas": ["aqueue.chain", "aqueue.group", "aqueue.chord", "aqueue.signature"],
    "exceptions": ["aqueue.core.errors.TaskFailed", "aqueue.core.errors.OptionError"],
    "settings": ["aqueue.Settings.broker_url", "aqueue.Settings.task_acks_late"],
    "worker": ["aqueue.Worker", "aqueue.offload"],
    "control": ["aqueue.core.control.Control.revoke", "aqueue.core.control.Inspect"],
    "beat": ["aqueue.beat.crontab", "aqueue.beat.BeatSchedule"],
    "testing": ["aqueue.testing.drain"],
    "contrib": ["aqueue.contrib.asgi.lifespan", "aqueue.contrib.prometheus.metrics_app"],
    "django": ["aqueue.django.AqueueBackend"],
    "protocols": ["aqueue.core.protocols.Broker", "aqueue.core.protocols.ResultBackend"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The site, built once per run: xdist's workers share the base temp directory's parent,
    and the first to take the lock builds there (a build is ~10 s of CPU; the tests of this
    module spread over the workers built it once per worker)."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    out = shared / "docs-site"
    with open(shared / "docs-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".built").is_file():
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            build = ["mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)]
            done = subprocess.run(
                [sys.executable, "-m", *build],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            (out / ".built").touch()
    return out


@pytest.mark.timeout(300)
def test_every_page_is_built(site: Path) -> None:
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert pages
    for page in pages:
        html = page.parent if page.stem == "index" else page.with_suffix("")
        assert (site / html / "index.html").is_file(), f"docs/{page} has no page in the site"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", sorted(REFERENCE))
def test_reference_documents_the_public_names(site: Path, page: str) -> None:
    html = (site / "reference" / page / "index.html").read_text()
    ids = set(re.findall(r'id="(aqueue[\w.]*)"', html))
    missing = [name for name in REFERENCE[page] if name not in ids]
    assert not missing, f"reference/{page}.md documents none of {missing}"
    # Sphinx roles in docstrings became links or code spans (scripts/docs_griffe.py)
    assert not re.search(r":(class|func|meth|attr|mod|exc|data):`", html)


@pytest.mark.timeout(300)
def test_attribute_comments_are_documented(site: Path) -> None:
    """``#:`` comments above a setting are its documentation on the settings page."""
    html = (site / "reference" / "settings" / "index.html").read_text()
    assert "ack after the task finished (at-least-once)" in html
