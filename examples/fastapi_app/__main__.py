"""``python -m examples.fastapi_app``: the web app and an embedded worker in one process,
on the embedded SQLite broker (no server needed), at http://127.0.0.1:8000."""

from __future__ import annotations

import argparse

import uvicorn

from .main import create_api
from .tasks import create_queue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--broker", default=None, help="default: AQUEUE_BROKER_URL or SQLite")
    args = parser.parse_args()
    api = create_api(create_queue(args.broker), worker=True)
    uvicorn.run(api, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
