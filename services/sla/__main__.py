"""Run the SLA engine worker: `python -m services.sla`."""

from __future__ import annotations

from carebus.adapters.streams import run_stream
from carebus.wire import topics
from services.sla.app import create_app


def main() -> None:
    run_stream("sla", create_app, [topics.EVENTS])


if __name__ == "__main__":
    main()
