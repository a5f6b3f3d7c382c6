"""Run the inbox service: `python -m services.inbox`."""

import uvicorn

from carebus.runtime.config import get_settings
from carebus.runtime.telemetry import configure_logging
from services.inbox.app import build_app

# Live streams never end by themselves, so uvicorn (unlike carebus.adapters.http.serve for the other
# services) is told to cut them after this long when asked to shut down.
STREAM_SHUTDOWN_S = 2

if __name__ == "__main__":
    settings = get_settings()
    configure_logging("inbox", settings)
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.inbox_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=STREAM_SHUTDOWN_S,
    )
