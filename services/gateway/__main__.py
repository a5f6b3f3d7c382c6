"""Run the gateway: `python -m services.gateway`."""

from carebus.adapters.http import serve
from services.gateway.app import build_app

if __name__ == "__main__":
    serve("gateway", build_app, lambda settings: settings.gateway_port)
