"""Run the router worker: `python -m services.router`."""

from __future__ import annotations

from carebus.adapters.streams import run_stream
from carebus.wire import topics
from services.router.app import create_app


def main() -> None:
    run_stream("router", create_app, [topics.EVENTS])


if __name__ == "__main__":
    main()
