"""Run the inbox service: `python -m services.inbox`."""

from carebus.adapters.http import serve
from services.inbox.app import build_app

# Live streams never end by themselves, so uvicorn is told to cut them after this long when
# asked to shut down.
STREAM_SHUTDOWN_S = 2

if __name__ == "__main__":
    serve(
        "inbox",
        build_app,
        lambda settings: settings.inbox_port,
        graceful_shutdown_s=STREAM_SHUTDOWN_S,
    )
