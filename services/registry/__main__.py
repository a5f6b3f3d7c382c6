"""Run the registry: `python -m services.registry`."""

from carebus.adapters.http import serve
from services.registry.app import build_app

if __name__ == "__main__":
    serve("registry", build_app, lambda settings: settings.registry_port)
