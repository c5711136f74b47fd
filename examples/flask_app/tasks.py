"""The report job of the Celery notes' Flask flow: slow to build, so a worker builds it.

``build_report(customer, month)`` stands in for the real thing (queries, a PDF): it adds up
a month of made-up daily sales, deterministic so tests can check the figures.
"""

from __future__ import annotations

import calendar
import os
import time
import zlib

from aqueue import App


def create_queue(broker: str | None = None) -> App:
    """The aqueue app (broker: ``AQUEUE_BROKER_URL``, else the embedded SQLite file)."""
    queue = App("reports", broker=broker)
    pause = float(os.environ.get("REPORT_SECONDS", "0"))

    # a plain function: the worker runs it in a thread, as it would a blocking query
    @queue.task(name="reports.build")
    def build_report(customer: str, month: str) -> dict[str, object]:
        year, mon = (int(part) for part in month.split("-"))  # ValueError: not YYYY-MM
        days = calendar.monthrange(year, mon)[1]
        seed = zlib.crc32(f"{customer}/{month}".encode())
        daily = [(seed >> (day % 24)) % 1000 for day in range(1, days + 1)]
        if pause:
            time.sleep(pause)
        return {
            "customer": customer,
            "month": month,
            "days": days,
            "total": sum(daily),
            "best_day": daily.index(max(daily)) + 1,
        }

    return queue
