"""Run the router worker: `python -m services.router`."""

from __future__ import annotations

import faust

from carebus.adapters.lag import LagReporter
from carebus.adapters.sink import serve_metrics
from carebus.runtime.config import get_settings
from carebus.runtime.telemetry import configure_logging
from carebus.wire import topics
from services.router.app import create_app


def main() -> None:
    settings = get_settings()
    configure_logging("router", settings)
    app = create_app(settings)
    serve_metrics(settings.http_host, settings.metrics_port, lambda: True)
    LagReporter(settings, app.conf.id, [topics.EVENTS]).start()
    worker = faust.Worker(app, loglevel="INFO", quiet=True, override_logging=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
