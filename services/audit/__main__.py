"""Run the audit service: `python -m services.audit`."""

from carebus.adapters.http import serve
from services.audit.app import build_app

if __name__ == "__main__":
    serve("audit", build_app, lambda settings: settings.audit_port)
