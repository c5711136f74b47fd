"""``python -m benchmarks setup`` / ``run`` / ``report``.

run:    python -m benchmarks run [SCENARIO ...] [SYSTEM,SYSTEM] [--scenario S ...]
                                 [--systems a,b] [--repeat N] [--quick] [--output PATH]
report: python -m benchmarks report PATH [--markdown]

``run`` re-executes itself with .bench-venv's interpreter when started from another one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import BENCH_VENV, FULL, QUICK, REDIS_URL, REPO_ROOT, RESULTS_DIR, Sizes


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == BENCH_VENV.resolve()


def _reexec_in_bench_venv() -> None:
    py = BENCH_VENV / "bin" / "python"
    if not py.exists():
        raise SystemExit("no .bench-venv: run `python -m benchmarks setup` first")
    os.chdir(REPO_ROOT)
    os.execv(str(py), [str(py), "-m", "benchmarks", *sys.argv[1:]])


def _plan(scenarios: list[str], sizes: Sizes) -> list[str]:
    """Scenario names as run: enqueue -> three modes, scale -> one per worker count."""
    out: list[str] = []
    for s in scenarios:
        if s == "enqueue":
            out += ["enqueue-one", "enqueue-concurrent", "enqueue-bulk"]
        elif s == "scale":
            out += [f"scale-{w}" for w in sizes.scale_workers if w != 1 or "drain" not in scenarios]
        else:
            out.append(s)
    return out


def _meta(sizes: Sizes, repeat: int, systems: list[str], scenarios: list[str]) -> dict[str, Any]:
    import redis

    from .systems import get

    r = redis.Redis.from_url(REDIS_URL)
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "aqueue"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")
        if any(line.strip() for line in dirty):
            commit += " + uncommitted changes in aqueue/"
    except OSError:
        commit = ""
    versions: dict[str, str] = {}
    settings: dict[str, dict[str, str]] = {}
    for name in systems:
        system = get(name)
        try:
            versions[name] = system.version()
        except Exception as exc:
            versions[name] = f"? ({exc})"
        settings[name] = dict(system.settings)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "redis": r.info("server")["redis_version"],
        "sizes": sizes.__dict__ | {"scale_workers": list(sizes.scale_workers)},
        "repeat": repeat,
        "systems": systems,
        "scenarios": scenarios,
        "versions": versions,
        "settings": settings,
    }


def cmd_run(args: argparse.Namespace) -> None:
    if not _in_bench_venv():
        _reexec_in_bench_venv()
    from . import procs, report, runner
    from .systems import ALL, get

    procs.install_handlers()
    for word in args.words:  # positional form: `run drain rtt aqueue,taskiq`
        if word in runner.SCENARIOS:
            args.scenario = [*(args.scenario or []), word]
        else:
            args.systems = ",".join(filter(None, [args.systems, word]))
    sizes = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 3)
    systems = [s.strip() for s in args.systems.split(",")] if args.systems else list(ALL)
    for s in systems:
        get(s)  # fail early on a typo
    scenarios = args.scenario or list(runner.SCENARIOS)
    for s in scenarios:
        if s not in runner.SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; known: {', '.join(runner.SCENARIOS)}")
    plan = _plan(scenarios, sizes)
    meta = _meta(sizes, repeat, systems, plan)
    baselines = {s: get(s).baseline for s in systems}
    bench = runner.Bench(sizes)
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = (
        Path(args.output)
        if args.output
        else RESULTS_DIR
        / (dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json")
    )

    def save() -> None:
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        out_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")

    not_applicable: set[tuple[str, str]] = set()
    for scenario in plan:
        base = scenario.split("-")[0]
        for rep in range(repeat):
            for name in systems:
                system = get(name)
                if base not in system.scenarios or (scenario, name) in not_applicable:
                    continue
                t0 = time.monotonic()
                result = bench.run_one(scenario, name)
                runs.append({"scenario": scenario, "system": name, "rep": rep, "result": result})
                if (
                    scenario == "drain"
                    and "scale-1" not in plan
                    and "scale" in scenarios
                    and "scale" in system.scenarios
                ):
                    runs.append(
                        {"scenario": "scale-1", "system": name, "rep": rep, "result": result}
                    )
                runner.log(
                    f"[{time.monotonic() - started:6.0f}s] {scenario:<19} {name:<14} rep {rep + 1}"
                    f"/{repeat} {time.monotonic() - t0:5.1f}s  {_brief(result)}"
                )
                save()
                if "na" in result:
                    not_applicable.add((scenario, name))  # n/a on every repeat
    save()
    print(report.text_table(runs, systems, baselines))
    notes = report.notes(runs)
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"  {n}")
    print(f"\nresults: {out_path}  ({time.monotonic() - started:.0f}s)")


def _brief(result: dict[str, Any]) -> str:
    if "na" in result:
        return f"n/a ({result['na']})"
    if "error" in result:
        return f"FAILED: {result['error'][:200]}"
    keys = ("rate", "p50_ms", "p99_ms", "rss_mib", "cpu_us", "redis_cmds")
    return "  ".join(f"{k}={result[k]:,.2f}" for k in keys if k in result)


def cmd_report(args: argparse.Namespace) -> None:
    from . import report
    from .systems import get

    data = json.loads(Path(args.path).read_text())
    systems = data["meta"]["systems"]
    baselines = {}
    for s in systems:
        try:
            baselines[s] = get(s).baseline
        except Exception:  # an adapter's library is missing here: assume aqueue
            baselines[s] = "aqueue-amqp" if "amqp" in s else "aqueue"
    runs = data["runs"]
    if args.markdown:
        print(report.markdown_table(runs, systems, baselines))
        print()
        print(report.spread_table(runs, systems))
        print()
        print(report.cost_table(runs, systems))
        print()
        print(report.targets(runs))
        print()
        print(report.settings_markdown(data["meta"]))
    else:
        print(report.text_table(runs, systems, baselines))
    for n in report.notes(runs):
        print(f"- {n}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create .bench-venv with the peers and aqueue")
    run = sub.add_parser("run", help="run the scenarios")
    run.add_argument(
        "words",
        nargs="*",
        metavar="SCENARIO|SYSTEMS",
        help="scenario names and/or comma-separated systems (same as the options)",
    )
    run.add_argument(
        "--scenario",
        action="append",
        help="enqueue, drain, rtt, io, scale (repeatable; default all)",
    )
    run.add_argument("--systems", help="comma-separated; default all")
    run.add_argument("--repeat", type=int, help="runs per scenario and system (default 3)")
    run.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    run.add_argument("--output", help="results JSON path (default benchmarks/results/...)")
    rep = sub.add_parser("report", help="print a results file")
    rep.add_argument("path")
    rep.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.command == "setup":
        from .setup_env import setup

        setup()
    elif args.command == "run":
        cmd_run(args)
    else:
        cmd_report(args)


if __name__ == "__main__":
    main()
