"""Aggregate runs into median / min / max per row and system, print and render them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    key: str
    scenario: str
    metric: str
    label: str
    unit: str
    higher_is_better: bool


ROWS = [
    Row("enqueue-one", "enqueue-one", "rate", "enqueue, one at a time", "tasks/s", True),
    Row(
        "enqueue-concurrent",
        "enqueue-concurrent",
        "rate",
        "enqueue, concurrent (gather)",
        "tasks/s",
        True,
    ),
    Row("enqueue-bulk", "enqueue-bulk", "rate", "enqueue, bulk API", "tasks/s", True),
    Row("drain", "drain", "rate", "drain, 1 worker, c=100", "tasks/s", True),
    Row("rtt-p50", "rtt", "p50_ms", "round trip p50", "ms", False),
    Row("rtt-p99", "rtt", "p99_ms", "round trip p99", "ms", False),
    Row("io", "io", "rate", "I/O-bound sleep(10 ms), c=500", "tasks/s", True),
    Row("rss", "drain", "rss_mib", "worker peak RSS (drain)", "MiB", False),
    Row("cpu", "drain", "cpu_us", "worker CPU per task (drain)", "µs", False),
    Row("cmds", "drain", "redis_cmds", "Redis commands per task (drain)", "cmds", False),
    Row("redis-cpu", "drain", "redis_cpu_us", "Redis CPU per task (drain)", "µs", False),
    Row(
        "redis-net", "drain", "redis_net_bytes", "Redis network bytes per task (drain)", "B", False
    ),
    Row("rabbit-cpu", "drain", "rabbit_cpu_us", "RabbitMQ CPU per task (drain)", "µs", False),
    Row("scale-1", "scale-1", "rate", "drain, 1 worker process", "tasks/s", True),
    Row("scale-2", "scale-2", "rate", "drain, 2 worker processes", "tasks/s", True),
    Row("scale-4", "scale-4", "rate", "drain, 4 worker processes", "tasks/s", True),
    *(
        Row(
            f"scale-{n}-{metric}",
            f"scale-{n}",
            metric,
            f"{label}, {n} process{'es' * (n > 1)}",
            unit,
            False,
        )
        for n in (1, 2, 4)
        for metric, label, unit in (
            ("cpu_us", "worker CPU per task", "µs"),
            ("redis_cpu_us", "Redis CPU per task", "µs"),
            ("redis_busy_pct", "Redis busy (100 = one core)", "%"),
            ("machine_busy_pct", "machine busy (both cores)", "%"),
        )
    ),
]


@dataclass
class Cell:
    values: list[float]
    errors: list[str]
    na: str | None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def cells(runs: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """(row key, system) -> the values of every repeat."""
    out: dict[tuple[str, str], Cell] = {}
    for row in ROWS:
        for run in runs:
            if run["scenario"] != row.scenario:
                continue
            res = run["result"]
            if "na" not in res and "error" not in res and res.get(row.metric) is None:
                continue  # e.g. Redis command counts of a system that does not use Redis
            cell = out.setdefault((row.key, run["system"]), Cell([], [], None))
            if "na" in res:
                cell.na = res["na"]
            elif "error" in res:
                cell.errors.append(res["error"])
            else:
                cell.values.append(float(res[row.metric]))
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "tasks/s":
        return f"{value:,.0f}"
    if unit == "cmds":
        return f"{value:.2f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(cell: Cell | None, base: Cell | None) -> str:
    if cell is None or base is None or cell.median is None or not base.median:
        return ""
    return f"{cell.median / base.median:.2f}x"


def text_table(runs: list[dict[str, Any]], systems: list[str], baselines: dict[str, str]) -> str:
    """Per row: one line per system with median, min, max and the ratio to its baseline."""
    table = cells(runs)
    lines: list[str] = []
    for row in ROWS:
        present = [s for s in systems if (row.key, s) in table]
        if not present:
            continue
        better = "higher" if row.higher_is_better else "lower"
        lines.append(f"\n{row.label} [{row.unit}, {better} is better]")
        lines.append(f"  {'system':<19}{'median':>12}{'min':>12}{'max':>12}{'vs baseline':>22}  n")
        for s in present:
            cell = table[(row.key, s)]
            base_name = baselines.get(s, "aqueue")
            base = table.get((row.key, base_name))
            if cell.values:
                r = ratio(cell, base)
                r = f"{r} {base_name}" if r and base_name != s else ("1.00x" if r else "")
                lines.append(
                    f"  {s:<19}{fmt(cell.median, row.unit):>12}"
                    f"{fmt(min(cell.values), row.unit):>12}{fmt(max(cell.values), row.unit):>12}"
                    f"{r:>22}  {len(cell.values)}"
                    + (f"  ({len(cell.errors)} failed)" if cell.errors else "")
                )
            elif cell.na:
                lines.append(f"  {s:<19}{'n/a':>12}  {cell.na}")
            elif cell.errors:
                lines.append(f"  {s:<19}{'FAILED':>12}  {cell.errors[0][:150]}")
    return "\n".join(lines)


def markdown_table(
    runs: list[dict[str, Any]], systems: list[str], baselines: dict[str, str]
) -> str:
    """Rows x systems; each cell 'median (ratio to baseline)'; n/a and failures marked."""
    table = cells(runs)
    header = "| | " + " | ".join(systems) + " |"
    lines = [header, "|---" * (len(systems) + 1) + "|"]
    for row in ROWS:
        if not any((row.key, s) in table for s in systems):
            continue
        arrow = "↑" if row.higher_is_better else "↓"
        parts = [f"{row.label} ({row.unit} {arrow})"]
        for s in systems:
            cell = table.get((row.key, s))
            if cell is None:
                parts.append("")
            elif cell.values:
                base_name = baselines.get(s, "aqueue")
                r = ratio(cell, table.get((row.key, base_name))) if base_name != s else ""
                parts.append(fmt(cell.median, row.unit) + (f" ({r})" if r else ""))
            elif cell.na:
                parts.append("n/a")
            else:
                parts.append("failed")
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def spread_table(runs: list[dict[str, Any]], systems: list[str]) -> str:
    """Rows x systems; each cell 'median [min - max]'."""
    table = cells(runs)
    lines = ["| | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for row in ROWS:
        if not any((row.key, s) in table for s in systems):
            continue
        parts = [f"{row.label} ({row.unit})"]
        for s in systems:
            cell = table.get((row.key, s))
            if cell is None or not cell.values:
                parts.append("" if cell is None else ("n/a" if cell.na else "failed"))
                continue
            lo, hi = min(cell.values), max(cell.values)
            med, lo_s, hi_s = (fmt(v, row.unit) for v in (cell.median, lo, hi))
            parts.append(f"{med} [{lo_s} - {hi_s}]")
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """Every n/a reason and failure, once per (scenario, system)."""
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        res = run["result"]
        key = (run["scenario"], run["system"])
        if "na" in res:
            seen.setdefault(key, f"n/a: {res['na']}")
        elif "error" in res:
            seen.setdefault(key, f"failed: {res['error']}")
    return [f"{system} / {scenario}: {msg}" for (scenario, system), msg in seen.items()]


def cost_table(runs: list[dict[str, Any]], systems: list[str]) -> str:
    """Per system, from the drain runs: median per-task costs and the command mix."""
    lines = [
        "| system | worker CPU µs/task | Redis cmds/task | Redis CPU µs/task "
        "| RabbitMQ CPU µs/task | commands per task |",
        "|---|---|---|---|---|---|",
    ]
    for s in systems:
        drains = [r["result"] for r in runs if r["scenario"] == "drain" and r["system"] == s]
        ok = [d for d in drains if "rate" in d]
        if not ok:
            continue

        def med(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            vals = [d[key] for d in ok if d.get(key) is not None]
            return statistics.median(vals) if vals else None

        mix = ok[len(ok) // 2].get("cmd_breakdown") or {}
        mix_s = ", ".join(f"{k} {v:g}" for k, v in list(mix.items())[:8]) or "(not Redis)"
        lines.append(
            f"| {s} | {fmt(med('cpu_us'), 'µs')} | {fmt(med('redis_cmds'), 'cmds')} "
            f"| {fmt(med('redis_cpu_us'), 'µs')} | {fmt(med('rabbit_cpu_us'), 'µs')} | {mix_s} |"
        )
    return "\n".join(lines)


def settings_markdown(meta: dict[str, Any]) -> str:
    """Versions and every setting of every system, as written by the adapters."""
    out: list[str] = []
    for s in meta["systems"]:
        out.append(f"**{s}** ({meta['versions'].get(s, '?')})\n")
        for k, v in meta["settings"].get(s, {}).items():
            out.append(f"- {k}: {v}")
        out.append("")
    return "\n".join(out)


PEERS = ["celery", "taskiq", "arq", "saq", "streaq", "dramatiq"]


def targets(runs: list[dict[str, Any]]) -> str:
    """Issue 4's targets against the medians of this run (reported, not enforced)."""
    table = cells(runs)

    def med(row: str, system: str) -> float | None:
        cell = table.get((row, system))
        return cell.median if cell else None

    def best(row: str, lowest: bool = False) -> tuple[str, float] | None:
        vals = [(s, v) for s in PEERS if (v := med(row, s)) is not None]
        if not vals:
            return None
        return (min if lowest else max)(vals, key=lambda sv: sv[1])

    lines = ["| target | measured | met? |", "|---|---|---|"]

    def add(name: str, value: float | None, goal: float, text: str, lower: bool = False) -> None:
        if value is None:
            lines.append(f"| {name} | not measured | - |")
            return
        ok = value <= goal if lower else value >= goal
        lines.append(f"| {name} | {text} | {'yes' if ok else 'no'} |")

    def vs_best(name: str, row: str, factor: float, lowest: bool = False) -> None:
        a, b = med(row, "aqueue"), best(row, lowest)
        if a is None or b is None:
            add(name, None, factor, "")
            return
        r = a / b[1]
        add(
            name,
            r,
            factor,
            f"aqueue {fmt(a, 'tasks/s')} vs {b[0]} {fmt(b[1], 'tasks/s')}: {r:.2f}x",
        )

    vs_best("drain >= 3x best peer", "drain", 3)
    vs_best("concurrent enqueue >= 2x best peer", "enqueue-concurrent", 2)
    vs_best("bulk enqueue >= 5x best peer's bulk", "enqueue-bulk", 5)
    a, raw = med("enqueue-one", "aqueue"), med("enqueue-one", "raw-redis")
    if a is not None and raw:
        add(
            "one-at-a-time enqueue >= 80 % of bare redis-py",
            a / raw,
            0.8,
            f"aqueue {fmt(a, 'tasks/s')} vs raw-redis {fmt(raw, 'tasks/s')}: {a / raw:.0%}",
        )
    for row, goal in (("rtt-p50", 0.5), ("rtt-p99", 1.5)):
        v = med(row, "aqueue")
        add(
            f"round trip {row[4:]} <= {goal} ms",
            v,
            goal,
            f"{fmt(v, 'ms')} ms (raw-redis {fmt(med(row, 'raw-redis'), 'ms')} ms)",
            lower=True,
        )
    vs_best("I/O-bound >= 3x best peer", "io", 3)
    rss, small = med("rss", "aqueue"), best("rss", lowest=True)
    if rss is not None and small is not None:
        add(
            "worker RSS <= smallest peer",
            rss,
            small[1],
            f"aqueue {fmt(rss, 'MiB')} MiB vs {small[0]} {fmt(small[1], 'MiB')} MiB",
            lower=True,
        )
    one, two = med("scale-1", "aqueue"), med("scale-2", "aqueue")
    if one and two is not None:
        add(
            "2 workers >= 1.5x one",
            two / one,
            1.5,
            f"{fmt(two, 'tasks/s')} vs {fmt(one, 'tasks/s')}: {two / one:.2f}x",
        )
    am, tq = med("drain", "aqueue-amqp"), med("drain", "taskiq-amqp")
    if am is not None and tq:
        add(
            "amqp drain >= 2x taskiq-aio-pika",
            am / tq,
            2,
            f"{fmt(am, 'tasks/s')} vs {fmt(tq, 'tasks/s')}: {am / tq:.2f}x",
        )
    else:
        add("amqp drain >= 2x taskiq-aio-pika", None, 2, "")
    rpc, red = med("drain", "aqueue-amqp-rpc"), med("drain", "aqueue-amqp-redis")
    name = "amqp drain, default rpc://, producer exited >= the same with a Redis backend"
    if rpc is not None and red:
        add(name, rpc / red, 1, f"{fmt(rpc, 'tasks/s')} vs {fmt(red, 'tasks/s')}: {rpc / red:.2f}x")
    else:
        add(name, None, 1, "")
    sq = med("drain", "aqueue-sqlite")
    add("sqlite drain >= 3 000 tasks/s", sq, 3000, f"{fmt(sq, 'tasks/s')} tasks/s")
    return "\n".join(lines)
