"""Run the development OpenID Connect issuer: `python -m carebus_dev.oidc_issuer`."""

from carebus.adapters.http import serve
from carebus_dev.oidc_issuer.app import build_app

if __name__ == "__main__":
    serve("oidc_issuer", build_app, lambda settings: settings.oidc_issuer_port)
