"""``python -m examples.flask_app``: Flask's server and an embedded worker in one process,
on the embedded SQLite broker (no server needed), at http://127.0.0.1:5000.

The worker runs on the blocking API's background loop (``queue.sync.worker()``); Flask's
threaded server answers requests on its own threads, each calling ``.sync``.
"""

from __future__ import annotations

import argparse

from .app import create_app
from .tasks import create_queue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--broker", default=None, help="default: AQUEUE_BROKER_URL or SQLite")
    args = parser.parse_args()
    queue = create_queue(args.broker)
    with queue.sync.worker(concurrency=4):
        create_app(queue).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
