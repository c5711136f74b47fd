"""``python -m benchmarks setup``: create .bench-venv with every peer and aqueue itself."""

from __future__ import annotations

import subprocess
import sys
import venv

from .config import BENCH_DIR, BENCH_VENV, REPO_ROOT

ARQ = "arq==0.28.0"


def bench_python() -> str:
    return str(BENCH_VENV / "bin" / "python")


def setup() -> None:
    if not (BENCH_VENV / "bin" / "python").exists():
        print(f"creating {BENCH_VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(BENCH_VENV)
    py = bench_python()

    def pip(*args: str) -> None:
        subprocess.run([py, "-m", "pip", "install", "-q", *args], check=True)

    pip("-U", "pip")
    pip("-r", str(BENCH_DIR / "requirements.txt"))
    pip("--no-deps", ARQ)
    pip("-e", f"{REPO_ROOT}[redis,rabbitmq,uvloop]")
    subprocess.run([py, "-m", "pip", "check"], check=False)
    print(f"bench venv ready: {py}", file=sys.stderr)
