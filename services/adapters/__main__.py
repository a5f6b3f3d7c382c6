"""Run the adapters (PLO, HL7 v2 over HTTP and MLLP, FHIR): `python -m services.adapters`."""

from carebus.adapters.http import serve
from services.adapters.app import build_app

if __name__ == "__main__":
    serve("adapters", build_app, lambda settings: settings.adapters_port)
