"""The package a user installs: an sdist and a wheel built from this tree install into a
fresh virtualenv and run the quickstart (docs: README "Install")."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")

SMOKE = """
import asyncio
from aqueue import App

app = App("smoke", broker="memory://")

@app.task
async def add(x: int, y: int) -> int:
    return x + y

async def main() -> None:
    async with app, app.worker():
        assert await (await add.delay(2, 2)).wait(timeout=10) == 4
    print("smoke ok")

asyncio.run(main())
"""


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_a_built_package_installs_and_runs_the_quickstart(kind: str, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(UV, "build", "-q", f"--{kind}", "-o", dist)
    [built] = dist.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    if kind == "wheel":
        names = zipfile.ZipFile(built).namelist()
        assert "aqueue/py.typed" in names
        assert any(n.endswith("licenses/LICENSE") for n in names)
        assert any(n.endswith(".lua") for n in names)  # the scripts travel with the code
        # and the dashboard's templates and script (aqueue[web])
        assert any(n.endswith("aqueue/web/templates/base.html") for n in names)
        assert any(n.endswith("aqueue/web/static/live.js") for n in names)
        assert not any(n.startswith("tests/") for n in names)
    venv = tmp_path / "venv"
    run(UV, "venv", "-q", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    run(UV, "pip", "install", "-q", "--python", python, f"{built}[redis]")
    assert run(python, "-c", SMOKE, cwd=tmp_path).strip() == "smoke ok"
    assert run(venv / "bin" / "aqueue", "--version", cwd=tmp_path).startswith("aqueue ")
    # installed from the package, not from this checkout
    where = run(python, "-c", "import aqueue; print(aqueue.__file__)", cwd=tmp_path)
    assert str(venv) in where
